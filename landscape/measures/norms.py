"""Norm and margin based measures (Jiang et al. 2020 §A, as the public reimplementation of Dziugaite et al. 2020
computes them: ``nitarshan/robust-generalization-measures``, ``measures.py``).

Weights only: every weight matrix W_l of the d layers (biases and batch-norm parameters excluded), after batch
norm is folded into the layer before it (W ← diag(γ/√(v + ε)) W, with the statistics of the network at θ: the
scale-invariance batch norm gives a layer would otherwise make every norm arbitrary). A convolution's kernel
(c_out, c_in, k, k) enters as the c_out × (c_in k k) matrix; its "spectral norm" is that matrix's largest singular
value (the approximation of Yoshida & Miyato 2017 that Jiang's tables use), not the operator norm of the
convolution. With σ_l = ‖W_l‖₂ (exact: ``torch.linalg.matrix_norm(ord=2)``), F_l = ‖W_l‖_F, W⁰ the weights at
initialization (epoch 0) and γ the margin:

* margin γ = the ``margin_percentile``-th percentile (Jiang: 10th) over the training set of f(x)_y − max_{j≠y}
  f(x)_j (kth value, k = ⌊m p/100⌋, as ``torch.kthvalue``), its absolute value as the reference code takes it;
  ``inverse_margin`` = 1/γ². The signed kth value is ``margin_signed``: it is negative when at least p% of the
  training set is misclassified (never in Jiang's networks, all trained to cross-entropy 0.01), and then γ is
  the size of a *wrong* margin and every measure with γ in it means nothing as a margin
  bound; the record flags it (``margin_negative``);
* ``log_prod_spec`` = Σ log σ_l², ``log_sum_spec`` = log d + (1/d) Σ log σ_l², each also ``…_over_margin``
  (− 2 log γ inside); ``fro_over_spec`` = Σ F_l²/σ_l²; ``log_spec_orig_main`` = log_prod_spec_over_margin +
  log fro_over_spec; ``log_spec_init_main`` = log_prod_spec_over_margin + log Σ ‖W_l − W⁰_l‖_F²/σ_l²;
* ``log_prod_fro``, ``log_sum_fro`` (and ``…_over_margin``) likewise with F_l²;
* ``fro_dist`` = Σ ‖W_l − W⁰_l‖_F² (Frobenius distance to the initialization), ``dist_spec_init`` = Σ
  ‖W_l − W⁰_l‖₂², ``param_norm`` = Σ F_l², ``l2`` = ‖w‖₂ and ``l2_dist`` = ‖w − w⁰‖₂ over all weights;
* ``path_norm`` (ℓ2) = the sum of the outputs of the network with every parameter squared, at the all-ones input
  (Neyshabur et al. 2015), ``path_norm_over_margin`` = path_norm / γ²;
* ``params`` = the number of weights.

Jiang's code then rescales each value by the training-set size (√(v/m), or ½(v − log m) for the log measures);
a monotone map at fixed m, it changes no rank correlation, so the raw values are reported.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from landscape.stacked import layer_plan


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A float64 copy of the package's MLP or CNN computing the same function in eval mode, with every batch
    norm folded into the layer before it (W ← s ⊙ W, b ← β + s(b − μ), s = γ/√(v + ε)) and set to the identity
    (γ = 1, β = 0, μ = 0, v = 1 − ε): as Jiang's ``_reparam``, for BatchNorm1d too."""
    plan = layer_plan(model)
    if plan is None:
        raise ValueError(f"norm measures need the package's MLP or CNN, not {type(model).__name__}")
    copy_ = copy.deepcopy(model).double().eval()
    prev = None
    with torch.no_grad():
        for lay in layer_plan(copy_).layers:
            m = lay.module
            if isinstance(m, nn.Linear | nn.Conv2d):
                prev = m
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                s = m.weight / torch.sqrt(m.running_var + m.eps)
                prev.bias.copy_(m.bias + s * (prev.bias - m.running_mean))
                prev.weight.mul_(s.view(-1, *(1,) * (prev.weight.dim() - 1)))
                m.weight.fill_(1.0)
                m.bias.fill_(0.0)
                m.running_mean.fill_(0.0)
                m.running_var.fill_(1.0 - m.eps)
    return copy_


