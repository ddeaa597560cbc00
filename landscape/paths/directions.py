"""Random directions in parameter space for 2-D loss surfaces, normalized so that plots of different networks
(or of one network at different epochs) are comparable.

Each direction starts as a Gaussian draw u ~ N(0, I) (the public ``loss-landscapes`` package draws *uniform*
entries; Li et al. 2018 use Gaussians), shaped like the parameters, then:

* ``filter`` (Li et al. 2018, "filter normalization"): for every weight tensor (≥ 2 dimensions), each output
  unit's slice — a row of a linear layer, one filter of a convolution — is rescaled to the Frobenius norm of the
  same slice of θ: d_i ← d_i · ‖θ_i‖/‖d_i‖. One-dimensional parameters (biases, batch-norm scales and shifts)
  are set to zero, as in the paper's code: a bias is not a filter, and rescaling biases per "filter" (as
  ``loss-landscapes`` does) perturbs them by their own magnitude, which the paper does not do.
* ``layer``: every parameter tensor, biases included, is rescaled as a whole to the norm of the same tensor of θ.
* ``none``: the whole direction is scaled to unit norm over all parameters.
"""

from __future__ import annotations

import torch
from torch import nn

NORMALIZATIONS = ("filter", "layer", "none")


def gaussian_like(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """One N(0, 1) tensor per parameter, in ``model.parameters()`` order, drawn from ``generator``."""
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in model.parameters()]


def normalize(direction: list[torch.Tensor], params: list[torch.Tensor], kind: str) -> list[torch.Tensor]:
    """The ``kind`` normalization of a direction (per-tensor list) against the parameters θ (module docstring)."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalization = {kind!r}; allowed: {', '.join(NORMALIZATIONS)}")
    out = []
    if kind == "none":
        total = torch.sqrt(sum(d.double().pow(2).sum() for d in direction))
        return [(d.double() / total).to(d.dtype) for d in direction]
    for d, p in zip(direction, params, strict=True):
        d64, p64 = d.double(), p.detach().double()
        if kind == "filter":
            if d.dim() < 2:
                out.append(torch.zeros_like(d))
                continue
            dn = d64.flatten(1).norm(dim=1)
            pn = p64.flatten(1).norm(dim=1)
            scale = torch.where(dn > 0, pn / dn, torch.zeros_like(dn))
            out.append((d64 * scale.view(-1, *([1] * (d.dim() - 1)))).to(d.dtype))
        else:  # layer
            dn = d64.norm()
            out.append((d64 * (p64.norm() / dn if dn > 0 else 0.0)).to(d.dtype))
    return out


def flat(direction: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([d.reshape(-1) for d in direction])


def plane_directions(model: nn.Module, kind: str, seed: int, orthogonalize: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalized directions (δ, η) as flat vectors, drawn in that order from one generator seeded with
    ``seed``. With ``orthogonalize``, η loses its component along δ and is rescaled back to its norm (its
    per-filter norms then match θ's only approximately)."""
    g = torch.Generator().manual_seed(seed)
    params = [p.detach() for p in model.parameters()]
    delta = flat(normalize(gaussian_like(model, g), params, kind))
    eta = flat(normalize(gaussian_like(model, g), params, kind))
    if orthogonalize:
        d64, e64 = delta.double(), eta.double()
        norm = e64.norm()
        e64 = e64 - (e64 @ d64) / (d64 @ d64) * d64
        eta = (e64 * (norm / e64.norm())).to(eta.dtype)
    return delta, eta
