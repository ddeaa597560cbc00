"""Quadratic Bézier curves between two trained networks (Garipov et al. 2018, mode connectivity).

θ(t) = (1 − t)²·θ_a + 2t(1 − t)·θ_c + t²·θ_b, t ∈ [0, 1], with fixed endpoints θ_a, θ_b and one trained
control point θ_c (initialized at the midpoint, so training starts from the straight line). Training minimizes
E_{t~U(0,1)} L(θ(t)) with one random t per mini-batch; ∂θ(t)/∂θ_c = 2t(1 − t). The optimizer is the run's own
(``train.optimizer``, learning rate, momentum or Adam's β's, weight decay: :func:`landscape.training.make_optimizer`)
and the batch size the run's, as Garipov et al. train the curve with the settings of the networks it joins.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from landscape.config import TrainConfig
from landscape.evaluation import batch_loss
from landscape.parameters import unflatten
from landscape.stacked import AffinePoints
from landscape.training import make_optimizer


def bezier(theta_a: torch.Tensor, theta_c: torch.Tensor, theta_b: torch.Tensor, t: float) -> torch.Tensor:
    return (1 - t) ** 2 * theta_a + 2 * t * (1 - t) * theta_c + t * t * theta_b


def bezier_points(theta_a: torch.Tensor, theta_c: torch.Tensor, theta_b: torch.Tensor, ts: list[float]) -> AffinePoints:
    """The curve at ``ts`` as an affine family: θ(t) = θ_a + 2t(1 − t)(θ_c − θ_a) + t²(θ_b − θ_a)."""
    t = torch.tensor(ts, dtype=theta_a.dtype, device=theta_a.device)
    return AffinePoints(theta_a, torch.stack([theta_c - theta_a, theta_b - theta_a]),
                        torch.stack([2 * t * (1 - t), t * t], 1))


def train_control_point(
    model: nn.Module,
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    train_cfg: TrainConfig,
    batch_size: int,
    seed: int,
    loss: str = "cross_entropy",
) -> tuple[torch.Tensor, list[float]]:
    """θ_c after ``epochs`` passes of the run's optimizer over (x, y), one t ~ U(0, 1) per mini-batch (both the
    batch order and t drawn from a generator seeded with ``seed``); also the mean loss of each epoch. Batch
    norm, if any, runs in train mode on each mini-batch, as in training (its statistics are recomputed at
    every evaluated point afterwards)."""
    g = torch.Generator().manual_seed(seed)
    theta_c = ((theta_a + theta_b) / 2).clone().requires_grad_(True)
    opt = make_optimizer([theta_c], train_cfg)
    work = copy.deepcopy(model)  # batch-norm buffers move in train mode: not the caller's model
    work.train()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total, seen = 0.0, 0
        for i in tqdm(range(0, len(x), batch_size), desc=f"bezier epoch {epoch + 1}/{epochs}", leave=False,
                      mininterval=1.0):
            idx = order[i : i + batch_size]
            t = float(torch.rand((), generator=g))
            theta = bezier(theta_a, theta_c, theta_b, t)
            value = batch_loss(functional_call(work, unflatten(theta, work), (x[idx],)), y[idx], loss)
            if not torch.isfinite(value):
                history.append(math.nan)
                return theta_c.detach(), history
            opt.zero_grad()
            value.backward()
            opt.step()
            total += float(value.detach()) * len(idx)
            seen += len(idx)
        history.append(total / seen)
    work.eval()
    return theta_c.detach(), history
