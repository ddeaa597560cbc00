"""Rank correlation between a generalization measure and the generalization gap across runs.

* :func:`kendall_tau_b` — Kendall's τ_b (ties in either variable corrected), by ``scipy.stats.kendalltau``
  (O(n log n)): over all pairs (i, j), τ_b = (C − D) / √((n₀ − n₁)(n₀ − n₂)), with C / D the concordant /
  discordant pairs, n₀ = n(n−1)/2, n₁ and n₂ the pairs tied in x and in y. NaN when undefined.
* :func:`cluster_bootstrap_interval` — a percentile interval of τ_b under the *cluster* bootstrap: the resampled
  units are configurations (every hyperparameter but the seeds), each drawn with all of its runs. Runs that
  differ only in their seed are not independent draws of the population of configurations the study asks
  about, so resampling runs would treat replicates as new evidence and narrow the interval; duplicating every
  run k times leaves this interval unchanged (τ_b is invariant to it, and so is every resample). k clusters
  allow only C(2k−1, k) distinct resamples (3 for k = 2, 35 for k = 4, 126 for k = 5): below
  ``MIN_CLUSTERS`` = 5 no interval is given. Above it the percentile interval is still approximate: with few
  clusters (Cameron, Gelbach & Miller 2008 simulate 5–30) cluster-bootstrap intervals tend to be too narrow.
* :func:`resampled_tau_b` — τ_b of many resamples at once from their draw counts (the bootstrap's inner loop;
  equal to :func:`kendall_tau_b` on each resample bit for bit).
* :func:`jiang_tau` — the τ of Jiang et al. 2020's eq. 3 inside one group: the mean over ordered pairs i ≠ j of
  sign(x_i − x_j)·sign(y_i − y_j) (τ_a: a tie contributes 0, so a measure constant in the group scores 0).
* :func:`granulated` — Jiang et al. 2020's granulated coefficient (their eq. 4): for each hyperparameter axis i,
  ψ_i is the mean eq.-3 τ over the groups of runs that agree on *every other* coordinate — the seed included —
  so that only axis i varies inside a group; Ψ is the mean of ψ_i over the axes. Pooling seeds into the groups
  (the nearest plausible wrong reading) adds seed-only pairs, whose order is noise, and pulls ψ toward 0. A
  measure that does not change along an axis (the parameter count along the learning rate) has ψ_i = 0 there,
  as in the paper's tables, not an undefined ψ_i left out of the mean.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

MIN_CLUSTERS = 5  # fewer configurations than this: no bootstrap interval (C(2k−1, k) ≤ 35 distinct resamples)
FEW_CLUSTERS = 20  # fewer than this: the report says the intervals are approximate (Cameron et al. 2008)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_b of two equally long sequences; NaN when undefined (fewer than 2 points or all tied)."""
    if len(x) != len(y):
        raise ValueError("x and y must have the same length")
    if len(x) < 2:
        return math.nan
    from scipy.stats import kendalltau

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns when one side is constant; NaN says it
        t = float(kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float), variant="b").statistic)
    return math.nan if math.isnan(t) else t


