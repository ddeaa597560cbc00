"""Running many pipelines on one machine: sweep grids (validation, YAML 1.2 floats, duplicate points, names DVC
accepts), the `landscape sweep` command's one-line refusals, and the local engine through real DVC queues and a
real MLflow store — a failed point and a code change rerun, Ctrl-C and a killed driver followed by a rerun that
queues nothing twice, exponent floats through `dvc exp run`. (Ray and the cluster services: test_scaleout.py.)"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scipy.stats
import yaml

from landscape.io import read_yaml
from landscape.runner.grid import GridError, apply_overrides, dvc_set_args, load_grid
from tests.pipeline import make_project, stage_env

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, "-m", "landscape", "sweep"]


def _grid(tmp_path, spec, name="grid.yaml") -> Path:
    p = tmp_path / name
    if isinstance(spec, bytes):
        p.write_bytes(spec)
    else:
        p.write_text(yaml.safe_dump(spec, sort_keys=False) if not isinstance(spec, str) else spec)
    return p


# ------------------------------------------------------------------------------------------------ grids
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
    ({"grid": {"train.lr": [0.1, 0.1]}}, "grid key 'train.lr' lists 0.1 twice"),
    ({"grid": {"train.lr": [0.1, 0.10]}}, "lists 0.1 twice"),
    ({"grid": {"model.hidden": [[64], [64]]}}, "lists [64] twice"),
    ({"name": "a..b", "grid": {"train.lr": [0.1]}}, "name = 'a..b': allowed"),
    ({"name": "-x", "grid": {"train.lr": [0.1]}}, "name = '-x': allowed"),
    (b"grid:\n  train.lr: [0.1]\n# caf\xe9\n", "not UTF-8 text"),
    ({"grid": {"train.seed": [0, 1]}, "fixed": {"connect.data_seed": 1}},
     "point grid-001 (train.seed=1): params.yaml: connect.data_seed = 1 equals train.seed"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, spec, words):
    with pytest.raises(GridError) as exc:
        load_grid(_grid(tmp_path, spec), ROOT / "params.yaml")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_key_params_yaml_lacks_is_refused_even_when_params_validation_knows_it(tmp_path):
    """dvc exp run -S cannot add a key: a sweep over one would fail at queue time, after the grid was accepted."""
    params = read_yaml(ROOT / "params.yaml")
    del params["surface"]["curvature"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(GridError) as exc:
        load_grid(_grid(tmp_path, {"grid": {"train.lr": [0.1]}, "fixed": {"surface.curvature": True}}),
                  tmp_path / "params.yaml")
    assert "'surface.curvature' is not in" in str(exc.value) and "add 'curvature' under 'surface:'" in str(exc.value)


def test_a_grid_over_train_seed_runs_with_the_default_copy_seed(tmp_path):
    """connect.data_seed: null derives the copy's order from train.seed, never equal to it."""
    from landscape.config import connect_data_seed
    from landscape.params_file import parse_params

    g = load_grid(_grid(tmp_path, {"grid": {"train.seed": [0, 1, 2, 2654435769]}}), ROOT / "params.yaml")
    base = read_yaml(ROOT / "params.yaml")
    seeds = [connect_data_seed(parse_params(apply_overrides(base, p.overrides))) for p in g.points]
    assert seeds == [2654435769, 2654435770, 2654435771, 2 * 2654435769 % 2**32]
    assert all(s != p.axes["train.seed"] for s, p in zip(seeds, g.points, strict=True))


def test_yaml_is_read_with_yaml_1_2_floats():
    """DVC writes 1e-05 (YAML 1.2); PyYAML's YAML 1.1 rule reads it as the string '1e-05'."""
    assert yaml.safe_load("a: 1e-05")["a"] == "1e-05"  # the trap
    got = read_yaml("a: 1e-05\nb: 1.0e-5\nc: 1E5\nd: 10\ne: -3\nf: .inf\ng: 0.5\nh: '1e-05'\ni: 1_000\nj: 2.\n")
    assert got == {"a": 1e-05, "b": 1e-05, "c": 1e5, "d": 10, "e": -3, "f": float("inf"), "g": 0.5, "h": "1e-05",
                   "i": 1000, "j": 2.0}
    assert [type(got[k]) for k in "acdij"] == [float, float, int, int, float]


