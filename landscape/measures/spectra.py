"""Data-free weight-spectrum measures by the ``weightwatcher`` package (Martin & Mahoney 2021): for each layer
it analyses, the power-law exponent α of the empirical spectral density of WᵀW (fitted by the package), the
weighted α̂ = α·log₁₀ λ_max, the stable rank ‖W‖_F²/‖W‖₂², and log norms; the summary averages over the layers.
The package's own values are recorded (with its version and which layers it analysed: Linear and Conv2d layers,
convolutions as the package slices them); a layer with few eigenvalues (the 10-unit output layer) gets the
package's "small N" fit and its warning. The package's import-time notices about its SVD backend ("CUDA is not
available … Import error, resetting to svd accurate methods": on CPU it uses SciPy's full SVD for every path) are
silenced: they say nothing about the values."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import Any

from torch import nn

LAYER_KEYS = ("alpha", "alpha_weighted", "stable_rank", "log_norm", "log_spectral_norm", "num_evals", "N", "M")
SUMMARY_KEYS = ("alpha", "alpha_weighted", "stable_rank", "log_norm", "log_spectral_norm", "log_alpha_norm")


def _number(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None if v is None else str(v)
    return f if math.isfinite(f) else None


def weightwatcher_measures(model: nn.Module) -> dict[str, Any]:
    """``{"values": {ww_alpha, ww_alpha_weighted, …}, "layers": [...], "version": …}`` of the package on ``model``
    (its printing to stdout is captured and dropped)."""
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)  # before the import: its backend notices
    with contextlib.redirect_stdout(io.StringIO()):
        import weightwatcher as ww

        watcher = ww.WeightWatcher(model=model.float().cpu(), log_level=logging.ERROR)
        details = watcher.analyze()
        summary = watcher.get_summary(details)
    layers = [{"name": str(row.get("longname", row.get("name"))), "type": str(row.get("layer_type")),
               **{k: _number(row.get(k)) for k in LAYER_KEYS}, "warning": _number(row.get("warning")) or None}
              for row in details.to_dict("records")]
    return {"values": {f"ww_{k}": _number(summary.get(k)) for k in SUMMARY_KEYS}, "layers": layers,
            "version": ww.__version__, "analysed": [layer["name"] for layer in layers]}
