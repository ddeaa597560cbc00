#!/usr/bin/env bash
# Build the project's virtual environment once and link it at .venv.
# The environment lives outside the clone, keyed by a hash of requirements.txt and the Python version,
# so CI and fresh clones on the same machine reuse it; a new machine builds it (about 4 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
key=$( { cat requirements.txt; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
cache=${LANDSCAPE_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/landscape/envs}
venv="$cache/venv-$key"
mkdir -p "$cache"
exec 9>"$cache/.lock-$key"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "building environment $venv (torch and friends: a few minutes) ..." >&2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  # (the machine's pip config lists local indexes that may be absent: drop those warnings)
  "$venv/bin/pip" install --quiet -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
  touch "$venv/.complete"
fi
# The `landscape` command. The environment is shared by every clone on the machine, so the command runs the
# package of the repository it is called in (not one clone's, as `pip install -e .` would).
cat > "$venv/bin/landscape.tmp.$$" <<'LAUNCHER'
#!/bin/sh
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
[ -d "$root/landscape" ] || { echo "error: run landscape inside a clone of the landscape repository" >&2; exit 2; }
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$(dirname "$0")/python" -m landscape "$@"
LAUNCHER
chmod +x "$venv/bin/landscape.tmp.$$" && mv "$venv/bin/landscape.tmp.$$" "$venv/bin/landscape"
ln -sfn "$venv" .venv
