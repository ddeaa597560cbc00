"""Sweeps beyond one machine, with real components: PostgreSQL in a temp dir, an mlflow server on it, a
two-node Ray cluster on loopback addresses (127.0.0.2 and 127.0.0.3), a bare git remote and a directory DVC
remote; `scripts/cluster.sh` started and stopped on 127.0.0.5. Everything is stopped by PID (or session) in
finalizers; nothing on the machine's own interface is used."""

import json
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
STAGES_OFF = "".join(f"  {k}.enabled: false\n" for k in ("surface", "connect", "measures"))  # not looked at here


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


def _exit_2(proc, words: str) -> None:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and words in err[0] and "Traceback" not in proc.stderr, proc.stderr


def test_ray_sweep_refuses_a_dirty_tree_and_unreachable_or_foreign_services_in_seconds(tmp_path):
    import socket

    from landscape.runner.cluster import free_port

    project, _ = _git_project(tmp_path)
    env = stage_env(MLFLOW_TRACKING_URI="http://u:pw@127.0.0.1:9", RAY_AUTH_MODE="disabled")
    t0 = time.perf_counter()
    proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", "127.0.0.9:1", env=env)
    _exit_2(proc, "Ray head 127.0.0.9:1 is unreachable")
    port = free_port("127.0.0.2")
    with socket.socket() as listener:  # something answers at the address: the tracking URI is checked next
        listener.bind(("127.0.0.2", port))
        listener.listen()
        proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", f"127.0.0.2:{port}", env=env)
        _exit_2(proc, "http://***@127.0.0.1:9 is unreachable")
        assert "pw" not in proc.stderr
        # a tracking server that answers, and at the Ray address a listener that accepts and never speaks:
        # this used to hang in ray.init for more than 200 s
        from landscape.runner.cluster import start_mlflow_server, stop_session

        ml = start_mlflow_server(f"sqlite:///{tmp_path / 'ml.db'}", tmp_path / "art", "127.0.0.2")
        try:
            t1 = time.perf_counter()
            proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", f"127.0.0.2:{port}",
                          env={**env, "MLFLOW_TRACKING_URI": ml["uri"]})
            _exit_2(proc, f"127.0.0.2:{port} answers but is not a Ray head")
            assert time.perf_counter() - t1 < 30
        finally:
            stop_session(ml["pid"])
    (project / "landscape" / "io.py").write_text((project / "landscape" / "io.py").read_text() + "\n# edit\n")
    proc = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", f"127.0.0.2:{port}", env=env)
    _exit_2(proc, "uncommitted changes")
    assert "landscape/io.py" in proc.stderr
    assert time.perf_counter() - t0 < 120


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from landscape.runner.cluster import start_mlflow_server, start_postgres, stop_pid, stop_postgres

    try:
        from landscape.runner.cluster import _pg

        _pg("initdb")
    except RuntimeError as exc:
        pytest.skip(f"{exc}: .ci/run installs it; the PostgreSQL-backed sweep tests cannot run here")
    d = tmp_path_factory.mktemp("services")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # explicit: a stray ~/.ray/auth_token must not switch auth on
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started: dict = {}
    try:
        started["pg"] = start_postgres(d / "postgres")
        started["mlflow"] = start_mlflow_server(started["pg"]["uri"], d / "artifacts", log=d / "mlflow.log",
                                                pgpass=started["pg"]["pgpass"])
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
    grid.write_text(spec + STAGES_OFF)
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
    import tempfile

    # the killed task's clone is gone (the next task on a node and the driver's clean-up on every node remove it)
    assert not list(Path(tempfile.gettempdir()).glob("landscape-sweep-kill-*"))
    shutil.rmtree(project / ".dvc" / "tmp", ignore_errors=True)


