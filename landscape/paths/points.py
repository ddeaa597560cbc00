"""Loss and accuracy at many points of a path or plane in parameter space, one shared facility.

The points are an affine family θ_j = θ₀ + Σ_k c_jk v_k (:class:`landscape.stacked.AffinePoints`: a line, a
plane, a Bézier curve), evaluated by :func:`landscape.evaluation.evaluate_affine` with their first layer
factorized exactly. With batch norm, the statistics stored with a checkpoint do not belong to other weights: at
every point they are recomputed over the training inputs (the network at θ_j,
:func:`landscape.stacked.recompute_stats`, all points together) before the point is evaluated. A model without
a layer plan goes the direct way: one point at a time, statistics by :func:`landscape.models.recompute_batch_norm`.
The route taken is returned, and the stages record it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from landscape.evaluation import evaluate, evaluate_affine
from landscape.models import has_batch_norm, recompute_batch_norm
from landscape.parameters import assign
from landscape.stacked import AffinePoints, layer_plan, recompute_stats

BN_NOTE = {True: "batch-norm statistics recomputed on the training split at every point",
           False: "the model has no batch norm: nothing to recompute"}


def evaluate_points(
    model: nn.Module,
    points: AffinePoints | torch.Tensor,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4096,
    loss: str = "cross_entropy",
    bn_data: torch.Tensor | None = None,
    factorize: bool | None = None,
    desc: str | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str]:
    """``({split: (losses, accuracies)}, route)``: float64, one per point, on each named split. ``bn_data``: the
    inputs batch-norm statistics are recomputed on (required when the model has batch norm). ``factorize``: None
    = share the first layer where it saves products, False = the direct route (for comparison)."""
    if not isinstance(points, AffinePoints):
        points = AffinePoints.of(points)
    bn = has_batch_norm(model)
    if bn and bn_data is None:
        raise ValueError("the model has batch norm: pass bn_data (the training inputs) to recompute its statistics")
    plan = layer_plan(model)
    if plan is None and bn:
        return _one_at_a_time(model, points.thetas(), splits, batch_size, loss, bn_data), "direct, one point at a time"
    if factorize is None:
        factorize = not points.explicit and points.k + 1 < points.m
    stats = None
    if bn and plan is not None:
        stats = recompute_stats(plan, points, bn_data, min(batch_size, 2048), 16 if factorize else 8, factorize)
    out, route = {}, "vmap"
    for name, (x, y) in splits.items():
        losses, accs, route = evaluate_affine(model, points, x, y, batch_size, loss, stats=stats, factorize=factorize,
                                              desc=f"{desc} ({name})" if desc else None)
        out[name] = (losses, accs)
    return out, route


def route_of(model: nn.Module, points: AffinePoints) -> str:
    """How :func:`evaluate_points` evaluates these points on this model (recorded beside the results)."""
    if layer_plan(model) is None:
        return "direct, one point at a time" if has_batch_norm(model) else "vmap"
    return "factorized" if not points.explicit and points.k + 1 < points.m else "stacked"


def _one_at_a_time(model: nn.Module, thetas: torch.Tensor, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   batch_size: int, loss: str, bn_data: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    work = copy.deepcopy(model)
    out = {name: (torch.empty(len(thetas), dtype=torch.float64), torch.empty(len(thetas), dtype=torch.float64))
           for name in splits}
    for j, theta in enumerate(thetas):
        assign(work, theta)
        recompute_batch_norm(work, bn_data, batch_size)
        for name, (x, y) in splits.items():
            loss_j, acc_j = evaluate(work, x, y, batch_size, loss=loss)
            out[name][0][j], out[name][1][j] = loss_j, acc_j
    return out
