"""Many parameter sets through one network at once, and the exact factorization of its first layer.

A *layer plan* lists a model's layers in execution order (the package's MLP and CNN, with or without batch norm:
Linear, Conv2d, BatchNorm, activations, max-pooling, flatten). With it, G parameter sets run side by side: each
Linear is one batched matrix product over the sets (``baddbmm``), each Conv2d one grouped convolution (the G
sets as G groups), each batch norm an affine map with the set's own statistics. Other models go through
``torch.func.vmap`` over ``functional_call`` (route ``vmap``).

*Factorization.* Points of an affine family θ_j = θ₀ + Σ_k c_jk v_k (a plane: K = 2; a line θ_a + α(θ_b − θ_a):
K = 1; a quadratic Bézier curve: K = 2; the ± pairs of the sharpness directions: K directions for 2K + 1 points)
share their first layer's products exactly: X(W₀ + Σ_k c_jk V_k)ᵀ = XW₀ᵀ + Σ_k c_jk XV_kᵀ (and the same with a
convolution). K + 1 products per data chunk serve every point; each point then pays only the layers above (for
the 784-256-256-10 MLP the first layer is 75% of the multiply-adds). The sums are reassociated, so values agree
with direct evaluation to float32 rounding (measured: ≤ 1e-6 relative; tested at 1e-5).

*Batch norm.* At every point the statistics are recomputed on the training inputs (the network at θ_j:
:func:`landscape.models.network_at`), for all points together: one pass over the inputs per batch-norm layer, in
order (a layer's input depends on the earlier layers' new statistics), mean and unbiased variance accumulated
in float64 as :func:`landscape.models.recompute_batch_norm` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Softplus, nn.ELU)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class AffinePoints:
    """θ_j = base + coeffs[j] @ directions: ``base`` (n,), ``directions`` (K, n), ``coeffs`` (m, K)."""

    base: torch.Tensor
    directions: torch.Tensor
    coeffs: torch.Tensor
    explicit: bool = False  # ``directions`` are the points themselves (no shared structure: direct route only)

    @property
    def m(self) -> int:
        return self.coeffs.shape[0]

    @property
    def k(self) -> int:
        return self.coeffs.shape[1]

    def thetas(self, rows: slice | None = None) -> torch.Tensor:
        rows = slice(None) if rows is None else rows
        if self.explicit:
            return self.directions[rows]
        return self.base + self.coeffs[rows].to(self.base.dtype) @ self.directions

    @staticmethod
    def of(thetas: torch.Tensor) -> AffinePoints:
        """Arbitrary points (m, n), evaluated each with its own weights."""
        thetas = thetas.reshape(-1, thetas.shape[-1])
        return AffinePoints(thetas[0], thetas, torch.zeros(len(thetas), 0, dtype=thetas.dtype), explicit=True)


@dataclass(frozen=True)
class Layer:
    name: str  # prefix of its parameters in ``model.named_parameters()`` ('' for parameter-free layers)
    module: nn.Module


class Save(nn.Module):
    """Plan marker: keep the current activations for a residual connection."""


class AddShortcut(nn.Module):
    """Plan marker: add the kept activations, through ``shortcut`` (identity, or a linear map without bias)."""

    def __init__(self, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut


@dataclass(frozen=True)
class Plan:
    layers: tuple[Layer, ...]
    input_view: Callable[[torch.Tensor], torch.Tensor]
    spans: dict[str, tuple[int, torch.Size]]  # parameter name -> (offset in θ, shape)

    def params(self, thetas: torch.Tensor, layer: Layer) -> dict[str, torch.Tensor]:
        """The layer's parameters of every row of ``thetas`` (G, n), as (G, *shape) views."""
        out = {}
        for key in ("weight", "bias"):
            full = f"{layer.name}.{key}"
            if full in self.spans:
                start, shape = self.spans[full]
                out[key] = thetas[:, start : start + shape.numel()].view(len(thetas), *shape)
        return out

    @property
    def batch_norms(self) -> list[Layer]:
        return [lay for lay in self.layers if isinstance(lay.module, BATCH_NORMS)]


