"""Linear mode connectivity from a shared start (Frankle et al. 2020, "instability analysis").

The main run's checkpoint at ``spawn_epoch`` (0 = the initialization) is trained a second time to the last
epoch with the same hyperparameters but a different mini-batch order: the copy restores the checkpoint's
weights and optimizer state (momentum buffers) and draws its batches from a generator seeded with
``connect.data_seed``, where the main run's order comes from ``train.seed``. The straight line between the two
final weight vectors is then evaluated on the train and test splits; a barrier near zero means SGD's noise from
that point on leads to the same linearly connected basin. Optionally (``curve: bezier``) a quadratic Bézier
curve between the same endpoints is trained and evaluated beside the line (:mod:`landscape.paths.curves`).

The mini-batch order is the copy's only source of noise. With full-batch training (``train.batch_size: full``,
or a batch at least as large as the training set) every step sees the whole set whatever the order, the two
copies are the same network up to float rounding, and a barrier of ~0 between them would read as perfect
connectivity while nothing was tested: no barrier is reported then (the record's barriers are null, with the
reason in ``skipped``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from landscape.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint, model_from_checkpoint
from landscape.config import TrainConfig
from landscape.data import load_split
from landscape.errors import LandscapeError
from landscape.models import has_batch_norm
from landscape.parameters import flatten
from landscape.paths.barrier import barrier
from landscape.paths.curves import bezier_points, train_control_point
from landscape.paths.line import alpha_grid, line_points
from landscape.paths.points import BN_NOTE, evaluate_points
from landscape.stacked import AffinePoints
from landscape.training import make_optimizer, train_epoch

log = logging.getLogger(__name__)


def train_copy(ckpt: dict[str, Any], train_cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
               data_seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The spawned copy trained from ``ckpt`` to ``train_cfg.epochs`` with batches drawn from ``data_seed``."""
    model = model_from_checkpoint(ckpt).to(x.device)
    opt = make_optimizer(model, train_cfg)
    opt.load_state_dict(ckpt["optimizer_state"])
    batches = torch.Generator().manual_seed(data_seed)
    history = []
    for epoch in range(ckpt["epoch"] + 1, train_cfg.epochs + 1):
        loss, diverged = train_epoch(model, opt, x, y, train_cfg, batches, desc=f"copy epoch {epoch}")
        history.append({"epoch": epoch, "train_loss": loss, "diverged": diverged})
        if diverged:
            log.warning("the spawned copy diverged in epoch %d", epoch)
            break
    model.eval()
    return model, {"history": history, "diverged": any(h["diverged"] for h in history)}


def _path_rows(model: torch.nn.Module, points: AffinePoints, ts: list[float], key: str, train, test,
               batch_size: int, loss: str) -> tuple[list[dict[str, float]], dict[str, float]]:
    res, route = evaluate_points(model, points, {"train": train, "test": test}, batch_size, loss, bn_data=train[0],
                                 desc=key)
    rows = [{key: t, "loss": float(res["train"][0][j]), "test_loss": float(res["test"][0][j]),
             "train_error": 1.0 - float(res["train"][1][j]), "test_error": 1.0 - float(res["test"][1][j])}
            for j, t in enumerate(ts)]
    ts_list = [r[key] for r in rows]
    loss_b = barrier(ts_list, [r["loss"] for r in rows])
    test_err = barrier(ts_list, [r["test_error"] for r in rows])
    summary = {
        "loss_barrier": loss_b["barrier"],
        "loss_barrier_at": loss_b["alpha_star"],
        "test_loss_barrier": barrier(ts_list, [r["test_loss"] for r in rows])["barrier"],
        "error_barrier": test_err["barrier"],
        "error_instability_frankle": test_err["frankle"],
        "train_error_barrier": barrier(ts_list, [r["train_error"] for r in rows])["barrier"],
        "evaluation": route,
    }
    return rows, summary


BARRIER_KEYS = ("distance", "loss_barrier", "test_loss_barrier", "error_barrier", "error_instability_frankle",
                "train_error_barrier")


