"""The 1-D line between two checkpoints: θ(α) = (1 − α)·θ_a + α·θ_b.

α ∈ [0, 1] is the segment; values outside extend the line beyond the endpoints. Barrier heights along it
are defined in :mod:`landscape.paths.barrier`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.errors import LandscapeError
from landscape.models import has_batch_norm
from landscape.paths.barrier import path_barriers
from landscape.paths.points import BN_NOTE, evaluate_points, route_of
from landscape.stacked import AffinePoints

log = logging.getLogger(__name__)


def alpha_grid(points: int, alpha_min: float = 0.0, alpha_max: float = 1.0) -> list[float]:
    """``points`` evenly spaced α in [alpha_min, alpha_max], with 0 and 1 always included."""
    grid = set(np.round(np.linspace(alpha_min, alpha_max, points), 12).tolist()) | {0.0, 1.0}
    return sorted(float(a) for a in grid)


def line_losses(
    model: nn.Module,
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    alphas: list[float],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 4096,
    loss: str = "cross_entropy",
) -> list[dict[str, Any]]:
    """One record per α: train loss (``loss``) and accuracy over the full train split, test loss/accuracy
    (batch-norm statistics recomputed on the train split at every α where the model has them)."""
    res, _ = evaluate_points(model, line_points(theta_a, theta_b, alphas), {"train": train, "test": test},
                             batch_size, loss, bn_data=train[0], desc="line")
    return [{"alpha": alpha, "loss": float(res["train"][0][j]), "train_accuracy": float(res["train"][1][j]),
             "test_loss": float(res["test"][0][j]), "test_accuracy": float(res["test"][1][j])}
            for j, alpha in enumerate(alphas)]


def line_points(theta_a: torch.Tensor, theta_b: torch.Tensor, alphas: list[float]) -> AffinePoints:
    """θ(α) = θ_a + α(θ_b − θ_a) as an affine family (one direction: the first layer's products are shared)."""
    a = torch.tensor(alphas, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    return AffinePoints(theta_a, (theta_b - theta_a)[None], a)


def resolve_endpoints(ckpt_dir: str, start: int, end: int) -> tuple[int, int, str | None]:
    """The checkpoints to interpolate between. When training diverged, requested epochs past the last
    finite checkpoint are replaced by it (documented in README; the note says so)."""
    from landscape.checkpoints import list_checkpoints

    available = sorted(list_checkpoints(ckpt_dir))
    if not available:
        raise LandscapeError(f"no checkpoints in {ckpt_dir}/: run the train stage first")
    last = available[-1]
    resolved, notes = [], []
    for name, epoch in (("start_epoch", start), ("end_epoch", end)):
        if epoch in available:
            resolved.append(epoch)
        elif epoch > last:
            notes.append(f"interpolate.{name} = {epoch} has no checkpoint (training stopped at epoch {last}, "
                         f"diverged or interrupted); using the last finite checkpoint, epoch {last}")
            resolved.append(last)
        else:
            raise LandscapeError(f"interpolate.{name} = {epoch}: no checkpoint for that epoch; allowed: {available}")
    note = "; ".join(notes) or None
    if note:
        log.warning(note)
    return resolved[0], resolved[1], note


def interpolate_checkpoints(
    ckpt_dir: str,
    data_root: str,
    start_epoch: int,
    end_epoch: int,
    alphas: list[float],
    batch_size: int = 4096,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Loss along the line between two checkpoints; returns (rows, summary with the barrier heights)."""
    from landscape.checkpoints import checkpoint_path, load_checkpoint, model_from_checkpoint
    from landscape.data import load_split
    from landscape.parameters import flatten

    ends = []
    for epoch in (start_epoch, end_epoch):
        ckpt = load_checkpoint(checkpoint_path(ckpt_dir, epoch))
        ends.append(model_from_checkpoint(ckpt).to(device))
    theta_a, theta_b = flatten(ends[0]), flatten(ends[1])
    for epoch, theta in ((start_epoch, theta_a), (end_epoch, theta_b)):
        if not torch.isfinite(theta).all():
            raise LandscapeError(f"the checkpoint of epoch {epoch} holds non-finite weights; choose a finite endpoint")
    train, test = (tuple(t.to(device) for t in load_split(data_root, split)) for split in ("train", "test"))
    kind = ckpt["optimizer"].get("loss", "cross_entropy")
    rows = line_losses(ends[0], theta_a, theta_b, alphas, train, test, batch_size, kind)
    summary = {
        "start_epoch": start_epoch,
        "end_epoch": end_epoch,
        "points": len(rows),
        "distance": float(torch.linalg.vector_norm((theta_b - theta_a).double())),
        "loss_kind": kind,
        "batch_norm": BN_NOTE[has_batch_norm(ends[0])],
        "evaluation": route_of(ends[0], line_points(theta_a, theta_b, alphas)),
        **path_barriers(rows),
    }
    return rows, summary


def line_between_checkpoints(
    ckpt_dir: str,
    data_root: str,
    start_epoch: int,
    end_epoch: int,
    points: int,
    alpha_min: float,
    alpha_max: float,
    batch_size: int,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The interpolate stage: resolve the endpoints (a diverged run falls back to its last finite checkpoint,
    with a note), evaluate the α grid, and summarize; an empty line when only one finite checkpoint exists."""
    start, end, note = resolve_endpoints(ckpt_dir, start_epoch, end_epoch)
    if start == end:  # training diverged before a second finite checkpoint existed
        return [], {"start_epoch": start, "end_epoch": end, "skipped": note}
    rows, summary = interpolate_checkpoints(ckpt_dir, data_root, start, end,
                                            alpha_grid(points, alpha_min, alpha_max), batch_size, device)
    if note:
        summary["note"] = note
    return rows, summary
