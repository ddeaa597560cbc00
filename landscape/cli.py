"""What every stage entry point shares: environment, logging and one-line errors.

Importing this module first sets ``OPENBLAS_NUM_THREADS=1`` (before numpy/scipy load: on 2 cores their
thread pool fights torch's) and the offline switches for MLflow and DVC.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import logging
import sys
from collections.abc import Callable


from landscape.errors import LandscapeError as StageError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run ``main`` with logging; turn known failures into one line on stderr and a non-zero exit."""
    from landscape.config import ConfigError

    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