def folded_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight matrix) of every Linear / Conv2d in order, batch norm folded in (:func:`fold_batch_norm`),
    convolution kernels as c_out × (c_in k k) matrices; residual projections (no bias) included."""
    from landscape.stacked import AddShortcut

    folded = fold_batch_norm(model)
    out = []
    for lay in layer_plan(folded).layers:
        m = lay.module.shortcut if isinstance(lay.module, AddShortcut) else lay.module  # a residual's projection
        if isinstance(m, nn.Linear | nn.Conv2d):
            out.append((lay.name, m.weight.detach().reshape(m.weight.shape[0], -1)))
    return out


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """f(x)_y − max_{j≠y} f(x)_j of every example (float64), model in eval mode."""
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                z = model(x[i : i + batch_size]).double()
                yb = y[i : i + batch_size]
                right = z.gather(1, yb[:, None]).squeeze(1)
                z.scatter_(1, yb[:, None], -math.inf)
                out.append(right - z.max(1).values)
    finally:
        model.train(was)
    return torch.cat(out)


def path_norm(model: nn.Module, input_dim: int = 784) -> float:
    """Σ of the outputs of the network (batch norm folded) with every parameter squared, at the all-ones input."""
    sq = fold_batch_norm(model)
    with torch.no_grad():
        for p in sq.parameters():
            p.pow_(2)
        return float(sq(torch.ones(1, input_dim, dtype=torch.float64)).sum())


def _log(v: float) -> float:
    """log v, NaN (null in the record) where v = 0: at the initialization itself there is no distance to log."""
    return math.log(v) if v > 0 else math.nan


def norm_measures(model: nn.Module, init: nn.Module, x: torch.Tensor, y: torch.Tensor, percentile: float = 10.0,
                  batch_size: int = 4096) -> dict[str, Any]:
    """The measures of the module docstring for ``model`` (the network at θ) against its initialization."""
    w = folded_weights(model)
    w0 = folded_weights(init)
    d = len(w)
    spec = torch.stack([torch.linalg.matrix_norm(m, ord=2) ** 2 for _, m in w])
    fro = torch.stack([torch.linalg.matrix_norm(m, ord="fro") ** 2 for _, m in w])
    diff = [m - m0 for (_, m), (_, m0) in zip(w, w0, strict=True)]
    dist_fro = torch.stack([torch.linalg.matrix_norm(m, ord="fro") ** 2 for m in diff])
    dist_spec = torch.stack([torch.linalg.matrix_norm(m, ord=2) ** 2 for m in diff])
    marg = margins(model, x, y, batch_size)
    k = max(1, int(len(marg) * percentile / 100))
    signed = float(marg.kthvalue(k).values)
    gamma = abs(signed)
    lps, lpf = float(spec.log().sum()), float(fro.log().sum())
    log_g2 = 2 * math.log(gamma) if gamma > 0 else math.nan
    out = {
        "margin": gamma,
        "margin_signed": signed,
        "inverse_margin": 1 / gamma**2 if gamma > 0 else math.nan,
        "log_prod_spec": lps,
        "log_prod_spec_over_margin": lps - log_g2,
        "log_sum_spec": math.log(d) + lps / d,
        "log_sum_spec_over_margin": math.log(d) + (lps - log_g2) / d,
        "fro_over_spec": float((fro / spec).sum()),
        "log_prod_fro": lpf,
        "log_prod_fro_over_margin": lpf - log_g2,
        "log_sum_fro": math.log(d) + lpf / d,
        "log_sum_fro_over_margin": math.log(d) + (lpf - log_g2) / d,
        "fro_dist": float(dist_fro.sum()),
        "dist_spec_init": float(dist_spec.sum()),
        "param_norm": float(fro.sum()),
        "l2": float(torch.cat([m.reshape(-1) for _, m in w]).norm()),
        "l2_dist": float(torch.cat([m.reshape(-1) for m in diff]).norm()),
        "params": sum(m.numel() for _, m in w),
    }
    out["log_spec_orig_main"] = out["log_prod_spec_over_margin"] + _log(out["fro_over_spec"])
    out["log_spec_init_main"] = out["log_prod_spec_over_margin"] + _log(float((dist_fro / spec).sum()))
    input_dim = x.flatten(1).shape[1]
    out["path_norm"] = path_norm(model, input_dim)
    out["path_norm_over_margin"] = out["path_norm"] / gamma**2 if gamma > 0 else math.nan
    layers = [{"name": name, "shape": list(m.shape), "spectral_norm": float(math.sqrt(s)),
               "frobenius_norm": float(math.sqrt(f))} for (name, m), s, f in zip(w, spec, fro, strict=True)]
    return {"values": out, "layers": layers, "margin_percentile": percentile, "margin_k": k,
            "examples": len(marg), "margin_negative": signed < 0}