def test_dvc_reads_the_set_arguments_back_as_the_values_the_run_key_assumes(tmp_path):
    """The sweep recognizes finished points by the run key of params.yaml with the overrides applied; DVC
    applies `-S k=v` through Hydra's grammar and writes YAML 1.2: both must give the same parsed params."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    g = load_grid(_grid(tmp_path, {"grid": {"model.hidden": [[64, 64]], "train.batch_size": ["full", 32],
                                            "interpolate.end_epoch": [None], "train.weight_decay": [0.0, 1.0e-5]},
                                   "fixed": {"train.lr": 0.003, "data.source": "offline", "train.nesterov": True,
                                             "probe.tol": 1e-6, "track.run_name": "a b's run"}}), ROOT / "params.yaml")
    base = read_yaml(ROOT / "params.yaml")
    for point in g.points:
        copy = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", copy)
        args = dvc_set_args(point)
        dvc_apply(copy, [args[i + 1] for i in range(0, len(args), 2)])
        assert read_yaml(copy) == apply_overrides(base, point.overrides)
        from landscape.params_file import load_params

        load_params(copy)  # and the schema accepts what DVC wrote (1e-05 was refused as a string)


@pytest.mark.parametrize("grid", sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_shipped_grid_passes_dry_run(grid):
    proc = subprocess.run([*SWEEP, f"sweeps/{grid}", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=stage_env())
    assert proc.returncode == 0, proc.stderr
    assert f"{yaml.safe_load((ROOT / 'sweeps' / grid).read_text())['name']}-000:" in proc.stdout


def test_sweep_dry_run_prints_the_points(tmp_path):
    grid = _grid(tmp_path, {"name": "t", "grid": {"train.lr": [0.01, 0.1]}})
    proc = subprocess.run([*SWEEP, str(grid), "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "t-000: train.lr=0.01" in proc.stdout and "t-001: train.lr=0.1" in proc.stdout
    bad = _grid(tmp_path, {"grid": {"train.lr": [-1.0]}})
    proc = subprocess.run([*SWEEP, str(bad), "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train.lr = -1.0" in proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("cli") / "project")


def _one_line_exit_2(proc, words, seconds=None, t0=None):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0] and "Traceback" not in proc.stderr, proc.stderr
    if seconds is not None:
        assert time.perf_counter() - t0 < seconds


def test_sweep_refusals_are_one_line_exit_2_before_anything_is_queued(project, tmp_path):
    env = stage_env()
    grid = _grid(tmp_path, {"name": "t", "grid": {"train.lr": [0.01, 0.1]}})
    run = lambda *a, cwd=project, **kw: subprocess.run([*SWEEP, *a], cwd=cwd, capture_output=True, text=True,  # noqa: E731
                                                       timeout=120, env={**env, **kw})
    _one_line_exit_2(run(str(_grid(tmp_path, b"grid: {train.lr: [0.1]}\n# \xff\n", "latin.yaml"))), "not UTF-8")
    # the `landscape` launcher puts the clone's root on PYTHONPATH wherever it is called from
    _one_line_exit_2(run(str(grid), cwd=project / "landscape", PYTHONPATH=str(project)),
                     "run landscape from the repository root")
    _one_line_exit_2(run(str(grid), "--jobs", "0"), "--jobs 0: allowed: 1 or more")
    _one_line_exit_2(run(str(_grid(tmp_path, {"name": "a..b", "grid": {"train.lr": [0.1]}}, "dots.yaml"))),
                     "name = 'a..b'")
    t0 = time.perf_counter()
    _one_line_exit_2(run(str(grid), MLFLOW_TRACKING_URI="http://u:pw@127.0.0.1:9"),
                     "MLflow tracking at http://***@127.0.0.1:9 failed", seconds=60, t0=t0)
    stray = project / "landscape" / "scratch.py"
    stray.write_text("x = 1\n")
    try:
        _one_line_exit_2(run(str(grid)), "untracked code landscape/scratch.py")
    finally:
        stray.unlink()
    queued = subprocess.run([sys.executable, "-m", "dvc", "queue", "status"], cwd=project, capture_output=True,
                            text=True, timeout=120, env=env)
    assert "t-00" not in queued.stdout  # nothing was queued by any of them
    assert not (project / "mlflow.db").exists() or "pw" not in (project / "mlflow.db").read_bytes().decode("latin1")


# --------------------------------------------------------------------------------- local sweeps, end to end
FAST = {"surface.enabled": False, "connect.enabled": False, "probe.density_epochs": "none", "data.source": "offline",
        "data.test_samples": 200, "train.epochs": 2, "train.batch_size": 64, "model.hidden": [16],
        "probe.lanczos_iters": 20, "probe.trace_samples": 2, "probe.sharpness_directions": 2,
        "interpolate.start_epoch": 0, "interpolate.points": 3}
# the stages a test about running and recording does not look at (a switched-off stage still runs, in 0.2 s)
OFF = {"surface": {"enabled": False}, "connect": {"enabled": False}, "measures": {"enabled": False}}


def _write_grid(project: Path, name: str, axes: dict, fixed: dict) -> str:
    path = project / "sweeps" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"experiment": f"sweep-{name}", "name": name, "grid": axes, "fixed": fixed},
                                   sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "add", str(path)], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", f"grid {name}"], cwd=project, check=True)
    return f"sweeps/{name}.yaml"


def _queue_entries(project: Path, env: dict) -> list[dict]:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return repo.experiments.celery_queue.status()


def _runs(project: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_a_failed_point_and_a_code_change_rerun_and_nothing_counts_before_it_ends(tmp_path):
    """Point 001 fails in its probe stage (probe.samples above the 4,000 offline digits: known only after the
    download). The sweep reports the stage's own error line; after a code change a rerun queues both points
    again (new run keys) while DVC's queue still remembers the earlier entries of the same names: the rerun
    must wait for the new ones (it used to count the old Success/Failed entries at once and print `2/2`
    while both still ran), and leaves no entry of its own in the queue."""
    project = make_project(tmp_path / "project")
    env = stage_env()
    grid = _write_grid(project, "fail", {"probe.samples": [64, 5000]},
                       {**FAST, "measures.enabled": False, "data.train_samples": None})
    first = subprocess.run([*SWEEP, grid, "--jobs", "2"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
    assert "finished now: 1; already finished before: 0; failed: 1" in first.stdout
    assert "FAILED fail-001 (probe.samples=5000): error: params.yaml: probe.samples = 5000 exceeds the training " \
           "split (4000 examples)" in first.stdout, first.stdout
    assert "queueing fail" in first.stderr  # progress while queueing
    io_py = project / "landscape" / "io.py"
    io_py.write_text(io_py.read_text() + "\n# a code change: every point gets a new run key\n")
    second = subprocess.run([*SWEEP, grid, "--jobs", "2"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    assert "finished now: 1; already finished before: 0; failed: 1" in second.stdout, second.stdout
    assert "exceeds the training split" in second.stdout
    mine = [e for e in _queue_entries(project, env) if (e.get("name") or "").startswith("fail-")]
    assert mine == [], mine  # nothing of this sweep still queued or running, and its finished entries cleared
    runs = [r for r in _runs(project, "sweep-fail") if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == ["fail-000", "fail-000"]
    assert len({r.data.tags["landscape.code_digest"] for r in runs}) == 2


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_processes_under(project: Path) -> None:
    """SIGKILL every process working in ``project`` (queue workers, experiments, stages), as a restart would."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if cwd == str(project) or cwd.startswith(str(project) + os.sep):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(d.name), signal.SIGKILL)


