"""Figures of the 2-D loss surface (filled contour with the checkpoint marked; 3-D surface) and of mode
connectivity (the line, and the Bézier curve if trained, between two copies from a shared start)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from landscape.config import PlotConfig
from landscape.plotting.run import save, title

PATH_FIGURES = ("surface_contour", "surface_3d", "connectivity", "surface_curvature")


def _note(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def surface_title(surface: dict[str, Any]) -> str:
    """What defines the plane, for the figure's title."""
    plane = surface.get("plane") or {"kind": "random"}
    if plane["kind"] == "pca":
        v1, v2 = plane["explained_variance"]
        return f"Loss on the trajectory's PCA plane ({100 * v1:.0f}% + {100 * v2:.0f}% of its variance)"
    if plane["kind"] == "hessian":
        l1, l2 = plane["eigenvalues"]
        flag = "" if all(plane["converged"]) else ", not converged"
        return f"Loss surface on the top Hessian eigenvectors (λ₁ = {l1:.3g}, λ₂ = {l2:.3g}{flag})"
    return f"Loss surface, {surface['normalization']}-normalized random directions (seed {surface['seed']})"


def _extent_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """The larger over the smaller of the grid's two extents (1 for a square grid)."""
    wx, wy = float(np.ptp(x)), float(np.ptp(y))
    return max(wx, wy) / min(wx, wy) if min(wx, wy) > 0 else math.inf


