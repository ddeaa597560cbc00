"""Atomic writes and plain reads of JSON, YAML and tensor files.

Every output is written to a temporary file in the same directory and renamed over the target, so a
reader (or DVC) sees either the previous complete file or the new complete file, never a partial one.

YAML is read with YAML 1.2's float rule (:class:`Yaml12Loader`): DVC writes params.yaml and dvc.lock with a
YAML 1.2 writer, which emits ``1e-05`` (no dot, no exponent sign); PyYAML's YAML 1.1 rule reads that back as
the *string* '1e-05'. Every reader of params.yaml, grids and dvc.lock goes through :func:`read_yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core schema floats (a dot or an exponent is required, so integers stay integers; the exponent sign
# is optional), plus YAML 1.1's .inf / .nan spellings and '_' separators, which PyYAML already accepted.
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                          |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule: ``1e-05`` and ``1E5`` are floats, as DVC writes them."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_12, list("-+0123456789."))


def read_yaml(source: str | Path, loader: type[yaml.SafeLoader] = Yaml12Loader) -> Any:
    """Parse YAML text, or the file at a Path, with YAML 1.2 floats (see the module docstring)."""
    text = Path(source).read_text(encoding="utf-8") if isinstance(source, Path) else source
    return yaml.load(text, Loader=loader)  # a SafeLoader subclass: no arbitrary objects


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
