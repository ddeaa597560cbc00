"""Eigenvalues of the probe-set Hessian H (see :mod:`landscape.curvature.hvp`) from Hessian-vector products.

* :func:`lanczos` — largest (and optionally smallest) *algebraic* eigenvalues by Lanczos with full
  reorthogonalization; every returned pair carries its measured residual ‖Hv − λv‖/|λ|.
* :func:`power_iteration` — the reference method; converges to the largest-*magnitude* eigenvalue.
* :func:`lanczos_tridiagonal` — the Lanczos process itself (also used by :mod:`landscape.curvature.density`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscape.curvature.hvp import HessianOperator


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalue estimates, largest algebraic first, each with ‖Hv−λv‖/|λ| and a converged flag."""

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    converged: tuple[bool, ...]
    num_products: int
    iterations: int
    method: str
    smallest: float | None = None
    smallest_residual: float | None = None
    smallest_converged: bool | None = None
    smallest_iterations: int | None = None
    vectors: tuple[torch.Tensor, ...] | None = None  # unit Ritz vectors of ``eigenvalues`` (``return_vectors``)

    @property
    def lambda_max(self) -> float:
        return self.eigenvalues[0]


def _rel_residual(hv: torch.Tensor, v: torch.Tensor, lam: float) -> float:
    return float(torch.linalg.vector_norm(hv - lam * v) / max(abs(lam), 1e-30))


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


