#!/usr/bin/env bash
# Start or stop, on this box, what a multi-machine sweep needs: PostgreSQL + an MLflow server on it + a Ray
# head (token auth). `start` prints the two commands that join another machine. See docs/scaling.md.
#   scripts/cluster.sh start [--host ADDRESS_OTHERS_REACH] [--dir .cluster]
#   scripts/cluster.sh stop  [--dir .cluster]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m landscape.runner.cluster "$@"
