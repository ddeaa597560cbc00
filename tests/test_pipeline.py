"""End to end: `dvc repro` on a temp copy with tiny params; selective reruns; the MLflow run read back."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline import make_project, reproduce, set_params, stage_env

pytestmark = pytest.mark.slow

SEED_KEYS = {"epoch", "train_loss", "test_loss", "test_accuracy", "grad_norm", "lambda_max",
             "directional_sharpness", "lgdi", "stability_ratio"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def test_pipeline_end_to_end(project, monkeypatch, tmp_path):
    ran = reproduce(project, monkeypatch)
    assert ran == ["download", "train", "probe", "interpolate", "surface", "connect", "measures", "plot", "track"]

    metrics = json.loads((project / "mnist_geometry_metrics.json").read_text())
    assert [r["epoch"] for r in metrics] == [0, 1, 2]
    for r in metrics:
        assert SEED_KEYS <= r.keys()
        assert all(math.isfinite(r[k]) for k in SEED_KEYS)
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["lambda_max"] > 0 and r["grad_norm"] > 0
        assert r["stability_ratio"] == pytest.approx(r["lr"] * r["lambda_max"])
        assert r["stability_threshold"] == pytest.approx(2 * (1 + 0.9))
        assert r["lambda_max_converged"] and r["lambda_max_residual"] <= 1e-4
        assert r["probe_samples"] == 128 and r["hvp_count"] > 2
        assert len(r["lambda_top"]) == 2 and r["lambda_top"][0] == r["lambda_max"] >= r["lambda_top"][1]
        assert r["lambda_min"] < r["lambda_top"][1] and r["lambda_min_residual"] is not None
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # it trained
    line = json.loads((project / "line_loss.json").read_text())
    assert [p["alpha"] for p in line] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all({"alpha", "loss", "test_loss", "test_accuracy"} <= p.keys() for p in line)
    # the endpoints of the line are the checkpoints' full-split train losses (float32 forward passes, the
    # line's first layer factorized: equal to float32 rounding, 1e-5)
    assert line[0]["loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-5)
    assert line[-1]["loss"] == pytest.approx(metrics[-1]["train_loss"], rel=1e-5)
    indices = json.loads((project / "reports/probe_indices.json").read_text())
    assert len(indices["indices"]) == 128 and indices["seed"] == 0
    assert sorted(p.name for p in (project / "plots").iterdir()) == [
        "connectivity.png", "curvature.png", "line_loss.png", "loss_accuracy.png", "sharpness.png", "spectrum.png",
        "stability.png", "surface_3d.png", "surface_contour.png", "surface_curvature.png"]
    surface = json.loads((project / "reports/surface.json").read_text())
    assert (surface["epoch"], surface["split"], surface["normalization"]) == (2, "train", "filter")
    assert len(surface["loss"]) == 5 and all(len(row) == 5 for row in surface["loss"])
    assert surface["loss"][2][2] == pytest.approx(metrics[-1]["train_loss"], rel=1e-5)  # the center is θ
    connect = json.loads((project / "reports/connectivity.json").read_text())
    assert connect["spawn_epoch"] == 0 and connect["data_seed"] == 2654435769 and len(connect["alpha"]) == 5
    assert connect["loss"][0] == pytest.approx(metrics[-1]["train_loss"], rel=1e-5)  # α = 0: the main run
    assert connect["loss_barrier"] >= 0 and connect["distance"] > 0
    spectra = json.loads((project / "reports/spectrum.json").read_text())
    assert spectra["epochs"] == [2] and spectra["missing"] == [] and spectra["note"] is None  # density: last
    spectra = spectra["spectra"]
    assert spectra[0]["nodes"][0][-1] == pytest.approx(metrics[-1]["lambda_max"], rel=0.02)

    # notebook API: the probe set the stage used, and the model of a checkpoint
    sys.path.insert(0, str(project))
    from landscape.checkpoints import load_model
    from landscape.data import probe_set
    from landscape.evaluation import evaluate

    x, y = probe_set(project / "data", 128, 0)
    model = load_model(project / "checkpoints/epoch_002.pt")
    assert evaluate(model, x, y)[0] == pytest.approx(metrics[-1]["probe_loss"], rel=1e-6)

    # an unchanged pipeline runs nothing
    assert reproduce(project, monkeypatch) == []

    # the MLflow run holds everything
    from mlflow.tracking import MlflowClient

    run_info = json.loads((project / "reports/mlflow_run.json").read_text())
    assert run_info["store"] == "sqlite:///mlflow.db"  # relative to the repository root: true in any clone
    assert str(project) not in (project / "reports/mlflow_run.json").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.05" and run.data.params["model.hidden"] == "[32]"
    history = client.get_metric_history(run.info.run_id, "curvature/lambda_max")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["lambda_max"]) for r in metrics]
    assert run.data.metrics["summary/final_test_accuracy"] == pytest.approx(metrics[-1]["test_accuracy"])
    assert "summary/line/barrier_height" in run.data.metrics
    assert run.data.metrics["summary/connect/loss_barrier"] == pytest.approx(connect["loss_barrier"])
    # charts grouped by prefix in the UI; the experiment opens on its runs (MLflow 3), named runs, real span
    assert {m.split("/")[0] for m in run.data.metrics} <= {
        "loss", "accuracy", "gradient", "curvature", "sharpness", "stability", "summary", "train", "time", "probe",
        "model", "measures"}
    # the generalization measures: in their JSON (a DVC metric) and in MLflow under measures/…
    measures = json.loads((project / "reports/measures.json").read_text())
    assert measures["epoch"] == 2 and set(measures["families"]) == {
        "norm & margin", "pac-bayes", "worst-case flatness", "weight spectrum", "optimization"}
    assert measures["pacbayes"]["examples"] == 400  # at most pacbayes_examples: the whole tiny training set
    assert measures["sharpness_flatness"]["examples"] == 400
    assert measures["margin_negative"] is (measures["values"]["margin_signed"] < 0)
    assert measures["values"]["margin"] == abs(measures["values"]["margin_signed"])
    # the tiny run misclassifies more than 10% of its training set: the flag, the tag and the metric agree
    assert measures["margin_negative"] and run.data.tags.get("landscape.margin_negative") == "true"
    for name in ("log_prod_spec", "path_norm", "pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_flatness",
                 "sharpness_mag_flatness", "ww_alpha", "margin_signed"):
        assert run.data.metrics[f"measures/{name}"] == pytest.approx(measures["values"][name])
    assert measures["weightwatcher"]["analysed"] == ["net.0", "net.2"]
    assert {"time/train_s", "time/probe_s", "time/download_s"} <= run.data.metrics.keys()
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name.startswith("mnist offline 400/200 · source=offline train_samples=400")
    timings = [json.loads((project / f"reports/timings/{s}.json").read_text()) for s in ("download", "plot")]
    assert run.info.start_time == int(1000 * timings[0]["started_at"])  # the pipeline's start, not track's
    assert run.info.end_time >= int(1000 * timings[1]["finished_at"])
    for name in ("mnist_geometry_metrics.json", "line_loss.json"):
        local = client.download_artifacts(run.info.run_id, f"outputs/{name}", str(tmp_path))
        assert open(local, "rb").read() == (project / name).read_bytes()
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/curvature.png"}
    assert run.data.tags["mlflow.source.git.commit"] != "unknown"
    runs_before = client.search_runs([run.info.experiment_id])

    # editing a plot key reruns only plot and track, and makes a new parent run (a new configuration)
    set_params(project, {"plot": {"dpi": 80}})
    assert reproduce(project, monkeypatch) == ["plot", "track"]
    assert len(client.search_runs([run.info.experiment_id])) == len(runs_before) + 1

    # a forced track stage on an unchanged state finds its run and logs nothing new
    assert reproduce(project, monkeypatch, targets=["track"], force=True, single_item=True) == ["track"]
    assert len(client.search_runs([run.info.experiment_id])) == len(runs_before) + 1
    assert json.loads((project / "reports/mlflow_run.json").read_text())["reused"] is True

    # editing a probe key reruns probe, plot, track — not download, train or interpolate
    set_params(project, {"probe": {"sharpness_directions": 2}})
    assert reproduce(project, monkeypatch) == ["probe", "plot", "track"]
    # a surface or connect edit reruns only that stage, plot and track
    set_params(project, {"surface": {"normalization": "layer"}})
    assert reproduce(project, monkeypatch) == ["surface", "plot", "track"]
    assert json.loads((project / "reports/surface.json").read_text())["normalization"] == "layer"
    # the planes that contain something: the trajectory's PCA plane, the top Hessian eigenvectors
    set_params(project, {"surface": {"directions": "pca"}})
    assert reproduce(project, monkeypatch) == ["surface", "plot", "track"]
    pca = json.loads((project / "reports/surface.json").read_text())
    # the stage's line says what defines the plane (the stage rerun alone for its line: the same bytes again)
    v1, v2 = pca["plane"]["explained_variance"]
    line = subprocess.run([sys.executable, "-m", "stages.surface"], cwd=project, env=stage_env(),
                          capture_output=True, text=True, timeout=300)
    assert f"pca plane: {v1:.1%} + {v2:.1%} of the path's variance" in line.stdout, line.stdout + line.stderr
    assert json.loads((project / "reports/surface.json").read_text()) == pca
    assert pca["plane"]["kind"] == "pca" and [p["epoch"] for p in pca["plane"]["trajectory"]] == [0, 1, 2]
    assert 0.5 < sum(pca["plane"]["explained_variance"]) <= 1.0 + 1e-9 and pca["evaluation"] == "factorized"
    assert max(abs(p["x"]) for p in pca["plane"]["trajectory"]) * 1.2 == pytest.approx(pca["x"][-1], rel=1e-9)
    assert pca["loss"][2][2] == pytest.approx(metrics[-1]["train_loss"], rel=1e-5)  # the centre is θ
    set_params(project, {"surface": {"directions": "hessian"}})
    assert reproduce(project, monkeypatch) == ["surface", "plot", "track"]
    hess = json.loads((project / "reports/surface.json").read_text())["plane"]
    assert hess["kind"] == "hessian" and hess["eigenvalues"] == pytest.approx(metrics[-1]["lambda_top"], rel=1e-3)
    summary = json.loads((project / "reports/surface_summary.json").read_text())  # the DVC metric shows them
    assert [summary["lambda_1"], summary["lambda_2"]] == hess["eigenvalues"]
    assert summary["eigenvectors_converged"] == all(hess["converged"])
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).data.metrics["summary/surface/lambda_1"] == pytest.approx(hess["eigenvalues"][0])
    set_params(project, {"surface": {"directions": "random"}})  # back: the surface is restored from the run-cache
    assert reproduce(project, monkeypatch) == ["surface", "plot", "track"]
    set_params(project, {"connect": {"data_seed": 5}})
    assert reproduce(project, monkeypatch) == ["connect", "plot", "track"]
    arts = {a.path for a in client.list_artifacts(
        json.loads((project / "reports/mlflow_run.json").read_text())["run_id"], "outputs")}
    assert {"outputs/surface.json", "outputs/connectivity.json"} <= arts

    # a code edit that changes no output (a comment in the HVP module) reruns probe and surface (its Hessian
    # plane uses the module), whose outputs stay byte-identical, and track, which logs a new parent run tagged
    # with the code that made it
    from landscape.provenance import code_digest

    n_runs = len(client.search_runs([run.info.experiment_id]))
    metrics_bytes = (project / "mnist_geometry_metrics.json").read_bytes()
    surface_bytes = (project / "reports/surface.json").read_bytes()
    with open(project / "landscape/curvature/hvp.py", "a") as fh:
        fh.write("# an edit that changes no number\n")
    assert reproduce(project, monkeypatch) == ["probe", "surface", "track"]
    assert (project / "mnist_geometry_metrics.json").read_bytes() == metrics_bytes
    assert (project / "reports/surface.json").read_bytes() == surface_bytes
    assert len(client.search_runs([run.info.experiment_id])) == n_runs + 1
    new_run = client.get_run(json.loads((project / "reports/mlflow_run.json").read_text())["run_id"])
    assert new_run.data.tags["landscape.code_digest"] == code_digest(project)


def test_dvc_metrics_and_plots_commands(project, monkeypatch):
    env = stage_env()
    dvc = [sys.executable, "-m", "dvc"]
    reproduce(project, monkeypatch)  # a no-op after test_pipeline_end_to_end; the full run when run alone
    out = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    flat = json.dumps(shown)
    assert "final_test_accuracy" in flat and "barrier_height" in flat
    out = subprocess.run([*dvc, "plots", "show", "-o", "dvc_plots"], cwd=project, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    html = (project / "dvc_plots" / "index.html").read_text()
    assert "lambda_max" in html and "alpha" in html


def test_dvc_exp_run_and_show(project):
    """`dvc exp run -S train.lr=0.1` works and `dvc exp show` lists its metrics; MLflow gets a tagged run."""
    env = stage_env()
    dvc = [sys.executable, "-m", "dvc"]
    out = subprocess.run([*dvc, "exp", "run", "-S", "train.lr=0.1", "-n", "lr-0.1"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = subprocess.run([*dvc, "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "lr-0.1" in text and "final_test_accuracy" in text and "barrier_height" in text

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("landscape").experiment_id,
                              filter_string="tags.`dvc.exp_name` = 'lr-0.1'")
    assert len(runs) == 1 and runs[0].data.params["train.lr"] == "0.1"
    assert runs[0].info.status == "FINISHED"


def _normalize(rel: str) -> str | None:
    """Map what a stage touched to the path dvc.yaml would name: bytecode to its source, atomic-write temp
    files to their target; None for the MLflow store (not a DVC output, by design)."""
    p = Path(rel)
    if p.parent.name == "__pycache__" and p.suffix == ".pyc":
        return (p.parent.parent / (p.name.split(".")[0] + ".py")).as_posix()
    if p.name.startswith(".") and p.name.endswith(".tmp"):
        return (p.parent / p.name[1:].rsplit(".", 2)[0]).as_posix()
    if p.parts[0] in ("mlartifacts",) or p.name in ("mlflow.db", "mlflow.db-journal", ".mlflow.lock"):
        return None
    return p.as_posix()


def _outs(stage: dict) -> list[str]:
    out = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            out.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return out


def test_stage_file_accesses_match_dvc_yaml(project, monkeypatch, tmp_path):
    """Every file a stage opens is a declared dep (or params.yaml, or its own output), every file it writes
    is a declared output, and every declared dep is read: derived by running each stage under an audit hook."""
    import yaml

    from tests.test_layout import covered

    reproduce(project, monkeypatch)  # outputs in place (a no-op after the tests above)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    # a fresh store, so that track logs a new run (reading every file it logs) instead of reusing one
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'audit.db'}")
    audit = Path(__file__).with_name("audit_stage.py")
    problems = []
    for name, stage in stages.items():
        out_file = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, str(audit), name, str(out_file)], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(out_file.read_text())
        deps, outs = stage.get("deps", []), _outs(stage)
        reads = {q for q in map(_normalize, seen["read"]) if q}
        writes = {q for q in map(_normalize, seen["write"]) if q}
        listed = {q for q in map(_normalize, seen["list"]) if q}
        allowed_reads = ["params.yaml", *deps, *outs] + (["dvc.lock"] if name == "train" else [])
        problems += [f"{name} reads undeclared {f}" for f in sorted(reads) if not covered(f, allowed_reads)]
        problems += [f"{name} writes undeclared {f}" for f in sorted(writes) if not covered(f, outs)]
        touched = reads | listed
        problems += [f"{name} declares {d} but never reads it" for d in deps
                     if not any(t == d or t.startswith(d.rstrip("/") + "/") for t in touched)]
    assert not problems, "\n".join(problems)


def test_mlflow_ui_opens_on_the_runs(project, monkeypatch, tmp_path):
    """`make ui` (python -m landscape ui): a real MLflow UI on loopback; the printed runs page and one run's
    metric history through MLflow's REST API; where Chromium is installed, the page as a browser renders it."""
    import os
    import re
    import shutil
    import signal
    import urllib.parse
    import urllib.request

    from landscape.runner.cluster import free_port, wait_http

    reproduce(project, monkeypatch)
    run_info = json.loads((project / "reports/mlflow_run.json").read_text())
    port = free_port()
    env = stage_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen([sys.executable, "-m", "landscape", "ui", "--port", str(port)], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = server.stdout.readline()
        url = re.search(r"runs page (\S+)", first).group(1)
        assert url == (f"http://127.0.0.1:{port}/#/experiments/{run_info['experiment_id']}/runs"
                       "?workflowType=machine_learning"), first
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc=server)

        def api(path: str, body: dict | None = None) -> dict:
            req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=30).read())

        exp = api(f"experiments/get?experiment_id={run_info['experiment_id']}")["experiment"]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        runs = api("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        names = {r["info"]["run_id"]: r["info"]["run_name"] for r in runs}
        assert names[run_info["run_id"]] == run_info["run_name"]
        query = urllib.parse.urlencode({"run_id": run_info["run_id"], "metric_key": "curvature/lambda_max"})
        history = api(f"metrics/get-history?{query}")["metrics"]
        metrics = json.loads((project / "mnist_geometry_metrics.json").read_text())
        assert sorted(int(m.get("step", 0)) for m in history) == [r["epoch"] for r in metrics]
        assert urllib.request.urlopen(url, timeout=30).status == 200

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("Chromium is not installed: REST checks passed, no rendered page to look at")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,900", "--virtual-time-budget=20000"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert run_info["run_name"].split(" · ")[0] in dom.stdout, "the runs page does not list the run"
        shot = tmp_path / "runs.png"
        subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        from PIL import Image

        pixels = Image.open(shot).convert("L").resize((140, 90))
        values = list(pixels.getdata())
        assert len(set(values)) > 20 and max(values) - min(values) > 100, "the screenshot is blank"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_architecture_pipeline_end_to_end(tmp_path, monkeypatch):
    """A residual MLP (skip, He initialization) with the surface's curvature map and the Hessian's outlier count:
    the new keys in the JSON files and MLflow, the figure; the map's centre is the probe's λ_max and λ_min at
    that checkpoint; a model.skip edit reruns training and everything after it."""
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "arch", {
        "model": {"hidden": [16, 16, 16], "skip": True, "init": "he"},
        "probe": {"top_k": 20, "outliers": True, "lanczos_iters": 40},
        "surface": {"points": 5, "curvature": True, "curvature_points": 3}})
    assert "train" in reproduce(project, monkeypatch)
    metrics = json.loads((project / "mnist_geometry_metrics.json").read_text())
    last = metrics[-1]
    assert last["hvp_route"].startswith("cached-graph double backward")  # residual blocks: the autograd route
    assert {"hessian_outliers", "hessian_bulk_edge", "hessian_outliers_saturated"} <= last.keys()
    assert 0 <= last["hessian_outliers"] <= 20
    surface = json.loads((project / "reports/surface.json").read_text())
    curv = surface["curvature"]
    assert len(curv["x"]) == len(curv["y"]) == 3 and surface["evaluation"] == "factorized"
    assert curv["lambda_max"][1][1] == pytest.approx(last["lambda_max"], rel=1e-4)  # the centre is the checkpoint
    assert curv["lambda_min"][1][1] == pytest.approx(last["lambda_min"], rel=1e-3, abs=1e-6)
    summary = json.loads((project / "reports/surface_summary.json").read_text())
    assert summary["nonconvex_fraction"] == curv["nonconvex_fraction"] and summary["curvature_points"] == 9
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(json.loads((project / "reports/mlflow_run.json").read_text())["run_id"])
    assert run.data.metrics["summary/surface/nonconvex_fraction"] == pytest.approx(curv["nonconvex_fraction"])
    conv = [c for row in curv["converged"] for c in row]
    assert run.data.metrics["summary/surface/curvature_converged_fraction"] == pytest.approx(sum(conv) / 9)
    assert run.data.metrics["curvature/outliers"] == last["hessian_outliers"]
    assert run.data.params["model.skip"] == "True" and (project / "plots" / "surface_curvature.png").stat().st_size
    set_params(project, {"model": {"skip": False}})
    assert reproduce(project, monkeypatch) == ["train", "probe", "interpolate", "surface", "connect", "measures",
                                               "plot", "track"]
