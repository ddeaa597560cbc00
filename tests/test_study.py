"""Statistics of the study: Kendall τ_b against scipy and by hand, the seeded bootstrap, the granulated Ψ on
runs where its value is known by hand; sweep grids; the stability summary."""

import math
import shutil
from pathlib import Path

import pytest
import scipy.stats
import yaml

from landscape.study.correlation import bootstrap_interval, granulated, kendall_tau_b
from landscape.runner.grid import GridError, apply_overrides, dvc_set_args, load_grid
from landscape.study.stability import stability_summary


def test_kendall_tau_b_by_hand_with_ties():
    # x = [1, 2, 2, 3], y = [1, 3, 2, 2]: pairs (6): C = 3 [(0,1),(0,2),(0,3)], D = 1 [(1,3)],
    # tied in x: (1,2); tied in y: (2,3)  ->  τ_b = (3 − 1) / √((6 − 1)(6 − 1)) = 0.4
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4, abs=1e-15)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_b_equals_scipy(seed):
    import random

    rng = random.Random(seed)
    x = [rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(15)]  # many ties
    y = [rng.random() if seed % 2 else rng.choice([1, 2, 3]) for _ in range(15)]
    assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = [0.1, 0.4, 0.2, 0.8, 0.5, 0.9, 0.3, 0.7]
    y = [1.0, 2.1, 1.9, 3.5, 2.0, 4.0, 1.1, 2.9]
    a = bootstrap_interval(x, y, resamples=500, seed=3)
    assert a == bootstrap_interval(x, y, resamples=500, seed=3)
    assert a != bootstrap_interval(x, y, resamples=500, seed=4)
    tau = kendall_tau_b(x, y)
    assert a["low"] <= tau <= a["high"] and a["high"] - a["low"] < 1.5


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


# ------------------------------------------------------------------------------------------------ grids
ROOT = Path(__file__).resolve().parent.parent


def _grid(tmp_path, spec) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False) if not isinstance(spec, str) else spec)
    return p


def test_grid_expands_the_cartesian_product_with_fixed_overrides(tmp_path):
    g = load_grid(_grid(tmp_path, {"name": "g", "experiment": "e", "grid": {"train.lr": [0.01, 0.1],
              "model.hidden": [[8], [16, 16], [32]]}, "fixed": {"train.epochs": 3}}), ROOT / "params.yaml")
    assert [p.name for p in g.points] == [f"g-{i:03d}" for i in range(6)]
    assert g.points[4].axes == {"train.lr": 0.1, "model.hidden": [16, 16]}
    assert g.points[4].overrides == {"train.epochs": 3, "train.lr": 0.1, "model.hidden": [16, 16],
                                     "track.experiment": "e"}


