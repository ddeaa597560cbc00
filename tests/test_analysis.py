"""``landscape analyze`` on a real MLflow store (SQLite, runs logged as the track stage logs them): τ equal to
scipy's on the logged metrics, skipped and superseded runs listed, seeds held fixed and configurations
resampled, one-line refusals, the per-configuration report, re-analysis of a recorded analysis.json, and the
count of flatness searches censored at the top of their interval."""

import random

import pytest
import scipy.stats


def _log_run(client, exp, name, params, metrics, tags=None, status="FINISHED"):
    run = client.create_run(exp, run_name=name, tags={"landscape.complete": "true", **(tags or {})})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v))
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v, step=0)
    if status:
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _empty_store(tmp_path):
    """A real SQLite MLflow store with one empty experiment 'study': (uri, client, experiment id)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())


def _store_with_runs(tmp_path, n=8, seed=0, seeds=(0,)):
    """A real SQLite MLflow store holding n configurations × len(seeds) training runs logged as the track stage
    logs them, plus one diverged and one unfinished run (skipped), for analysis tests that need no pipeline."""
    uri, client, exp = _empty_store(tmp_path)
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


def test_too_few_configurations_get_no_interval_and_few_get_a_caution(tmp_path):
    """4 configurations × 2 seeds: no interval anywhere (the report says why, and that the family lead's noise is
    unknown); 8 configurations: intervals, read as approximate."""
    from landscape.study.analysis import analyze

    uri, _ = _store_with_runs(tmp_path / "four", n=4, seeds=(0, 1))
    rec = analyze("study", tmp_path / "out4", uri=uri, resamples=200, log_run=False)
    assert all(c[g]["interval"].get("too_few_clusters") for c in rec["correlations"].values()
               for g in ("loss_gap", "error_gap"))
    text = (tmp_path / "out4" / "report.md").read_text()
    assert "**No intervals**: 4 configurations allow only 35 distinct resamples" in text
    assert "the resampling noise of that lead is unknown" in text
    rows = [line for line in text.splitlines() if line.startswith("| curvature |")]  # best-of-family and full
    assert len(rows) >= 4 and all("[—, —]" in line for line in rows)
    uri, _ = _store_with_runs(tmp_path / "eight", n=8)
    analyze("study", tmp_path / "out8", uri=uri, resamples=200, log_run=False)
    text = (tmp_path / "out8" / "report.md").read_text()
    assert "With 8 configurations read the intervals as approximate" in text and "No intervals" not in text


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
    from landscape.measures.pacbayes import MAG_AT_TOP, PLAIN_AT_TOP, bisection
    from landscape.study.analysis import analyze, reanalyze
    from landscape.study.registry import SEARCHES

    top = bisection(lambda s: (0.0, {}), 0.1, 15, 0.01)  # the deviation never reached: every step moves up
    assert top[2:] == (False, True) and top[0] == 2 - 2.0**-14
    # a search that moved down once, at its 14th step: it ends inside the interval, just below the top
    below, _, _, at_top = bisection(lambda s: (1.0 if s >= 2 - 2.0**-13 else 0.0, {}), 0.1, 15, 0.01)
    assert not at_top and 2 - 2.0**-12 < below < top[0]
    assert {n for scale, _, names in SEARCHES if "pacbayes" in scale for n in names} == \
        {n for n in PLAIN_AT_TOP + MAG_AT_TOP if not n.endswith("sigma")}
    uri, client, exp = _empty_store(tmp_path)
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


def test_the_analysis_counts_the_runs_whose_margin_percentile_fell_on_a_misclassified_example(tmp_path):
    """γ is the absolute value of the 10th-percentile margin (the reference code's convention). Newer runs log the
    signed margin; for older ones a train error ≥ 10% says it was ≤ 0. Each measure with γ in it counts those
    runs, per run and in the report; measures without γ carry no count."""
    from landscape.study.analysis import analyze, reanalyze

    uri, client, exp = _empty_store(tmp_path)
    rng = random.Random(0)
    expected = {}
    for i in range(8):
        # r0: signed margin logged and negative; r1: logged positive although the accuracy is low (the logged
        # value wins); r2: older run at chance (accuracy 0.2: negative); r3: older run at exactly 10% error
        acc = {1: 0.5, 2: 0.2, 3: 0.9}.get(i, rng.uniform(0.95, 1.0))
        gamma = rng.uniform(0.5, 3)
        m = {"measures/margin": gamma, "measures/inverse_margin": 1 / gamma**2,
             "measures/log_prod_spec_over_margin": rng.uniform(5, 9), "measures/log_prod_spec": rng.uniform(5, 9),
             "curvature/lambda_max": rng.uniform(1, 50), "loss/generalization_gap": rng.uniform(0, 0.5),
             "accuracy/train": acc, "accuracy/test": acc - rng.uniform(0, 0.05)}
        if i in (0, 1, 4):
            m["measures/margin_signed"] = -gamma if i == 0 else gamma
        expected[f"r{i}"] = i in (0, 2, 3)
        _log_run(client, exp, f"r{i}", {"train.lr": (0.01, 0.1)[i % 2], "model.hidden": [16 * (i // 2 + 1)],
                                         "measures.margin_percentile": 10.0}, m)
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=50, log_run=False)
    assert {r["name"]: r["margin_negative"] for r in rec["runs"]} == expected
    corr = rec["correlations"]
    assert corr["inverse_margin"]["margin_negative"] == 3 and corr["log_prod_spec_over_margin"]["margin_negative"] == 3
    assert "margin_negative" not in corr["log_prod_spec"] and "margin_negative" not in corr["lambda_max"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| norm & margin | inverse_margin | 8 (3 negative margin) |" in report
    again = reanalyze(tmp_path / "out" / "analysis.json", tmp_path / "again", resamples=50)
    assert again["correlations"] == corr and again["runs"] == rec["runs"]


def test_a_measure_some_runs_lack_is_ranked_over_the_others_and_says_how_many_of_all(tmp_path):
    """#steps is null where the train loss never fell below its threshold (right-censored at budgets that differ
    with the batch size): those runs are left out of its row, never dropped from the others, and the row says
    '6 of 8'."""
    from landscape.study.analysis import analyze

    uri, client, exp = _empty_store(tmp_path)
    rng = random.Random(1)
    for i in range(8):
        m = {"curvature/lambda_max": rng.uniform(1, 50), "loss/generalization_gap": rng.uniform(0, 0.5),
             "accuracy/train": rng.uniform(0.9, 1.0), "accuracy/test": rng.uniform(0.8, 0.9)}
        if i not in (2, 5):
            m["measures/steps_to_loss"] = rng.randint(100, 5000)
        _log_run(client, exp, f"r{i}", {"train.lr": (0.01, 0.1)[i % 2], "model.hidden": [16 * (i // 2 + 1)]}, m)
    rec = analyze("study", tmp_path / "out", uri=uri, resamples=50, log_run=False)
    corr = rec["correlations"]
    assert corr["steps_to_loss"]["runs"] == 6 and corr["steps_to_loss"]["without_value"] == 2
    assert corr["lambda_max"]["runs"] == 8 and "without_value" not in corr["lambda_max"]
    kept = [r for r in rec["runs"] if r["measures"]["steps_to_loss"] is not None]
    assert corr["steps_to_loss"]["loss_gap"]["tau"] == pytest.approx(scipy.stats.kendalltau(
        [r["measures"]["steps_to_loss"] for r in kept], [r["gaps"]["loss_gap"] for r in kept]).statistic, abs=1e-12)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| optimization | steps_to_loss | 6 of 8 |" in report and "| curvature | lambda_max | 8 |" in report
