"""Sweeps beyond one machine, with real components: PostgreSQL in a temp dir, an mlflow server on it, a
two-node Ray cluster on loopback addresses (127.0.0.2 and 127.0.0.3), a bare git remote and a directory DVC
remote. Everything is stopped by PID in finalizers; nothing on the machine's own interface is used."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline import make_project, stage_env

TINY_GRID = Path(__file__).resolve().parent.parent / "sweeps" / "tiny.yaml"


def _sweep(project: Path, *args: str, env: dict, timeout: int = 600, popen: bool = False):
    cmd = [sys.executable, "-m", "landscape", "sweep", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def _git_project(tmp_path: Path) -> tuple[Path, Path]:
    project = make_project(tmp_path / "project")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=project, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], cwd=project, check=True)
    return project, remote


def test_ray_sweep_refuses_a_dirty_tree_and_unreachable_services_in_seconds(tmp_path):
    project, _ = _git_project(tmp_path)
    env = stage_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9", RAY_AUTH_MODE="disabled")
    t0 = time.perf_counter()
    proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", "127.0.0.9:1", env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "Ray head 127.0.0.9:1 is unreachable" in err[0], proc.stderr
    from landscape.runner.cluster import free_port

    port = free_port("127.0.0.2")
    import socket

    with socket.socket() as listener:  # something answers at the address: the tracking URI is checked next
        listener.bind(("127.0.0.2", port))
        listener.listen()
        proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", f"127.0.0.2:{port}", env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "http://127.0.0.1:9 is unreachable" in err[0], proc.stderr
    (project / "landscape" / "io.py").write_text((project / "landscape" / "io.py").read_text() + "\n# edit\n")
    proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", f"127.0.0.2:{port}", env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "uncommitted changes" in err[0] and "landscape/io.py" in err[0]
    assert time.perf_counter() - t0 < 90


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from landscape.runner.cluster import start_mlflow_server, start_postgres, stop_pid, stop_postgres

    try:
        from landscape.runner.cluster import _pg

        _pg("initdb")
    except RuntimeError as exc:
        pytest.skip(f"{exc}: .ci/run installs it; the PostgreSQL-backed sweep test cannot run here")
    d = tmp_path_factory.mktemp("services")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # explicit: a stray ~/.ray/auth_token must not switch auth on
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started: dict = {}
    try:
        started["pg"] = start_postgres(d / "postgres")
        started["mlflow"] = start_mlflow_server(started["pg"]["uri"], d / "artifacts", log=d / "mlflow.log")
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.2", "num_cpus": 1,
                                                                 "include_dashboard": False})
        started["ray"] = cluster
        cluster.add_node(node_ip_address="127.0.0.3", num_cpus=1)
        cluster.wait_for_nodes()
        yield {"uri": started["mlflow"]["uri"], "address": cluster.address, "dvc_store": d / "dvcstore"}
    finally:
        if "ray" in started:
            started["ray"].shutdown()
        if "mlflow" in started:
            stop_pid(started["mlflow"]["pid"])
        if "pg" in started:
            stop_postgres(started["pg"]["pgdata"])


def _env(services) -> dict:
    return stage_env(MLFLOW_TRACKING_URI=services["uri"], RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


@pytest.mark.slow
def test_ray_sweep_runs_real_dvc_experiments_into_one_mlflow_server(services, tmp_path):
    project, _ = _git_project(tmp_path)
    env = _env(services)
    store = str(services["dvc_store"])
    proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", services["address"],
                  "--dvc-remote", store, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished now: 4; already finished before: 0; failed: 0" in proc.stdout
    assert "Ray nodes used: 2" in proc.stdout  # both nodes ran tasks

    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["uri"])
    exp = client.get_experiment_by_name("sweep-tiny")
    runs = {r.data.tags["dvc.exp_name"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [f"tiny-{i:03d}" for i in range(4)]
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags["landscape.complete"] == "true"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "curvature/lambda_max")] == [0, 1, 2]
        assert {"outputs/mnist_geometry_metrics.json", "outputs/line_loss.json"} <= {
            a.path for a in client.list_artifacts(run.info.run_id, "outputs")}

    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "add", "--local", "-d", "store", store], cwd=project, env=env, check=True)
    for name in runs:
        pulled = subprocess.run([*dvc, "exp", "pull", "origin", name], cwd=project, env=env, capture_output=True,
                                text=True, timeout=300)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
    shown = subprocess.run([*dvc, "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0 and all(name in shown.stdout for name in runs)
    assert "final_test_accuracy" in shown.stdout and '"lr": 0.1' in shown.stdout
    applied = subprocess.run([*dvc, "exp", "apply", "tiny-002"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=300)
    assert applied.returncode == 0, applied.stderr[-2000:]
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["lr"] == 0.1 and params["model"]["hidden"] == [16]
    logged = client.download_artifacts(runs["tiny-002"].info.run_id, "outputs/mnist_geometry_metrics.json",
                                       str(tmp_path))
    assert Path(logged).read_bytes() == (project / "mnist_geometry_metrics.json").read_bytes()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _find(pattern: list[str]) -> int | None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(p in args for p in pattern):
                return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_worker_fails_its_point_and_the_rerun_runs_only_it(services, tmp_path):
    project, _ = _git_project(tmp_path)
    grid = project / "sweeps" / "kill.yaml"
    spec = TINY_GRID.read_text().replace("experiment: sweep-tiny", "experiment: sweep-kill").replace(
        "name: tiny", "name: kill").replace("model.hidden: [[16], [32]]", "model.hidden: [[16]]")
    grid.write_text(spec)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x"], cwd=project)
    subprocess.run(["git", "add", "sweeps/kill.yaml"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "kill grid"], cwd=project,
                   check=True)
    env = _env(services)
    sweep = _sweep(project, "sweeps/kill.yaml", "--engine", "ray", "--address", services["address"], env=env,
                   popen=True)
    deadline, victim = time.time() + 300, None
    while victim is None:
        assert time.time() < deadline and sweep.poll() is None, "the point never started"
        dvc_pid = _find(["exp", "run", "-n", "kill-001"])
        if dvc_pid is not None:
            victim = int(Path(f"/proc/{dvc_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the Ray worker
        time.sleep(0.2)
    for pid in reversed(_descendants(victim)):  # the worker and everything it started: a machine going away
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, out[-2000:] + err[-2000:]
    assert "finished now: 1; already finished before: 0; failed: 1" in out and "FAILED kill-001" in out, out
    again = _sweep(project, "sweeps/kill.yaml", "--engine", "ray", "--address", services["address"], env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "finished now: 1; already finished before: 1; failed: 0" in again.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["uri"])
    exp = client.get_experiment_by_name("sweep-kill")
    finished = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["dvc.exp_name"] for r in finished) == ["kill-000", "kill-001"]
    shutil.rmtree(project / ".dvc" / "tmp", ignore_errors=True)