def connectivity(ckpt_dir: str | Path, data_root: str | Path, spawn_epoch: int, data_seed: int, points: int,
                 train_cfg: TrainConfig, batch_size: int = 4096, curve: str = "none",
                 curve_epochs: int = 2, device: str = "cpu") -> dict[str, Any]:
    """The record of ``reports/connectivity.json``: both copies, the line (and curve) with their barriers."""
    available = list_checkpoints(ckpt_dir)
    if spawn_epoch not in available:
        raise LandscapeError(f"connect.spawn_epoch = {spawn_epoch}: no checkpoint (training diverged or stopped at "
                             f"epoch {max(available) if available else None}); allowed: {sorted(available)}")
    last = max(available)
    x, y = (t.to(device) for t in load_split(data_root, "train"))
    train, test = (x, y), tuple(t.to(device) for t in load_split(data_root, "test"))
    spawn = load_checkpoint(checkpoint_path(ckpt_dir, spawn_epoch))
    kind = spawn["optimizer"].get("loss", "cross_entropy")
    record: dict[str, Any] = {"spawn_epoch": spawn_epoch, "data_seed": data_seed, "train_seed": train_cfg.seed,
                              "end_epoch": train_cfg.epochs, "loss_kind": kind}
    if last < train_cfg.epochs:
        record["skipped"] = f"the main run has no checkpoint of epoch {train_cfg.epochs} (it stopped at {last})"
        return record
    if train_cfg.full_batch or train_cfg.batch_size >= len(x):
        record.update({k: None for k in BARRIER_KEYS})
        record["skipped"] = (f"no SGD noise: train.batch_size = {train_cfg.batch_size} covers all {len(x)} training "
                             "examples in every step, so the copy would be the same network (its mini-batch order "
                             "is its only noise); no barrier is defined")
        return record
    main = model_from_checkpoint(load_checkpoint(checkpoint_path(ckpt_dir, train_cfg.epochs))).to(device)
    copy, info = train_copy(spawn, train_cfg, x, y, data_seed)
    record["copy"] = info
    if info["diverged"]:
        record["skipped"] = "the spawned copy diverged"
        return record
    theta_a, theta_b = flatten(main), flatten(copy)
    alphas = alpha_grid(points)
    rows, summary = _path_rows(main, line_points(theta_a, theta_b, alphas), alphas, "alpha", train, test, batch_size,
                               kind)
    record.update({"distance": float((theta_b - theta_a).double().norm()), "batch_norm": BN_NOTE[has_batch_norm(main)],
                   "alpha": alphas, "loss": [r["loss"] for r in rows], "test_loss": [r["test_loss"] for r in rows],
                   "train_error": [r["train_error"] for r in rows], "test_error": [r["test_error"] for r in rows],
                   **summary})
    if curve == "bezier":
        bs = len(x) if train_cfg.full_batch else train_cfg.batch_size
        theta_c, hist = train_control_point(main, theta_a, theta_b, x, y, curve_epochs, train_cfg, bs, data_seed,
                                            kind)
        crows, csummary = _path_rows(main, bezier_points(theta_a, theta_c, theta_b, alphas), alphas, "t", train, test,
                                     batch_size, kind)
        record["curve"] = {"kind": "quadratic bezier", "epochs": curve_epochs, "optimizer": train_cfg.optimizer,
                           "train_loss_history": hist, "t": alphas,
                           **{k: [r[k] for r in crows] for k in ("loss", "test_loss", "train_error", "test_error")},
                           **csummary}
    return record


def summary_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file ``reports/connect_summary.json``: barrier heights and what they are between."""
    keys = ("spawn_epoch", "data_seed", *BARRIER_KEYS, "skipped")
    out = {k: record[k] for k in keys if k in record}
    if "curve" in record:
        out.update({f"curve_{k}": record["curve"][k] for k in ("loss_barrier", "error_barrier")})
    return out
