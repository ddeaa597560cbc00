"""One geometry probe of one checkpoint: every per-epoch metric in one record.

Definitions (docs/theory.md derives each; η learning rate, β momentum, g = ∇L_P(θ), H = ∇²L_P(θ)):

* train_loss / test_loss / test_accuracy: over the full train / test split (eval mode).
* grad_norm = ‖g‖₂ on the probe set P.
* lambda_max = largest algebraic eigenvalue of H (Lanczos), with its measured relative residual.
* directional_sharpness = (1/2K) Σ_k [L_P(θ+d_k) + L_P(θ−d_k) − 2L_P(θ)], ‖d_k‖ = ρ.
* stability_ratio = η·λ_max; stability_threshold = the η·λ at which the optimizer diverges on a quadratic.
* lgdi = (η/2)·gᵀHg/‖g‖²: L(θ−ηg) − L(θ) ≈ −η‖g‖²(1 − lgdi), so lgdi > 1 means a plain step of size η
  raises the loss to second order.
* lgdi_effective = the same with the heavy-ball steady-state step η/(1−β) (a constant gradient g moves
  momentum SGD by η/(1−β)·g per step): (η/(2(1−β)))·gᵀHg/‖g‖². It is the one to read beside the
  momentum-aware stability threshold; lgdi keeps the original study's definition (plain step η).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from landscape.config import ProbeConfig
from landscape.curvature.density import spectral_density
from landscape.curvature.eigenvalues import lanczos
from landscape.curvature.outliers import count_outliers
from landscape.curvature.hvp import HessianOperator
from landscape.curvature.trace import hutchinson_trace, hutchpp_trace
from landscape.evaluation import evaluate, loss_and_gradient, loss_function, losses_function, sum_loss
from landscape.models import has_batch_norm, network_at
from landscape.parameters import flatten
from landscape.sharpness import directional_sharpness, trace_prediction, worst_case_sharpness


SEED_KEYS = ("epoch", "train_loss", "test_loss", "test_accuracy", "grad_norm", "lambda_max",
             "directional_sharpness", "lgdi", "stability_ratio")


def stability_threshold(momentum: float, nesterov: bool, optimizer: str = "sgd") -> float | None:
    """η·λ above which SGD (as ``torch.optim.SGD``) diverges on f(x) = λx²/2 with full-batch gradients.

    Plain GD: 2. Heavy ball: 2(1+β). Nesterov: 2(1+β)/(1+2β). Adam: None — its step is preconditioned
    by the running second moments, so η·λ_max of the *raw* Hessian has no fixed divergence threshold (the
    known threshold, 2(1+β₁)/(1−β₁) = 38 at β₁ = 0.9, is for the preconditioned Hessian; Cohen et al. 2022).
    """
    if optimizer == "adam":
        return None
    b = momentum
    if nesterov:
        return 2.0 * (1.0 + b) / (1.0 + 2.0 * b)
    return 2.0 * (1.0 + b)


def effective_lr(lr: float, momentum: float) -> float:
    """Heavy-ball steady-state step η/(1−β): the distance momentum SGD moves per step under a constant gradient."""
    return lr / (1.0 - momentum)


def lgdi(lr: float, grad: torch.Tensor, hg: torch.Tensor) -> float:
    """Loss Geometry Difficulty Index (η/2)·gᵀHg/‖g‖² (NaN where g = 0)."""
    gg = float(grad.double() @ grad.double())
    if gg == 0.0:
        return math.nan
    return 0.5 * lr * float(grad.double() @ hg.double()) / gg


def probe(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    probe_data: tuple[torch.Tensor, torch.Tensor],
    optimizer: dict[str, Any],
    cfg: ProbeConfig,
    density: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """All metrics of one checkpoint as one flat record (keys of mnist_geometry_metrics.json), and the
    spectral density (SLQ) if ``density``. A ``timings`` dict, if given, receives the wall-clock seconds of
    each part (kept out of the record, which must be bit-identical run to run)."""
    last = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal last
        now = time.perf_counter()
        if timings is not None:
            timings[part] = timings.get(part, 0.0) + now - last
        last = now

    model.eval()
    lr, beta, nesterov = optimizer["lr"], optimizer["momentum"], optimizer["nesterov"]
    kind, opt_name = optimizer.get("loss", "cross_entropy"), optimizer.get("name", "sgd")
    train_loss, train_acc = evaluate(model, *train, batch_size=cfg.eval_batch_size, loss=kind)
    test_loss, test_acc = evaluate(model, *test, batch_size=cfg.eval_batch_size, loss=kind)
    lap("full-split evaluation")

    xp, yp = probe_data
    op = HessianOperator(model, xp, yp, loss_fn=sum_loss(kind), chunk_size=cfg.chunk_size, keep_graph=True)
    lap("loss, gradient and HVP cache")
    eig = lanczos(op, k=cfg.top_k, max_iters=cfg.lanczos_iters, tol=cfg.tol, seed=cfg.seed, smallest=cfg.smallest,
                  start=cfg.lanczos_start)
    lam = eig.lambda_max
    lap("lanczos")
    hg = op.matvec(op.grad)
    lap("lgdi")
    estimator = hutchpp_trace if cfg.trace_method == "hutch++" else hutchinson_trace
    trace = estimator(op, cfg.trace_samples, seed=cfg.seed) if cfg.trace_samples > 0 else None
    products = op.num_products
    lap("trace")
    spectrum, outliers = None, None
    if density or cfg.outliers:
        sd = spectral_density(op, runs=cfg.density_runs, steps=cfg.density_steps, seed=cfg.seed)
        if density:
            spectrum = {**sd.to_dict(), "hessian_trace_over_n": trace.trace / op.n if trace else None}
        if cfg.outliers:
            outliers = count_outliers(list(eig.eigenvalues), list(sd.grid), list(sd.density), sd.sigma, op.n)
    op.release()
    lap("density")

    theta = flatten(model)
    sharp = directional_sharpness(
        loss_function(model, xp, yp, cfg.eval_batch_size, loss=kind),
        theta,
        cfg.sharpness_radius,
        cfg.sharpness_directions,
        seed=cfg.seed,
        losses=losses_function(model, xp, yp, cfg.eval_batch_size, loss=kind),
    )
    lap("directional sharpness")
    grad_fn = loss_and_gradient(model, xp, yp, cfg.eval_batch_size, loss=kind)
    worst = worst_case_sharpness(grad_fn, theta, cfg.sharpness_radius, cfg.ascent_steps, floor=sharp.max_rise,
                                 seed=cfg.seed, floor_distance=cfg.sharpness_radius)
    magnitude = theta.abs()
    adaptive = directional_sharpness(None, theta, cfg.adaptive_radius, cfg.sharpness_directions, seed=cfg.seed,
                                     losses=losses_function(model, xp, yp, cfg.eval_batch_size, loss=kind),
                                     scale=magnitude)
    # its own radius: the average's random samples lie in another ball, so they are no floor here
    adaptive_worst = worst_case_sharpness(grad_fn, theta, cfg.adaptive_worst_case_radius, cfg.ascent_steps,
                                          scale=magnitude, seed=cfg.seed)
    lap("worst-case and adaptive sharpness")
    n = theta.numel()
    record = {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "grad_norm": float(torch.linalg.vector_norm(op.grad.double())),
        "lambda_max": lam,
        "directional_sharpness": sharp.value,
        "lgdi": lgdi(lr, op.grad, hg),
        "stability_ratio": lr * lam,
        # beyond the original study's keys
        "lgdi_effective": lgdi(effective_lr(lr, beta), op.grad, hg) if opt_name == "sgd" else None,
        "train_accuracy": train_acc,
        "generalization_gap": test_loss - train_loss,
        "probe_loss": op.loss,
        "probe_samples": op.N,
        "num_params": n,
        "lambda_max_residual": eig.residuals[0],
        "lambda_top": list(eig.eigenvalues),
        "lambda_top_residuals": list(eig.residuals),
        "lambda_top_converged": list(eig.converged),
        "lambda_min": eig.smallest,
        "lambda_min_residual": eig.smallest_residual,
        "lambda_min_converged": eig.smallest_converged,
        "lambda_max_converged": eig.converged[0],
        "lanczos_iterations": eig.iterations,
        "lanczos_iterations_smallest": eig.smallest_iterations,
        "lanczos_start": cfg.lanczos_start,
        "hvp_count": products,
        "hvp_route": op.route,
        "stability_threshold": stability_threshold(beta, nesterov, opt_name),
        "optimizer": opt_name,
        "loss": kind,
        "lr": lr,
        "momentum": beta,
        "nesterov": nesterov,
        "directional_sharpness_stderr": sharp.stderr,
        "sharpness_radius": sharp.radius,
        "sharpness_directions": sharp.directions,
        "hessian_trace": trace.trace if trace else None,
        "hessian_trace_stderr": trace.stderr if trace else None,
        "trace_samples": trace.samples if trace else 0,
        "hessian_trace_method": trace.method if trace else None,
        "sharpness_trace_prediction": trace_prediction(trace.trace, sharp.radius, n) if trace else None,
        "worst_case_sharpness": worst.value,
        "worst_case_best_step": worst.best_step,
        "worst_case_distance": worst.distance,
        "ascent_steps": cfg.ascent_steps,
        "adaptive_sharpness": adaptive.value,
        "adaptive_sharpness_stderr": adaptive.stderr,
        "adaptive_worst_case_sharpness": adaptive_worst.value,
        "adaptive_worst_case_distance": adaptive_worst.distance,
        "adaptive_radius": cfg.adaptive_radius,
        "adaptive_worst_case_radius": cfg.adaptive_worst_case_radius,
    }
    if outliers is not None:  # eigenvalues separated from the bulk (curvature/outliers.py states the rule)
        record.update({"hessian_outliers": outliers["count"], "hessian_bulk_edge": outliers["bulk_edge"],
                       "hessian_outlier_cutoff": outliers["cutoff"],
                       "hessian_outliers_saturated": outliers["saturated"]})
    return record, spectrum


def stored_statistics_losses(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                             test: tuple[torch.Tensor, torch.Tensor], cfg: ProbeConfig, kind: str) -> dict[str, Any]:
    """With batch norm: the full-split losses with the statistics stored in the checkpoint (training's running
    averages), kept beside the probe's numbers, which are those of the network at θ (statistics recomputed on
    the training split). ``batch_norm_statistics`` says which the record's numbers use."""
    if not has_batch_norm(model):
        return {"batch_norm_statistics": None}
    model.eval()
    tr = evaluate(model, *train, batch_size=cfg.eval_batch_size, loss=kind)
    te = evaluate(model, *test, batch_size=cfg.eval_batch_size, loss=kind)
    return {"batch_norm_statistics": "recomputed on the training split at this checkpoint",
            "train_loss_stored_statistics": tr[0], "train_accuracy_stored_statistics": tr[1],
            "test_loss_stored_statistics": te[0], "test_accuracy_stored_statistics": te[1]}


