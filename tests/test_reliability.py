"""Nothing lost, nothing faked: determinism, resume after SIGKILL, divergence as data, hostile inputs,
MLflow faults (a real server), parallel queued experiments, data integrity. Real processes, no mocks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from landscape.runner.cluster import free_port, wait_http
from tests.pipeline import make_project, set_params, stage_env
from tests.test_config import CASES, DEFAULT, with_change

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]
COMPARED = ["mnist_geometry_metrics.json", "line_loss.json", "checkpoints/epoch_002.pt"]


def dvc(project: Path, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], cwd=project, env=env or stage_env(), capture_output=True, text=True,
                          timeout=timeout)


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the tiny pipeline, with one OpenMP thread offered."""
    project = make_project(tmp_path_factory.mktemp("reference"))
    proc = dvc(project, "repro", env=stage_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return project


def test_two_runs_from_scratch_are_byte_identical_whatever_the_thread_environment(reference, tmp_path):
    """Same params on 1 and 2 offered threads: identical bytes (train.threads, not the machine, decides)."""
    other = make_project(tmp_path / "other")
    proc = dvc(other, "repro", env=stage_env(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in [*COMPARED, "data/dataset.json", "reports/probe_summary.json", "reports/spectrum.json",
                 "reports/line_summary.json", "plots/curvature.png"]:
        assert (other / name).read_bytes() == (reference / name).read_bytes(), name
    for project in (reference, other):
        assert json.loads((project / "reports/train_history.json").read_text())["threads"] == 1
    # the run key and the code digest do not depend on where the clone lives (issue: absolute paths)
    keys = [json.loads((p / "reports/mlflow_run.json").read_text())["run_key"] for p in (reference, other)]
    assert keys[0] == keys[1]
    from landscape.provenance import code_digest

    assert code_digest(reference) == code_digest(other)


def test_a_clone_sharing_the_store_reuses_the_run(reference, tmp_path):
    """A second clone at another path, logging to the first clone's store, finds its run instead of adding one."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{reference / 'mlflow.db'}"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("landscape").experiment_id
    before = {r.info.run_id for r in client.search_runs([exp])}
    clone = make_project(tmp_path / "somewhere" / "else")
    proc = dvc(clone, "repro", env=stage_env(MLFLOW_TRACKING_URI=store))
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads((reference / "reports/mlflow_run.json").read_text())
    second = json.loads((clone / "reports/mlflow_run.json").read_text())
    assert second["reused"] is True and second["run_id"] == first["run_id"] and second["run_key"] == first["run_key"]
    assert {r.info.run_id for r in client.search_runs([exp])} == before


# slow enough to be killed inside an epoch; the stages after interpolate (which a resumed training cannot
# change unless its checkpoints do) are off, and the probe keeps the comparison honest
SLOW_TRAIN = {"model": {"hidden": [512, 512]}, "data": {"train_samples": 4000}, "train": {"epochs": 6},
              "interpolate": {"start_epoch": 2}, "surface": {"enabled": False}, "connect": {"enabled": False},
              "measures": {"enabled": False}}


def test_sigkill_during_training_resumes_from_last_checkpoint(tmp_path):
    killed = make_project(tmp_path / "killed", SLOW_TRAIN)
    proc = subprocess.Popen([*DVC, "repro"], cwd=killed, env=stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints/epoch_002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.02)
    time.sleep(0.3)  # inside epoch 3
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    epochs = sorted(p.name for p in (killed / "checkpoints").glob("epoch_*.pt"))
    assert "epoch_006.pt" not in epochs, "training finished before the kill: make it slower"
    rerun = dvc(killed, "repro")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "resuming from checkpoints/epoch_00" in log, log[-3000:]
    fresh = make_project(tmp_path / "fresh", SLOW_TRAIN)
    assert dvc(fresh, "repro").returncode == 0
    for name in ["checkpoints/epoch_006.pt", "mnist_geometry_metrics.json", "line_loss.json"]:
        assert (killed / name).read_bytes() == (fresh / name).read_bytes(), name


def test_divergence_is_a_result_not_a_crash(tmp_path):
    project = make_project(tmp_path, {"train": {"lr": 1.0e4}})
    proc = dvc(project, "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = json.loads((project / "reports/train_history.json").read_text())
    d = history["diverged_epoch"]
    assert history["diverged"] and d in (1, 2)
    line = f"train: diverged in epoch {d}"  # and the last finite epoch's loss, if any, beside it
    assert line + (f" (mean mini-batch loss of epoch 1: {history['history'][0]['train_loss']:.4g})" if d == 2 else
                   ";") in proc.stdout + proc.stderr
    records = json.loads((project / "mnist_geometry_metrics.json").read_text())
    assert [(r["epoch"], r["diverged"]) for r in records] == [(e, e >= d) for e in (0, 1, 2)]
    assert records[0]["lambda_max"] > 0 and records[-1]["lambda_max"] is None
    summary = json.loads((project / "reports/line_summary.json").read_text())
    line = json.loads((project / "line_loss.json").read_text())
    if d == 1:  # only the initialization is finite: no line to draw, said so
        assert "diverged or interrupted" in summary["skipped"] and line == []
    else:  # the end point falls back to the last finite checkpoint, said so
        assert summary["end_epoch"] == d - 1 and "last finite checkpoint" in summary["note"] and line
    # density "last": taken at the last probed checkpoint that exists, and the spectra record says why
    spectra = json.loads((project / "reports/spectrum.json").read_text())
    assert spectra["epochs"] == [d - 1] and "has no checkpoint" in spectra["note"]
    from mlflow.tracking import MlflowClient

    run_info = json.loads((project / "reports/mlflow_run.json").read_text())
    run = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_info["run_id"])
    assert run.data.tags["landscape.diverged"] == f"epoch {d}"


HOSTILE = [(f"{k}={v!r}", with_change(k, v), k.split(".")[0] if k in ("optimizer", "train") else k)
           for k, v, _ in CASES]
HOSTILE += [
    ("empty file", "", "params.yaml is empty"),
    ("not YAML", "train: [1, 2\n  model: {", "not valid YAML"),
    ("a list", "- 1\n- 2\n", "must be a mapping"),
    ("typo in group", {**DEFAULT, "trian": {"lr": 0.1}}, "did you mean 'train'"),
    ("never trained epoch", with_change("interpolate.end_epoch", 12), "interpolate.end_epoch"),
    ("density epoch not probed", with_change("probe.density_epochs", [42]), "probe.density_epochs"),
    ("duplicate key", "train:\n  lr: 0.1\n  lr: 0.2\n", "appears twice"),
    ("not UTF-8", b"train:\n  lr: \xff\n", "is not UTF-8 text"),
    ("infinite radius", "probe:\n  sharpness_radius: .inf\n", "finite number"),
]


@pytest.fixture(scope="module")
def bad_idx_dirs(tmp_path_factory):
    from landscape.sources import offline_mnist
    from tests.test_data import idx_dir, write_idx

    raw = offline_mnist(0)
    trunc = idx_dir(tmp_path_factory.mktemp("trunc"), raw)
    p = trunc / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-500])
    label = idx_dir(tmp_path_factory.mktemp("label"), raw)
    import numpy as np

    write_idx(label / "t10k-labels-idx1-ubyte", np.full(20, 11))
    return {"truncated IDX": (trunc, "truncated or padded IDX file"), "mislabelled IDX": (label, "labels must be 0..9")}


def test_hostile_inputs_fail_early_with_one_line_and_touch_nothing(reference, bad_idx_dirs):
    """≥ 25 bad params.yaml files: exit ≠ 0, one line naming the key, no output modified."""
    outputs = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file() and ".git" not in p.parts
               and ".dvc" not in p.parts and p.name != "params.yaml"}
    original = (reference / "params.yaml").read_text()
    cases = list(HOSTILE)
    for name, (directory, words) in bad_idx_dirs.items():
        cases.append((name, with_change("data.source", str(directory)), words))
    cases.append(("missing source dir", with_change("data.source", str(reference / "nope")), "does not exist"))
    assert len(cases) >= 25
    try:
        for name, content, words in cases:
            data = content if isinstance(content, bytes) else (
                content if isinstance(content, str) else yaml.safe_dump(content)).encode()
            (reference / "params.yaml").write_bytes(data)
            stage = "download" if "IDX" in name else "train"
            proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=reference, env=stage_env(),
                                  capture_output=True, text=True, timeout=120)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode != 0, name
            assert len(err) == 1 and err[0].startswith("error: "), (name, proc.stderr)
            assert words in err[0], (name, err[0])
    finally:
        (reference / "params.yaml").write_text(original)
    for p, content in outputs.items():
        assert p.read_bytes() == content, f"{p} was modified"


def test_a_stage_outside_the_environment_says_how_to_enter_it(reference):
    """A bare `dvc exp run` without the venv: one line naming the fix, not ModuleNotFoundError."""
    import shutil

    base = Path(sys.base_prefix) / "bin" / "python3"
    base = base if base.exists() else Path(shutil.which("python3") or "")
    probe = subprocess.run([str(base), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{base} can import torch: no interpreter outside the environment to try")
    proc = subprocess.run([str(base), "-m", "stages.train"], cwd=reference, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "cannot import torch" in err[0] and "source .venv/bin/activate" in err[0]


def test_tracking_server_down_then_up(tmp_path):
    """With credentials in the tracking URI (as basic auth puts them there), no line and no file shows them. A
    network left at chance (lr 1e-9): its flatness searches end at the top of [0, 2], and the run says so."""
    project = make_project(tmp_path / "project", {"surface": {"enabled": False}, "connect": {"enabled": False},
                                                  "train": {"lr": 1.0e-9}, "measures": {"weightwatcher": False}})
    port = free_port()
    uri, shown = f"http://analyst:s3cret-pw@127.0.0.1:{port}", f"http://***@127.0.0.1:{port}"
    env = stage_env(MLFLOW_TRACKING_URI=uri)
    proc = dvc(project, "repro", env=env)
    assert proc.returncode != 0 and ran_stages(proc) == ["download", "train", "probe", "interpolate", "surface",
                                                         "connect", "measures", "plot", "track"]
    for name in ("mnist_geometry_metrics.json", "line_loss.json", "plots/curvature.png"):
        assert (project / name).exists()
    t0 = time.perf_counter()
    track = subprocess.run([sys.executable, "-m", "stages.track"], cwd=project, env=env, capture_output=True,
                           text=True, timeout=120)
    assert time.perf_counter() - t0 < 30
    assert track.returncode == 1 and shown in track.stderr.strip().splitlines()[-1], track.stderr[-2000:]
    assert "s3cret-pw" not in track.stdout + track.stderr + proc.stdout + proc.stderr

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{server_dir / 'store.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=server_dir, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
        again = dvc(project, "repro", env=env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert ran_stages(again) == ["track"]  # nothing upstream recomputed
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_info = json.loads((project / "reports/mlflow_run.json").read_text())
        assert run_info["store"] == shown  # git-tracked, pushed by Ray sweeps: never the password
        assert "s3cret-pw" not in again.stdout + again.stderr and shown in again.stdout + again.stderr
        run = client.get_run(run_info["run_id"])
        assert run.info.status == "FINISHED"
        assert {"pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_flatness", "sharpness_mag_flatness"} <= set(
            run.data.tags["landscape.measures_at_interval_top"].split(", "))
        assert run.data.metrics["measures/pacbayes_flatness"] == pytest.approx((2 - 2 / 2**15) ** -2)
        assert len(client.get_metric_history(run.info.run_id, "curvature/lambda_max")) == 3
        local = client.download_artifacts(run.info.run_id, "outputs/line_loss.json", str(tmp_path))
        assert Path(local).read_bytes() == (project / "line_loss.json").read_bytes()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_tampered_data_is_refused_by_train_and_probe(reference, tmp_path):
    work = make_project(tmp_path)
    assert dvc(work, "repro", "download").returncode == 0
    blob = torch.load(work / "data/train.pt", weights_only=True)
    blob["x"][0, 0, 0] ^= 1
    torch.save(blob, work / "data/train.pt")
    for stage in ("train", "probe"):
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=stage_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert "does not match the SHA-256 recorded in data/dataset.json" in proc.stderr, proc.stderr[-2000:]
    assert not (work / "checkpoints").exists() or not list((work / "checkpoints").iterdir())


def test_params_edit_is_not_resumed_from_stale_checkpoints(reference, tmp_path):
    """A checkpoint from other params is never resumed from (persisted checkpoints/ + fingerprint)."""
    work = make_project(tmp_path)
    assert dvc(work, "repro", "train").returncode == 0
    set_params(work, {"train": {"lr": 0.02}})
    proc = dvc(work, "repro", "train")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "resuming from checkpoints/" not in log
    assert "removed 3 checkpoint(s) (epochs [0, 1, 2]) made with other params" in log
    fresh = make_project(tmp_path / "fresh", {"train": {"lr": 0.02}})
    assert dvc(fresh, "repro", "train").returncode == 0
    assert (work / "checkpoints/epoch_002.pt").read_bytes() == (fresh / "checkpoints/epoch_002.pt").read_bytes()


def test_checkpoint_every_edit_reruns_what_it_changes_and_equals_a_fresh_run(tmp_path):
    """The reviewed defect: 4 epochs, then train.checkpoint_every 1 -> 2. Every output must then be that of
    a fresh run with the new params, and `dvc status` must agree."""
    work = make_project(tmp_path / "work", {"train": {"epochs": 4}})
    assert dvc(work, "repro").returncode == 0
    set_params(work, {"train": {"checkpoint_every": 2}})
    proc = dvc(work, "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran_stages(proc) == ["train", "probe", "interpolate", "surface", "connect", "measures", "plot", "track"]
    assert "that a fresh run with these params would not write" in proc.stdout + proc.stderr
    metrics = json.loads((work / "mnist_geometry_metrics.json").read_text())
    assert [r["epoch"] for r in metrics] == [0, 2, 4]
    status = dvc(work, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    fresh = make_project(tmp_path / "fresh", {"train": {"epochs": 4, "checkpoint_every": 2}})
    assert dvc(fresh, "repro").returncode == 0
    for name in ["mnist_geometry_metrics.json", "line_loss.json", "reports/probe_summary.json",
                 *[f"checkpoints/epoch_00{e}.pt" for e in (0, 2, 4)]]:
        assert (work / name).read_bytes() == (fresh / name).read_bytes(), name
    assert sorted(p.name for p in (work / "checkpoints").glob("*.pt")) == [f"epoch_00{e}.pt" for e in (0, 2, 4)]
    from mlflow.tracking import MlflowClient

    run_id = json.loads((work / "reports/mlflow_run.json").read_text())["run_id"]
    hist = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_metric_history(run_id, "curvature/lambda_max")
    assert sorted(m.step for m in hist) == [0, 2, 4]


def test_forced_train_retrains_and_stray_temp_files_stay_out_of_dvc(reference):
    before = {p.name: p.read_bytes() for p in (reference / "checkpoints").glob("*.pt")}
    stray = reference / "checkpoints" / ".epoch_002.pt.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    status = dvc(reference, "status")
    assert "up to date" in status.stdout, status.stdout  # .dvcignore keeps temp files out of the hash
    proc = dvc(reference, "repro", "-f", "train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training from scratch" in proc.stdout + proc.stderr
    history = json.loads((reference / "reports/train_history.json").read_text())
    assert history["resumed_from"] is None and all(h["wall_time_s"] is not None for h in history["history"])
    assert not stray.exists()
    assert {p.name: p.read_bytes() for p in (reference / "checkpoints").glob("*.pt")} == before


def test_a_run_is_reused_only_when_its_files_match(reference, tmp_path):
    """Same params, code and data but other result files (e.g. recomputed after a fix): a new run, with why."""
    from mlflow.tracking import MlflowClient

    metrics_path = reference / "mnist_geometry_metrics.json"
    original = metrics_path.read_bytes()
    track = [sys.executable, "-m", "stages.track"]
    first = subprocess.run(track, cwd=reference, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    reused = json.loads((reference / "reports/mlflow_run.json").read_text())
    assert reused["reused"] is True
    try:
        records = json.loads(original)
        metrics_path.write_text(json.dumps(records[:-1], indent=2) + "\n")  # a file that no longer matches
        proc = subprocess.run(track, cwd=reference, env=stage_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        new = json.loads((reference / "reports/mlflow_run.json").read_text())
        assert new["reused"] is False and new["run_id"] != reused["run_id"] and new["run_key"] == reused["run_key"]
        assert "other outputs" in proc.stderr
        client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
        assert "other outputs" in client.get_run(new["run_id"]).data.tags["landscape.new_run_reason"]
        hist = client.get_metric_history(new["run_id"], "curvature/lambda_max")
        assert sorted(m.step for m in hist) == [r["epoch"] for r in records[:-1]]
    finally:
        metrics_path.write_bytes(original)
    again = subprocess.run(track, cwd=reference, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert json.loads((reference / "reports/mlflow_run.json").read_text())["run_id"] == reused["run_id"]
    assert again.returncode == 0


def test_a_second_writer_never_deletes_a_run_in_progress(reference, tmp_path):
    """Two writers of one pipeline state on one `mlflow server` (no file lock covers a server): the second
    leaves the first's unfinished run alone (it used to delete it, and the first then failed), deletes only a
    run whose writer started long ago (a crash), and when both finish, every reader picks the same run."""
    from mlflow.tracking import MlflowClient

    from landscape.runner.cluster import start_mlflow_server, stop_session
    from landscape.tracking import LOGGING_TAG, OUTPUTS_TAG, RUN_KEY_TAG

    saved = (reference / "reports/mlflow_run.json").read_bytes()
    ml = start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", "127.0.0.4")
    try:
        client = MlflowClient(ml["uri"])
        key = json.loads(saved)["run_key"]  # the key does not depend on the store
        exp = client.create_experiment("landscape")
        now_ms = int(time.time() * 1000)
        first = client.create_run(exp, tags={RUN_KEY_TAG: key, LOGGING_TAG: str(now_ms)}).info.run_id
        crashed = client.create_run(exp, tags={RUN_KEY_TAG: key, LOGGING_TAG: str(now_ms - 2 * 3600_000)}).info.run_id
        track = [sys.executable, "-m", "stages.track"]
        env = stage_env(MLFLOW_TRACKING_URI=ml["uri"])
        second = subprocess.run(track, cwd=reference, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr[-2000:]
        mine = json.loads((reference / "reports/mlflow_run.json").read_text())
        assert mine["reused"] is False and mine["run_id"] not in (first, crashed)
        assert client.get_run(first).info.lifecycle_stage == "active"  # still being written by the first writer
        assert client.get_run(first).info.status == "RUNNING"
        assert client.get_run(crashed).info.lifecycle_stage == "deleted"
        assert "being written by another process" in second.stderr
        digest = client.get_run(mine["run_id"]).data.tags[OUTPUTS_TAG]
        client.set_tag(first, OUTPUTS_TAG, digest)  # the first writer completes the same state
        client.set_tag(first, "landscape.complete", "true")
        client.set_terminated(first, "FINISHED")
        runs = [client.get_run(r) for r in (first, mine["run_id"])]
        expected = max(runs, key=lambda r: (r.info.end_time, r.info.run_id)).info.run_id
        for _ in range(2):
            again = subprocess.run(track, cwd=reference, env=env, capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stderr[-2000:]
            picked = json.loads((reference / "reports/mlflow_run.json").read_text())
            assert picked["reused"] is True and picked["run_id"] == expected
    finally:
        stop_session(ml["pid"])
        (reference / "reports/mlflow_run.json").write_bytes(saved)