@pytest.mark.parametrize(("spec", "words"), [
    ({"grid": {"train.learning_rate": [0.1]}}, "unknown key 'train.learning_rate'"),
    ({"grid": {"train.lr": []}}, "grid key 'train.lr' = []: allowed: a non-empty list"),
    ({"grid": {"train.lr": 0.1}}, "allowed: a non-empty list"),
    ({"grid": {"train.lr": [0.1, -1.0]}}, "point grid-001 (train.lr=-1.0): params.yaml: train.lr = -1.0 is invalid"),
    ({"grid": {"train.epochs": [2, 20]}, "fixed": {"interpolate.start_epoch": 5}},
     "point grid-000 (train.epochs=2): params.yaml: interpolate.start_epoch = 5: no checkpoint"),
    ({"grid": {"train.lr": [0.1]}, "fixed": {"train.lr": 0.2}}, "both a grid axis and fixed"),
    ({"grid": {"track.experiment": ["a"]}}, "set by the sweep"),
    ({"grid": {"train.lr": [0.1]}, "nme": "x"}, "unknown entries ['nme']"),
    ("grid: [1, 2\n", "not valid YAML"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, spec, words):
    with pytest.raises(GridError) as exc:
        load_grid(_grid(tmp_path, spec), ROOT / "params.yaml")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_dvc_reads_the_set_arguments_back_as_the_values_the_run_key_assumes(tmp_path):
    """The sweep recognizes finished points by the run key of params.yaml with the overrides applied; DVC
    applies `-S k=v` through Hydra's grammar: both must give the same parsed params."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    g = load_grid(_grid(tmp_path, {"grid": {"model.hidden": [[64, 64]], "train.batch_size": ["full", 32],
                                            "interpolate.end_epoch": [None]},
                                   "fixed": {"train.lr": 0.003, "data.source": "offline", "train.nesterov": True,
                                             "track.run_name": "a b's run"}}), ROOT / "params.yaml")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for point in g.points:
        copy = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", copy)
        args = dvc_set_args(point)
        dvc_apply(copy, [args[i + 1] for i in range(0, len(args), 2)])
        assert yaml.safe_load(copy.read_text()) == apply_overrides(base, point.overrides)


def test_sweep_dry_run_prints_the_points(tmp_path):
    import subprocess
    import sys

    grid = _grid(tmp_path, {"name": "t", "grid": {"train.lr": [0.01, 0.1]}})
    proc = subprocess.run([sys.executable, "-m", "landscape", "sweep", str(grid), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "t-000: train.lr=0.01" in proc.stdout and "t-001: train.lr=0.1" in proc.stdout
    bad = _grid(tmp_path, {"grid": {"train.lr": [-1.0]}})
    proc = subprocess.run([sys.executable, "-m", "landscape", "sweep", str(bad), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train.lr = -1.0" in proc.stderr


# --------------------------------------------------------------------------------------------- analysis
def _store_with_runs(tmp_path, n=8, seed=0):
    """A real SQLite MLflow store holding n training runs logged as the track stage logs them, plus one
    diverged and one unfinished run (skipped), for analysis tests that need no pipeline."""
    import random

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())
    rng = random.Random(seed)
    logged = []
    for i in range(n):
        lr, width = (0.01, 0.1)[i % 2], (16, 64, 128, 256)[i // 2 % 4]
        m = {"curvature/lambda_max": rng.uniform(1, 50), "sharpness/directional": rng.uniform(1e-5, 1e-3),
             "curvature/hessian_trace": rng.uniform(10, 100), "stability/lgdi": rng.uniform(0, 1),
             "gradient/norm": rng.uniform(0, 1), "stability/ratio": lr * rng.uniform(1, 50),
             "stability/threshold": 3.8, "model/num_params": 1000.0 * width,
             "summary/line/barrier_height": 0.0,
             "loss/generalization_gap": rng.uniform(0, 0.5), "accuracy/train": rng.uniform(0.9, 1.0),
             "accuracy/test": rng.uniform(0.8, 0.95)}
        run = client.create_run(exp, run_name=f"r{i}", tags={"landscape.complete": "true"})
        for k, v in {"train.lr": lr, "model.hidden": [width], "train.seed": 0, "probe.sharpness_radius": 0.5}.items():
            client.log_param(run.info.run_id, k, str(v))
        for k, v in m.items():
            client.log_metric(run.info.run_id, k, v, step=0)
        client.set_terminated(run.info.run_id, "FINISHED")
        logged.append(m)
    bad = client.create_run(exp, run_name="diverged",
                            tags={"landscape.complete": "true", "landscape.diverged": "epoch 2"})
    client.set_terminated(bad.info.run_id, "FINISHED")
    client.create_run(exp, run_name="crashed")  # left RUNNING
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
    assert "train.seed" not in rec["axes"]  # does not vary
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| r{i} |" in report for i in range(8)) and "diverged" in report
    assert (tmp_path / "out" / "gap_vs_lambda_max.png").stat().st_size > 1000
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(rec["analysis_run_id"])
    assert run.data.tags["landscape.analysis"] == "true"
    assert set(run.data.tags["landscape.analysis.runs"].split(",")) == {r["run_id"] for r in rec["runs"]}
    again = analyze("study", tmp_path / "out2", uri=uri, resamples=200, log_run=False)  # analysis runs not input
    assert len(again["runs"]) == 8 and again["correlations"] == rec["correlations"]


def test_analysis_refuses_unknown_experiments_and_too_few_runs(tmp_path):
    from landscape.errors import LandscapeError
    from landscape.study.analysis import analyze

    uri, _ = _store_with_runs(tmp_path, n=3)
    with pytest.raises(LandscapeError, match="no MLflow experiment 'nope'.*experiments there: .*study"):
        analyze("nope", tmp_path / "o", uri=uri)
    with pytest.raises(LandscapeError, match=r"has 3 usable run\(s\) \(2 skipped\); a rank correlation needs"):
        analyze("study", tmp_path / "o", uri=uri)


def test_analysis_of_an_unreachable_store_fails_in_seconds_with_one_line():
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "landscape", "analyze", "--experiment", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert time.perf_counter() - t0 < 60
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "http://127.0.0.1:9" in err[0], proc.stderr


@pytest.mark.slow
def test_sweep_then_analyze_end_to_end(tmp_path):
    """A 2×2 tiny grid through `landscape sweep --jobs 2` (real DVC queue, real MLflow store), then
    `landscape analyze`: four finished runs, a report naming them, τ equal to scipy's on their logged metrics;
    running the sweep again recognizes every point by its run key and runs nothing."""
    import json
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from tests.pipeline import make_project, stage_env

    project = make_project(tmp_path / "project")
    env = stage_env()
    sweep = [sys.executable, "-m", "landscape", "sweep", "sweeps/tiny.yaml", "--jobs", "2"]
    proc = subprocess.run(sweep, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished now: 4; already finished before: 0; failed: 0" in proc.stdout
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-tiny")
    runs = {r.data.tags["dvc.exp_name"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [f"tiny-{i:03d}" for i in range(4)]
    assert {(r.data.params["train.lr"], r.data.params["model.hidden"]) for r in runs.values()} == {
        ("0.02", "[16]"), ("0.02", "[32]"), ("0.1", "[16]"), ("0.1", "[32]")}
    assert all(r.info.status == "FINISHED" and r.data.tags["landscape.complete"] == "true" for r in runs.values())
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert all(f"tiny-{i:03d}" in shown.stdout for i in range(4))

    out = subprocess.run([sys.executable, "-m", "landscape", "analyze", "--experiment", "sweep-tiny",
                          "--out", "study"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = (project / "study" / "report.md").read_text()
    assert all(f"| tiny-{i:03d} | `{runs[f'tiny-{i:03d}'].info.run_id}` |" in report for i in range(4))
    analysis = json.loads((project / "study" / "analysis.json").read_text())
    order = sorted(runs)
    lam = [runs[n].data.metrics["curvature/lambda_max"] for n in order]
    gap = [runs[n].data.metrics["loss/generalization_gap"] for n in order]
    assert analysis["correlations"]["lambda_max"]["loss_gap"]["tau"] == pytest.approx(
        scipy.stats.kendalltau(lam, gap).statistic, abs=1e-12)
    assert client.get_run(analysis["analysis_run_id"]).data.tags["landscape.analysis"] == "true"

    again = subprocess.run(sweep, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "finished now: 0; already finished before: 4" in again.stdout, again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 5  # four points and the analysis: nothing new
