"""The 2-D loss surface around a checkpoint: L(θ + x·δ + y·η) on a grid (Li et al. 2018).

δ and η span the plane ``surface.directions`` asks for (:mod:`landscape.paths.directions`): ``random``
(normalized Gaussian directions; the grid ``points`` × ``points`` over [−range, range]²), ``pca`` (the training
trajectory's top two principal directions, unit norm; the grid covers ±1.2 × the projected trajectory on each
axis, in parameter-space units) or ``hessian`` (the top two eigenvectors of the probe-set Hessian, unit norm;
over [−range, range]²). ``loss[i][j]`` is at (x = x[j], y = y[i]) (row-major, y down the rows), all points of
the plane evaluated with their first layer shared (:func:`landscape.paths.points.evaluate_points`). The centre
(x, y) = (0, 0) is the checkpoint itself.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.models import has_batch_norm
from landscape.parameters import flatten
from landscape.paths.directions import hessian_directions, pca_directions, plane_directions
from landscape.paths.points import BN_NOTE, evaluate_points
from landscape.stacked import AffinePoints

log = logging.getLogger(__name__)


def grid_axis(points: int, extent: float) -> list[float]:
    """``points`` evenly spaced values over [−extent, extent] (0 included when ``points`` is odd)."""
    return [float(v) for v in np.round(np.linspace(-extent, extent, points), 12)]


def plane_points(theta: torch.Tensor, delta: torch.Tensor, eta: torch.Tensor, xs: list[float],
                 ys: list[float]) -> AffinePoints:
    """θ + xδ + yη over the grid, row-major (y down the rows, x along them), as an affine family."""
    grid = torch.tensor([[xv, yv] for yv in ys for xv in xs], dtype=theta.dtype, device=theta.device)
    return AffinePoints(theta, torch.stack([delta, eta]), grid)


def surface_on_plane(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], delta: torch.Tensor,
                     eta: torch.Tensor, xs: list[float], ys: list[float], batch_size: int = 4096,
                     loss: str = "cross_entropy", bn_data: torch.Tensor | None = None) -> dict[str, Any]:
    """Loss and accuracy of the model's θ + xδ + yη over the grid ``xs`` × ``ys`` (row-major, y down the rows)."""
    theta = flatten(model)
    res, route = evaluate_points(model, plane_points(theta, delta, eta, xs, ys), {"grid": data}, batch_size, loss,
                                 bn_data=bn_data, desc="surface")
    losses, accs = res["grid"]
    d64, e64 = delta.double(), eta.double()
    return {
        "x": xs, "y": ys, "loss": losses.view(len(ys), len(xs)).tolist(),
        "accuracy": accs.view(len(ys), len(xs)).tolist(), "evaluation": route,
        "samples": len(data[1]), "loss_kind": loss,
        "direction_norms": {"delta": float(d64.norm()), "eta": float(e64.norm()),
                            "theta": float(theta.double().norm()),
                            "cosine_delta_eta": float(d64 @ e64 / (d64.norm() * e64.norm()))},
        "batch_norm": BN_NOTE[has_batch_norm(model)],
    }


