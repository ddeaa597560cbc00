"""Hessian-vector products of the probe-set loss and the estimates built on them.

H = ∇²L_P(θ) with L_P(θ) = (1/N) Σ_{i∈P} ℓ(f(x_i; θ), y_i): the Hessian of the *mean* loss over the whole
probe set P (N examples), with the model in eval mode. Units: nats per unit parameter².

* :class:`HessianOperator` — Hv = ∇_θ⟨∇_θ L_P(θ), v⟩ (Pearlmutter): by the MLP's analytic R-operator
  (:mod:`landscape.hvp`) where it applies, else by autograd double backward. P is processed in chunks;
  each chunk contributes ∇²(Σ_{i∈chunk} ℓ_i)·v and the sum is divided by N, so the product is exact for
  the whole set however it is chunked.
* :func:`lanczos` — largest (and optionally smallest) *algebraic* eigenvalues by Lanczos with full
  reorthogonalization; every returned pair carries its measured residual ‖Hv − λv‖/|λ|.
* :func:`power_iteration` — the reference method; converges to the largest-*magnitude* eigenvalue.
* :func:`hutchinson_trace` — tr(H) ≈ (1/m) Σ zᵀHz, z Rademacher, with its standard error.
* :func:`hutchpp_trace` — Hutch++: the top of the spectrum exactly on a sketched subspace, Hutchinson on the rest.
* :func:`spectral_density` — eigenvalue density by stochastic Lanczos quadrature.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from landscape import hvp as mlp_hvp
from landscape.evaluation import SumLoss, sum_cross_entropy

log = logging.getLogger(__name__)


class HessianOperator:
    """The linear map v ↦ Hv for H = ∇²L_P(θ) at the model's current parameters.

    Routes, fastest first (``benchmarks/curvature.py`` measures them side by side), all exact:
    ``analytic=True`` and ``keep_graph=True`` with the package's MLP and the cross-entropy use the
    layer-by-layer R-operator on cached activations and errors; otherwise ``keep_graph=True`` keeps the
    autograd first-order graph of every chunk and reuses it for all products (memory grows with N), and
    ``keep_graph=False`` rebuilds it per product (memory of one chunk). ``route`` says which one is in
    use. Also exposes ``loss`` = L_P(θ) (float64) and ``grad`` = ∇L_P(θ) (flat), computed on
    construction, and counts ``num_products``.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: SumLoss = sum_cross_entropy,
        chunk_size: int = 1024,
        keep_graph: bool = True,
        analytic: bool = True,
    ) -> None:
        if len(x) == 0:
            raise ValueError("the probe set is empty")
        self.model = model.eval()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.N = len(x)
        self.dtype = self.params[0].dtype
        self.chunks = [(x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(x), chunk_size)]
        self.loss_fn = loss_fn
        self.keep_graph = keep_graph
        self.analytic = (analytic and keep_graph and loss_fn is sum_cross_entropy and mlp_hvp.supports(model)
                         and len(self.params) == len(list(model.parameters())))
        self.route = ("analytic R-op (MLP, cached activations)" if self.analytic
                      else "cached-graph double backward" if keep_graph else "recomputed double backward")
        self.num_products = 0
        self._graphs: list[tuple[torch.Tensor, ...]] = []
        self._chunks_rop: list[mlp_hvp.MLPChunk] = []
        failure = None
        try:
            self._first_order()
        except (RuntimeError, MemoryError) as exc:  # the cache did not fit: fall back, and say so
            if not keep_graph or "memory" not in str(exc).lower():
                raise
            failure = str(exc).splitlines()[0]
        if failure is not None:  # outside the handler, so the traceback no longer pins the partial cache
            self._graphs, self._chunks_rop = [], []
            gc.collect()
            log.warning("the cached first-order quantities do not fit in memory (%s); recomputing them per product",
                        failure)
            self.keep_graph = self.analytic = False
            self.route = "recomputed double backward (the cache did not fit in memory)"
            self._first_order()

    def _first_order(self) -> None:
        """L_P and ∇L_P; with ``keep_graph`` also the per-chunk first-order graphs for later products."""
        loss = 0.0
        grad = torch.zeros(self.n, dtype=self.dtype)
        if self.analytic:
            for xc, yc in self.chunks:
                c = mlp_hvp.MLPChunk(self.model, xc, yc)
                loss += c.loss_sum
                grad += torch.cat([gi.reshape(-1) for gi in c.gradient()])
                self._chunks_rop.append(c)
            self.loss, self.grad = loss / self.N, grad / self.N
            return
        for xc, yc in self.chunks:
            lsum = self.loss_fn(self.model(xc), yc)
            g = torch.autograd.grad(lsum, self.params, create_graph=self.keep_graph)
            loss += float(lsum.detach().double())
            grad += torch.cat([gi.detach().reshape(-1) for gi in g])
            if self.keep_graph:
                self._graphs.append(g)
        self.loss = loss / self.N
        self.grad = grad / self.N

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self.params:
            out.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Hv (flat, in the model's dtype). ``v`` may be of any floating dtype."""
        vs = self._split(v.to(self.dtype))
        if self.analytic:
            out = torch.empty(self.n, dtype=self.dtype)
            views = self._split(out)
            for k, c in enumerate(self._chunks_rop):
                c.hvp(vs, views, accumulate=k > 0)
            self.num_products += 1
            return out.div_(self.N)
        out = torch.zeros(self.n, dtype=self.dtype)
        for k, (xc, yc) in enumerate(self.chunks):
            if self.keep_graph:
                g = self._graphs[k]
            else:
                g = torch.autograd.grad(self.loss_fn(self.model(xc), yc), self.params, create_graph=True)
            # vector-Jacobian product of the gradient with v: ∇_θ⟨g(θ), v⟩ without building the dot's graph
            hv = torch.autograd.grad(g, self.params, grad_outputs=vs, retain_graph=self.keep_graph)
            out += torch.cat([h.reshape(-1) for h in hv])
        self.num_products += 1
        return out / self.N

    __matmul__ = matvec

    def release(self) -> None:
        """Free the cached first-order graphs."""
        self._graphs, self._chunks_rop = [], []


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
    Q = torch.empty((m_max, n), dtype=dt)  # rows are written before use; no zero-fill of m×n
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
) -> EigenResult:
    """Top-``k`` largest algebraic eigenvalues of H by Lanczos with full reorthogonalization.

    Iteration m costs one product; the Ritz pair (θ_i, Q s_i) has residual ‖H Q s_i − θ_i Q s_i‖ = β_m |s_{m,i}|
    (exact arithmetic), which is the stopping test: stop once β_m|s_{m,i}|/|θ_i| ≤ ``tol`` for the top ``k``
    (and the smallest, if asked). With ``verify`` each returned pair's residual is then *measured* with one
    more product, and ``converged`` is judged on the measured value.

    ``start``: ``"random"`` — q₁ ∝ z, z ~ N(0, I) seeded by ``seed``; ``"random+gradient"`` — q₁ ∝ z/‖z‖ +
    ∇L/‖∇L‖. The gradient of a trained network lies mostly in the top eigenspace of H (Gur-Ari et al. 2018),
    so the top Ritz values converge in fewer products; the random half keeps every eigenvector in the
    Krylov space, so the result, its residual and the stopping test are those of any Lanczos run
    (``benchmarks/curvature.py`` measures the saving).
    """
    if start not in ("random", "random+gradient"):
        raise ValueError(f"start = {start!r}; allowed: 'random', 'random+gradient'")
    g = torch.Generator().manual_seed(seed)
    start_vec = torch.randn(op.n, generator=g, dtype=torch.float64)
    start_vec /= torch.linalg.vector_norm(start_vec)
    gnorm = float(torch.linalg.vector_norm(op.grad.double()))
    if start == "random+gradient" and math.isfinite(gnorm) and gnorm > 0:
        start_vec += op.grad.double() / gnorm
    start_products = op.num_products

    def done(evals: torch.Tensor, evecs: torch.Tensor, beta: float) -> bool:
        m = len(evals)
        if m < min(k + 1, op.n):
            return False
        idx = list(range(m - 1, max(m - 1 - k, -1), -1)) + ([0] if smallest else [])
        return all(beta * abs(float(evecs[-1, i])) <= tol * max(abs(float(evals[i])), 1e-30) for i in idx)

    evals, evecs, basis, beta = lanczos_tridiagonal(op, start_vec, max_iters, done)
    m = len(evals)
    top = list(range(m - 1, max(m - 1 - k, -1), -1))
    values, residuals = [], []
    for i in top + ([0] if smallest else []):
        lam = float(evals[i])
        if verify:
            v = (evecs[:, i].to(basis.dtype) @ basis).double()
            v /= torch.linalg.vector_norm(v)
            r = _rel_residual(op.matvec(v).double(), v, lam)
        else:
            r = beta * abs(float(evecs[-1, i])) / max(abs(lam), 1e-30)
        values.append(lam)
        residuals.append(r)
    n_top = len(top)
    return EigenResult(
        eigenvalues=tuple(values[:n_top]),
        residuals=tuple(residuals[:n_top]),
        converged=tuple(r <= tol for r in residuals[:n_top]),
        num_products=op.num_products - start_products,
        iterations=m,
        method="lanczos (full reorthogonalization)",
        smallest=values[n_top] if smallest else None,
        smallest_residual=residuals[n_top] if smallest else None,
    )