def layer_plan(model: nn.Module) -> Plan | None:
    """The plan of the package's MLP or CNN (see the module docstring); None for any other model."""
    from landscape.models import CNN, MLP, ResidualDense

    def dense(net: nn.Module) -> list[Layer]:
        if not isinstance(net, ResidualDense):
            return [Layer(f"net.{i}", m) for i, m in enumerate(net)]
        out = [Layer(f"net.stem.{i}", m) for i, m in enumerate(net.stem)]
        for b, block in enumerate(net.blocks):
            out.append(Layer("", Save()))
            out += [Layer(f"net.blocks.{b}.body.{i}", m) for i, m in enumerate(block.body)]
            out.append(Layer(f"net.blocks.{b}.shortcut", AddShortcut(block.shortcut)))
        return [*out, Layer("net.head", net.head)]

    if type(model) is MLP:
        layers = dense(model.net)
        view = lambda x: x.flatten(1)  # noqa: E731
    elif type(model) is CNN:
        layers = [Layer(f"features.{i}", m) for i, m in enumerate(model.features)] + [Layer("", nn.Flatten())] + \
            dense(model.net)
        view = lambda x: x.reshape(len(x), 1, 28, 28)  # noqa: E731
    else:
        return None
    supported = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.Flatten, Save, AddShortcut, *ACTIVATIONS, *BATCH_NORMS)
    if not all(isinstance(lay.module, supported) for lay in layers) or not isinstance(layers[0].module,
                                                                                        nn.Linear | nn.Conv2d):
        return None
    spans, i = {}, 0
    for name, p in model.named_parameters():
        spans[name] = (i, p.shape)
        i += p.numel()
    return Plan(tuple(layers), view, spans)


# BN statistics of G sets: {layer name: (mean (G, C), var (G, C))}
Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _apply(layer: Layer, p: dict[str, torch.Tensor], a: torch.Tensor, stats: Stats | None,
           saved: list[torch.Tensor]) -> torch.Tensor:
    """One layer for G sets side by side: ``a`` is (G, B, …); ``saved`` the activations kept for residuals."""
    m, g = layer.module, a.shape[0]
    if isinstance(m, Save):
        saved.append(a)
        return a  # the block's first layer is a Linear: nothing works on this tensor in place
    if isinstance(m, AddShortcut):
        kept = saved.pop()
        return a + (torch.bmm(kept, p["weight"].transpose(1, 2)) if "weight" in p else kept)
    if isinstance(m, nn.Linear):
        return torch.baddbmm(p["bias"].unsqueeze(1), a, p["weight"].transpose(1, 2))
    if isinstance(m, nn.Conv2d):
        b, c, h, w = a.shape[1:]
        out = F.conv2d(a.transpose(0, 1).reshape(b, g * c, h, w), p["weight"].reshape(-1, *p["weight"].shape[2:]),
                       p["bias"].reshape(-1), m.stride, m.padding, m.dilation, g)
        return out.view(b, g, -1, *out.shape[2:]).transpose(0, 1)
    if isinstance(m, BATCH_NORMS):
        mean, var = stats[layer.name]
        scale = p["weight"] / torch.sqrt(var + m.eps)
        shift = p["bias"] - mean * scale
        extra = (1,) * (a.dim() - 3)  # the spatial dimensions of BatchNorm2d
        return a * scale.view(g, 1, -1, *extra) + shift.view(g, 1, -1, *extra)
    if isinstance(m, nn.MaxPool2d):
        out = m(a.flatten(0, 1))
        return out.view(g, -1, *out.shape[1:])
    if isinstance(m, nn.Flatten):
        return a.flatten(2)
    if isinstance(m, nn.ReLU):
        return a.relu_()  # ``a`` is this evaluator's own fresh tensor: in place saves an allocation
    return m(a)  # an activation, elementwise


