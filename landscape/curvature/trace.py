"""tr(H) of the probe-set Hessian from Hessian-vector products: Hutchinson and Hutch++, with standard errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscape.curvature.hvp import HessianOperator


@dataclass(frozen=True)
class TraceResult:
    """Estimate of tr(H) with its standard error (std of the random samples / √(their count))."""

    trace: float
    stderr: float
    samples: int
    num_products: int
    method: str = "hutchinson"


def hutchinson_trace(op: HessianOperator, samples: int, seed: int = 0) -> TraceResult:
    """tr(H) ≈ (1/m) Σ_j z_jᵀ H z_j with z_j i.i.d. Rademacher (±1 entries), unbiased."""
    if samples < 1:
        raise ValueError("samples must be >= 1")
    g = torch.Generator().manual_seed(seed)
    vals = []
    start = op.num_products
    for _ in range(samples):
        z = (torch.randint(0, 2, (op.n,), generator=g, dtype=op.dtype) * 2 - 1).to(op.device)  # exact ±1
        vals.append(float(z.double() @ op.matvec(z).double()))
    t = torch.tensor(vals, dtype=torch.float64)
    stderr = float(t.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else math.nan
    return TraceResult(float(t.mean()), stderr, samples, op.num_products - start)


def hutchpp_trace(op: HessianOperator, samples: int, seed: int = 0) -> TraceResult:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with m = ``samples`` = 3k products, k ≥ 1.

    S, G: n×k Rademacher. Q = orth(HS) (k products); tr(H) = tr(QᵀHQ) + tr((I−QQᵀ)H(I−QQᵀ))
    ≈ tr(QᵀHQ) (k products, exact given Q) + (1/k) Σ_j g̃_jᵀHg̃_j with g̃_j = (I−QQᵀ)g_j (k products).
    Unbiased; the variance is that of Hutchinson on the deflated H, so a few large outlier eigenvalues — the
    typical Hessian of a classifier — stop dominating it. ``stderr`` is the standard error of the deflated
    part (given Q). If k ≥ n, Q spans everything and the estimate is exact.
    """
    k = samples // 3
    if k < 1:
        raise ValueError(f"samples = {samples}; Hutch++ needs at least 3 (a multiple of 3 uses all of them)")
    g = torch.Generator().manual_seed(seed)
    start = op.num_products

    def rademacher() -> torch.Tensor:
        return (torch.randint(0, 2, (op.n, k), generator=g, dtype=torch.float64) * 2 - 1).to(op.device)

    S, G = rademacher(), rademacher()
    HS = torch.stack([op.matvec(S[:, j]).double() for j in range(k)], 1)
    Q, _ = torch.linalg.qr(HS)
    top = sum(float(Q[:, j] @ op.matvec(Q[:, j]).double()) for j in range(k))
    Gd = G - Q @ (Q.T @ G)
    vals = torch.tensor([float(Gd[:, j] @ op.matvec(Gd[:, j]).double()) for j in range(k)], dtype=torch.float64)
    stderr = float(vals.std(unbiased=True) / math.sqrt(k)) if k > 1 else math.nan
    return TraceResult(top + float(vals.mean()), stderr, 3 * k, op.num_products - start, "hutch++")
