"""Curvature across a surface's plane (Li et al. 2018, Fig. 8): at each point of a coarse sub-grid the largest and
the smallest eigenvalue of the probe-set Hessian of the network there (batch-norm statistics recomputed: the
network at that point), with their measured residuals, and the map of |λ_min/λ_max|. A region where |λ_min/λ_max|
is small is locally convex (negative curvature negligible against positive); Li et al. contrast the convex maps
of ResNets with skip connections with the chaotic ones of deep plain nets. The scalar summary is the fraction of
sub-grid points with |λ_min/λ_max| above the ``threshold`` (λ_max ≤ 0 counts as above: nothing positive to
dominate). Lanczos as the probe runs it (same probe set, seed, start, steps, tolerance), so the map's centre is
the probe's λ_max and λ_min at that checkpoint."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from landscape.curvature.eigenvalues import lanczos
from landscape.curvature.hvp import HessianOperator
from landscape.evaluation import sum_loss
from landscape.models import has_batch_norm, network_at
from landscape.parameters import assign


def curvature_map(model: nn.Module, theta: torch.Tensor, delta: torch.Tensor, eta: torch.Tensor, xs: list[float],
                  ys: list[float], probe: tuple[torch.Tensor, torch.Tensor], loss: str, train_x: torch.Tensor,
                  iters: int, tol: float, seed: int, chunk_size: int, start: str, threshold: float,
                  batch_size: int = 4096) -> dict[str, Any]:
    """λ_max, λ_min (with residuals and convergence) at θ + xδ + yη for x in ``xs``, y in ``ys`` (row-major,
    y down the rows), the ratio map and the fraction of points above ``threshold``."""
    work = copy.deepcopy(model)
    keys = ("lambda_max", "lambda_min", "lambda_max_residual", "lambda_min_residual", "converged", "ratio")
    rows: dict[str, list[list[Any]]] = {k: [] for k in keys}
    products = 0
    for yv in tqdm(ys, desc="curvature map", leave=False):
        row: dict[str, list[Any]] = {k: [] for k in keys}
        for xv in xs:
            assign(work, theta + xv * delta + yv * eta)
            if has_batch_norm(work):
                network_at(work, train_x, batch_size)
            work.eval()
            op = HessianOperator(work, *probe, loss_fn=sum_loss(loss), chunk_size=chunk_size, keep_graph=True)
            eig = lanczos(op, k=1, max_iters=iters, tol=tol, seed=seed, smallest=True, start=start)
            products += op.num_products
            op.release()
            lmax, lmin = eig.lambda_max, eig.smallest
            row["lambda_max"].append(lmax)
            row["lambda_min"].append(lmin)
            row["lambda_max_residual"].append(eig.residuals[0])
            row["lambda_min_residual"].append(eig.smallest_residual)
            row["converged"].append(bool(eig.converged[0] and eig.smallest_converged))
            row["ratio"].append(abs(lmin / lmax) if lmax > 0 else math.inf)
        for k in keys:
            rows[k].append(row[k])
    flat = [r for row in rows["ratio"] for r in row]
    conv = [c for row in rows["converged"] for c in row]
    return {"x": xs, "y": ys, **rows, "threshold": threshold,
            "nonconvex_fraction": sum(r > threshold for r in flat) / len(flat),
            "all_converged": all(conv), "converged_fraction": sum(conv) / len(conv), "hvp_count": products,
            "lanczos": {"iters": iters, "tol": tol, "seed": seed, "start": start}}
