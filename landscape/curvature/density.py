"""Eigenvalue density of the probe-set Hessian by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscape.curvature.eigenvalues import lanczos_tridiagonal
from landscape.curvature.hvp import HessianOperator


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the eigenvalue density of H.

    Per run r: Ritz values θ_i^{(r)} (nodes) and weights τ_i^{(r)} = (first component of the i-th eigenvector
    of T)², which sum to 1. The density on ``grid`` is φ(t) = (1/R) Σ_r Σ_i τ_i^{(r)} N(t; θ_i^{(r)}, σ²);
    it integrates to 1 and its mean Σ τθ averages vᵀHv over unit v, i.e. estimates tr(H)/n.
    """

    nodes: tuple[tuple[float, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    grid: tuple[float, ...]
    density: tuple[float, ...]
    sigma: float
    mean: float
    mean_stderr: float
    num_products: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def spectral_density(
    op: HessianOperator,
    runs: int = 4,
    steps: int = 40,
    seed: int = 0,
    grid_points: int = 400,
    sigma_fraction: float = 0.01,
) -> SpectralDensity:
    """Eigenvalue density of H by stochastic Lanczos quadrature (Gaussian start vectors, Gaussian kernel
    of width σ = ``sigma_fraction`` × the spread of the Ritz values)."""
    g = torch.Generator().manual_seed(seed)
    start = op.num_products
    nodes, weights = [], []
    for _ in range(runs):
        v = torch.randn(op.n, generator=g, dtype=torch.float64).to(op.device)
        evals, evecs, _, _ = lanczos_tridiagonal(op, v, steps)
        nodes.append(evals)
        weights.append(evecs[0, :] ** 2)
    all_nodes = torch.cat(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    sigma = sigma_fraction * max(hi - lo, 1e-12)
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points, dtype=torch.float64)
    dens = torch.zeros_like(grid)
    for th, w in zip(nodes, weights, strict=True):
        dens += (w[None, :] * torch.exp(-0.5 * ((grid[:, None] - th[None, :]) / sigma) ** 2)).sum(1)
    dens /= runs * sigma * math.sqrt(2 * math.pi)
    means = torch.tensor([float((w * th).sum()) for th, w in zip(nodes, weights, strict=True)])
    stderr = float(means.std(unbiased=True) / math.sqrt(runs)) if runs > 1 else math.nan
    return SpectralDensity(
        nodes=tuple(tuple(t.tolist()) for t in nodes),
        weights=tuple(tuple(w.tolist()) for w in weights),
        grid=tuple(grid.tolist()),
        density=tuple(dens.tolist()),
        sigma=sigma,
        mean=float(means.mean()),
        mean_stderr=stderr,
        num_products=op.num_products - start,
    )