def first_products(plan: Plan, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The first layer's weight-only products of the input chunk with each of R weight tensors ``weights``
    (R, *shape) in one call: (B, R, …)."""
    first = plan.layers[0].module
    r = weights.shape[0]
    if isinstance(first, nn.Linear):
        return (x @ weights.reshape(r * weights.shape[1], -1).t()).view(len(x), r, -1)
    out = F.conv2d(x, weights.reshape(-1, *weights.shape[2:]), None, first.stride, first.padding, first.dilation)
    return out.view(len(x), r, -1, *out.shape[2:])


def first_layer(plan: Plan, x: torch.Tensor, points: AffinePoints, rows: slice, products: torch.Tensor | None,
                thetas: torch.Tensor) -> torch.Tensor:
    """Pre-activations (G, B, …) of the first layer for the points ``rows``: from the K + 1 shared ``products``
    (factorized) or, when None, from each set's own weights (direct)."""
    lay = plan.layers[0]
    if products is None:
        p = plan.params(thetas, lay)
        a = first_products(plan, x, p["weight"]).transpose(0, 1)
        return a + p["bias"].view(len(thetas), 1, -1, *(1,) * (x.dim() - 2))
    c = points.coeffs[rows].to(products.dtype)
    coef = torch.cat([torch.ones(len(c), 1, dtype=c.dtype, device=c.device), c], 1)  # (G, K + 1)
    return torch.einsum("gr,br...->gb...", coef, products)  # the products carry their biases


def stacked_outputs(plan: Plan, x: torch.Tensor, points: AffinePoints, rows: slice, thetas: torch.Tensor,
                    stats: Stats | None, products: torch.Tensor | None = None, stop: str | None = None
                    ) -> torch.Tensor:
    """Outputs (G, B, C) of the sets ``rows`` (their parameters ``thetas``) on the chunk ``x``, or with ``stop``
    the input of that layer (for batch-norm statistics)."""
    a = first_layer(plan, plan.input_view(x), points, rows, products, thetas)
    saved: list[torch.Tensor] = []
    for lay in plan.layers[1:]:
        if lay.name == stop:
            return a
        a = _apply(lay, plan.params(thetas, lay), a, stats, saved)
    return a


class ChunkProducts:
    """Iterates ``(start, chunk, products)`` over the data in chunks of ``rows``; the K + 1 shared first-layer
    products of each chunk (None on the direct route) are computed once and kept for the next group of points
    while they fit in ``cache_elements`` floats (the 784-256-256-10 MLP's plane on 60,000 examples: 46 M), else
    recomputed per group."""

    def __init__(self, plan: Plan, points: AffinePoints, x: torch.Tensor, rows: int, factorized: bool,
                 cache_elements: int = 2**27) -> None:
        self.plan, self.points, self.x, self.rows, self.factorized = plan, points, x, rows, factorized
        self.cache: dict[int, torch.Tensor] | None = None
        if factorized:
            probe = stacked_products(plan, x[:1], points)
            self.cache = {} if probe.numel() * len(x) <= cache_elements else None

    def __iter__(self):
        for i in range(0, len(self.x), self.rows):
            xb = self.x[i : i + self.rows]
            if not self.factorized:
                yield i, xb, None
                continue
            prod = self.cache.get(i) if self.cache is not None else None
            if prod is None:
                prod = stacked_products(self.plan, xb, self.points)
                if self.cache is not None:
                    self.cache[i] = prod
            yield i, xb, prod


def recompute_stats(plan: Plan, points: AffinePoints, x: torch.Tensor, rows_per_pass: int, group: int,
                    factorized: bool) -> Stats:
    """Batch-norm statistics of every point on the inputs ``x`` (the training split): per layer in order, the
    exact mean and unbiased variance of its input over all of ``x`` (float64 sums), as
    :func:`landscape.models.recompute_batch_norm` computes them one network at a time."""
    stats: Stats = {}
    chunks = ChunkProducts(plan, points, x, rows_per_pass, factorized)
    with torch.no_grad():
        for bn in plan.batch_norms:
            parts = []
            for start in range(0, points.m, group):
                rows = slice(start, min(start + group, points.m))
                thetas, st = points.thetas(rows), stats_rows(stats, rows)
                s1 = s2 = None
                count = 0
                for _, xb, prod in chunks:
                    z = stacked_outputs(plan, xb, points, rows, thetas, st, prod, stop=bn.name).double()
                    dims = [d for d in range(1, z.dim()) if d != 2]  # all but the set and the channel
                    a1, a2 = z.sum(dims), (z * z).sum(dims)
                    s1, s2 = (a1, a2) if s1 is None else (s1 + a1, s2 + a2)
                    count += z.numel() // (z.shape[0] * z.shape[2])
                mean = s1 / count
                var = ((s2 - count * mean * mean) / max(count - 1, 1)).clamp(min=0)
                parts.append((mean, var))
            stats[bn.name] = (torch.cat([p[0] for p in parts]).to(points.base.dtype),
                              torch.cat([p[1] for p in parts]).to(points.base.dtype))
    return stats


def stats_rows(stats: Stats | None, rows: slice) -> Stats | None:
    return None if stats is None else {k: (m[rows], v[rows]) for k, (m, v) in stats.items()}


def stacked_products(plan: Plan, xb: torch.Tensor, points: AffinePoints) -> torch.Tensor:
    """The K + 1 shared first-layer products of a data chunk, base and directions, each with its own bias added
    (the bias is affine in the same coefficients): Σ_r c_jr · product_r is point j's pre-activation."""
    lay = plan.layers[0]
    rows = torch.cat([points.base[None], points.directions])
    start, shape = plan.spans[f"{lay.name}.weight"]
    w = rows[:, start : start + shape.numel()].view(-1, *shape)
    out = first_products(plan, plan.input_view(xb), w)
    b0, bshape = plan.spans[f"{lay.name}.bias"]
    bias = rows[:, b0 : b0 + bshape.numel()]
    return out + bias.view(1, len(rows), -1, *(1,) * (out.dim() - 3))
