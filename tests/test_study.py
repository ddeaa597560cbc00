"""Statistics of the study: Kendall τ_b against a pair count by hand, the cluster bootstrap (seeded; resamples
configurations, so replicates and duplicates do not narrow it), Jiang et al.'s granulated Ψ (seeds held fixed
inside every group) on fixtures where the faithful and the pooled definitions differ; the stability summary;
the report's family lead, configuration order and matched-pair axis effects."""

import math
import random

import pytest

from landscape.study.correlation import cluster_bootstrap_interval, granulated, jiang_tau, kendall_tau_b
from landscape.study.stability import stability_summary


def _tau_by_pairs(x, y):
    """τ_b by counting pairs: the definition, independent of scipy."""
    c = d = tx = ty = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            tx += dx == 0
            ty += dy == 0
            c += dx * dy > 0
            d += dx * dy < 0
    n0 = n * (n - 1) // 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_kendall_tau_b_by_hand_with_ties():
    # x = [1, 2, 2, 3], y = [1, 3, 2, 2]: pairs (6): C = 3 [(0,1),(0,2),(0,3)], D = 1 [(1,3)],
    # tied in x: (1,2); tied in y: (2,3)  ->  τ_b = (3 − 1) / √((6 − 1)(6 − 1)) = 0.4  (τ_a would be 1/3)
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4, abs=1e-15)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3])) and math.isnan(kendall_tau_b([1], [2]))


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_b_equals_the_pair_count(seed):
    rng = random.Random(seed)
    x = [rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(15)]  # many ties
    y = [rng.random() if seed % 2 else rng.choice([1, 2, 3]) for _ in range(15)]
    assert kendall_tau_b(x, y) == pytest.approx(_tau_by_pairs(x, y), abs=1e-12)


def test_the_bootstraps_tau_b_of_every_resample_is_scipys_bit_for_bit():
    """The bootstrap computes τ_b of all resamples from their draw counts; each value must be scipy's τ_b of the
    resample written out (runs drawn twice are tied pairs in both variables), undefined ones NaN in both."""
    import numpy as np

    from landscape.study.correlation import resampled_tau_b

    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        n = int(rng.integers(2, 30))
        x = rng.integers(0, 4, n).astype(float) if trial % 3 == 0 else rng.normal(size=n)
        y = rng.integers(0, 3, n).astype(float) if trial % 2 == 0 else rng.normal(size=n)
        if trial % 7 == 0:
            x[:] = 0.5  # constant: τ_b undefined
        counts = rng.multinomial(n, np.ones(n) / n, size=10)
        for b, t in enumerate(resampled_tau_b(x, y, counts)):
            idx = np.repeat(np.arange(n), counts[b])
            ref = kendall_tau_b(x[idx], y[idx])
            assert (math.isnan(ref) and math.isnan(t)) or t == ref, (trial, b, t, ref)
            checked += not math.isnan(ref)
    assert checked > 400


def _study(configs: int = 8, seeds: int = 3, noise: float = 1.0, seed: int = 0):
    """Runs of ``configs`` configurations × ``seeds`` replicates: configuration effects on the measure and on the
    gap shared by all its seeds (clustered data), plus per-run noise of scale ``noise``."""
    rng = random.Random(seed)
    x, y, clusters = [], [], []
    for c in range(configs):
        effect, other = rng.gauss(0, 1), rng.gauss(0, 1)
        for _ in range(seeds):
            x.append(effect + noise * rng.gauss(0, 0.3))
            y.append(0.3 * effect + other + noise * rng.gauss(0, 0.3))
            clusters.append(c)
    return x, y, clusters


def test_cluster_bootstrap_is_seeded_and_brackets_the_estimate():
    x, y, clusters = _study()
    a = cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=3)
    assert a == cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=3)
    assert a != cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=4)
    assert a["low"] <= kendall_tau_b(x, y) <= a["high"]
    assert a["unit"] == "configuration" and a["clusters"] == 8


def test_duplicating_every_run_does_not_narrow_the_interval():
    """A run-level bootstrap takes k copies of every run for k times the evidence; resampling configurations
    gives exactly the same interval (τ_b is invariant to duplication, and so is every resample)."""
    x, y, clusters = _study()
    once = cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=1)
    k = 3
    thrice = cluster_bootstrap_interval([v for v in x for _ in range(k)], [v for v in y for _ in range(k)],
                                        [c for c in clusters for _ in range(k)], resamples=400, seed=1)
    assert (thrice["low"], thrice["high"]) == pytest.approx((once["low"], once["high"]), abs=1e-12)

    def run_level(xs, ys, resamples=400, seed=1):  # the wrong unit, for contrast: it narrows
        rng = random.Random(seed)
        taus = sorted(kendall_tau_b(*zip(*[(xs[i], ys[i]) for i in [rng.randrange(len(xs)) for _ in xs]],
                                         strict=True)) for _ in range(resamples))
        return taus[int(0.025 * (resamples - 1))], taus[math.ceil(0.975 * (resamples - 1))]

    lo1, hi1 = run_level(x, y)
    lo3, hi3 = run_level([v for v in x for _ in range(k)], [v for v in y for _ in range(k)])
    assert hi3 - lo3 < 0.8 * (hi1 - lo1)


