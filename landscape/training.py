"""Training with checkpoints and resume: mini-batch or full-batch, SGD (+ momentum / Nesterov, as
``torch.optim.SGD``) or Adam, on the cross-entropy or the squared error.

Per epoch the training set is shuffled by a seeded generator and visited once in batches of
``train.batch_size`` (the last batch may be smaller); with ``batch_size: full`` an epoch is one
gradient-descent step on the whole training set (no shuffling), so ``train.epochs`` counts steps.
The recorded ``train_loss`` of an epoch is the running mean of the mini-batch losses seen during that epoch
(weighted by batch size), i.e. a loss measured while the weights move; the probe stage measures the exact
full-split loss at each checkpoint.

Divergence: a non-finite mini-batch loss or parameter stops training at that epoch; the epoch is
recorded as ``diverged_epoch`` and no checkpoint holding non-finite weights is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from landscape.checkpoints import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from landscape.config import ModelConfig, TrainConfig
from landscape.data import NUM_CLASSES, load_split, read_json
from landscape.evaluation import batch_loss
from landscape.io import write_json
from landscape.models import make_model

log = logging.getLogger(__name__)


_CODE = ("training.py", "models.py", "data.py", "checkpoints.py", "config.py", "derived.py", "evaluation.py")
WALL_TIMES = ".wall_times.json"  # kept beside the checkpoints, outside DVC's view (.dvcignore): timings vary


def fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, data_root: Path) -> str:
    """SHA-256 of everything the training trajectory depends on: model + train params (except ``epochs`` and
    ``checkpoint_every``, which only say how far to go and what to keep), the data digests, the thread count
    (parallel reductions round differently), the torch version and the code that trains (so a fix in the
    training code is never 'resumed' past by an old checkpoint)."""
    meta = read_json(Path(data_root) / "dataset.json")
    here = Path(__file__).parent
    payload = {
        "code": {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _CODE},
        "torch": torch.__version__,
        "model": model_cfg.model_dump(),
        "train": train_cfg.model_dump(exclude={"epochs", "checkpoint_every"}),
        "data": {s: [meta[s]["sha256_x"], meta[s]["sha256_y"]] for s in ("train", "test")},
        "normalization": meta["normalization"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def remove_stale_temp_files(ckpt_dir: Path) -> list[Path]:
    """Delete ``.epoch_NNN.pt.*.tmp`` files left by a write that was killed mid-way."""
    stale = sorted(Path(ckpt_dir).glob(".epoch_*.tmp"))
    for p in stale:
        p.unlink()
    if stale:
        log.info("removed %d temporary file(s) of an interrupted checkpoint write", len(stale))
    return stale


def _resume_point(ckpt_dir: Path, fp: str, saved: list[int]) -> dict[str, Any] | None:
    """Keep exactly the checkpoints a fresh run with these params would have written so far, and return
    the one to continue from: the newest checkpoint before which every saved epoch is present.

    Removed (one log line): unreadable files, checkpoints of another fingerprint (other params, data,
    threads or training code), and epochs a fresh run would not save (``checkpoint_every`` or ``epochs``
    changed). Missing epochs are produced by training on from the last complete prefix.
    """
    wanted = set(saved)
    removed: dict[str, list[int]] = {"unreadable": [], "other params, data or code": [], "not saved now": []}
    kept: dict[int, dict[str, Any]] = {}
    for epoch, path in list_checkpoints(ckpt_dir).items():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
            path.unlink()
            removed["unreadable"].append(epoch)
            continue
        if ckpt.get("fingerprint") != fp or ckpt.get("epoch") != epoch:
            removed["other params, data or code"].append(epoch)
        elif epoch not in wanted:
            removed["not saved now"].append(epoch)
        else:
            kept[epoch] = ckpt
            continue
        path.unlink()
    for why, epochs in removed.items():
        if epochs and why != "unreadable":
            reason = ("made with other params, data or training code" if why.startswith("other")
                      else "that a fresh run with these params would not write")
            log.warning("removed %d checkpoint(s) (epochs %s) %s; not resuming from them", len(epochs), epochs,
                        reason)
    best = None
    for epoch in saved:
        if epoch not in kept:
            break
        best = kept[epoch]
    return best


def _read_wall_times(ckpt_dir: Path, fp: str) -> dict[int, float]:
    path = Path(ckpt_dir) / WALL_TIMES
    try:
        blob = read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(blob, dict) or blob.get("fingerprint") != fp:
        return {}
    return {int(k): float(v) for k, v in blob.get("wall_time_s", {}).items()}


def to_cpu(obj: Any) -> Any:
    """Every tensor in a (nested) state dict moved to the CPU; the object itself when nothing is elsewhere, so
    that a CPU run's checkpoint bytes do not change."""
    if not _off_cpu(obj):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # module versions (batch norm reads them on load)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _off_cpu(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.device.type != "cpu"
    if isinstance(obj, dict):
        return any(_off_cpu(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_off_cpu(v) for v in obj)
    return False


def make_optimizer(params: nn.Module | list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (momentum, Nesterov) or ``torch.optim.Adam`` (β₁ = ``train.momentum``), with the
    run's learning rate and weight decay, over a model's parameters or a list of tensors."""
    params = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, cfg.adam_beta2), eps=cfg.adam_eps,
                                weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def optimizer_record(cfg: TrainConfig) -> dict[str, Any]:
    """What downstream stages need to know of the training (stored in every checkpoint)."""
    return {"name": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov,
            "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size, "adam_beta2": cfg.adam_beta2,
            "adam_eps": cfg.adam_eps, "loss": cfg.loss}


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                batches: torch.Generator, desc: str = "") -> tuple[float, bool]:
    """One pass over (x, y): mini-batches in an order drawn from ``batches`` (full batch: one step on all of
    it, no draw). Returns (mean of the mini-batch losses weighted by size, diverged)."""
    model.train()
    n = len(x)
    if cfg.full_batch:
        order, size = None, n
    else:
        order, size = torch.randperm(n, generator=batches), cfg.batch_size
    total, seen = 0.0, 0
    steps = range(0, n, size)
    bar = tqdm(steps, desc=desc, leave=False, mininterval=1.0, disable=len(steps) < 10)
    for i in bar:
        idx = order[i : i + size] if order is not None else None
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        loss = batch_loss(model(xb), yb, cfg.loss)
        if not torch.isfinite(loss):
            return math.nan, True
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(yb)
        seen += len(yb)
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    bar.close()
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return math.nan, True
    return total / seen, False


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data_root: Path,
    ckpt_dir: Path,
    resume: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train on ``device``, writing ``ckpt_dir/epoch_NNN.pt`` at the saved epochs (from CPU tensors, so that a
    checkpoint does not depend on the device); return the training history.

    With ``resume``, an existing checkpoint of the same fingerprint is continued from (model, optimizer,
    and both RNG states), which gives bit-identical results to an uninterrupted run on CPU.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(ckpt_dir)
    x, y = load_split(data_root, "train")
    x, y = x.to(device), y.to(device)
    fp = fingerprint(model_cfg, train_cfg, data_root)
    saved_list = train_cfg.saved_epochs()
    saved = set(saved_list)

    torch.manual_seed(train_cfg.seed)
    model = make_model(model_cfg, x.shape[1], NUM_CLASSES).to(device)  # initialized on the CPU generator
    opt = make_optimizer(model, train_cfg)
    batches = torch.Generator().manual_seed(train_cfg.seed)
    history: list[dict[str, Any]] = []
    start = 0
    wall_times: dict[int, float] = {}

    if resume:
        ckpt = _resume_point(ckpt_dir, fp, saved_list)
        wall_times = _read_wall_times(ckpt_dir, fp)
    else:
        ckpt = None
        for path in list_checkpoints(ckpt_dir).values():
            path.unlink()
        log.info("training from scratch (no resume)")
    if ckpt is not None:
        start = ckpt["epoch"]
        model = model_from_checkpoint(ckpt).to(device)
        opt = make_optimizer(model, train_cfg)
        opt.load_state_dict(ckpt["optimizer_state"])  # moves the state to the parameters' device
        torch.set_rng_state(ckpt["rng"]["torch"])
        batches.set_state(ckpt["rng"]["batches"])
        history = [{**h, "wall_time_s": wall_times.get(h["epoch"])} for h in ckpt["history"]]
        if start > 0:
            log.info("resuming from %s (epoch %d of %d)", checkpoint_path(ckpt_dir, start), start,
                     train_cfg.epochs)

    def record_wall_times() -> None:
        times = {str(h["epoch"]): h["wall_time_s"] for h in history if h.get("wall_time_s") is not None}
        write_json(ckpt_dir / WALL_TIMES, {"fingerprint": fp, "wall_time_s": times})

    def save(epoch: int) -> None:
        save_checkpoint(
            checkpoint_path(ckpt_dir, epoch),
            {
                "epoch": epoch,
                "model": model.spec,
                "model_state": to_cpu(model.state_dict()),
                "optimizer": optimizer_record(train_cfg),
                "optimizer_state": to_cpu(opt.state_dict()),
                "rng": {"torch": torch.get_rng_state(), "batches": batches.get_state()},
                "fingerprint": fp,
                # wall times are left out so that checkpoints are bit-identical across runs
                "history": [{k: v for k, v in h.items() if k != "wall_time_s"} for h in history],
            },
        )

    if start == 0:
        save(0)
    diverged_epoch = next((h["epoch"] for h in history if h["diverged"]), None)
    log_every = max(1, train_cfg.epochs // 20)  # long full-batch runs: about 20 lines, not one per step
    epochs = range(start + 1, train_cfg.epochs + 1)
    outer = tqdm(epochs, desc="train", leave=False, mininterval=1.0, disable=len(epochs) < 50)
    for epoch in outer:
        if diverged_epoch is not None:
            break
        t0 = time.perf_counter()
        loss, diverged = train_epoch(model, opt, x, y, train_cfg, batches, desc=f"epoch {epoch}/{train_cfg.epochs}")
        entry = {"epoch": epoch, "train_loss": loss, "wall_time_s": time.perf_counter() - t0, "diverged": diverged}
        history.append(entry)
        if diverged:
            record_wall_times()
            diverged_epoch = epoch
            log.warning("training diverged in epoch %d (non-finite loss or weights); stopping", epoch)
            break
        if epoch % log_every == 0 or epoch == train_cfg.epochs:
            log.info("epoch %d/%d: running train loss %.4f (%.2f s)", epoch, train_cfg.epochs, loss,
                     entry["wall_time_s"])
        if epoch in saved:
            record_wall_times()
            save(epoch)
    outer.close()
    return {
        "epochs": train_cfg.epochs,
        "resumed_from": start if ckpt is not None else None,
        "diverged": diverged_epoch is not None,
        "diverged_epoch": diverged_epoch,
        "history": history,
        "checkpoints": sorted(list_checkpoints(ckpt_dir)),
        "fingerprint": fp,
    }