def loss_surface(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    points: int,
    extent: float,
    normalization: str,
    seed: int,
    orthogonalize: bool = False,
    batch_size: int = 4096,
    loss: str = "cross_entropy",
    bn_data: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The surface on a random plane (``surface.directions: random``); the record of ``reports/surface.json``
    less epoch and split."""
    delta, eta = plane_directions(model, normalization, seed, orthogonalize)
    xs, ys = grid_axis(points, extent), grid_axis(points, extent)
    record = surface_on_plane(model, data, delta, eta, xs, ys, batch_size, loss, bn_data)
    return {**record, "directions": "random", "normalization": normalization, "orthogonalize": orthogonalize,
            "seed": seed, "range": extent, "points": points,
            "plane": {"kind": "random", "normalization": normalization, "seed": seed,
                      "orthogonalize": orthogonalize}}


PCA_MARGIN = 1.2  # the pca grid spans ±1.2 × the largest projected coordinate of the trajectory on each axis


def surface_of_checkpoint(ckpt_dir: str, data_root: str, inp: Any, device: str = "cpu") -> dict[str, Any]:
    """The surface stage: the checkpoint of ``inp.epoch`` (the last finite one, with a note, when training
    diverged before it) on ``inp.split``, on the plane ``inp.directions`` asks for; the record of
    reports/surface.json."""
    from landscape.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint, model_from_checkpoint
    from landscape.data import load_split, probe_indices
    from landscape.errors import LandscapeError

    available = sorted(list_checkpoints(ckpt_dir))
    if not available:
        raise LandscapeError(f"no checkpoints in {ckpt_dir}/: run the train stage first")
    epoch, note = inp.epoch, None
    if epoch not in available:
        if epoch < available[-1]:
            raise LandscapeError(f"surface.epoch = {epoch}: no checkpoint; allowed: {available}")
        note = (f"surface.epoch {epoch} has no checkpoint (training stopped at epoch {available[-1]}, diverged or "
                f"interrupted); the surface is around the last finite checkpoint, epoch {available[-1]}")
        log.warning(note)
        epoch = available[-1]
    ckpt = load_checkpoint(checkpoint_path(ckpt_dir, epoch))
    model = model_from_checkpoint(ckpt).to(device)
    kind = ckpt["optimizer"].get("loss", "cross_entropy")
    train = tuple(t.to(device) for t in load_split(data_root, "train"))
    probe = None
    if inp.split == "probe" or inp.directions == "hessian" or inp.curvature:
        idx = probe_indices(len(train[0]), inp.probe_samples, inp.probe_seed)
        probe = (train[0][idx], train[1][idx])
    data = probe if inp.split == "probe" else (
        train if inp.split == "train" else tuple(t.to(device) for t in load_split(data_root, "test")))
    common = {"epoch": epoch, "split": inp.split, **({"note": note} if note else {})}
    if inp.directions == "random":
        delta, eta = plane_directions(model, inp.normalization, inp.seed, inp.orthogonalize)
        record = loss_surface(model, data, inp.points, inp.range, inp.normalization, inp.seed, inp.orthogonalize,
                              inp.eval_batch_size, kind, bn_data=train[0])
        return {**common, **record, **_curvature(model, delta, eta, inp.range, inp.range, inp, probe, kind, train)}
    if inp.directions == "pca":
        epochs = [e for e in available if e <= available[-1]]
        if len(epochs) < 3:
            raise LandscapeError(f"surface.directions = pca needs at least 3 saved checkpoints, found {epochs}")
        trajectory = torch.stack([flatten(model_from_checkpoint(load_checkpoint(checkpoint_path(ckpt_dir, e))))
                                  for e in epochs]).to(device)
        delta, eta, plane = pca_directions(trajectory, epochs, flatten(model))
        ex = PCA_MARGIN * max(abs(p["x"]) for p in plane["trajectory"])
        ey = PCA_MARGIN * max(abs(p["y"]) for p in plane["trajectory"])
        xs, ys = grid_axis(inp.points, ex or inp.range), grid_axis(inp.points, ey or inp.range)
        plane = {"kind": "pca", **plane, "extent": [ex, ey], "margin": PCA_MARGIN}
    else:  # hessian: the top two eigenvectors at the centre, of the network at θ (statistics recomputed)
        from landscape.models import network_at

        at_theta = network_at(copy.deepcopy(model), train[0], inp.eval_batch_size)
        delta, eta, plane = hessian_directions(at_theta, *probe, kind, inp.lanczos_iters, inp.tol, inp.probe_seed,
                                               inp.chunk_size, inp.lanczos_start)
        if plane["note"]:
            log.warning(plane["note"])
        xs, ys = grid_axis(inp.points, inp.range), grid_axis(inp.points, inp.range)
        plane = {"kind": "hessian", **plane, "probe_samples": inp.probe_samples, "probe_seed": inp.probe_seed}
    record = surface_on_plane(model, data, delta, eta, xs, ys, inp.eval_batch_size, kind, bn_data=train[0])
    return {**common, **record, "directions": inp.directions, "points": inp.points,
            "range": inp.range if inp.directions == "hessian" else None, "plane": plane,
            **_curvature(model, delta, eta, xs[-1], ys[-1], inp, probe, kind, train)}


def _curvature(model: nn.Module, delta: torch.Tensor, eta: torch.Tensor, ex: float, ey: float, inp: Any,
               probe: Any, kind: str, train: Any) -> dict[str, Any]:
    """``{"curvature": the map on the sub-grid}`` when ``surface.curvature`` asks for it (else nothing)."""
    if not inp.curvature:
        return {}
    from landscape.paths.curvature_map import curvature_map

    xs, ys = grid_axis(inp.curvature_points, ex), grid_axis(inp.curvature_points, ey)
    return {"curvature": curvature_map(model, flatten(model), delta, eta, xs, ys, probe, kind, train[0],
                                       inp.lanczos_iters, inp.tol, inp.probe_seed, inp.chunk_size, inp.lanczos_start,
                                       inp.curvature_threshold, inp.eval_batch_size)}


def surface_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file ``reports/surface_summary.json``: what defines the plane (a PCA plane's explained
    variance, a Hessian plane's eigenvalues), and the curvature map's scalar summary when there is one."""
    if not record.get("enabled", True) or "loss" not in record:
        return {"enabled": False}
    out: dict[str, Any] = {"directions": record.get("directions", "random"), "epoch": record["epoch"],
                           "split": record["split"], "centre_loss": record["loss"][len(record["y"]) // 2][
                               len(record["x"]) // 2]}
    plane = record.get("plane") or {}
    if plane.get("kind") == "pca":
        out["explained_variance"] = sum(plane["explained_variance"])
    elif plane.get("kind") == "hessian":  # the plane's two eigenvalues, and whether Lanczos converged to them
        out.update({f"lambda_{i + 1}": v for i, v in enumerate(plane["eigenvalues"])})
        out["eigenvectors_converged"] = bool(all(plane["converged"]))
    if "curvature" in record:
        c = record["curvature"]
        out.update({"nonconvex_fraction": c["nonconvex_fraction"], "curvature_threshold": c["threshold"],
                    "curvature_points": len(c["x"]) * len(c["y"]), "curvature_all_converged": c["all_converged"],
                    "curvature_converged_fraction": _converged_fraction(c)})
    return out


def _converged_fraction(curvature: dict[str, Any]) -> float:
    """Share of the curvature map's points whose λ_max and λ_min both converged (maps written before this key)."""
    if "converged_fraction" in curvature:
        return curvature["converged_fraction"]
    flat = [c for row in curvature["converged"] for c in row]
    return sum(flat) / len(flat)