def power_iteration(op: HessianOperator, max_iters: int = 100, tol: float = 1e-4, seed: int = 0) -> EigenResult:
    """Reference method: v ← Hv/‖Hv‖. Converges to the largest-*magnitude* eigenvalue (which may be
    negative). Stops when the measured residual ‖Hv − λv‖/|λ| (λ = vᵀHv) is ≤ ``tol``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.n, generator=g, dtype=torch.float64)
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
        z = torch.randint(0, 2, (op.n,), generator=g, dtype=torch.float64) * 2 - 1
        vals.append(float(z @ op.matvec(z).double()))
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
        return torch.randint(0, 2, (op.n, k), generator=g, dtype=torch.float64) * 2 - 1

    S, G = rademacher(), rademacher()
    HS = torch.stack([op.matvec(S[:, j]).double() for j in range(k)], 1)
    Q, _ = torch.linalg.qr(HS)
    top = sum(float(Q[:, j] @ op.matvec(Q[:, j]).double()) for j in range(k))
    Gd = G - Q @ (Q.T @ G)
    vals = torch.tensor([float(Gd[:, j] @ op.matvec(Gd[:, j]).double()) for j in range(k)], dtype=torch.float64)
    stderr = float(vals.std(unbiased=True) / math.sqrt(k)) if k > 1 else math.nan
    return TraceResult(top + float(vals.mean()), stderr, 3 * k, op.num_products - start, "hutch++")


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
        v = torch.randn(op.n, generator=g, dtype=torch.float64)
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