def test_too_few_configurations_give_no_interval():
    """Four configurations allow 35 distinct cluster resamples (two allow 3: a percentile interval of those
    says nothing); below five none is drawn, and the record says why. Five get an interval."""
    x, y, clusters = _study(configs=4)
    few = cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=1)
    assert math.isnan(few["low"]) and math.isnan(few["high"]) and few["too_few_clusters"]
    assert few["clusters"] == 4 and few["distinct_resamples"] == 35 and few["resamples"] == 0
    x, y, clusters = _study(configs=5)
    five = cluster_bootstrap_interval(x, y, clusters, resamples=400, seed=1)
    assert five["low"] <= kendall_tau_b(x, y) <= five["high"] and "too_few_clusters" not in five


def test_cluster_bootstrap_is_wider_than_resampling_runs_on_clustered_data():
    """Seeds of one configuration share its effect: treating them as independent understates the spread."""
    x, y, clusters = _study(configs=10, seeds=4, noise=0.1, seed=5)
    faithful = cluster_bootstrap_interval(x, y, clusters, resamples=600, seed=0)
    naive = cluster_bootstrap_interval(x, y, list(range(len(x))), resamples=600, seed=0)  # every run its own cluster
    assert faithful["high"] - faithful["low"] > 1.3 * (naive["high"] - naive["low"])


def test_granulated_psi_on_runs_with_a_known_value():
    # two axes: lr in {1, 2}, width in {10, 20, 30}. The measure tracks the gap exactly when lr varies
    # (ψ_lr = 1 in each of the 3 width groups) and exactly against it when width varies (ψ_width = −1 in
    # each of the 2 lr groups): Ψ = (1 + (−1)) / 2 = 0, although the overall τ is positive (0.2).
    runs = [{"lr": lr, "width": w} for lr in (1, 2) for w in (10, 20, 30)]
    gap = [lr * 10 - w / 10 for lr, w in ((r["lr"], r["width"]) for r in runs)]
    measure = [lr * 10 + w / 10 for lr, w in ((r["lr"], r["width"]) for r in runs)]
    res = granulated(runs, measure, gap, ["lr", "width"])
    assert res["axes"]["lr"] == {"psi": 1.0, "groups": 3}
    assert res["axes"]["width"] == {"psi": -1.0, "groups": 2}
    assert res["Psi"] == 0.0
    assert kendall_tau_b(measure, gap) == pytest.approx((9 - 6) / 15)  # 9 concordant cross-lr pairs, 6 discordant


def test_granulated_psi_holds_the_seed_fixed_inside_every_group():
    """With replicates, Jiang's ψ_lr compares runs that differ only in lr (same width, same seed): here the
    measure and the gap both rise with lr at every fixed seed (ψ_lr = +1). Pooling the seeds into a group
    (the reading the old code used) adds seed-only pairs in which they move apart, and gives a negative ψ."""
    runs = [{"lr": lr, "width": w, "seed": s} for lr in (1, 2) for w in (10, 20) for s in (0, 1, 2)]
    gap = [r["lr"] + 10 * r["seed"] for r in runs]
    measure = [r["lr"] - 10 * r["seed"] + r["width"] / 100 for r in runs]
    faithful = granulated(runs, measure, gap, ["lr", "width"], held=["seed"])
    assert faithful["axes"]["lr"] == {"psi": 1.0, "groups": 6}  # 2 widths × 3 seeds
    pooled = granulated(runs, measure, gap, ["lr", "width"])  # seeds pooled: 2 groups of 6 runs
    assert pooled["axes"]["lr"]["groups"] == 2 and pooled["axes"]["lr"]["psi"] < 0
    assert faithful["Psi"] != pooled["Psi"]


def test_granulated_psi_uses_jiangs_tau_so_a_measure_constant_along_an_axis_scores_zero_there():
    """Jiang et al.'s eq. 3 counts a tied pair as 0: the parameter count, constant along lr, has ψ_lr = 0 and
    Ψ = (ψ_width + 0) / 2, as in the paper's tables. Skipping the undefined τ_b groups (the nearest wrong reading)
    would give Ψ = ψ_width = 1."""
    runs = [{"lr": lr, "width": w} for lr in (1, 2, 3) for w in (10, 20)]
    params = [r["width"] * 100 for r in runs]
    gap = [r["width"] + r["lr"] for r in runs]
    res = granulated(runs, params, gap, ["lr", "width"])
    assert res["axes"]["lr"] == {"psi": 0.0, "groups": 2} and res["axes"]["width"] == {"psi": 1.0, "groups": 3}
    assert res["Psi"] == 0.5
    # a tie inside a group: eq. 3 gives (0 + 1 + 1) / 3 over the pairs, τ_b would give 2 / √6
    assert jiang_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6**0.5)


