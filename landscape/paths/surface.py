"""The 2-D loss surface around a checkpoint: L(θ + x·δ + y·η) on a grid (Li et al. 2018).

δ and η are random directions normalized as :mod:`landscape.paths.directions` describes. The grid is
``points`` × ``points`` over [−range, range]²; ``loss[i][j]`` is at (x = x[j], y = y[i]) (row-major, y down the
rows), evaluated with many grid points per pass over the data (:func:`landscape.paths.points.evaluate_points`).
The center (x, y) = (0, 0) is the checkpoint itself.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.models import has_batch_norm
from landscape.parameters import flatten
from landscape.paths.directions import plane_directions
from landscape.paths.points import BN_NOTE, evaluate_points
from landscape.stacked import AffinePoints

log = logging.getLogger(__name__)


def grid_axis(points: int, extent: float) -> list[float]:
    """``points`` evenly spaced values over [−extent, extent] (0 included when ``points`` is odd)."""
    return [float(v) for v in np.round(np.linspace(-extent, extent, points), 12)]


def plane_points(theta: torch.Tensor, delta: torch.Tensor, eta: torch.Tensor, xs: list[float],
                 ys: list[float]) -> AffinePoints:
    """θ + xδ + yη over the grid, row-major (y down the rows, x along them), as an affine family."""
    grid = torch.tensor([[xv, yv] for yv in ys for xv in xs], dtype=theta.dtype, device=theta.device)
    return AffinePoints(theta, torch.stack([delta, eta]), grid)


def loss_surface(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    points: int,
    extent: float,
    normalization: str,
    seed: int,
    orthogonalize: bool = False,
    batch_size: int = 4096,
    loss: str = "cross_entropy",
    bn_data: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Loss and accuracy on the grid; the record of ``reports/surface.json`` (less epoch and split)."""
    theta = flatten(model)
    delta, eta = plane_directions(model, normalization, seed, orthogonalize)
    xs, ys = grid_axis(points, extent), grid_axis(points, extent)
    plane = plane_points(theta, delta, eta, xs, ys)
    res, route = evaluate_points(model, plane, {"split": data}, batch_size, loss, bn_data=bn_data, desc="surface")
    losses, accs = res["split"]
    loss_rows = losses.view(len(ys), len(xs)).tolist()
    acc_rows = accs.view(len(ys), len(xs)).tolist()
    d64, e64 = delta.double(), eta.double()
    return {
        "x": xs, "y": ys, "loss": loss_rows, "accuracy": acc_rows, "evaluation": route,
        "normalization": normalization, "orthogonalize": orthogonalize, "seed": seed, "range": extent,
        "points": points, "samples": len(data[1]), "loss_kind": loss,
        "direction_norms": {"delta": float(d64.norm()), "eta": float(e64.norm()),
                            "theta": float(theta.double().norm()),
                            "cosine_delta_eta": float(d64 @ e64 / (d64.norm() * e64.norm()))},
        "batch_norm": BN_NOTE[has_batch_norm(model)],
    }


def surface_of_checkpoint(ckpt_dir: str, data_root: str, inp: Any, device: str = "cpu") -> dict[str, Any]:
    """The surface stage: the checkpoint of ``inp.epoch`` (the last finite one, with a note, when training
    diverged before it) on ``inp.split``; the record of reports/surface.json."""
    from landscape.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint, model_from_checkpoint
    from landscape.data import load_split, probe_indices
    from landscape.errors import LandscapeError

    available = sorted(list_checkpoints(ckpt_dir))
    if not available:
        raise LandscapeError(f"no checkpoints in {ckpt_dir}/: run the train stage first")
    epoch, note = inp.epoch, None
    if epoch not in available:
        if epoch < available[-1]:
            raise LandscapeError(f"surface.epoch = {epoch}: no checkpoint; allowed: {available}")
        note = (f"surface.epoch {epoch} has no checkpoint (training stopped at epoch {available[-1]}, diverged or "
                f"interrupted); the surface is around the last finite checkpoint, epoch {available[-1]}")
        log.warning(note)
        epoch = available[-1]
    ckpt = load_checkpoint(checkpoint_path(ckpt_dir, epoch))
    model = model_from_checkpoint(ckpt).to(device)
    kind = ckpt["optimizer"].get("loss", "cross_entropy")
    train = tuple(t.to(device) for t in load_split(data_root, "train"))
    if inp.split == "probe":
        idx = probe_indices(len(train[0]), inp.probe_samples, inp.probe_seed)
        data = (train[0][idx], train[1][idx])
    else:
        data = train if inp.split == "train" else tuple(t.to(device) for t in load_split(data_root, "test"))
    record = loss_surface(model, data, inp.points, inp.range, inp.normalization, inp.seed, inp.orthogonalize,
                          inp.eval_batch_size, kind, bn_data=train[0])
    return {"epoch": epoch, "split": inp.split, **({"note": note} if note else {}), **record}
