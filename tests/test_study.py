"""Statistics of the study: Kendall τ_b against a pair count by hand, the cluster bootstrap (seeded; resamples
configurations, so replicates and duplicates do not narrow it), Jiang et al.'s granulated Ψ (seeds held fixed
inside every group) on fixtures where the faithful and the pooled definitions differ; the analysis of a real
MLflow store (one run per configuration); the stability summary."""

import math
import random

import pytest
import scipy.stats

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
def _log_run(client, exp, name, params, metrics, tags=None, status="FINISHED"):
    run = client.create_run(exp, run_name=name, tags={"landscape.complete": "true", **(tags or {})})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v))
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v, step=0)
    if status:
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _store_with_runs(tmp_path, n=8, seed=0, seeds=(0,)):
    """A real SQLite MLflow store holding n configurations × len(seeds) training runs logged as the track stage
    logs them, plus one diverged and one unfinished run (skipped), for analysis tests that need no pipeline."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())
    rng = random.Random(seed)
    logged = []
    for i in range(n):
        for s in seeds:
            lr, width = (0.01, 0.1)[i % 2], (16, 64, 128, 256)[i // 2 % 4]
            m = {"curvature/lambda_max": rng.uniform(1, 50), "sharpness/directional": rng.uniform(1e-5, 1e-3),
                 "curvature/hessian_trace": rng.uniform(10, 100), "stability/lgdi": rng.uniform(0, 1),
                 "gradient/norm": rng.uniform(0, 1), "stability/ratio": lr * rng.uniform(1, 50),
                 "stability/threshold": 3.8, "model/num_params": 1000.0 * width,
                 "summary/line/barrier_height": 0.0,
                 "loss/generalization_gap": rng.uniform(0, 0.5), "accuracy/train": rng.uniform(0.9, 1.0),
                 "accuracy/test": rng.uniform(0.8, 0.95)}
            _log_run(client, exp, f"r{i}" + (f"s{s}" if len(seeds) > 1 else ""),
                     {"train.lr": lr, "model.hidden": [width], "train.seed": s, "probe.sharpness_radius": 0.5}, m)
            logged.append(m)
    _log_run(client, exp, "diverged", {}, {}, tags={"landscape.diverged": "epoch 2"})
    _log_run(client, exp, "crashed", {}, {}, status=None)  # left RUNNING
    return uri, logged


def test_analysis_tau_equals_scipy_on_the_logged_metrics_and_lists_skipped_runs(tmp_path):
    from landscape.study.analysis import analyze

    uri, logged = _store_with_runs(tmp_path)
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=200)
    assert sorted(r["name"] for r in rec["runs"]) == [f"r{i}" for i in range(8)]
    assert {s["name"]: s["reason"] for s in rec["skipped"]} == {"diverged": "training diverged (epoch 2)",
                                                                "crashed": "status RUNNING"}
    x = [m["curvature/lambda_max"] for m in logged]
    gap = [m["loss/generalization_gap"] for m in logged]
    err = [m["accuracy/train"] - m["accuracy/test"] for m in logged]
    lam = rec["correlations"]["lambda_max"]
    assert lam["loss_gap"]["tau"] == pytest.approx(scipy.stats.kendalltau(x, gap).statistic, abs=1e-12)
    assert lam["error_gap"]["tau"] == pytest.approx(scipy.stats.kendalltau(x, err).statistic, abs=1e-12)
    assert lam["loss_gap"]["axes"]["train.lr"]["groups"] == 4  # the 4 widths, each with both learning rates
    assert lam["loss_gap"]["interval"]["unit"] == "configuration" and lam["configurations"] == 8
    assert "train.seed" not in rec["axes"]  # does not vary
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| r{i} |" in report for i in range(8)) and "diverged" in report
    assert "cluster bootstrap over 8 configurations" in report
    assert (tmp_path / "out" / "gap_vs_lambda_max.png").stat().st_size > 1000
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(rec["analysis_run_id"])
    assert run.data.tags["landscape.analysis"] == "true"
    assert set(run.data.tags["landscape.analysis.runs"].split(",")) == {r["run_id"] for r in rec["runs"]}
    again = analyze("study", tmp_path / "out2", uri=uri, resamples=200, log_run=False)  # analysis runs not input
    assert len(again["runs"]) == 8 and again["correlations"] == rec["correlations"]


def test_analysis_with_seeds_holds_them_fixed_and_resamples_configurations(tmp_path):
    from landscape.study.analysis import analyze

    uri, _ = _store_with_runs(tmp_path, n=8, seeds=(0, 1, 2))
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=200, log_run=False)
    assert len(rec["runs"]) == 24 and rec["replicate_axes"] == ["train.seed"]
    assert "train.seed" not in rec["psi_axes"] and rec["bootstrap"]["configurations"] == 8
    lam = rec["correlations"]["lambda_max"]["loss_gap"]
    assert lam["axes"]["train.lr"]["groups"] == 12  # 4 widths × 3 seeds: each group two runs, one per lr
    assert lam["interval"]["clusters"] == 8


def test_analysis_keeps_one_run_per_configuration_and_lists_the_superseded(tmp_path):
    """After a code change every point has a second FINISHED run (another run key), and the new code logs a
    param the old one did not have; two writers of one pipeline state leave two runs with one key. Each
    configuration counts once: the run that ended last; the added param is not an axis."""
    from mlflow.tracking import MlflowClient

    from landscape.study.analysis import analyze

    uri, logged = _store_with_runs(tmp_path, n=6)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("study").experiment_id
    old = {r.info.run_name: r for r in client.search_runs([exp]) if r.info.run_name.startswith("r")}
    newer = {}
    for name, run in sorted(old.items()):  # the same params again, other numbers: "the new code"
        metrics = {k: v * 1.5 if k == "curvature/lambda_max" else v for k, v in run.data.metrics.items()}
        newer[name] = _log_run(client, exp, name, {**run.data.params, "measures.sharpness": "True"}, metrics,
                               tags={"landscape.run_key": f"new-{name}"})
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=100, log_run=False)
    assert len(rec["runs"]) == 6 and {r["run_id"] for r in rec["runs"]} == set(newer.values())
    superseded = [s for s in rec["skipped"] if s["reason"].startswith("superseded")]
    assert {s["run_id"] for s in superseded} == {r.info.run_id for r in old.values()}
    assert "measures.sharpness" not in rec["axes"] and "train.lr" in rec["axes"]
    lam = [m["curvature/lambda_max"] * 1.5 for m in logged]
    gap = [m["loss/generalization_gap"] for m in logged]
    assert rec["correlations"]["lambda_max"]["loss_gap"]["tau"] == pytest.approx(
        scipy.stats.kendalltau(lam, gap).statistic, abs=1e-12)
    assert "superseded by run" in (tmp_path / "out" / "report.md").read_text()


def test_analysis_refuses_unknown_experiments_and_too_few_runs(tmp_path):
    from landscape.errors import LandscapeError
    from landscape.study.analysis import analyze

    uri, _ = _store_with_runs(tmp_path, n=3)
    with pytest.raises(LandscapeError, match="no MLflow experiment 'nope'.*experiments there: .*study"):
        analyze("nope", tmp_path / "o", uri=uri)
    with pytest.raises(LandscapeError, match=r"has 3 usable run\(s\) \(2 skipped\); a rank correlation needs"):
        analyze("study", tmp_path / "o", uri=uri)


def test_analysis_of_an_unreachable_store_fails_in_seconds_with_one_line():
    import os
    import subprocess
    import sys
    import time

    from tests.pipeline import ROOT

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "landscape", "analyze", "--experiment", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": "http://bob:s3cret@127.0.0.1:9"})
    assert time.perf_counter() - t0 < 60
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "http://***@127.0.0.1:9" in err[0], proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout


def test_the_report_describes_every_configuration_over_its_seeds(tmp_path):
    from landscape.study.analysis import analyze

    uri, logged = _store_with_runs(tmp_path, n=8, seeds=(0, 1))
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=50, log_run=False)
    table = {(e["axes"]["model.hidden"], e["axes"]["train.lr"]): e for e in rec["configurations"]}
    assert len(table) == 8 and all(e["runs"] == 2 for e in table.values())
    first = table[("[16]", "0.01")]
    lam = [m["curvature/lambda_max"] for m in logged[:2]]  # configuration 0, seeds 0 and 1
    assert first["lambda_max"]["mean"] == pytest.approx(sum(lam) / 2)
    assert first["lambda_max"]["sd"] == pytest.approx(abs(lam[0] - lam[1]) / 2**0.5)
    assert [(e["axes"]["model.hidden"], e["axes"]["train.lr"]) for e in rec["configurations"]][:2] == \
        [("[16]", "0.01"), ("[16]", "0.1")]  # numbers in value order, lists element-wise
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Per configuration (mean ± sd over seeds)")[1].split("##")[0]
    header, rule, *body = [line for line in section.splitlines() if line.startswith("|")]
    assert rule == "|" + " --- |" * (header.count("|") - 1) and len(body) == 8
    assert all(line.count("|") == header.count("|") for line in body)


def test_a_recorded_analysis_is_reanalysed_to_the_same_statistics(tmp_path):
    """`landscape analyze --from-json`: the statistics of this code on the runs an earlier analysis.json
    recorded; on this code's own record it reproduces every τ, interval and Ψ."""
    from landscape.study.analysis import analyze, reanalyze

    uri, _ = _store_with_runs(tmp_path, n=8, seeds=(0, 1))
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=100, log_run=False)
    again = reanalyze(tmp_path / "out" / "analysis.json", tmp_path / "again", resamples=100)
    assert again["correlations"] == rec["correlations"] and again["axes"] == rec["axes"]
    assert "*Re-analysis*" in (tmp_path / "again" / "report.md").read_text()


