"""DVC stage entry points: ``python -m stages.<name>``. Each parses params, calls landscape/, writes outputs.

Importing the package first checks that the interpreter is the project's environment, so a stage run by a
bare ``dvc exp run`` outside it ends in one line that says how to enter it, not in a ModuleNotFoundError.
"""

import importlib.util
import sys

_NEEDED = ("torch", "yaml", "pydantic", "numpy")
_missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
if _missing:
    print(f"error: {sys.executable} cannot import {', '.join(_missing)}: the stages run in the project's "
          "environment; run `make run`, or `make env && source .venv/bin/activate` before `dvc repro` / "
          "`dvc exp run`", file=sys.stderr)
    sys.exit(2)
