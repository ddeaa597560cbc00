"""The ``measures`` stage's record: every family of :mod:`landscape.measures` at the final finite checkpoint,
against the initialization (epoch 0), with the settings that made each number."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from landscape.config import MeasuresConfig

log = logging.getLogger(__name__)
FAMILIES = {"norm & margin": "norms", "pac-bayes": "pacbayes", "worst-case flatness": "sharpness_flatness",
            "weight spectrum": "weightwatcher", "optimization": "optimization"}


def measure_run(ckpt_dir: str | Path, data_root: str | Path, history: dict[str, Any], cfg: MeasuresConfig,
                batch_size: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """The record of ``reports/measures.json`` (``timings`` — seconds per family — is returned apart: it is
    kept out of the record, which must be byte-identical run to run)."""
    from landscape.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint, model_from_checkpoint
    from landscape.data import load_split
    from landscape.errors import LandscapeError
    from landscape.measures.norms import norm_measures
    from landscape.measures.optimization import steps_to_loss
    from landscape.models import has_batch_norm, network_at

    available = sorted(list_checkpoints(ckpt_dir))
    if 0 not in available:
        raise LandscapeError(f"measures need the initialization (epoch 0 checkpoint); found {available}")
    if len(available) < 2:  # training diverged in its first epoch: a result, not a failure (README, Reliability)
        return {"epoch": None, "init_epoch": 0, "values": {}, "families": {}, "settings": cfg.model_dump(),
                "skipped": "training diverged before the first trained checkpoint: no network to measure"}, {}
    epoch = available[-1]
    ckpt = load_checkpoint(checkpoint_path(ckpt_dir, epoch))
    x, y = (t.to(device) for t in load_split(data_root, "train"))
    model = network_at(model_from_checkpoint(ckpt).to(device), x, batch_size)
    init = network_at(model_from_checkpoint(load_checkpoint(checkpoint_path(ckpt_dir, 0))).to(device), x, batch_size)
    timings: dict[str, float] = {}
    record: dict[str, Any] = {"epoch": epoch, "init_epoch": 0, "examples": len(y), **(
        {"note": f"the last finite checkpoint, epoch {epoch} (training diverged or stopped before "
                 f"{history.get('epochs', epoch)})"} if history.get("diverged") else {}),
                              "batch_norm_statistics": "recomputed on the training split" if has_batch_norm(model)
                              else None, "settings": cfg.model_dump()}
    t0 = time.perf_counter()
    record["norms"] = norm_measures(model, init, x, y, cfg.margin_percentile, batch_size)
    timings["norm & margin"] = time.perf_counter() - t0
    xs, ys = x, y  # the searches' examples: a seeded subset of at most pacbayes_examples
    if cfg.pacbayes_examples is not None and cfg.pacbayes_examples < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.pacbayes_seed))
        idx = idx[: cfg.pacbayes_examples].sort().values.to(x.device)
        xs, ys = x[idx], y[idx]
    record["pacbayes"] = None
    if cfg.pacbayes:
        from landscape.measures.pacbayes import pacbayes_measures

        t0 = time.perf_counter()
        record["pacbayes"] = pacbayes_measures(model, init, xs, ys, cfg.pacbayes_deviation, cfg.pacbayes_depth,
                                               cfg.pacbayes_samples, cfg.pacbayes_tolerance, cfg.pacbayes_seed,
                                               cfg.pacbayes_magnitude_eps, batch_size)
        timings["pac-bayes"] = time.perf_counter() - t0
    record["sharpness_flatness"] = None
    if cfg.sharpness:
        from landscape.measures.worst_case import sharpness_flatness_measures

        t0 = time.perf_counter()
        record["sharpness_flatness"] = sharpness_flatness_measures(
            model, xs, ys, cfg.pacbayes_deviation, cfg.sharpness_depth, cfg.sharpness_steps, cfg.pacbayes_tolerance,
            cfg.pacbayes_magnitude_eps, batch_size)
        record["sharpness_flatness"]["examples_seed"] = cfg.pacbayes_seed
        timings["worst-case flatness"] = time.perf_counter() - t0
    record["weightwatcher"] = None
    if cfg.weightwatcher:
        from landscape.measures.spectra import weightwatcher_measures

        t0 = time.perf_counter()
        record["weightwatcher"] = weightwatcher_measures(copy.deepcopy(model))
        timings["weight spectrum"] = time.perf_counter() - t0
    batch = ckpt["optimizer"].get("batch_size", "full")
    record["optimization"] = {"values": {"steps_to_loss": steps_to_loss(history, len(y), batch, cfg.steps_threshold)[
        "steps"]}, **steps_to_loss(history, len(y), batch, cfg.steps_threshold)}
    record["values"] = {name: value for family, key in FAMILIES.items() if record.get(key)
                        for name, value in record[key]["values"].items()}
    record["families"] = {family: sorted(record[key]["values"]) for family, key in FAMILIES.items() if record.get(key)}
    # values censored at the top of a search's interval (the accuracy never fell by the deviation, e.g. at chance)
    record["at_interval_top"] = [name for key in ("pacbayes", "sharpness_flatness") if record.get(key)
                                 for name in record[key]["at_interval_top"]]
    # the margin percentile's example is misclassified: γ = |a wrong margin| (as the reference code), flagged
    record["margin_negative"] = bool(record["norms"]["margin_negative"])
    log.info("measures at epoch %d: %s", epoch, ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return record, timings
