"""The surface figure is readable whatever the plane: its title fits in the figure, and a plane far from square
(the trajectory's PCA plane spans the path: 23 × 5 parameter-space units on the default run) is not drawn as a
thin strip."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from landscape.config import PlotConfig
from landscape.plotting.paths import contour_figure

DATA = "mnist, full-size local copy: 60,000 train / 10,000 test"


def _surface(half_x: float, half_y: float, plane: dict) -> dict:
    x, y = np.linspace(-half_x, half_x, 7), np.linspace(-half_y, half_y, 7)
    loss = (x[None, :] / half_x) ** 2 + 3 * (y[:, None] / half_y) ** 2 + 0.01
    return {"enabled": True, "x": x.tolist(), "y": y.tolist(), "loss": loss.tolist(), "split": "train",
            "epoch": 10, "normalization": "filter", "seed": 0, "plane": plane}


PCA = {"kind": "pca", "explained_variance": [0.7956, 0.0977],
       "trajectory": [{"epoch": e, "x": -19.4 + 1.94 * e, "y": 4 * np.sin(e / 3)} for e in range(11)]}
HESSIAN = {"kind": "hessian", "eigenvalues": [12.3456, 10.9876], "converged": [True, False]}


@pytest.mark.parametrize(("half", "plane", "aspect"), [
    ((23.3, 5.4), PCA, "auto"),          # far from square: both axes use the figure
    ((1.0, 1.0), {"kind": "random"}, 1.0),  # square: one scale on both axes
    ((1.0, 1.0), HESSIAN, 1.0),
])
def test_the_surface_figure_fits_its_title_and_draws_a_stretched_plane_full_size(half, plane, aspect):
    fig = contour_figure(_surface(*half, plane), DATA, PlotConfig())
    try:
        fig.tight_layout()
        fig.canvas.draw()
        ax = fig.axes[0]
        assert ax.get_aspect() == aspect
        box = fig.bbox
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
        assert all(t.get_text() for t in texts)
        colorbar = fig.axes[1].get_window_extent()
        for t in texts:
            ext = t.get_window_extent()
            assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1 and ext.y1 <= box.y1 + 1, t.get_text()
            # a strip drawn at one scale left a colorbar taller than the axes, whose background hid the
            # title's end ("… of its variance" lost its closing parenthesis on the default run)
            assert not ext.overlaps(colorbar), t.get_text()
        # the axes of a stretched plane are not a strip: at least half as tall as wide
        pos = ax.get_window_extent()
        assert pos.height >= 0.5 * pos.width
        if aspect == "auto":
            assert "not to the scale of x" in ax.yaxis.label.get_text()
    finally:
        plt.close(fig)


def test_the_curvature_map_centres_each_cell_on_its_point():
    """A 3 × 3 map on [−1, 1]²: cells 1 wide centred on −1, 0, 1 (the image spans [−1.5, 1.5]), not three
    cells squeezed into [−1, 1] with their centres at ±2/3; each cell is labelled with its value at its point."""
    from landscape.plotting.paths import curvature_map_figure

    surface = _surface(1.0, 1.0, {"kind": "random"})
    surface["curvature"] = {"x": [-1.0, 0.0, 1.0], "y": [-1.0, 0.0, 1.0], "ratio": [[0.0, 0.5, 1.0]] * 3,
                            "nonconvex_fraction": 2 / 3, "threshold": 0.1, "all_converged": True}
    fig = curvature_map_figure(surface, DATA, PlotConfig())
    try:
        ax = fig.axes[1]
        (image,) = ax.get_images()
        assert image.get_extent() == pytest.approx([-1.5, 1.5, -1.5, 1.5])
        labels = {(t.xy, t.get_text()) for t in ax.texts}
        assert ((1.0, -1.0), "1.00") in labels and ((-1.0, 0.0), "0.00") in labels and len(labels) == 9
        assert all(t.get_fontweight() == ("bold" if t.get_text() in ("0.50", "1.00") else "normal") for t in ax.texts)
    finally:
        plt.close(fig)
