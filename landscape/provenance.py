"""What identifies a pipeline state, independent of where the checkout lives.

* :func:`code_digest` — SHA-256 over the code that computes the numbers (``landscape/**/*.py`` and
  ``stages/*.py``): each file's path *relative to the repository root* and its bytes, in sorted order. No
  absolute paths, mtimes or machine names, so two clones of one commit get the same digest; an edit of one
  character in that code changes it, an edit in ``tests/`` or ``docs/`` does not.
* :func:`run_key` — SHA-256 of the whole params.yaml (parsed, canonical JSON), the code digest and the data
  digests (SHA-256 of the prepared arrays): the MLflow run of a pipeline state is found by it.
* :func:`outputs_digest` — SHA-256 of the files a run logs (name + bytes), stored in the run so that a run is
  reused only when it holds exactly the files on disk.
* :func:`rerun_of_locked_state` — whether DVC runs a stage with exactly the params dvc.lock recorded for its
  last completed run (``dvc repro -f``, or its outputs were changed by hand).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from landscape.io import read_yaml

CODE_GLOBS = ("landscape/**/*.py", "stages/*.py")  # dvc.yaml computes nothing (and DVC forbids it as a dep)


def code_files(root: Path) -> list[str]:
    """Repository-relative POSIX paths of the code the run key hashes, sorted."""
    root = Path(root)
    files = {p.relative_to(root).as_posix() for g in CODE_GLOBS for p in root.glob(g) if p.is_file()}
    return sorted(f for f in files if "__pycache__" not in f)


def code_digest(root: Path) -> str:
    h = hashlib.sha256()
    for rel in code_files(root):
        data = (Path(root) / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def data_digest(dataset: dict[str, Any]) -> dict[str, list[str]]:
    """The SHA-256 digests of the prepared arrays (what was computed on, not where it came from)."""
    return {s: [dataset[s]["sha256_x"], dataset[s]["sha256_y"]] for s in ("train", "test")}


def run_key(params_path: Path, root: Path, dataset: dict[str, Any]) -> str:
    raw = read_yaml(Path(params_path))
    payload = {"params": raw, "code": code_digest(root), "data": data_digest(dataset)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def outputs_digest(contents: dict[str, bytes | None]) -> str:
    """SHA-256 over ``name\0length\0bytes`` of each result (sorted by name); None counts as absent."""
    h = hashlib.sha256()
    for name in sorted(contents):
        data = contents[name]
        data = b"<absent>" if data is None else data
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _lookup(raw: Any, dotted: str) -> Any:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal params values; strings that spell a number compare as that number (a belt to the braces of
    :func:`landscape.io.read_yaml`, which already reads ``1e-08`` as a float)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) != isinstance(b, str) and not isinstance(a, bool) and not isinstance(b, bool):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def rerun_of_locked_state(stage: str, lock_path: str | Path = "dvc.lock",
                          params_path: str | Path = "params.yaml") -> bool:
    """True when dvc.lock records a completed run of ``stage`` whose params equal the current params.yaml
    values of the same keys: DVC only runs such a stage again when forced (``dvc repro -f``) or when its
    outputs were changed or deleted, and in both cases the stage should start from scratch."""
    lock_path, params_path = Path(lock_path), Path(params_path)
    if not lock_path.is_file() or not params_path.is_file():
        return False
    try:
        lock = read_yaml(lock_path) or {}
        locked = lock["stages"][stage]["params"]["params.yaml"]
        current = read_yaml(params_path) or {}
    except (KeyError, TypeError, OSError, yaml.YAMLError):
        return False
    if not isinstance(locked, dict) or not locked:
        return False
    return all(_same(_lookup(current, key), value) for key, value in locked.items())
