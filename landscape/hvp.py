"""Exact Hessian-vector products for the MLP by Pearlmutter's R-operator, written out layer by layer.

For layers z_l = a_{l-1} W_lᵀ + b_l, a_l = σ(z_l) (l < L), logits z_L and the summed cross-entropy
ℓ = Σ_i −log softmax(z_L)_{i,y_i}, the first-order pass caches a_l, σ'(z_l), σ''(z_l)·e_l and the
back-propagated errors δ_l = ∂ℓ/∂z_l (δ_L = p − onehot(y), e_{l−1} = δ_l W_l, δ_{l−1} = e_{l−1} ⊙ σ'(z_{l−1})).
A product with V = (V_l, c_l) is then the directional derivative R{·} = d/dt|₀ (·)(θ + tV) of the gradient:

    forward   R z_l = R a_{l−1} W_lᵀ + a_{l−1} V_lᵀ + c_l,      R a_l = σ'(z_l) ⊙ R z_l        (R a_0 = 0)
    output    R δ_L = p ⊙ R z_L − p (pᵀ R z_L)                   (softmax Jacobian, row-wise)
    backward  R δ_{l−1} = (R δ_l W_l + δ_l V_l) ⊙ σ'(z_{l−1}) + σ''(z_{l−1}) ⊙ e_{l−1} ⊙ R z_{l−1}
    result    (H V)_{W_l} = R δ_lᵀ a_{l−1} + δ_lᵀ R a_{l−1},      (H V)_{b_l} = Σ_i R δ_{l,i}

This is the same product the autograd double backward computes (``tests/test_curvature.py`` checks both
against the dense Hessian for every activation), with the same matrix products, but with no autograd
graph: no zero-filled gradient buffers, no accumulation nodes, and ReLU's σ'' = 0 term skipped entirely.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from landscape.models import MLP


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
    """True for the package's :class:`MLP` with default-configured activations (the analytic route applies)."""
    if not isinstance(model, MLP):
        return False
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
    def __init__(self, model: MLP, x: torch.Tensor, y: torch.Tensor) -> None:
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
        logp = torch.log_softmax(logits, 1)
        rows = torch.arange(len(y))
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
        const = (x0 == x0[:1]).all(0) if len(x0) > 1 else torch.zeros(x0.shape[1], dtype=torch.bool)
        self.const_idx = const.nonzero().squeeze(1)
        self.var_idx = (~const).nonzero().squeeze(1)
        self.const_val = x0[0, self.const_idx]
        self.a0_var = x0[:, self.var_idx].contiguous() if len(self.const_idx) else x0

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
                rz = torch.addmm(vs[1] + v1[:, self.const_idx] @ self.const_val, self.a0_var, v1[:, self.var_idx].t())
            else:
                rz = torch.addmm(vs[2 * k + 1], self.a[k], vs[2 * k].t())
            if ra is not None:
                rz.addmm_(ra, lin.weight.t())
            if k < L - 1:
                keep = self.d2e[k] is not None
                rz_hidden.append(rz if keep else None)
                ra = rz * self.d1[k] if keep else rz.mul_(self.d1[k])
                ra_hidden.append(ra)
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
