"""Matplotlib figures from the pipeline's JSON outputs (no computation happens here): ``run`` — the per-epoch
figures of one run; ``paths`` — the 2-D surface and mode connectivity."""

from landscape.plotting.paths import PATH_FIGURES, path_figures
from landscape.plotting.run import RUN_FIGURES, data_label, make_figures

FIGURES = RUN_FIGURES + PATH_FIGURES

__all__ = ["FIGURES", "data_label", "make_figures", "path_figures"]
