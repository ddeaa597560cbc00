"""Random-direction sharpness.

directional_sharpness = (1/2K) Σ_k [L(θ + d_k) + L(θ − d_k) − 2L(θ)],   d_k = ρ u_k/‖u_k‖,  u_k ~ N(0, I_n).

Taking each direction in a ± pair cancels the first-order term ⟨∇L, d_k⟩ exactly, so only curvature is
left: for a smooth loss each pair equals d_kᵀHd_k + O(ρ⁴), and since E[uuᵀ/‖u‖²] = I/n,

    E[directional_sharpness] = ρ² tr(H) / (2n) + O(ρ⁴)          (see docs/theory.md)

For ReLU networks that relation does not hold (units switch on/off inside the ball), which is why the
probe reports both the measured value and this second-order prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SharpnessResult:
    """Mean paired loss increase, its standard error over directions, and the settings that made it."""

    value: float
    stderr: float
    radius: float
    directions: int
    seed: int
    per_direction: tuple[float, ...]


def random_directions(n: int, k: int, radius: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """K directions of norm ρ, uniform on the sphere (Gaussian draws normalized), rows of a (K, n) tensor.

    The draws are made in ``dtype`` (the parameters' dtype: a float64 draw would be rounded away, and costs
    5× as much), the normalization in float64."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn((k, n), generator=g, dtype=dtype).double()
    d = radius * u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    return d.to(dtype)


def directional_sharpness(
    loss: Callable[[torch.Tensor], float],
    theta: torch.Tensor,
    radius: float,
    directions: int,
    seed: int = 0,
    losses: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SharpnessResult:
    """Paired random-direction sharpness of ``loss`` (θ ↦ float64 loss) at ``theta``. With ``losses``
    (Θ (m, n) ↦ m float64 losses) the 2K + 1 losses are evaluated in one pass over the data."""
    if directions < 1 or radius <= 0:
        raise ValueError("need directions >= 1 and radius > 0")
    d = random_directions(theta.numel(), directions, radius, seed, theta.dtype)
    if losses is not None:
        values = losses(torch.cat([theta[None], theta + d, theta - d])).tolist()
        base, plus, minus = values[0], values[1 : directions + 1], values[directions + 1 :]
    else:
        base = loss(theta)
        plus = [loss(theta + d[k]) for k in range(directions)]
        minus = [loss(theta - d[k]) for k in range(directions)]
    per = tuple((plus[k] + minus[k] - 2.0 * base) / 2.0 for k in range(directions))
    t = torch.tensor(per, dtype=torch.float64)
    stderr = float(t.std(unbiased=True) / math.sqrt(directions)) if directions > 1 else math.nan
    return SharpnessResult(float(t.mean()), stderr, radius, directions, seed, per)


def trace_prediction(trace: float, radius: float, n: int) -> float:
    """Second-order prediction of the paired sharpness: ρ² tr(H) / (2n)."""
    return radius * radius * trace / (2.0 * n)