def test_stability_summary_of_a_trajectory():
    ratios = [0.5, 1.0, 1.85, 2.1, 1.9, 2.0]  # η·λ_max with threshold 2
    records = [{"epoch": 10 * i, "diverged": False, "lambda_max": r / 0.1, "stability_ratio": r,
                "stability_threshold": 2.0} for i, r in enumerate(ratios)]
    s = stability_summary(records)
    assert s["reach_epoch"] == 20 and s["after"]["count"] == 4
    assert s["after"]["mean"] == pytest.approx((1.85 + 2.1 + 1.9 + 2.0) / 8)
    assert s["after"]["max"] == pytest.approx(1.05) and not s["diverged"]
    adam = stability_summary([{**records[0], "stability_threshold": None}])
    assert adam["threshold"] is None and "Adam" in adam["note"]


# --------------------------------------------------------------------------------------------- analysis


def test_the_family_lead_compares_intervals_in_the_direction_of_each_psi():
    from landscape.study.report import family_summary

    def entry(family, psi, lo, hi):
        return {"family": family, "loss_gap": {"Psi": psi, "tau": (lo + hi) / 2, "interval": {"low": lo, "high": hi}},
                "error_gap": {"Psi": psi, "tau": (lo + hi) / 2, "interval": {"low": lo, "high": hi}}}

    corr = {"a": entry("pac-bayes", 0.66, 0.23, 0.71), "b": entry("norm", -0.63, -0.80, -0.36),
            "c": entry("curvature", 0.10, -0.20, 0.30)}
    lead = family_summary(corr)["loss_gap"]["lead"]
    assert (lead["winner"], lead["runner_up"]) == ("pac-bayes", "norm")
    assert lead["tau_intervals_overlap"]  # |τ| in [0.23, 0.71] against [0.36, 0.80]: not resolved
    assert lead["abs_psi_margin"] == pytest.approx(0.03)
    corr["b"] = entry("norm", -0.63, -0.20, -0.05)
    assert not family_summary(corr)["loss_gap"]["lead"]["tau_intervals_overlap"]
    # each family's best is chosen among its candidates on the same runs: how many is part of the record
    corr["d"] = entry("norm", 0.01, -0.3, 0.3)
    best = {r["family"]: r for r in family_summary(corr)["loss_gap"]["best_by_family"]}
    assert {f: (r["measure"], r["candidates"]) for f, r in best.items()} == {
        "pac-bayes": ("a", 1), "norm": ("b", 2), "curvature": ("c", 1)}
    corr["b"] = entry("norm", -0.63, float("nan"), float("nan"))  # no interval (too few configurations)
    assert family_summary(corr)["loss_gap"]["lead"]["tau_intervals_overlap"] is None


def test_configurations_sort_by_value_not_by_text():
    from landscape.study.report import _natural

    assert sorted(["512", "32", "128"], key=_natural) == ["32", "128", "512"]
    assert sorted(["[256, 256]", "[64]", "null"], key=_natural) == ["[64]", "[256, 256]", "null"]


def test_axis_effects_pair_runs_that_differ_only_in_that_axis():
    """Seed 1's skip run diverged: the change along `model.skip` comes from the one matched pair (seed 0):
    +1, not the difference of the configuration means (1 − 5 = −4), and the pair count says 1."""
    from landscape.study.analysis import RunRow
    from landscape.study.report import axis_effects

    def row(skip, seed, q, depth="2"):
        return RunRow(f"r{skip}{seed}{depth}", "x", {"model.skip": skip, "train.seed": seed, "model.depth": depth},
                      {"lambda_max": q}, {"loss_gap": 0.1 * q, "error_gap": 0.0})

    rows = [row("false", "0", 0.0), row("true", "0", 1.0), row("false", "1", 10.0),
            row("false", "0", 3.0, "8"), row("false", "1", 5.0, "8")]
    effects = {(e["axis"], e["from"], e["to"]): e for e in axis_effects(rows, ["model.depth", "model.skip",
                                                                              "train.seed"])}
    assert set(effects) == {("model.skip", "false", "true"), ("model.depth", "2", "8")}
    skip = effects[("model.skip", "false", "true")]
    assert skip["pairs"] == 1 and skip["lambda_max"]["mean"] == pytest.approx(1.0)
    assert skip["loss_gap"]["mean"] == pytest.approx(0.1)
    depth = effects[("model.depth", "2", "8")]  # seed 0: 0 → 3, seed 1: 10 → 5
    assert depth["pairs"] == 2 and depth["lambda_max"]["mean"] == pytest.approx(-1.0)
    assert (depth["lambda_max"]["min"], depth["lambda_max"]["max"]) == (pytest.approx(-5.0), pytest.approx(3.0))
