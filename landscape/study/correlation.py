"""Rank correlation between a geometry measure and the generalization gap across runs.

* Kendall's τ_b (ties in either variable corrected): for n runs, over all pairs (i, j),
  τ_b = (C − D) / √((n₀ − n₁)(n₀ − n₂)), with C / D the concordant / discordant pairs, n₀ = n(n−1)/2, n₁ and n₂
  the pairs tied in x and in y. τ_b = 1: the measure orders the runs exactly as the gap does.
* :func:`bootstrap_interval`: a percentile interval of τ_b over runs resampled with replacement (seeded, so
  the same runs give the same interval); resamples where τ_b is undefined (all tied) are dropped and counted.
* :func:`granulated` — Jiang et al. 2020's granulated coefficient: for each hyperparameter axis i, the runs are
  grouped by the values of all *other* axes; ψ_i is the mean τ_b within the groups (≥ 2 runs, τ_b defined) where
  only axis i varies, and Ψ = the mean of ψ_i over the axes. Ψ asks whether the measure predicts the gap when
  one thing at a time changes, which a single τ over everything can hide.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_b of two equally long sequences; NaN when undefined (fewer than 2 points or all tied)."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y must have the same length")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denom = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denom if denom > 0 else math.nan


def bootstrap_interval(x: Sequence[float], y: Sequence[float], resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of τ_b over runs: ``{low, high, resamples, undefined}``."""
    rng = random.Random(seed)
    n = len(x)
    values, undefined = [], 0
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        t = kendall_tau_b([x[i] for i in idx], [y[i] for i in idx])
        if math.isnan(t):
            undefined += 1
        else:
            values.append(t)
    if not values:
        return {"low": math.nan, "high": math.nan, "mean": math.nan, "resamples": resamples, "undefined": undefined,
                "level": level}
    values.sort()
    lo = values[math.floor((1 - level) / 2 * (len(values) - 1))]
    hi = values[math.ceil((1 + level) / 2 * (len(values) - 1))]
    return {"low": lo, "high": hi, "mean": statistics.fmean(values), "resamples": resamples, "undefined": undefined,
            "level": level}


def granulated(hparams: list[dict[str, Any]], x: Sequence[float], y: Sequence[float],
               axes: Sequence[str]) -> dict[str, Any]:
    """Ψ and the per-axis ψ_i (with how many groups each had) of measure ``x`` against gap ``y``;
    ``hparams[k]`` are run k's values of the ``axes``."""
    per_axis: dict[str, Any] = {}
    for axis in axes:
        groups: dict[str, list[int]] = defaultdict(list)
        for k, hp in enumerate(hparams):
            others = tuple((a, repr(hp[a])) for a in axes if a != axis)
            groups[repr(others)].append(k)
        taus = []
        for members in groups.values():
            if len({repr(hparams[k][axis]) for k in members}) < 2:
                continue
            t = kendall_tau_b([x[k] for k in members], [y[k] for k in members])
            if not math.isnan(t):
                taus.append(t)
        per_axis[axis] = {"psi": statistics.fmean(taus) if taus else math.nan, "groups": len(taus)}
    defined = [v["psi"] for v in per_axis.values() if not math.isnan(v["psi"])]
    return {"Psi": statistics.fmean(defined) if defined else math.nan, "axes": per_axis}
