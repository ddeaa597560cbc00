"""Parameter vectors: the flat θ ∈ R^n that curvature, sharpness and interpolation work with."""

from __future__ import annotations

import torch
from torch import nn


def flatten(model: nn.Module) -> torch.Tensor:
    """θ as one detached flat vector (a copy), in the order of ``model.named_parameters()``."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def unflatten(theta: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: view of theta}`` shaped like the model's parameters (for ``torch.func.functional_call``)."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the model has {i} parameters")
    return out


def assign(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy θ into the model's parameters in place."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), unflatten(theta, model).values(), strict=True):
            p.copy_(v)
