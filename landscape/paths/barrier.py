"""Barrier heights of a sampled path θ(α), α ∈ [0, 1], between two parameter vectors θ_a = θ(0), θ_b = θ(1).

For any quantity f along the path (loss, error):

* ``barrier`` (Entezari et al. 2022; Frankle et al. 2020 for the loss): the largest rise above the straight
  chord between the endpoints,

      B = max_α [ f(θ(α)) − ((1 − α)·f(θ_a) + α·f(θ_b)) ],

  at ``alpha_star``, the maximizing α. B ≥ 0 always (the chord is 0 at the endpoints); B = 0 when the path
  never rises above the chord (e.g. a convex path).
* ``frankle`` (Frankle et al. 2020, "instability" for the error): max_α f(θ(α)) − (f(θ_a) + f(θ_b))/2, the
  maximum along the path minus the mean of the endpoints. It can be negative for a path that falls between
  two unequal endpoints.

Only the samples with α in [0, 1] count; values on an extended line (α < 0 or > 1) are ignored.
"""

from __future__ import annotations

import numpy as np


def barrier(alphas: list[float], values: list[float]) -> dict[str, float]:
    """``{barrier, alpha_star, value_at_alpha_star, chord_at_alpha_star, start, end, frankle}`` of a sampled
    path; needs α = 0 and α = 1 among ``alphas``."""
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if not (np.any(a == 0.0) and np.any(a == 1.0)):
        raise ValueError("the α grid must contain 0 and 1")
    start, end = float(v[a == 0.0][0]), float(v[a == 1.0][0])
    inside = (a >= 0.0) & (a <= 1.0)
    ai, vi = a[inside], v[inside]
    chord = (1.0 - ai) * start + ai * end
    k = int(np.argmax(vi - chord))
    return {
        "barrier": float(max(vi[k] - chord[k], 0.0)),
        "alpha_star": float(ai[k]),
        "value_at_alpha_star": float(vi[k]),
        "chord_at_alpha_star": float(chord[k]),
        "start": start,
        "end": end,
        "frankle": float(vi.max() - 0.5 * (start + end)),
    }


def path_barriers(rows: list[dict[str, float]]) -> dict[str, float]:
    """The barriers of a path's rows (``alpha``, ``loss``, ``test_loss``, ``train_accuracy``, ``test_accuracy``):
    loss barriers on both splits, error barriers (error = 1 − accuracy) on both, and Frankle's error
    instability (max error minus the mean endpoint error), named as such."""
    alphas = [r["alpha"] for r in rows]
    loss = barrier(alphas, [r["loss"] for r in rows])
    out = {
        # the train-loss barrier keeps the original key (reports/line_summary.json, MLflow summary.line.*)
        "barrier_height": loss["barrier"],
        "alpha_star": loss["alpha_star"],
        "loss_at_alpha_star": loss["value_at_alpha_star"],
        "loss_start": loss["start"],
        "loss_end": loss["end"],
    }
    if all("test_loss" in r for r in rows):
        out["test_loss_barrier"] = barrier(alphas, [r["test_loss"] for r in rows])["barrier"]
    for split in ("train", "test"):
        key = f"{split}_accuracy"
        if all(key in r for r in rows):
            err = barrier(alphas, [1.0 - r[key] for r in rows])
            out[f"{split}_error_barrier"] = err["barrier"]
            out[f"{split}_error_instability_frankle"] = err["frankle"]
    return out