@pytest.mark.slow
def test_an_interrupted_sweep_is_followed_by_its_rerun_then_analyzed(tmp_path):
    """A driver killed by SIGKILL while its points run, then a machine restart (every worker and running
    experiment killed: the rerun marks their entries failed and runs them again), then a rerun interrupted by
    Ctrl-C (one message that says what keeps running, no traceback, exit 130), then a rerun: the reruns follow
    the entries already queued and queue nothing twice. The grid's weight decay 1.0e-5 goes through
    `dvc exp run -S` and comes back as 1e-05 (YAML 1.2): every point ends with one run, a further rerun
    recognizes all four, and `landscape analyze` reads them (τ equal to scipy's on their logged metrics)."""
    project = make_project(tmp_path / "project")
    env = stage_env()
    grid = _write_grid(project, "wd", {"train.lr": [0.02, 0.1], "train.weight_decay": [0.0, 1.0e-5]}, FAST)

    def popen(log: Path) -> subprocess.Popen:
        # SIGINT back to its default in the child: a suite started as a background job inherits it ignored
        # (POSIX), and Python then never raises KeyboardInterrupt, so the Ctrl-C below would be a no-op
        return subprocess.Popen([*SWEEP, grid, "--jobs", "1"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(log, "w"), text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def running() -> bool:
        return any(e["status"] == "Running" and (e.get("name") or "").startswith("wd-")
                   for e in _queue_entries(project, env))

    first = popen(tmp_path / "first.log")
    # the progress bar follows at once: `dvc queue start` returns while its workers run (they used to hold the
    # pipe the driver read its output from, and the driver hung until the whole queue was done)
    _wait_for(lambda: "sweep wd:" in (tmp_path / "first.log").read_text(), 60, "the driver to follow its points")
    _wait_for(running, 300, "a running point")
    first.kill()  # the driver dies without a word; DVC's queue workers go on
    first.wait(timeout=60)
    # then the machine restarts: the workers and the running experiments die with it, and DVC lists the
    # entries as running for ever (the rerun used to follow them without end)
    _kill_processes_under(project)
    second = popen(tmp_path / "second.log")
    _wait_for(lambda: "sweep wd:" in (tmp_path / "second.log").read_text(), 120, "the rerun to follow")
    assert "process (pid" in (tmp_path / "second.log").read_text() and "it runs again" in (
        tmp_path / "second.log").read_text()
    second.send_signal(signal.SIGINT)
    second.wait(timeout=120)
    err = (tmp_path / "second.log").read_text()
    assert second.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "queue workers keep going with" in err and "dvc queue kill" in err, err
    third = subprocess.run([*SWEEP, grid, "--jobs", "2"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=900)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "failed: 0" in third.stdout and "queued now: 0" in third.stdout, third.stdout
    runs = [r for r in _runs(project, "sweep-wd") if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == ["wd-000", "wd-001", "wd-002", "wd-003"]
    assert {r.data.params["train.weight_decay"] for r in runs} == {"0.0", "1e-05"}
    again = subprocess.run([*SWEEP, grid], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "finished now: 0; already finished before: 4" in again.stdout, again.stdout
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert all(f"wd-{i:03d}" in shown.stdout for i in range(4))

    out = subprocess.run([sys.executable, "-m", "landscape", "analyze", "--experiment", "sweep-wd", "--out", "study",
                          "--resamples", "200"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    analysis = json.loads((project / "study" / "analysis.json").read_text())
    by_name = {r.data.tags["dvc.exp_name"]: r for r in runs}
    assert {r["name"] for r in analysis["runs"]} == set(by_name)
    order = [r["name"] for r in analysis["runs"]]
    lam = [by_name[n].data.metrics["curvature/lambda_max"] for n in order]
    gap = [by_name[n].data.metrics["loss/generalization_gap"] for n in order]
    assert analysis["correlations"]["lambda_max"]["loss_gap"]["tau"] == pytest.approx(
        scipy.stats.kendalltau(lam, gap).statistic, abs=1e-12)
    assert os.path.exists(project / "study" / "report.md")
    # every family of generalization measure is a row of the analysis: from each run's measures stage
    for name, family in (("log_prod_spec", "norm & margin"), ("pacbayes_mag_flatness", "pac-bayes"),
                         ("ww_alpha", "weight spectrum"), ("lambda_max", "curvature"),
                         ("sharpness_mag_flatness", "worst-case flatness")):
        assert analysis["correlations"][name]["family"] == family and analysis["correlations"][name]["runs"] == 4
    assert {r["measures"]["pacbayes_flatness"] for r in analysis["runs"]} == {
        by_name[n].data.metrics["measures/pacbayes_flatness"] for n in order}


def dvc(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=stage_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_parallel_queued_experiments_log_to_the_root_store(tmp_path):
    project = make_project(tmp_path, OFF)  # what is logged where, not what the switched-off stages compute
    for lr in ("0.01", "0.02", "0.03", "0.04"):
        q = dvc(project, "exp", "run", "--queue", "-S", f"train.lr={lr}", "-n", f"lr-{lr}")
        assert q.returncode == 0, q.stderr
    start = dvc(project, "queue", "start", "-j", "2", timeout=1200)
    assert start.returncode == 0, start.stderr
    deadline = time.time() + 1200
    while True:
        status = dvc(project, "queue", "status").stdout
        if not any(s in status for s in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 4, status
    from mlflow.tracking import MlflowClient

    assert not list(project.glob(".dvc/tmp/exps/**/mlflow.db")), "a run logged into a temporary copy"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("landscape").experiment_id])
    names = sorted(r.data.tags.get("dvc.exp_name") for r in runs)
    assert names == ["lr-0.01", "lr-0.02", "lr-0.03", "lr-0.04"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["train.lr"] == r.data.tags["dvc.exp_name"][3:]
        paths = {a.path for a in client.list_artifacts(r.info.run_id, "outputs")}
        assert {"outputs/mnist_geometry_metrics.json", "outputs/line_loss.json"} <= paths