@pytest.mark.slow
def test_a_point_whose_push_failed_is_run_again(services, tmp_path):
    """The point's MLflow run is FINISHED but `dvc exp push` was refused, so the experiment exists nowhere (the
    task's clone is gone): the point is not finished, and the rerun runs and pushes it (reusing its run)."""
    project, remote = _git_project(tmp_path)
    spec = TINY_GRID.read_text().replace("experiment: sweep-tiny", "experiment: sweep-push").replace(
        "name: tiny", "name: push").replace("train.lr: [0.02, 0.1]", "train.lr: [0.05]").replace(
        "model.hidden: [[16], [32]]", "model.hidden: [[16]]")
    (project / "sweeps" / "push.yaml").write_text(spec + STAGES_OFF)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "add", "sweeps/push.yaml"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "push grid"], cwd=project, check=True)
    # DVC pushes to a local remote without running its hooks (and the tests run as root, past file modes): a
    # ref named like the directory this commit's experiment refs go into makes their push fail, and only theirs
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    main = subprocess.run(["git", "rev-parse", "main"], cwd=remote, capture_output=True, text=True).stdout.strip()
    marker = remote / "refs" / "exps" / head[:2]
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(main + "\n")
    env = _env(services)
    first = _sweep(project, "sweeps/push.yaml", "--engine", "ray", "--address", services["address"], env=env)
    assert first.returncode == 1 and "FAILED push-000" in first.stdout and "dvc exp push" in first.stdout, \
        first.stdout[-2000:] + first.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["uri"])
    exp = client.get_experiment_by_name("sweep-push")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FINISHED"]
    marker.unlink()
    again = _sweep(project, "sweeps/push.yaml", "--engine", "ray", "--address", services["address"], env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "finished now: 1; already finished before: 0; failed: 0" in again.stdout, again.stdout
    refs = subprocess.run(["git", "ls-remote", str(remote), "refs/exps/*"], capture_output=True, text=True).stdout
    assert refs.rstrip().endswith("/push-000")
    assert len(client.search_runs([exp.experiment_id])) == 1  # the run was reused, not logged twice


def test_task_resources():
    from landscape.runner.grid import Point
    from landscape.runner.ray_engine import num_gpus, task_memory
    from landscape.runtime import remap_for_one_visible_gpu

    base = {"train": {"device": "cpu"}, "data": {"train_samples": None, "test_samples": None}}
    point = lambda **o: Point(0, "p", o, {})  # noqa: E731
    assert num_gpus(point(), base, cluster_gpus=4) == 0
    assert num_gpus(point(**{"train.device": "cuda:3"}), base, cluster_gpus=0) == 1
    assert num_gpus(point(**{"train.device": "auto"}), base, cluster_gpus=2) == 1
    assert num_gpus(point(**{"train.device": "auto"}), base, cluster_gpus=0) == 0
    full = task_memory(point(), base)
    small = task_memory(point(**{"data.train_samples": 400, "data.test_samples": 200}), base)
    assert full == int(1.5 * 2**30) + 4 * 70_000 * 784 * 4 and small < full
    env = {"LANDSCAPE_ONE_VISIBLE_GPU": "1", "CUDA_VISIBLE_DEVICES": "3"}
    assert remap_for_one_visible_gpu("cuda:3", env) == "cuda:0" and remap_for_one_visible_gpu("cuda", env) == "cuda"
    assert remap_for_one_visible_gpu("cuda:3", {}) == "cuda:3"  # outside Ray the index is the machine's


def test_stale_clones_are_removed_and_live_ones_kept(tmp_path):
    from landscape.runner.ray_engine import remove_stale_clones

    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("landscape-sweep-a-1", dead.pid), ("landscape-sweep-b-2", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".landscape-owner").write_text(f"{pid} x\n")
    (tmp_path / "landscape-sweep-c-3").mkdir()  # killed before it wrote its owner file
    (tmp_path / "unrelated").mkdir()
    removed = remove_stale_clones(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == ["landscape-sweep-a-1", "landscape-sweep-c-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landscape-sweep-b-2", "unrelated"]


def _listening(host: str) -> list[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    return [ln.split()[3] for ln in out.splitlines() if len(ln.split()) > 3 and ln.split()[3].startswith(host + ":")]


@pytest.mark.slow
def test_cluster_start_on_an_address_then_stop_leaves_nothing(tmp_path):
    """`scripts/cluster.sh start --host 127.0.0.5 --auth` (a non-default address, as on a LAN): secrets 0600 in
    a 0700 directory and never printed; the store's role is no superuser (COPY … FROM PROGRAM refused) and needs
    its password; MLflow needs its credentials; a sweep with the wrong Ray token stops in one line; `stop` ends
    every process of every service. A start that fails half-way stops what it had started."""
    from landscape.runner.cluster import _pg, free_port, session_members

    try:
        _pg("initdb")
    except RuntimeError as exc:
        pytest.skip(f"{exc}: .ci/run installs it")
    import socket
    import urllib.error
    import urllib.request

    root = Path(__file__).resolve().parent.parent
    d = tmp_path / "cluster"
    ray_port, ml_port = free_port("127.0.0.5"), free_port("127.0.0.5")
    cmd = [str(root / "scripts" / "cluster.sh")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    homes = lambda: set(Path("/tmp").glob("landscape-pg-*/pgdata/postmaster.pid"))  # noqa: E731
    before = homes()  # this module's store fixture runs a PostgreSQL too: only what this start made counts
    with socket.socket() as busy:  # the MLflow port is taken: the start fails after PostgreSQL is up
        busy.bind(("127.0.0.5", ml_port))
        busy.listen()
        failed = subprocess.run([*cmd, "start", "--dir", str(d), "--host", "127.0.0.5", "--ray-port", str(ray_port),
                                 "--mlflow-port", str(ml_port), "--auth"], capture_output=True, text=True, env=env,
                                timeout=300)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "exited" in failed.stderr, failed.stderr
    assert not (d / "state.json").exists() and _listening("127.0.0.5") == []
    assert not homes() - before or os.geteuid() != 0

    started = subprocess.run([*cmd, "start", "--dir", str(d), "--host", "127.0.0.5", "--ray-port", str(ray_port),
                              "--mlflow-port", str(ml_port), "--auth"], capture_output=True, text=True, env=env,
                             timeout=300)
    state = json.loads((d / "state.json").read_text()) if (d / "state.json").exists() else {}
    try:
        assert started.returncode == 0, started.stderr
        assert (d.stat().st_mode & 0o777) == 0o700
        files = (d / "ray" / "token", d / "postgres" / "pgpass", d / "mlflow" / "credentials")
        secrets = {p: p.read_text() for p in files}
        for p in [*secrets, d / "state.json", d / "mlflow.log", d / "mlflow" / "basic_auth.ini"]:
            assert (p.stat().st_mode & 0o777) == 0o600, p
        token = secrets[d / "ray" / "token"].strip()
        db_password = secrets[d / "postgres" / "pgpass"].strip().rsplit(":", 1)[1]
        ml_password = secrets[d / "mlflow" / "credentials"].split("MLFLOW_TRACKING_PASSWORD=")[1].strip()
        printed = started.stdout + started.stderr + (d / "state.json").read_text() + (d / "mlflow.log").read_text()
        for secret in (token, db_password, ml_password):
            assert secret not in printed
        pg = state["postgres"]
        psql = [_pg("psql"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "mlflow", "-d", "mlflow", "-w", "-tAc"]
        with_pw = {**env, "PGPASSFILE": str(d / "postgres" / "pgpass")}
        no_pw = subprocess.run([*psql, "SELECT 1"], capture_output=True, text=True,
                               env={**env, "PGPASSFILE": "/dev/null"})
        assert no_pw.returncode != 0 and "password" in no_pw.stderr
        role = subprocess.run([*psql, "SELECT rolsuper FROM pg_roles WHERE rolname = 'mlflow'"],
                              capture_output=True, text=True, env=with_pw)
        assert role.stdout.strip() == "f", role.stderr
        program = subprocess.run([*psql, "COPY (SELECT 1) TO PROGRAM 'id'"], capture_output=True, text=True,
                                 env=with_pw)
        assert program.returncode != 0 and "pg_execute_server_program" in program.stderr
        ml = state["mlflow"]["uri"]
        search = f"{ml}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(search, timeout=10)
        assert denied.value.code == 401
        import base64

        auth = base64.b64encode(f"admin:{ml_password}".encode()).decode()
        assert urllib.request.urlopen(urllib.request.Request(search, headers={"Authorization": f"Basic {auth}"}),
                                      timeout=10).status == 200

        project, _ = _git_project(tmp_path)
        t0 = time.perf_counter()
        wrong = _sweep(project, "sweeps/tiny.yaml", "--engine", "ray", "--address", state["ray"]["address"],
                       env=stage_env(MLFLOW_TRACKING_URI=ml, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 48))
        _exit_2(wrong, "refused our token")
        assert time.perf_counter() - t0 < 90
    finally:
        stopped = subprocess.run([*cmd, "stop", "--dir", str(d)], capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0 and "stopped ray, mlflow, postgres" in stopped.stdout, stopped.stderr
    for sid in (state["ray"]["sid"], state["mlflow"]["pid"]):
        assert session_members(sid) == []  # every Ray process (gcs_server, raylet, renamed ray:: agents) is gone
    assert not Path(state["postgres"]["pgdata"]).exists() or not (Path(state["postgres"]["pgdata"]) /
                                                                   "postmaster.pid").exists()
    assert _listening("127.0.0.5") == [] and not (d / "state.json").exists()
