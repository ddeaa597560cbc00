"""Exact references shared by the tests: a quadratic with a known Hessian and a tiny network's dense one."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, hessian

from landscape.models import MLP
from landscape.parameters import flatten, unflatten


class Quadratic(nn.Module):
    """Per-example loss ℓ_i(θ) = ½ s_i (θ − c_i)ᵀ A (θ − c_i) with inputs c_i and targets s_i.

    Over a set S: H = mean_S(s)·A exactly, ∇L_S = A·mean_S(s_i (θ − c_i)). The Hessian depends on *which*
    samples are used (through mean(s)), so a wrong sample set or a wrong normalization changes it.
    """

    def __init__(self, A: torch.Tensor, theta0: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())
        self.register_buffer("A", A)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.theta - c




def make_quadratic(eigenvalues: list[float], n_samples: int = 50, seed: int = 0):
    """(model, c, s, loss_fn, H_exact) for a quadratic with A = Q diag(eigenvalues) Qᵀ."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T
    A = (A + A.T) / 2
    c = torch.randn(n_samples, n, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(n_samples, generator=g, dtype=torch.float64)
    model = Quadratic(A, torch.randn(n, generator=g, dtype=torch.float64))

    def loss_fn(out: torch.Tensor, s_: torch.Tensor) -> torch.Tensor:
        return 0.5 * (s_ * ((out @ A) * out).sum(1)).sum()

    return model, c, s, loss_fn, s.mean() * A


def quad_loss_value(model: Quadratic, c: torch.Tensor, s: torch.Tensor, theta: torch.Tensor) -> float:
    r = theta - c
    return float((0.5 * s * ((r @ model.A) * r).sum(1)).mean())


def tiny_network(activation: str = "tanh", n_samples: int = 40, seed: int = 0):
    """(model, x, y) — a float64 MLP 6-12-12-3 (279 parameters) on random data."""
    torch.manual_seed(seed)
    model = MLP(6, [12, 12], activation, 3).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_samples, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n_samples,), generator=g)
    return model, x, y


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """∇²L(θ) of the mean loss (model in eval mode: batch norm uses its running statistics), dense, by
    torch.func.hessian."""
    from landscape.evaluation import per_example_loss

    model.eval()
    theta = flatten(model)

    def mean_loss(t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, unflatten(t, model), (x,))
        return per_example_loss(out, y, loss).mean()

    return hessian(mean_loss)(theta)