def test_the_analysis_counts_the_runs_a_flatness_search_left_censored_at_its_top(tmp_path):
    """A network at chance never loses the deviation's accuracy, so its searches end at the top of [0, 2]. Newer
    runs say so in a tag; older ones only by their logged scale, the last value of an all-upward search
    (2 − 2^(1−depth)). Each censored measure counts its censored runs, per run and in the report; a scale just
    below the top (a search that moved down once) is not censored."""
    from mlflow.tracking import MlflowClient

    from landscape.measures.pacbayes import MAG_AT_TOP, PLAIN_AT_TOP, bisection
    from landscape.study.analysis import analyze, reanalyze
    from landscape.study.registry import SEARCHES

    top = bisection(lambda s: (0.0, {}), 0.1, 15, 0.01)  # the deviation never reached: every step moves up
    assert top[2:] == (False, True) and top[0] == 2 - 2.0**-14
    below = 2 - 2.0**-14 - 2.0**-15  # one step down at the end: inside the interval
    assert {n for scale, _, names in SEARCHES if "pacbayes" in scale for n in names} == \
        {n for n in PLAIN_AT_TOP + MAG_AT_TOP if not n.endswith("sigma")}
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())
    rng = random.Random(0)
    expected = {}
    for i in range(8):
        sigma = {0: top[0], 1: top[0], 2: below}.get(i, rng.uniform(0.05, 0.5))
        alpha = top[0] if i == 0 else rng.uniform(0.01, 0.1)
        tags = {"landscape.measures_at_interval_top": "pacbayes_flatness, pacbayes_sigma"} if i == 3 else {}
        m = {"measures/pacbayes_sigma": sigma, "measures/pacbayes_flatness": 1 / sigma**2,
             "measures/pacbayes_mag_sigma": rng.uniform(0.05, 0.5), "measures/pacbayes_mag_flatness": rng.uniform(1, 9),
             "measures/sharpness_alpha": alpha, "measures/sharpness_flatness": 1 / alpha**2,
             "curvature/lambda_max": rng.uniform(1, 50), "loss/generalization_gap": rng.uniform(0, 0.5),
             "accuracy/train": rng.uniform(0.9, 1.0), "accuracy/test": rng.uniform(0.8, 0.95)}
        expected[f"r{i}"] = sorted({0: ["pacbayes_flatness", "pacbayes_init", "pacbayes_orig", "sharpness_flatness"],
                                    1: ["pacbayes_flatness", "pacbayes_init", "pacbayes_orig"],
                                    3: ["pacbayes_flatness"]}.get(i, []))
        _log_run(client, exp, f"r{i}", {"train.lr": (0.01, 0.1)[i % 2], "model.hidden": [16 * (i // 2 + 1)],
                                         "measures.pacbayes_depth": 15, "measures.sharpness_depth": 15}, m, tags)
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=50, log_run=False)
    assert {r["name"]: r["at_interval_top"] for r in rec["runs"]} == expected
    corr = rec["correlations"]
    assert corr["pacbayes_flatness"]["at_interval_top"] == 3 and corr["sharpness_flatness"]["at_interval_top"] == 1
    assert corr["pacbayes_mag_flatness"]["at_interval_top"] == 0 and "at_interval_top" not in corr["lambda_max"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pac-bayes | pacbayes_flatness | 8 (3 censored) |" in report
    assert "| worst-case flatness | sharpness_flatness | 8 (1 censored) |" in report
    again = reanalyze(tmp_path / "out" / "analysis.json", tmp_path / "again", resamples=50)
    assert again["correlations"] == corr


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