def lanczos_tridiagonal(
    op: HessianOperator,
    start: torch.Tensor,
    max_steps: int,
    converged=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Lanczos with full reorthogonalization from ``start``, basis in the operator's dtype.

    Runs until ``max_steps`` (or an invariant subspace, or ``converged(evals, evecs, beta)`` is true) and
    returns ``(ritz_values ascending, eigvecs of T, basis Q (m, n), beta_m)``; H Q_mᵀ = Q_mᵀ T_m + β_m q_{m+1} e_mᵀ.
    The basis is kept in the dtype the products are computed in (a float64 basis adds nothing to float32
    products and doubles the memory traffic of reorthogonalization); T and its eigenpairs are float64.
    Reorthogonalization is classical Gram–Schmidt against all of Q, repeated once when the first pass
    removed more than 1 − 1/√2 of ‖w‖ (the DGKS test; "twice is enough").
    """
    n = op.n
    dt = op.dtype
    m_max = min(max_steps, n)
    q = (start.double() / torch.linalg.vector_norm(start.double())).to(dt)
    Q = torch.empty((m_max, n), dtype=dt, device=op.device)  # rows are written before use; no zero-fill of m×n
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    evals = evecs = torch.zeros(0)
    for j in range(m_max):
        Q[j] = q
        w = op.matvec(q)
        alpha = float(w.double() @ q.double())
        w -= alpha * q
        if j > 0:
            w -= betas[-1] * Q[j - 1]
        norm = torch.linalg.vector_norm(w)
        for _ in range(2):
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
            new_norm = torch.linalg.vector_norm(w)
            if new_norm > norm / math.sqrt(2):
                break
            norm = new_norm
        beta = float(torch.linalg.vector_norm(w.double()))
        alphas.append(alpha)
        evals, evecs = torch.linalg.eigh(_tridiagonal(alphas, betas))
        scale = max(float(evals.abs().max()), 1e-30)
        if beta <= 1e-10 * scale or (converged is not None and converged(evals, evecs, beta)):
            break
        betas.append(beta)
        q = w / beta
    return evals, evecs, Q[: len(alphas)], beta


def lanczos(
    op: HessianOperator,
    k: int = 1,
    max_iters: int = 40,
    tol: float = 1e-4,
    seed: int = 0,
    smallest: bool = False,
    verify: bool = True,
    start: str = "random+gradient",
    return_vectors: bool = False,
) -> EigenResult:
    """Top-``k`` largest algebraic eigenvalues of H by Lanczos with full reorthogonalization.

    Iteration m costs one product; the Ritz pair (θ_i, Q s_i) has residual ‖H Q s_i − θ_i Q s_i‖ = β_m |s_{m,i}|
    (exact arithmetic), which is the stopping test: the top ``k`` are read off at the first step where
    β_m|s_{m,i}|/|θ_i| ≤ ``tol`` for all of them (``iterations``). With ``smallest`` the same Krylov process
    continues until the smallest Ritz value passes its own test (``smallest_iterations``), so asking for
    λ_min never changes the top values or their cost. With ``verify`` each returned pair's residual is then
    *measured* with one more product, and ``converged`` / ``smallest_converged`` are judged on the measured
    values.

    Single-vector Lanczos cannot see multiplicity: an eigenvalue of multiplicity 2 appears once among the
    Ritz values (the Krylov space holds one vector of its eigenspace), so for k > 1 ``eigenvalues`` are the
    top k *distinct* eigenvalues, each verified, not the top k with repeats.

    ``start``: ``"random"`` — q₁ ∝ z, z ~ N(0, I) drawn in the operator's dtype, seeded by ``seed``;
    ``"random+gradient"`` — q₁ ∝ z/‖z‖ + ∇L/‖∇L‖. The gradient of a trained network lies mostly in the top
    eigenspace of H (Gur-Ari et al. 2018), so the top Ritz values converge in fewer products; the random half
    keeps every eigenvector in the Krylov space, so the result, its residual and the stopping test are those
    of any Lanczos run (``benchmarks/curvature.py`` measures the saving). With ``return_vectors`` the unit Ritz
    vectors of the top values come back too (float64, in ``vectors``).
    """
    if start not in ("random", "random+gradient"):
        raise ValueError(f"start = {start!r}; allowed: 'random', 'random+gradient'")
    g = torch.Generator().manual_seed(seed)
    start_vec = torch.randn(op.n, generator=g, dtype=op.dtype).double().to(op.device)  # the basis's dtype, on CPU
    start_vec /= torch.linalg.vector_norm(start_vec)
    gnorm = float(torch.linalg.vector_norm(op.grad.double()))
    if start == "random+gradient" and math.isfinite(gnorm) and gnorm > 0:
        start_vec += op.grad.double() / gnorm
    start_products = op.num_products

    def passes(evals: torch.Tensor, evecs: torch.Tensor, beta: float, idx: list[int]) -> bool:
        return all(beta * abs(float(evecs[-1, i])) <= tol * max(abs(float(evals[i])), 1e-30) for i in idx)

    top_state: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (evals, evecs, beta) when the top passed

    def done(evals: torch.Tensor, evecs: torch.Tensor, beta: float) -> bool:
        m = len(evals)
        if m < min(k + 1, op.n):
            return False
        if not top_state and passes(evals, evecs, beta, list(range(m - 1, max(m - 1 - k, -1), -1))):
            top_state.append((evals, evecs, beta))
        return bool(top_state) and (not smallest or passes(evals, evecs, beta, [0]))

    evals, evecs, basis, beta = lanczos_tridiagonal(op, start_vec, max_iters, done)
    m_all = len(evals)
    top_evals, top_evecs, top_beta = top_state[0] if top_state else (evals, evecs, beta)
    m_top = len(top_evals)

    vectors: list[torch.Tensor] = []

    def ritz(vecs: torch.Tensor, m: int, i: int) -> torch.Tensor:
        v = (vecs[:, i].to(dtype=basis.dtype, device=basis.device) @ basis[:m]).double()
        return v / torch.linalg.vector_norm(v)

    def pair(vals: torch.Tensor, vecs: torch.Tensor, b: float, m: int, i: int, keep: bool = False
             ) -> tuple[float, float]:
        lam = float(vals[i])
        if keep:
            vectors.append(ritz(vecs, m, i))
        if not verify:
            return lam, b * abs(float(vecs[-1, i])) / max(abs(lam), 1e-30)
        v = vectors[-1] if keep else ritz(vecs, m, i)
        return lam, _rel_residual(op.matvec(v).double(), v, lam)

    top = [pair(top_evals, top_evecs, top_beta, m_top, i, return_vectors)
           for i in range(m_top - 1, max(m_top - 1 - k, -1), -1)]
    low = pair(evals, evecs, beta, m_all, 0) if smallest else None
    return EigenResult(
        eigenvalues=tuple(lam for lam, _ in top),
        residuals=tuple(r for _, r in top),
        converged=tuple(r <= tol for _, r in top),
        num_products=op.num_products - start_products,
        iterations=m_top,
        method="lanczos (full reorthogonalization)",
        smallest=low[0] if low else None,
        smallest_residual=low[1] if low else None,
        smallest_converged=(low[1] <= tol) if low else None,
        smallest_iterations=m_all if smallest else None,
        vectors=tuple(vectors) if return_vectors else None,
    )


def power_iteration(op: HessianOperator, max_iters: int = 100, tol: float = 1e-4, seed: int = 0) -> EigenResult:
    """Reference method: v ← Hv/‖Hv‖. Converges to the largest-*magnitude* eigenvalue (which may be
    negative). Stops when the measured residual ‖Hv − λv‖/|λ| (λ = vᵀHv) is ≤ ``tol``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.n, generator=g, dtype=torch.float64).to(op.device)
    v /= torch.linalg.vector_norm(v)
    start = op.num_products
    lam, r, it = math.nan, math.inf, 0
    for it in range(1, max_iters + 1):  # noqa: B007 - `it` is reported
        hv = op.matvec(v).double()
        lam = float(v @ hv)
        r = _rel_residual(hv, v, lam)
        if r <= tol:
            break
        v = hv / torch.linalg.vector_norm(hv)
    return EigenResult((lam,), (r,), (r <= tol,), op.num_products - start, it, "power iteration")
