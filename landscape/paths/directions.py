"""Directions in parameter space for 2-D loss surfaces (``surface.directions``):

* ``random`` (:func:`plane_directions`): two Gaussian directions, normalized so that plots of different
  networks (or of one network at different epochs) are comparable (below);
* ``pca`` (:func:`pca_directions`): the top two principal directions of the training trajectory
  {θ_e − θ_c} over the saved checkpoints (Li et al. 2018 §7, as their code does it: PCA of the centred matrix
  of differences; unit-norm directions, grid coordinates in parameter-space units), with the explained
  variance of each and the trajectory projected onto the plane;
* ``hessian`` (:func:`hessian_directions`): the top two eigenvectors of the probe-set Hessian at the centre
  (Lanczos), with their eigenvalues and measured residuals: the plane of the largest curvature.

Random directions start as a Gaussian draw u ~ N(0, I) (the public ``loss-landscapes`` package draws *uniform*
entries; Li et al. 2018 use Gaussians), shaped like the parameters, then:

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

from typing import Any

import torch
from torch import nn

from landscape.curvature.eigenvalues import lanczos
from landscape.curvature.hvp import HessianOperator
from landscape.evaluation import sum_loss

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


def pca_directions(trajectory: torch.Tensor, epochs: list[int], center: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(δ, η, record): the top two right singular vectors of the centred matrix M − mean(M), M's rows the
    differences θ_e − θ_c of the ``trajectory`` rows (E, n) from the ``center``; unit norm and orthogonal. The
    record holds each direction's share of the variance (σ_i² / Σσ²), and the trajectory's coordinates in the
    plane, (θ_e − θ_c)·δ and (θ_e − θ_c)·η, with the sign of each direction chosen so that the first epoch
    lies at negative coordinates (SVD leaves the sign free)."""
    if len(trajectory) < 3:
        raise ValueError(f"pca directions need at least 3 checkpoints, got {len(trajectory)}")
    m = (trajectory - center).double()
    _, s, vh = torch.linalg.svd(m - m.mean(0), full_matrices=False)
    var = s * s
    dirs = vh[:2].clone()
    coords = m @ dirs.t()
    for i in range(2):
        if coords[0, i] > 0:
            dirs[i], coords[:, i] = -dirs[i], -coords[:, i]
    record = {"explained_variance": [float(var[i] / var.sum()) for i in range(2)],
              "trajectory": [{"epoch": e, "x": float(coords[j, 0]), "y": float(coords[j, 1])}
                             for j, e in enumerate(epochs)],
              "epochs": list(epochs),
              "cosine_delta_eta": float(dirs[0] @ dirs[1])}
    return dirs[0].to(trajectory.dtype), dirs[1].to(trajectory.dtype), record


def hessian_directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Any, iters: int, tol: float,
                       seed: int, chunk_size: int, start: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(δ, η, record): the unit eigenvectors of the two largest eigenvalues of the Hessian of L over (x, y) at the
    model's θ (Lanczos with ``iters`` steps at most), with the eigenvalues, measured residuals, convergence
    flags and products. ``loss``: the kind (``cross_entropy`` | ``mse``) or a summed-loss function. Unconverged
    vectors are still returned — the record says so — rather than failing."""
    op = HessianOperator(model, x, y, loss_fn=sum_loss(loss) if isinstance(loss, str) else loss,
                         chunk_size=chunk_size)
    eig = lanczos(op, k=2, max_iters=iters, tol=tol, seed=seed, start=start, return_vectors=True)
    op.release()
    if len(eig.vectors) < 2:
        raise ValueError("the Hessian has fewer than two distinct eigenvalues within the Lanczos steps")
    converged = all(eig.converged)
    record = {"eigenvalues": list(eig.eigenvalues), "residuals": list(eig.residuals),
              "converged": list(eig.converged), "lanczos_iterations": eig.iterations,
              "hvp_count": eig.num_products, "tol": tol,
              "note": None if converged else (
                  f"the top two eigenvectors did not converge within probe.lanczos_iters = {iters} (residuals "
                  f"{', '.join(f'{r:.1e}' for r in eig.residuals)} > probe.tol = {tol}): the plane is spanned by "
                  "the Ritz vectors found; raise probe.lanczos_iters for eigenvectors")}
    dtype = next(model.parameters()).dtype
    return eig.vectors[0].to(dtype), eig.vectors[1].to(dtype), record
