"""Sharpness: average (random-direction), worst-case, and adaptive (ASAM), all on the probe-set loss L = L_P.

* directional_sharpness = (1/2K) Σ_k [L(θ + d_k) + L(θ − d_k) − 2L(θ)],  d_k = ρ u_k/‖u_k‖,  u_k ~ N(0, I_n).
  Taking each direction in a ± pair cancels the first-order term ⟨∇L, d_k⟩ exactly, so only curvature is
  left: for a smooth loss each pair's term ½[L(θ+d) + L(θ−d) − 2L(θ)] equals ½ d_kᵀHd_k + O(ρ⁴), and since
  E[uuᵀ/‖u‖²] = I/n, E[directional_sharpness] = ρ² tr(H) / (2n) + O(ρ⁴) (docs/theory.md). For ReLU networks
  that relation does not hold (units switch on/off inside the ball), which is why the probe reports both.
* worst_case_sharpness = max_{‖d‖₂ ≤ ρ} L(θ + d) − L(θ), estimated from below by projected gradient ascent:
  d₁ = ρ ∇L(θ)/‖∇L(θ)‖ (SAM's first step), then d ← Π_ρ(d + ρ ∇L(θ+d)/‖∇L(θ+d)‖), keeping the best iterate;
  the ±d_k of the average are candidates too, so worst ≥ every sampled rise ≥ the average, by construction.
  On a quadratic at its minimum it converges to ρ² λ_max / 2.
* adaptive (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023): the same two with perturbations scaled
  elementwise by |θ|, d = |θ| ⊙ u: the average with ‖u‖₂ = ρ_a (``probe.adaptive_radius``), the worst case over
  the ellipsoid ‖d/|θ|‖₂ ≤ ρ_w (``probe.adaptive_worst_case_radius``), a radius of its own because ascent
  concentrates u on the largest |θ_i|, so the worst case's ‖d‖₂ approaches max|θ|·ρ_w while a random u gives
  ‖d‖₂ ≈ ρ_a‖θ‖₂/√n. Rescaling a ReLU layer's weights by c and the next layer's by 1/c leaves the function —
  and, because |θ| scales alike, every adaptive perturbation — unchanged, so the adaptive values are invariant to
  it while the plain ones are not. Departures from Andriushchenko et al.'s code: u on a sphere rather than a
  Gaussian with per-entry std ρ|θ_i| (their ρ ≈ our ρ_a/√n), the whole probe set rather than the mean over
  batches of 128 (m-sharpness), and a few normalized ascent steps rather than 20 of APGD with momentum.
* Every worst case records ``distance``, the realized ‖d‖₂ of the perturbation it reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape.stacked import AffinePoints


@dataclass(frozen=True)
class SharpnessResult:
    """Mean paired loss increase, its standard error over directions, and the settings that made it."""

    value: float
    stderr: float
    radius: float
    directions: int
    seed: int
    per_direction: tuple[float, ...]
    max_rise: float = math.nan  # max over the 2K sampled points of L(θ ± d_k) − L(θ)


@dataclass(frozen=True)
class WorstCaseResult:
    """Best loss increase found inside the ball, the ascent step that found it (0 = a random candidate)."""

    value: float
    radius: float
    steps: int
    best_step: int
    gradient_evaluations: int
    distance: float = math.nan  # ‖d‖₂ of the reported perturbation (d = s ⊙ u)


def random_directions(n: int, k: int, radius: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """K directions of norm ρ, uniform on the sphere (Gaussian draws normalized), rows of a (K, n) tensor.

    The draws are made in ``dtype`` (the parameters' dtype: a float64 draw would be rounded away, and costs
    5× as much), the normalization in float64."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn((k, n), generator=g, dtype=dtype).double()
    d = radius * u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    return d.to(dtype)


