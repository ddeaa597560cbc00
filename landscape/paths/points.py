"""Loss and accuracy at many points of a path or plane in parameter space, one shared facility.

Without batch norm the points go through :func:`landscape.evaluation.evaluate_many` (many parameter sets per
pass over the data). With batch norm, the running statistics stored with a checkpoint do not belong to other
weights: at every point they are recomputed over the training split (:func:`landscape.models.recompute_batch_norm`)
before the point is evaluated, one point at a time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from landscape.evaluation import evaluate, evaluate_many
from landscape.models import has_batch_norm, recompute_batch_norm
from landscape.parameters import assign

BN_NOTE = {True: "batch-norm statistics recomputed on the training split at every point",
           False: "the model has no batch norm: nothing to recompute"}


def evaluate_points(
    model: nn.Module,
    thetas: torch.Tensor,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4096,
    loss: str = "cross_entropy",
    bn_data: torch.Tensor | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (losses, accuracies)}`` (float64, one per row of ``thetas``) on each named split.
    ``bn_data``: the inputs batch-norm statistics are recomputed on (required when the model has batch norm)."""
    if not has_batch_norm(model):
        return {name: evaluate_many(model, thetas, x, y, batch_size, loss) for name, (x, y) in splits.items()}
    if bn_data is None:
        raise ValueError("the model has batch norm: pass bn_data (the training inputs) to recompute its statistics")
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