def _trajectory(ax: plt.Axes, surface: dict[str, Any]) -> None:
    """On a PCA plane, the optimizer's path projected onto the plane it spans best."""
    plane = surface.get("plane") or {"kind": "random"}
    if plane["kind"] == "pca":
        tr = plane["trajectory"]
        ax.plot([p["x"] for p in tr], [p["y"] for p in tr], "w.-", lw=1.2, ms=6, label="training trajectory")
        for p in (tr[0], tr[len(tr) // 2]):
            ax.annotate(f"epoch {p['epoch']}", (p["x"], p["y"]), color="white", fontsize=7,
                        xytext=(4, 4), textcoords="offset points")


def _cell_edges(v: list[float]) -> tuple[float, float]:
    """Outer edges of evenly spaced cells centred on the points ``v`` (half a spacing beyond each end)."""
    half = (v[-1] - v[0]) / (len(v) - 1) / 2 if len(v) > 1 else 0.5
    return v[0] - half, v[-1] + half


def contour_figure(surface: dict[str, Any], data: str, cfg: PlotConfig) -> plt.Figure:
    """The surface's filled contour with the checkpoint (and, on a PCA plane, the projected path) marked."""
    fig, ax = plt.subplots(figsize=(cfg.width, cfg.width * 0.85))
    on = surface.get("enabled", True) and "loss" in surface
    if on:
        x, y, z = np.array(surface["x"]), np.array(surface["y"]), np.array(surface["loss"], dtype=float)
        finite = z[np.isfinite(z)]
        levels = np.quantile(finite, np.linspace(0, 1, 25)) if finite.size else 10
        levels = np.unique(levels) if not isinstance(levels, int) else levels
        cs = ax.contourf(x, y, z, levels=levels if np.size(levels) > 1 else 10, cmap="viridis")
        fig.colorbar(cs, ax=ax, label=f"{surface['split']} loss")
        ax.contour(x, y, z, levels=cs.levels[::3], colors="white", linewidths=0.4)
        ax.plot(0, 0, "r*", ms=14, label=f"checkpoint, epoch {surface['epoch']}")
        _trajectory(ax, surface)
        # one scale on both axes unless the plane is far from square (a PCA plane spans the path: 23 × 5 on
        # the default run), where equal scales would draw a thin strip
        square = _extent_ratio(x, y) <= 2
        ax.set_aspect("equal" if square else "auto")
        scale = "" if square else ", not to the scale of x"
        ax.set_xlabel(r"$x$ (along $\delta$)")
        ax.set_ylabel(rf"$y$ (along $\eta${scale})")
        ax.legend(loc="upper right", fontsize=8)
        title(ax, textwrap.fill(surface_title(surface), 66), data)
    else:
        _note(ax, "no surface: surface.enabled is false")
    return fig


def path_figures(surface: dict[str, Any], connect: dict[str, Any], data: str, cfg: PlotConfig,
                 out_dir: Path) -> list[Path]:
    """Write the surface and connectivity figures (a note where a stage is off or had nothing to draw)."""
    size = (cfg.width, cfg.height)
    paths = [out_dir / f"{name}.png" for name in PATH_FIGURES]
    on = surface.get("enabled", True) and "loss" in surface
    save(contour_figure(surface, data, cfg), paths[0], cfg)

    fig = plt.figure(figsize=size)
    ax3 = fig.add_subplot(projection="3d")
    if on:
        x, y, z = np.array(surface["x"]), np.array(surface["y"]), np.array(surface["loss"], dtype=float)
        X, Y = np.meshgrid(x, y)
        ax3.plot_surface(X, Y, np.clip(z, None, np.nanquantile(z, 0.99)), cmap="viridis", linewidth=0,
                         antialiased=True)
        ax3.set_xlabel("x")
        ax3.set_ylabel("y")
        ax3.set_zlabel(f"{surface['split']} loss")
        head = textwrap.fill(f"{surface_title(surface)}, epoch {surface['epoch']}", 70)
        ax3.set_title(f"{head}\n{data}", fontsize=9)
    else:
        ax3.set_title("no surface: surface.enabled is false", fontsize=10)
    save(fig, paths[1], cfg)

    fig, ax = plt.subplots(figsize=size)
    if connect.get("enabled", True) is False:
        _note(ax, "no connectivity: connect.enabled is false")
    elif "alpha" not in connect:
        _note(ax, f"no connectivity path: {connect.get('skipped', 'nothing to draw')}")
    else:
        a = connect["alpha"]
        ax.plot(a, connect["loss"], "o-", ms=3, label="line, train loss")
        ax.plot(a, connect["test_loss"], "s-", ms=3, label="line, test loss")
        if "curve" in connect:
            c = connect["curve"]
            ax.plot(c["t"], c["loss"], "o--", ms=3, label="Bézier curve, train loss")
            ax.plot(c["t"], c["test_loss"], "s--", ms=3, label="Bézier curve, test loss")
        ax.set_xlabel(r"$\alpha$ (line) / $t$ (curve): copy A (main run) → copy B (data seed "
                      f"{connect['data_seed']})")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(a, [100 * e for e in connect["test_error"]], "^:", color="tab:red", ms=3, label="line, test error")
        ax2.set_ylabel("test error (%)")
        handles = ax.get_lines() + ax2.get_lines()
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center")
        barrier = connect["loss_barrier"]
        err = connect["error_barrier"]
        title(ax, f"Copies from epoch {connect['spawn_epoch']}: loss barrier {barrier:.3g}, test-error barrier "
                  f"{100 * err:.2f}%" if math.isfinite(barrier) else "Mode connectivity", data)
    save(fig, paths[2], cfg)
    curvature_figure(surface, data, cfg, paths[3])
    return paths


def curvature_figure(surface: dict[str, Any], data: str, cfg: PlotConfig, path: Path) -> None:
    """Write :func:`curvature_map_figure` to ``path``."""
    save(curvature_map_figure(surface, data, cfg), path, cfg)


def curvature_map_figure(surface: dict[str, Any], data: str, cfg: PlotConfig) -> plt.Figure:
    """The loss contour beside the map of |λ_min/λ_max| on the curvature sub-grid (Li et al. 2018, Fig. 8): one
    cell per sub-grid point, centred on it and labelled with its value (bold above the threshold, † where
    Lanczos did not converge)."""
    fig, axes = plt.subplots(1, 2, figsize=(cfg.width * 1.6, cfg.height * 1.1))
    curv = surface.get("curvature") if surface.get("enabled", True) else None
    if not curv:
        for ax in axes:
            _note(ax, "no curvature map: surface.curvature is false" if surface.get("enabled", True)
                  and "loss" in surface else "no surface: surface.enabled is false")
        return fig
    x, y, z = np.array(surface["x"]), np.array(surface["y"]), np.array(surface["loss"], dtype=float)
    cs = axes[0].contourf(x, y, z, levels=20, cmap="viridis")
    fig.colorbar(cs, ax=axes[0], label=f"{surface['split']} loss")
    ratio = np.array([[np.nan if v is None else v for v in row] for row in curv["ratio"]], dtype=float)
    im = axes[1].imshow(np.clip(ratio, 0, 1), origin="lower", cmap="coolwarm", vmin=0, vmax=1, aspect="auto",
                        extent=(*_cell_edges(curv["x"]), *_cell_edges(curv["y"])))  # each cell centred on its point
    fig.colorbar(im, ax=axes[1], label=r"$|\lambda_{min}/\lambda_{max}|$ (clipped at 1)")
    if ratio.size <= 81:  # each point's ratio at the point where it was computed; † where Lanczos did not converge
        conv = curv.get("converged") or [[True] * ratio.shape[1]] * ratio.shape[0]
        for i, yi in enumerate(curv["y"]):
            for j, xj in enumerate(curv["x"]):
                text = "—" if np.isnan(ratio[i, j]) else f"{ratio[i, j]:.2f}" + ("" if conv[i][j] else "†")
                above = not np.isnan(ratio[i, j]) and ratio[i, j] > curv["threshold"]
                axes[1].annotate(text, (xj, yi), ha="center", va="center", fontsize=7,
                                 fontweight="bold" if above else "normal")
    _trajectory(axes[0], surface)
    axes[0].plot(0, 0, "k*", ms=10)  # on the map the centre cell is the checkpoint's, its value written in it
    for ax in axes:
        ax.set_xlabel(r"$x$ (along $\delta$)")
        ax.set_ylabel(r"$y$ (along $\eta$)")
    axes[1].set_title(f"{100 * curv['nonconvex_fraction']:.0f}% of {ratio.size} points above "
                      f"{curv['threshold']:g} (bold)" + ("" if curv["all_converged"] else "; † not converged"),
                      fontsize=9)
    title(axes[0], textwrap.fill(surface_title(surface), 66), data)
    return fig