def directional_sharpness(
    loss: Callable[[torch.Tensor], float] | None,
    theta: torch.Tensor,
    radius: float,
    directions: int,
    seed: int = 0,
    losses: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scale: torch.Tensor | None = None,
) -> SharpnessResult:
    """Paired random-direction sharpness of ``loss`` (θ ↦ float64 loss) at ``theta``. With ``losses``
    (Θ (m, n) ↦ m float64 losses) the 2K + 1 losses are evaluated in one pass over the data. With ``scale``
    (adaptive sharpness: |θ|) each direction is d_k = scale ⊙ ρ u_k/‖u_k‖."""
    if directions < 1 or radius <= 0:
        raise ValueError("need directions >= 1 and radius > 0")
    d = random_directions(theta.numel(), directions, radius, seed, theta.dtype).to(theta.device)
    if scale is not None:
        d = d * scale
    if losses is not None:  # θ, θ + d_k, θ − d_k: K directions, 2K + 1 points sharing the first layer's products
        k = torch.eye(directions, dtype=theta.dtype, device=theta.device)
        coeffs = torch.cat([torch.zeros(1, directions, dtype=theta.dtype, device=theta.device), k, -k])
        values = losses(AffinePoints(theta, d, coeffs)).tolist()
        base, plus, minus = values[0], values[1 : directions + 1], values[directions + 1 :]
    else:
        base = loss(theta)
        plus = [loss(theta + d[k]) for k in range(directions)]
        minus = [loss(theta - d[k]) for k in range(directions)]
    per = tuple((plus[k] + minus[k] - 2.0 * base) / 2.0 for k in range(directions))
    t = torch.tensor(per, dtype=torch.float64)
    stderr = float(t.std(unbiased=True) / math.sqrt(directions)) if directions > 1 else math.nan
    return SharpnessResult(float(t.mean()), stderr, radius, directions, seed, per, max(plus + minus) - base)


def worst_case_sharpness(
    loss_and_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    theta: torch.Tensor,
    radius: float,
    steps: int,
    scale: torch.Tensor | None = None,
    floor: float = -math.inf,
    seed: int = 0,
    floor_distance: float = math.nan,
) -> WorstCaseResult:
    """max over ‖u‖ ≤ ρ of L(θ + s ⊙ u) − L(θ) (s = ``scale``, or 1) by ``steps`` steps of normalized projected
    gradient ascent on u from SAM's first step; ``floor`` (with ``floor_distance``, its ‖d‖₂) is the best rise
    already sampled inside the same ball (the random ± directions), so the result is never below it."""
    if steps < 1 or radius <= 0:
        raise ValueError("need steps >= 1 and radius > 0")
    s = torch.ones_like(theta) if scale is None else scale
    base, g = loss_and_grad(theta)
    evaluations = 1
    direction = s * g  # ∂/∂u L(θ + s ⊙ u) at u = 0
    norm = float(torch.linalg.vector_norm(direction.double()))
    if not math.isfinite(norm) or norm == 0.0:  # at a stationary point: a seeded random start
        direction = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed),
                                dtype=theta.dtype).to(theta.device)
        norm = float(torch.linalg.vector_norm(direction.double()))
    u = (radius / norm) * direction
    best, best_step, best_distance = floor, 0, floor_distance
    for step in range(1, steps + 1):
        d = s * u
        value, g = loss_and_grad(theta + d)
        evaluations += 1
        if value - base > best:
            best, best_step = value - base, step
            best_distance = float(torch.linalg.vector_norm(d.double()))
        if step == steps:
            break
        ascent = s * g
        a_norm = float(torch.linalg.vector_norm(ascent.double()))
        if not math.isfinite(a_norm) or a_norm == 0.0:
            break
        u = u + (radius / a_norm) * ascent
        u_norm = float(torch.linalg.vector_norm(u.double()))
        if u_norm > radius:
            u = u * (radius / u_norm)
    return WorstCaseResult(best, radius, steps, best_step, evaluations, best_distance)


def trace_prediction(trace: float, radius: float, n: int) -> float:
    """Second-order prediction of the paired sharpness: ρ² tr(H) / (2n)."""
    return radius * radius * trace / (2.0 * n)
