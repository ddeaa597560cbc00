"""Hessian-vector products of the probe-set loss: the operator every curvature estimate is built on.

H = ∇²L_P(θ) with L_P(θ) = (1/N) Σ_{i∈P} ℓ(f(x_i; θ), y_i): the Hessian of the *mean* loss over the whole
probe set P (N examples), with the model in eval mode. Units: nats per unit parameter².
:class:`HessianOperator` computes Hv = ∇_θ⟨∇_θ L_P(θ), v⟩ (Pearlmutter). P is processed in chunks; each
chunk contributes ∇²(Σ_{i∈chunk} ℓ_i)·v and the sum is divided by N, so the product is exact for the whole
set however it is chunked.

For the package's plain MLP (no batch norm) the product is the R-operator written out layer by layer
(:class:`MLPChunk`). For layers z_l = a_{l-1} W_lᵀ + b_l, a_l = σ(z_l) (l < L), logits z_L and the summed
cross-entropy ℓ = Σ_i −log softmax(z_L)_{i,y_i} (or the squared error ℓ = ½ Σ_i ‖z_{L,i} − onehot(y_i)‖²),
the first-order pass caches a_l, σ'(z_l), σ''(z_l)·e_l and the back-propagated errors δ_l = ∂ℓ/∂z_l
(δ_L = p − onehot(y), or z_L − onehot(y) for the squared error; e_{l−1} = δ_l W_l, δ_{l−1} = e_{l−1} ⊙ σ'(z_{l−1})).
A product with V = (V_l, c_l) is then the directional derivative R{·} = d/dt|₀ (·)(θ + tV) of the gradient:

    forward   R z_l = R a_{l−1} W_lᵀ + a_{l−1} V_lᵀ + c_l,      R a_l = σ'(z_l) ⊙ R z_l        (R a_0 = 0)
    output    R δ_L = p ⊙ R z_L − p (pᵀ R z_L)                   (softmax Jacobian, row-wise; = R z_L for MSE)
    backward  R δ_{l−1} = (R δ_l W_l + δ_l V_l) ⊙ σ'(z_{l−1}) + σ''(z_{l−1}) ⊙ e_{l−1} ⊙ R z_{l−1}
    result    (H V)_{W_l} = R δ_lᵀ a_{l−1} + δ_lᵀ R a_{l−1},      (H V)_{b_l} = Σ_i R δ_{l,i}

This is the same product the autograd double backward computes (``tests/test_curvature.py`` checks both
against the dense Hessian for every activation), with the same matrix products, but with no autograd
graph: no zero-filled gradient buffers, no accumulation nodes, and ReLU's σ'' = 0 term skipped entirely.
Every other model (the CNN, batch norm in eval mode, other losses) uses the exact autograd route; ``route``
names the one in use.
"""

from __future__ import annotations

import gc
import logging
import math

import torch
from torch import nn

from landscape.evaluation import SumLoss, sum_cross_entropy, sum_mse
from landscape.models import MLP

log = logging.getLogger(__name__)


