"""Eigenvalues of the Hessian separated from its bulk (Papyan 2019, 2020: about C outliers for C classes;
Ghorbani et al. 2019: batch norm removes them), from the top-k Lanczos eigenvalues and the SLQ density.

The rule. SLQ smooths each Ritz value with a Gaussian of width σ, so one isolated eigenvalue of an n × n Hessian
contributes a peak of height ρ₁ = 1/(n σ √(2π)) to the (unit-mass) density, and a region holding m eigenvalues
per width σ has density about m ρ₁. The bulk is where eigenvalues are dense: scanning up from the density's
maximum, its upper edge λ₊ is the first point where the density drops below 2ρ₁ (fewer than about two eigenvalues
per kernel width). An eigenvalue is an outlier when it lies above the edge by more than max(3σ, λ₊/4): a gap the
smoothing cannot bridge, and one that is large on the bulk's own scale (the largest eigenvalues of a finite bulk
straggle a few kernel widths past λ₊ when σ is small; measured on a Marchenko–Pastur bulk of 600: up to 0.14
past an edge of 2.2). count = #{i ≤ k : λ_i > λ₊ + max(3σ, λ₊/4)} over the top-k Lanczos eigenvalues. With
k ≥ 2C the top-k list reaches into the bulk, so a count of k ("saturated") says the rule found no edge below the
k-th eigenvalue.
Tested on planted spectra (test_curvature.py): C spikes above a Marchenko–Pastur bulk give C, the bulk alone 0.
"""

from __future__ import annotations

import math
from typing import Any

PER_WIDTH = 2.0  # the bulk ends where fewer than this many eigenvalues share a kernel width
GAP_WIDTHS = 3.0  # an outlier lies this many kernel widths above the bulk's edge…
GAP_FRACTION = 0.25  # …and this fraction of the edge's value


def count_outliers(top: list[float], grid: list[float], density: list[float], sigma: float, n: int) -> dict[str, Any]:
    """The rule of the module docstring: ``top`` the top-k eigenvalues (any order), ``grid`` / ``density`` /
    ``sigma`` the SLQ density (:class:`landscape.curvature.density.SpectralDensity`), ``n`` the dimension."""
    rho1 = 1.0 / (n * sigma * math.sqrt(2 * math.pi))
    start = max(range(len(density)), key=density.__getitem__)
    edge = grid[-1]
    for j in range(start, len(density)):
        if density[j] < PER_WIDTH * rho1:
            edge = grid[j]
            break
    cut = edge + max(GAP_WIDTHS * sigma, GAP_FRACTION * abs(edge))
    outliers = sorted((lam for lam in top if lam > cut), reverse=True)
    return {"count": len(outliers), "bulk_edge": edge, "cutoff": cut, "outliers": outliers, "k": len(top),
            "saturated": len(outliers) == len(top), "sigma": sigma}