def jiang_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Jiang et al. 2020, eq. 3: (1 / (n(n−1))) Σ_{i≠j} sign(x_i − x_j) sign(y_i − y_j); NaN below 2 points."""
    if len(x) != len(y):
        raise ValueError("x and y must have the same length")
    n = len(x)
    if n < 2:
        return math.nan
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    s = np.sign(xa[:, None] - xa[None, :]) * np.sign(ya[:, None] - ya[None, :])
    return float(s.sum() / (n * (n - 1)))


def resampled_tau_b(x: Sequence[float], y: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """τ_b of every resample of the runs (x_i, y_i), resample b drawing run i ``counts[b, i]`` times (NaN where
    undefined). With S_x = sign(x_i − x_j), S_y likewise and c a row of ``counts``: C − D = ½ cᵀ(S_x∘S_y)c and
    the pairs untied in x number ½ cᵀ|S_x|c (a run drawn twice makes a pair tied in both, as it is for
    :func:`kendall_tau_b`); τ_b = (C − D) / √(untied in x) / √(untied in y), scipy's own final formula on the
    same integer counts, so each value equals :func:`kendall_tau_b` of the resample bit for bit (tested), at
    O(n²) once plus a matrix product instead of one scipy call per resample."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx, sy = np.sign(xa[:, None] - xa[None, :]), np.sign(ya[:, None] - ya[None, :])
    c = np.asarray(counts, dtype=float)
    con_minus_dis = ((c @ (sx * sy)) * c).sum(1) / 2  # sums of integers below 2^53: exact
    untied_x, untied_y = ((c @ np.abs(sx)) * c).sum(1) / 2, ((c @ np.abs(sy)) * c).sum(1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = con_minus_dis / np.sqrt(untied_x) / np.sqrt(untied_y)
    tau = np.minimum(1.0, np.maximum(-1.0, tau))
    tau[(untied_x == 0) | (untied_y == 0)] = np.nan
    return tau


def cluster_bootstrap_interval(x: Sequence[float], y: Sequence[float], clusters: Sequence[Hashable],
                               resamples: int = 2000, level: float = 0.95, seed: int = 0,
                               min_clusters: int = MIN_CLUSTERS) -> dict[str, Any]:
    """Percentile interval of τ_b over ``resamples`` cluster-bootstrap samples (seeded): each sample draws as
    many clusters as there are, with replacement, and takes all runs of each. ``{low, high, mean, resamples,
    undefined (samples where τ_b was undefined: dropped and counted), level, unit, clusters}``; with fewer than
    ``min_clusters`` clusters low, high and mean are NaN and ``too_few_clusters`` is true (nothing is drawn)."""
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, c in enumerate(clusters):
        members[c].append(i)
    labels = sorted(members, key=repr)  # a fixed order: the same runs give the same interval
    if len(labels) < min_clusters:
        return {"low": math.nan, "high": math.nan, "mean": math.nan, "resamples": 0, "undefined": 0, "level": level,
                "unit": "configuration", "clusters": len(labels), "too_few_clusters": True,
                "distinct_resamples": math.comb(2 * len(labels) - 1, len(labels)) if labels else 0}
    rng = random.Random(seed)
    draws = np.zeros((resamples, len(labels)))  # how often each sample drew each cluster
    for b in range(resamples):
        for _ in labels:
            draws[b, rng.randrange(len(labels))] += 1
    membership = np.zeros((len(labels), len(x)))
    for c, label in enumerate(labels):
        membership[c, members[label]] = 1
    taus = resampled_tau_b(x, y, draws @ membership)
    values = sorted(float(t) for t in taus if not math.isnan(t))
    undefined = resamples - len(values)
    out: dict[str, Any] = {"resamples": resamples, "undefined": undefined, "level": level, "unit": "configuration",
                           "clusters": len(labels)}
    if not values:
        return {"low": math.nan, "high": math.nan, "mean": math.nan, **out}
    lo = values[math.floor((1 - level) / 2 * (len(values) - 1))]
    hi = values[math.ceil((1 + level) / 2 * (len(values) - 1))]
    return {"low": lo, "high": hi, "mean": statistics.fmean(values), **out}


def granulated(hparams: list[dict[str, Any]], x: Sequence[float], y: Sequence[float], axes: Sequence[str],
               held: Sequence[str] = ()) -> dict[str, Any]:
    """Ψ and the per-axis ψ_i (with how many groups each had) of measure ``x`` against gap ``y``.

    ``hparams[k]`` holds run k's values of ``axes`` (the hyperparameters Ψ averages over) and of ``held`` (further
    coordinates every group holds fixed without being an axis of Ψ: the seeds). A group counts when its axis
    takes at least two values in it (runs lost to divergence shrink or remove groups; ``groups`` says how many
    counted); its τ is :func:`jiang_tau`."""
    per_axis: dict[str, Any] = {}
    for axis in axes:
        others = [a for a in (*axes, *held) if a != axis]
        groups: dict[str, list[int]] = defaultdict(list)
        for k, hp in enumerate(hparams):
            groups[repr(tuple(repr(hp[a]) for a in others))].append(k)
        taus = []
        for members in groups.values():
            if len({repr(hparams[k][axis]) for k in members}) < 2:
                continue
            taus.append(jiang_tau([x[k] for k in members], [y[k] for k in members]))
        per_axis[axis] = {"psi": statistics.fmean(taus) if taus else math.nan, "groups": len(taus)}
    defined = [v["psi"] for v in per_axis.values() if not math.isnan(v["psi"])]
    return {"Psi": statistics.fmean(defined) if defined else math.nan, "axes": per_axis}
