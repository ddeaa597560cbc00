"""Run one stage (``python tests/audit_stage.py STAGE OUT.json``) and record every file it opens and every
directory it lists under the current directory, through Python's audit hooks (PEP 578)."""

import atexit
import json
import os
import runpy
import sys

ROOT = os.getcwd()
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
events: dict[str, set[str]] = {"read": set(), "write": set(), "list": set()}


def _rel(path) -> str | None:
    if isinstance(path, int):
        return None
    path = os.fsdecode(path)
    full = os.path.abspath(path)
    if not full.startswith(ROOT + os.sep):
        return None
    return os.path.relpath(full, ROOT)


def hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        rel = _rel(path)
        if rel is None:
            return
        writes = any(c in (mode or "") for c in "wax+") if mode else bool((flags or 0) & WRITE_FLAGS)
        events["write" if writes else "read"].add(rel)
    elif event in ("os.listdir", "os.scandir"):
        rel = _rel(args[0] if args and args[0] is not None else ".")
        if rel is not None:
            events["list"].add(rel)


def dump() -> None:
    with open(sys.argv[2], "w") as fh:
        json.dump({k: sorted(v) for k, v in events.items()}, fh)


sys.path.insert(0, ROOT)
atexit.register(dump)
sys.addaudithook(hook)
runpy.run_module(f"stages.{sys.argv[1]}", run_name="__main__")
