"""Atomic writes and plain reads of JSON and tensor files.

Every output is written to a temporary file in the same directory and renamed over the target, so a
reader (or DVC) sees either the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _finite_or_none(obj: Any) -> Any:
    """JSON has no inf/NaN: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically. Non-finite floats become ``null``."""
    text = json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda fh: fh.write(text), "w")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data), "wb")


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` to a temp file + rename (a killed writer never leaves a truncated file).

    Serialized through memory first: torch names the zip records after the file it writes to, and the
    random temp name would make identical checkpoints differ byte for byte.
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
