"""Figures of a study (``landscape analyze``): each measure against the gap, coloured by the axis that varies,
and the normalized λ_max trajectories against the stability threshold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return path


def _order(level: str) -> tuple:
    try:
        return (0, float(level.strip("'")), level)
    except ValueError:
        return (1, len(level), level)


def _colors(values: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    levels = sorted({repr(v) for v in values}, key=_order)
    cmap = plt.get_cmap("viridis", max(len(levels), 2))
    lut = {lv: cmap(i) for i, lv in enumerate(levels)}
    return [lut[repr(v)] for v in values], lut


def study_figures(rows: list[Any], axes: list[str], measures: list[str], out_dir: Path) -> list[Path]:
    """``gap_vs_<measure>.png`` (one panel per varying axis, colour = that axis) and
    ``stability_trajectories.png``; returns the paths written."""
    paths = []
    for measure in measures:
        usable = [r for r in rows if r.measures.get(measure) is not None]
        if not usable:
            continue
        cols = max(1, len(axes))
        fig, axs = plt.subplots(1, cols, figsize=(4.2 * cols, 3.6), squeeze=False)
        for ax, axis in zip(axs[0], axes or [None], strict=False):
            x = [r.measures[measure] for r in usable]
            y = [r.gaps["loss_gap"] for r in usable]
            if axis is None:
                ax.scatter(x, y, s=25)
            else:
                colors, lut = _colors([r.params.get(axis) for r in usable])
                ax.scatter(x, y, c=colors, s=25)
                for level, color in lut.items():
                    ax.scatter([], [], color=color, label=level.strip("'"))
                ax.legend(title=axis, fontsize=7, title_fontsize=7)
            if all(v > 0 for v in x) and max(x) / min(x) > 20:
                ax.set_xscale("log")
            ax.set_xlabel(measure)
            ax.set_ylabel("test − train loss")
        fig.suptitle(f"{measure} at the final epoch against the generalization gap", fontsize=10)
        paths.append(_save(fig, out_dir / f"gap_vs_{measure}.png"))
    traj = [r for r in rows if r.trajectory]
    if traj:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        labelled = len(traj) <= 12
        for r in traj:
            label = ", ".join(f"{a.split('.')[-1]}={r.params.get(a)}" for a in axes) if labelled else None
            ax.plot([e for e, _ in r.trajectory], [v for _, v in r.trajectory], lw=1.2, alpha=0.85, label=label)
        ax.axhline(1.0, color="tab:red", ls="--", label="threshold (η·λ_max = 2(1+β) for SGD)")
        top = max(v for r in traj for _, v in r.trajectory if math.isfinite(v))
        ax.set_ylim(0, max(1.2, top * 1.05))
        ax.set_xlabel("epoch (full batch: step)")
        ax.set_ylabel("η·λ_max / threshold")
        ax.set_title(f"Normalized λ_max trajectories of {len(traj)} runs", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out_dir / "stability_trajectories.png"))
    return paths
