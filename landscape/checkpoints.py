"""Save, load and list training checkpoints.

A checkpoint is a plain ``torch.save`` dict, always loaded with ``weights_only=True`` (no code runs on
load; a file that needs more is refused)::

    {
      "format": "landscape.checkpoint/1",
      "epoch": int,                       # 0 = the initialization
      "model": {"arch", "input_dim", "hidden", "activation", "num_classes"},
      "model_state": state_dict,
      "optimizer": {"lr", "momentum", "nesterov", "weight_decay", "batch_size"},
      "optimizer_state": state_dict,      # SGD momentum buffers
      "rng": {"torch": ByteTensor, "batches": ByteTensor},   # resume continues the same stream
      "fingerprint": str,                 # SHA-256 of model + train params + data digests
      "history": [ {epoch, train_loss, wall_time_s, diverged}, … ],  # up to this epoch
    }

Files are ``checkpoints/epoch_NNN.pt``, written atomically (temp file + rename).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import LandscapeError
from landscape.io import save_torch
from landscape.models import build_model

FORMAT = "landscape.checkpoint/1"
_NAME = re.compile(r"^epoch_(\d+)\.pt$")


class CheckpointError(LandscapeError):
    """A checkpoint that is missing, truncated, of another format, or unsafe to unpickle."""


def checkpoint_path(directory: str | Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:03d}.pt"


def list_checkpoints(directory: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of the checkpoint files present (not validated)."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = {}
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _canonical(obj: Any) -> Any:
    """Rebuild containers with interned strings: pickle memoizes by object identity, so equal content
    built in different ways (fresh vs. resumed) would otherwise serialize to different bytes."""
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch(path, _canonical({"format": FORMAT, **state}))


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load failure (e.g. the unsafe global a weights-only load refused)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln or "Unsupported global" in ln:
            return ln
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``; raise CheckpointError with the reason on any failure."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({_reason(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    model = build_model(ckpt["model"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


def load_model(path: str | Path) -> nn.Module:
    """The ``torch.nn.Module`` stored in a checkpoint, in eval mode."""
    return model_from_checkpoint(load_checkpoint(path))