def _derivatives(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(σ(z), σ'(z), σ''(z) or None where it is 0 almost everywhere), matching torch's definitions."""
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype), None
    if name == "tanh":
        a = torch.tanh(z)
        d1 = 1 - a * a
        return a, d1, -2 * a * d1
    if name == "sigmoid":
        a = torch.sigmoid(z)
        d1 = a * (1 - a)
        return a, d1, d1 * (1 - 2 * a)
    if name == "softplus":  # nn.Softplus(beta=1, threshold=20): linear above the threshold
        s = torch.sigmoid(z)
        lin = z > 20
        return (torch.where(lin, z, torch.nn.functional.softplus(z)), torch.where(lin, 1.0, s).to(z.dtype),
                torch.where(lin, 0.0, s * (1 - s)).to(z.dtype))
    if name == "gelu":  # exact (erf) GELU: σ = zΦ(z), σ' = Φ + zφ, σ'' = φ(2 − z²)
        phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        return z * cdf, cdf + z * phi, phi * (2 - z * z)
    if name == "elu":  # alpha = 1
        e = torch.exp(torch.clamp(z, max=0))
        pos = z > 0
        return torch.where(pos, z, e - 1), torch.where(pos, 1.0, e).to(z.dtype), torch.where(pos, 0.0, e).to(z.dtype)
    raise ValueError(f"activation = {name!r} has no analytic R-operator")


def supports(model: nn.Module) -> bool:
    """True for the package's :class:`MLP` without batch norm and with default-configured activations (the
    analytic route applies)."""
    if not isinstance(model, MLP) or model.spec.get("batch_norm") or model.spec.get("skip_blocks"):
        return False  # batch norm and residual blocks: the exact autograd route
    acts = [m for m in model.net if not isinstance(m, nn.Linear)]
    ok = {nn.ReLU: None, nn.Tanh: None, nn.Sigmoid: None}
    for m in acts:
        if type(m) in ok:
            continue
        if isinstance(m, nn.GELU) and m.approximate == "none":
            continue
        if isinstance(m, nn.Softplus) and m.beta == 1 and m.threshold == 20:
            continue
        if isinstance(m, nn.ELU) and m.alpha == 1.0:
            continue
        return False
    return True


class MLPChunk:
    """The cached first-order quantities of one chunk (x, y); :meth:`hvp` returns ∇²ℓ_chunk · V (summed loss)."""

    @torch.no_grad()
    def __init__(self, model: MLP, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> None:
        self.lins = [m for m in model.net if isinstance(m, nn.Linear)]
        act = model.spec["activation"]
        L = len(self.lins)
        a = x.flatten(1).to(self.lins[0].weight.dtype)
        self.a, self.d1, self.d2e = [a], [], []
        for lin in self.lins[:-1]:
            z = torch.addmm(lin.bias, a, lin.weight.t())
            a, d1, d2 = _derivatives(act, z)
            self.a.append(a)
            self.d1.append(d1)
            self.d2e.append(d2)
        logits = torch.addmm(self.lins[-1].bias, a, self.lins[-1].weight.t())
        rows = torch.arange(len(y), device=logits.device)
        if loss == "mse":
            delta = logits.clone()
            delta[rows, y] -= 1
            self.loss_sum = float(0.5 * delta.double().pow(2).sum())
            self.p = None  # ∂²ℓ/∂z² = I: R δ_L = R z_L
        else:
            logp = torch.log_softmax(logits, 1)
            self.loss_sum = float(-logp[rows, y].double().sum())
            self.p = logp.exp()
            delta = self.p.clone()
            delta[rows, y] -= 1
        self.delta = [delta]
        for k in range(L - 1, 0, -1):
            e = delta @ self.lins[k].weight
            if self.d2e[k - 1] is not None:
                self.d2e[k - 1] = self.d2e[k - 1] * e
            delta = e * self.d1[k - 1]
            self.delta.insert(0, delta)
        # Input features constant over the chunk (MNIST's blank border: ~25% of pixels) contribute rank-one
        # terms: a_0 V_1ᵀ = a_0[:, var] V_1[:, var]ᵀ + 1 (V_1[:, const] c)ᵀ and (HV)_{W_1}[:, const] = (Σ_i Rδ_1,i) cᵀ,
        # so the two input-layer matrix products run on the varying columns only. Exact, not an approximation.
        x0 = self.a[0]
        const = (x0 == x0[:1]).all(0) if len(x0) > 1 else torch.zeros(x0.shape[1], dtype=torch.bool,
                                                                        device=x0.device)
        self.const_idx = const.nonzero().squeeze(1)
        self.var_idx = (~const).nonzero().squeeze(1)
        self.const_val = x0[0, self.const_idx]
        self.a0_var = x0.index_select(1, self.var_idx) if len(self.const_idx) else x0  # (faster than x0[:, idx])

    def gradient(self) -> list[torch.Tensor]:
        """∇ℓ_chunk per parameter (W_1, b_1, …): δ_lᵀ a_{l−1} and Σ_i δ_{l,i}."""
        out = []
        for d, a in zip(self.delta, self.a, strict=True):
            out += [d.t() @ a, d.sum(0)]
        return out

    @torch.no_grad()
    def hvp(self, vs: list[torch.Tensor], out: list[torch.Tensor], accumulate: bool = False) -> None:
        """Write (or with ``accumulate`` add) ∇²ℓ_chunk · V into ``out``, per parameter (W_1, b_1, W_2, …);
        ``vs`` = (V_1, c_1, V_2, c_2, …) shaped like the parameters. ``out`` are contiguous views of one
        flat vector, so no per-product concatenation is needed."""
        L = len(self.lins)
        ra: torch.Tensor | None = None
        rz_hidden: list[torch.Tensor | None] = []  # R z_l, kept only where σ'' ≠ 0 needs it
        ra_hidden = []
        split = len(self.const_idx) > 0
        for k, lin in enumerate(self.lins):
            if k == 0 and split:
                v1 = vs[0]
                rz = torch.addmm(vs[1] + v1.index_select(1, self.const_idx) @ self.const_val, self.a0_var,
                                v1.index_select(1, self.var_idx).t())
            else:
                rz = torch.addmm(vs[2 * k + 1], self.a[k], vs[2 * k].t())
            if ra is not None:
                rz.addmm_(ra, lin.weight.t())
            if k < L - 1:
                keep = self.d2e[k] is not None
                rz_hidden.append(rz if keep else None)
                ra = rz * self.d1[k] if keep else rz.mul_(self.d1[k])
                ra_hidden.append(ra)
        if self.p is None:
            rd = rz
        else:
            rd = self.p * rz
            rd -= self.p * rd.sum(1, keepdim=True)
        for k in range(L - 1, -1, -1):
            w, b = out[2 * k], out[2 * k + 1]
            if k == 0 and split:
                rsum = rd.sum(0)
                hw_var = rd.t() @ self.a0_var
                hw_const = torch.outer(rsum, self.const_val)
                if accumulate:
                    w.index_add_(1, self.var_idx, hw_var)
                    w.index_add_(1, self.const_idx, hw_const)
                    b.add_(rsum)
                else:
                    w.index_copy_(1, self.var_idx, hw_var)
                    w.index_copy_(1, self.const_idx, hw_const)
                    b.copy_(rsum)
                continue
            if accumulate:
                w.addmm_(rd.t(), self.a[k])
                b.add_(rd.sum(0))
            else:
                torch.mm(rd.t(), self.a[k], out=w)
                torch.sum(rd, 0, out=b)
            if k > 0:
                w.addmm_(self.delta[k].t(), ra_hidden[k - 1])
                re = rd @ self.lins[k].weight
                re.addmm_(self.delta[k], vs[2 * k])
                rd = re.mul_(self.d1[k - 1])
                if self.d2e[k - 1] is not None:
                    rd.addcmul_(self.d2e[k - 1], rz_hidden[k - 1])


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
        self.device = self.params[0].device
        self.chunks = [(x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(x), chunk_size)]
        self.loss_fn = loss_fn
        self.keep_graph = keep_graph
        self.loss_kind = {sum_cross_entropy: "cross_entropy", sum_mse: "mse"}.get(loss_fn)
        self.analytic = (analytic and keep_graph and self.loss_kind is not None and supports(model)
                         and len(self.params) == len(list(model.parameters())))
        self.route = ("analytic R-op (MLP, cached activations)" if self.analytic
                      else "cached-graph double backward" if keep_graph else "recomputed double backward")
        self.num_products = 0
        self._graphs: list[tuple[torch.Tensor, ...]] = []
        self._chunks_rop: list[MLPChunk] = []
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
        grad = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        if self.analytic:
            for xc, yc in self.chunks:
                c = MLPChunk(self.model, xc, yc, self.loss_kind)
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
        vs = self._split(v.to(device=self.device, dtype=self.dtype))
        if self.analytic:
            out = torch.empty(self.n, dtype=self.dtype, device=self.device)
            views = self._split(out)
            for k, c in enumerate(self._chunks_rop):
                c.hvp(vs, views, accumulate=k > 0)
            self.num_products += 1
            return out.div_(self.N)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
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
