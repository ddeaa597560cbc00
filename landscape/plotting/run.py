"""The per-epoch figures of one run: loss and accuracy, curvature, stability, sharpness, the line, the
spectral density. Every title names the data actually used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from landscape.config import PlotConfig

RUN_FIGURES = ("loss_accuracy", "curvature", "stability", "sharpness", "line_loss", "spectrum")


def _col(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if r.get(key) is None else r[key] for r in records]


def title(ax: plt.Axes, text: str, data: str) -> None:
    """A figure title with a second line naming the data actually used."""
    ax.set_title(f"{text}\n{data}", fontsize=10)


def save(fig: plt.Figure, path: Path, cfg: PlotConfig) -> None:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=cfg.dpi, format="png", metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def data_label(dataset: dict[str, Any]) -> str:
    """Short line naming the data actually used, for figure titles (auto can mean 60k online, 4k offline)."""
    what = {"download": "downloaded", "local-copy": "full-size local copy", "offline": "offline 5k subset",
            "directory": "IDX directory"}.get(dataset.get("source_used", ""), dataset.get("source_used", "?"))
    return (f"{dataset.get('dataset', '?')}, {what}: {dataset['train']['count']:,} train / "
            f"{dataset['test']['count']:,} test")


def make_figures(
    metrics: list[dict[str, Any]],
    line: list[dict[str, Any]],
    line_summary: dict[str, Any],
    spectra_record: dict[str, Any],
    history: dict[str, Any],
    dataset: dict[str, Any],
    cfg: PlotConfig,
    out_dir: Path,
) -> list[Path]:
    """Write the standard figures to ``out_dir``; return their paths. Every title names the data used."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spectra = spectra_record.get("spectra", [])
    data = data_label(dataset)
    plt.style.use(cfg.style)
    size = (cfg.width, cfg.height)
    ep = _col(metrics, "epoch")
    paths = [out_dir / f"{name}.png" for name in RUN_FIGURES]
    finite = [r for r in metrics if not r.get("diverged")]
    eta = finite[0]["lr"] if finite else float("nan")
    threshold = finite[0]["stability_threshold"] if finite else None  # None for Adam: no fixed threshold
    div = history.get("diverged_epoch")

    def mark_divergence(ax: plt.Axes) -> None:
        if div is not None:
            ax.axvline(div, color="black", ls="-.", lw=1.5, label=f"diverged in epoch {div}")

    fig, ax = plt.subplots(figsize=size)
    ax.plot(ep, _col(metrics, "train_loss"), "o-", label="train loss")
    ax.plot(ep, _col(metrics, "test_loss"), "s-", label="test loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats)")
    ax2 = ax.twinx()
    ax2.plot(ep, _col(metrics, "test_accuracy"), "^--", color="tab:green", label="test accuracy")
    ax2.set_ylabel("test accuracy")
    mark_divergence(ax)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    title(ax, "Loss and accuracy (full splits)" + (f"; training diverged in epoch {div}" if div else ""), data)
    save(fig, paths[0], cfg)

    fig, ax = plt.subplots(figsize=size)
    ax.plot(ep, _col(metrics, "lambda_max"), "o-", label=r"$\lambda_{max}$ of $\nabla^2 L_P$")
    if threshold is not None:
        ax.axhline(threshold / eta, color="tab:red", ls="--", label=f"stability threshold {threshold:.3g}/η")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\lambda_{max}$")
    mark_divergence(ax)
    title(ax, f"Top Hessian eigenvalue (η = {eta:g})", data)
    ax.legend()
    save(fig, paths[1], cfg)

    fig, ax = plt.subplots(figsize=size)
    ax.plot(ep, _col(metrics, "stability_ratio"), "o-", label=r"stability ratio $\eta\lambda_{max}$")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", label=f"divergence threshold of the ratio: {threshold:.3g}")
    ax.plot(ep, _col(metrics, "lgdi"), "s-", label=r"lgdi, plain step $\eta$: $(\eta/2)\,g^THg/\|g\|^2$")
    if any(r.get("lgdi_effective") is not None for r in metrics):
        beta = finite[0].get("momentum", 0.0) if finite else 0.0
        ax.plot(ep, _col(metrics, "lgdi_effective"), "d-",
                label=rf"lgdi_effective, heavy-ball step $\eta/(1-\beta)$, $\beta$ = {beta:g}")
    ax.axhline(1.0, color="gray", ls=":", label="lgdi = 1 (a step of that size raises the loss)")
    mark_divergence(ax)
    ax.set_xlabel("epoch")
    title(ax, "Optimization stability", data)
    ax.legend(fontsize=8)
    save(fig, paths[2], cfg)

    fig, (ax, right) = plt.subplots(1, 2, figsize=(size[0] * 1.8, size[1]))
    f0 = finite[0] if finite else {}
    rho, k = f0.get("sharpness_radius"), f0.get("sharpness_directions")
    handles = [ax.errorbar(ep, _col(metrics, "directional_sharpness"),
                           yerr=_col(metrics, "directional_sharpness_stderr"), fmt="o-", capsize=3,
                           label=f"average (paired), ρ = {rho}, K = {k}")]
    if any(r.get("sharpness_trace_prediction") is not None for r in metrics):
        handles += ax.plot(ep, _col(metrics, "sharpness_trace_prediction"), "x:",
                           label=r"$\rho^2\,\mathrm{tr}(H)/(2n)$")
    mark_divergence(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss increase (nats)")
    ax2 = ax.twinx()
    ax2.plot(ep, _col(metrics, "grad_norm"), "s--", color="tab:purple", label=r"$\|\nabla L_P\|$")
    ax2.set_ylabel("gradient norm")
    handles += ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    title(ax, "Average sharpness and gradient norm", data)
    if any(r.get("worst_case_sharpness") is not None for r in metrics):
        steps, rho_a = f0.get("ascent_steps"), f0.get("adaptive_radius")
        right.plot(ep, _col(metrics, "worst_case_sharpness"), "o-", label=f"worst case, ‖d‖ ≤ ρ = {rho}, {steps} steps")
        right.errorbar(ep, _col(metrics, "adaptive_sharpness"), yerr=_col(metrics, "adaptive_sharpness_stderr"),
                       fmt="s-", capsize=3, label=f"adaptive average, d = |θ|⊙u, ‖u‖ = {rho_a}")
        right.plot(ep, _col(metrics, "adaptive_worst_case_sharpness"), "d-",
                   label=f"adaptive worst case, ‖u‖ ≤ {rho_a}, {steps} steps")
        right.set_yscale("symlog", linthresh=1e-6)
        right.legend(fontsize=8)
    mark_divergence(right)
    right.set_xlabel("epoch")
    right.set_ylabel("loss increase (nats)")
    title(right, "Worst-case and adaptive sharpness", data)
    save(fig, paths[3], cfg)

    fig, ax = plt.subplots(figsize=size)
    al = _col(line, "alpha")
    ax.plot(al, _col(line, "loss"), "o-", ms=3, label="train loss")
    ax.plot(al, _col(line, "test_loss"), "s-", ms=3, label="test loss")
    s = line_summary
    if line:
        ax.plot([0.0, 1.0], [s["loss_start"], s["loss_end"]], "k*", ms=12,
                label=f"endpoints: epoch {s['start_epoch']} (α=0), epoch {s['end_epoch']} (α=1)")
        title(ax, f"Loss along the line (loss barrier {s['barrier_height']:.3g})", data)
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no line: {s.get('skipped', 'no points')}", ha="center", wrap=True,
                transform=ax.transAxes, fontsize=8)
        title(ax, "Loss along the line", data)
    ax.set_xlabel(r"$\alpha$,  $\theta(\alpha) = (1-\alpha)\theta_a + \alpha\theta_b$")
    ax.set_ylabel("cross-entropy (nats)")
    save(fig, paths[4], cfg)

    fig, ax = plt.subplots(figsize=size)
    for sp in spectra:
        ax.semilogy(sp["grid"], [max(d, 1e-12) for d in sp["density"]], label=f"epoch {sp['epoch']}")
    if spectra:
        ax.set_ylim(bottom=max(1e-8, min(min(sp["density"]) for sp in spectra) * 10))
        ax.legend()
    if spectra_record.get("note") or not spectra:
        if spectra_record.get("note"):
            text = spectra_record["note"]
        elif spectra_record.get("requested") == "none":
            text = "no spectral density requested (probe.density_epochs: none)"
        else:
            text = "no spectral density: no requested epoch has a checkpoint"
        ax.text(0.5, 0.5 if not spectra else 0.05, text, ha="center", transform=ax.transAxes, fontsize=8, wrap=True)
    ax.set_xlabel("eigenvalue of $\\nabla^2 L_P$")
    ax.set_ylabel("density (SLQ, Gaussian kernel)")
    title(ax, "Hessian eigenvalue density", data)
    save(fig, paths[5], cfg)
    return paths