def check_probe_size(data_root: str, samples: int) -> None:
    """probe.samples must fit in the prepared training split (known only after the download stage)."""
    from landscape.config import ConfigError
    from landscape.data import load_split

    n_train = len(load_split(data_root, "train")[1])
    if samples > n_train:
        raise ConfigError(
            f"params.yaml: probe.samples = {samples} exceeds the training split ({n_train} examples); "
            f"allowed: 1..{n_train}",
            key="probe.samples",
        )


def probe_checkpoints(
    epochs: list[int],
    data_root: str,
    ckpt_dir: str,
    cfg: ProbeConfig,
    density_epochs: list[int] = (),
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Probe each of ``epochs`` that has a checkpoint; return (records, probe-set record, spectra record).

    Epochs without a checkpoint (training diverged before them) get ``{"epoch": e, "diverged": true}``
    records. With ``probe.density_epochs: last`` the density is taken at the last probed checkpoint that
    exists; requested density epochs without a checkpoint are listed in the spectra record with the reason.
    """
    import logging

    from tqdm import tqdm

    from landscape.checkpoints import list_checkpoints, load_checkpoint, model_from_checkpoint
    from landscape.data import load_split, probe_indices

    log = logging.getLogger(__name__)
    train = load_split(data_root, "train")
    test = load_split(data_root, "test")
    idx = probe_indices(len(train[0]), cfg.samples, cfg.seed)
    probe_data = (train[0][idx].to(device), train[1][idx].to(device))
    train = (train[0].to(device), train[1].to(device))
    test = (test[0].to(device), test[1].to(device))
    available = list_checkpoints(ckpt_dir)
    present = [e for e in epochs if e in available]
    density = set(density_epochs)
    note = None
    if cfg.density_epochs == "last" and present and density and not density & set(present):
        note = (f"probe.density_epochs = last: epoch {max(density)} has no checkpoint (training diverged or "
                f"stopped at epoch {max(available)}); the density is at the last probed checkpoint, epoch "
                f"{present[-1]}")
        log.warning(note)
        density = {present[-1]}
    records, spectra = [], []
    for epoch in tqdm(present, desc="probe"):
        ckpt = load_checkpoint(available[epoch])
        model = model_from_checkpoint(ckpt).to(device)
        stored = stored_statistics_losses(model, train, test, cfg, ckpt["optimizer"].get("loss", "cross_entropy"))
        network_at(model, train[0], cfg.eval_batch_size)  # with batch norm: statistics recomputed at θ
        parts: dict[str, float] = {}
        rec, spectrum = probe(model, train, test, probe_data, ckpt["optimizer"], cfg, epoch in density,
                              timings=parts)
        rec = {"epoch": epoch, "diverged": False, **rec, **stored}
        if spectrum is not None:
            spectra.append({"epoch": epoch, **spectrum})
        log.info(
            "epoch %d: test acc %.4f, lambda_max %.4g (residual %.1e, %d Lanczos steps), lgdi %.3g, %d HVPs in all",
            epoch, rec["test_accuracy"], rec["lambda_max"], rec["lambda_max_residual"], rec["lanczos_iterations"],
            rec["lgdi"], rec["hvp_count"],
        )
        log.info("epoch %d: probe took %.2f s (%s)", epoch, sum(parts.values()),
                 ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if v >= 0.005))
        records.append(rec)
    # checkpoints missing because training diverged: marked, not silently dropped
    for epoch in [e for e in epochs if e not in available and (not available or e > max(available))]:
        records.append({"epoch": epoch, "diverged": True, **{k: None for k in SEED_KEYS if k != "epoch"}})
    probe_record = {
        "samples": cfg.samples,
        "seed": cfg.seed,
        "split": "train",
        "indices": idx.tolist(),
        "missing_epochs": [e for e in epochs if e not in available],
    }
    missing = sorted(e for e in density if e not in available)
    spectra_record = {
        "requested": cfg.density_epochs,
        "epochs": [sp["epoch"] for sp in spectra],
        "missing": missing,
        "note": note or (f"epoch(s) {missing} have no checkpoint (training diverged or stopped at epoch "
                         f"{max(available) if available else None})" if missing else None),
        "spectra": spectra,
    }
    return records, probe_record, spectra_record


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary metrics over the probed (finite) epochs (the DVC/MLflow headline numbers)."""
    diverged = [r["epoch"] for r in records if r.get("diverged")]
    records = [r for r in records if not r.get("diverged")]
    if not records:
        return {"probed_epochs": 0, "diverged_epochs": diverged}
    last = records[-1]
    finite = [r["stability_ratio"] for r in records if r["stability_ratio"] is not None]
    return {
        "probed_epochs": len(records),
        "final_epoch": last["epoch"],
        "final_train_loss": last["train_loss"],
        "final_test_loss": last["test_loss"],
        "final_test_accuracy": last["test_accuracy"],
        "generalization_gap": last["test_loss"] - last["train_loss"],
        "final_lambda_max": last["lambda_max"],
        "max_lambda_max": max(r["lambda_max"] for r in records),
        "max_stability_ratio": max(finite) if finite else None,
        "stability_threshold": last["stability_threshold"],
        "all_lambda_converged": all(r["lambda_max_converged"] for r in records),
        "diverged": bool(diverged),
    }
