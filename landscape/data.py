"""Prepared tensors, the IDX format and the fixed probe subset. Where the data comes from (``data.source``):
:mod:`landscape.sources`.

Prepared layout (written by the download stage, read by everything else)::

    data/train.pt, data/test.pt   {"x": uint8 (N, 28, 28), "y": int64 (N,)}
    data/dataset.json             what was used: source, counts, SHA-256 of each array, subset indices
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.errors import LandscapeError
from landscape.io import read_json, save_torch, write_json

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Per-pixel mean/std of the training split, on the [0, 1] scale (the usual constants).
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
NUM_CLASSES = 10
OFFLINE_TEST_PER_CLASS = 100


class DataError(LandscapeError):
    """Missing, malformed or tampered data; the message says which file and what is wrong."""


@dataclass
class RawData:
    x_train: np.ndarray  # uint8 (N, 28, 28)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- IDX files
def _idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def check_idx_dir(directory: Path) -> None:
    """Raise ValueError unless ``directory`` holds the four IDX files (plain or .gz)."""
    if not directory.exists():
        raise ValueError(
            f"directory '{directory}' does not exist; allowed: auto, download, offline, "
            "or a directory holding the four MNIST IDX files"
        )
    if not directory.is_dir():
        raise ValueError(f"'{directory}' is not a directory; allowed: auto, download, offline, or an IDX directory")
    missing = [stem for stem in IDX_FILES.values() if _idx_path(directory, stem) is None]
    if missing:
        raise ValueError(
            f"directory '{directory}' lacks the IDX file(s) {', '.join(missing)} (plain or .gz); "
            "allowed: auto, download, offline, or a directory holding all four"
        )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (uint8 data only, as MNIST uses). Raises DataError on any inconsistency."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (magic 0x{raw[:4].hex()}, expected 0x000008NN)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or padded IDX file: header says shape {shape} = {expected} bytes, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_idx_dir(directory: Path) -> RawData:
    check_idx_dir(directory)
    arrays = {key: read_idx(_idx_path(directory, stem)) for key, stem in IDX_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{directory}: {split} images have shape {x.shape}, expected (N, 28, 28)")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{directory}: {split} has {len(x)} images but {len(y)} labels")
        if y.size and y.max() >= NUM_CLASSES:
            raise DataError(f"{directory}: {split} labels must be 0..9, found {int(y.max())}")
    return RawData(
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        {"source_used": "directory"},
    )


# ------------------------------------------------------------------------------------ preparation
def array_digest(x: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes, with dtype and shape mixed in."""
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _subset(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray | None:
    if n is None or n >= n_total:
        return None
    return np.sort(rng.choice(n_total, size=n, replace=False))


def prepare(raw: RawData, out_dir: Path, train_samples: int | None, test_samples: int | None, seed: int) -> dict:
    """Subsample (seeded), write ``train.pt``/``test.pt`` and ``dataset.json`` atomically; return the record."""
    rng = np.random.default_rng(seed)
    record: dict[str, Any] = dict(raw.info)
    mean, std = NORMALIZATION[record["dataset"]]
    record["normalization"] = {"mean": mean, "std": std, "scale": "x / 255"}
    record["seed"] = seed
    for split, x, y, n in (
        ("train", raw.x_train, raw.y_train, train_samples),
        ("test", raw.x_test, raw.y_test, test_samples),
    ):
        idx = _subset(len(x), n, rng)
        if idx is not None:
            x, y = x[idx], y[idx]
        save_torch(out_dir / f"{split}.pt", {"x": torch.from_numpy(x.copy()), "y": torch.from_numpy(y.copy())})
        record[split] = {
            "count": len(x),
            "available": len(raw.x_train if split == "train" else raw.x_test),
            "class_counts": np.bincount(y, minlength=NUM_CLASSES).tolist(),
            "sha256_x": array_digest(x),
            "sha256_y": array_digest(y),
            "subset_indices": None if idx is None else idx.tolist(),
        }
    write_json(out_dir / "dataset.json", record)
    return record


# --------------------------------------------------------------------------------------- loading
def _load_raw_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if split not in ("train", "test"):
        raise ValueError(f"split = {split!r}; allowed: 'train', 'test'")
    root = Path(root)
    meta_path, data_path = root / "dataset.json", root / f"{split}.pt"
    for p in (meta_path, data_path):
        if not p.exists():
            raise DataError(f"{p} not found: run the download stage first (dvc repro download)")
    meta = read_json(meta_path)
    try:
        blob = torch.load(data_path, weights_only=True)
    except Exception as exc:
        raise DataError(f"{data_path}: unreadable ({exc})") from None
    x, y = blob["x"], blob["y"]
    for name, arr in (("x", x), ("y", y)):
        if array_digest(arr.numpy()) != meta[split][f"sha256_{name}"]:
            raise DataError(
                f"{data_path}: '{name}' does not match the SHA-256 recorded in {meta_path}; the data was "
                "modified after the download stage: rerun it (dvc repro -f download)"
            )
    return x, y, meta


def load_split(root: str | Path, split: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as the model consumes them: x (N, 784) normalized ``(x/255 - mean)/std``, y int64.

    The arrays are verified against the SHA-256 digests in ``dataset.json`` first.
    """
    x, y, meta = _load_raw_split(Path(root), split)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    xf = (x.reshape(len(x), -1).to(dtype) / 255.0 - mean) / std
    return xf, y.long()


def probe_indices(n_train: int, n: int, seed: int) -> torch.Tensor:
    """The probe subset P: ``n`` distinct training indices drawn with ``seed`` (sorted)."""
    if not 1 <= n <= n_train:
        raise ValueError(f"probe.samples = {n}: allowed 1..{n_train} (the training split has {n_train} examples)")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=g)[:n].sort().values


def probe_set(
    root: str | Path, n: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact probe tensors the probe stage uses for ``probe.samples = n``, ``probe.seed = seed``."""
    x, y = load_split(root, "train", dtype)
    idx = probe_indices(len(x), n, seed)
    return x[idx], y[idx]
