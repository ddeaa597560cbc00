"""Exact losses and accuracies over a data set.

L_S(θ) = (1/|S|) Σ_{i∈S} ℓ(f(x_i; θ), y_i) with ℓ the cross-entropy (natural log, nats), model in eval
mode, evaluated in batches; per-example losses are summed in float64 so that differences of
L_S at nearby θ (needed by the sharpness estimates) are not lost to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.parameters import unflatten

# ℓ summed over a batch: (outputs, targets) -> scalar. Curvature code accepts any such function.
SumLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sum_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="sum")


def per_example_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 4096,
    theta: torch.Tensor | None = None,
) -> tuple[float, float]:
    """``(L_S, accuracy)`` over all of (x, y); at flat parameters ``theta`` if given (model untouched)."""
    was_training = model.training
    model.eval()
    params = unflatten(theta, model) if theta is not None else None
    total = torch.zeros((), dtype=torch.float64)
    correct = 0
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model(xb) if params is None else functional_call(model, params, (xb,))
            total += per_example_cross_entropy(out, yb).double().sum()
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return float(total) / len(x), correct / len(x)


def loss_function(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096):
    """θ ↦ L_S(θ) as a float64 Python float (the model's own parameters are not modified)."""

    def loss(theta: torch.Tensor) -> float:
        return evaluate(model, x, y, batch_size, theta=theta)[0]

    return loss
