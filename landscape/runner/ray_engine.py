"""``landscape sweep GRID.yaml --engine ray --address HOST:PORT``: the same sweep on a Ray cluster.

Driver (this process): refuses a working tree with uncommitted changes (a sweep must name a commit), checks in
seconds that the Ray head speaks Ray with our token and that the MLflow tracking server answers (one line each
when not), pushes the commit to the shared git remote as ``refs/heads/sweep/<name>-<commit>``, creates the
MLflow experiment once, and submits one Ray task per missing point. A point is finished only when its run is
FINISHED in the store *and* its experiment is on the git remote (``refs/exps/…/<point>``): a point whose
``dvc exp push`` failed is run again (its MLflow run is reused, not duplicated).

Resources per task: ``num_cpus = train.threads``; ``num_gpus = 1`` for ``train.device: cuda…``, and for
``auto`` when the cluster has GPUs (Ray then shows the task only that GPU, as ``cuda:0``: ``cuda:N`` is remapped
to it in the task, :func:`landscape.runtime.resolve_device`); ``memory`` from the data size
(:func:`task_memory`). Tasks are not retried by Ray (``max_retries=0``): a retry would rerun the whole point in a
fresh clone, which is exactly what rerunning the sweep does, with the failure shown in between.

Task (on a worker): a fresh ``git clone`` of that commit in ``$TMPDIR/landscape-sweep-<point>-*`` (with an
owner file; clones of tasks that were killed are removed by the next task on that machine and by a clean-up
task the driver sends to every node at the end), ``dvc exp run -n <point> -S k=v …`` there (pulling from the DVC
remote where one is given), then ``dvc exp push <remote> <point>``; the track stage logs to the shared server
(``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from landscape.errors import InputError, LandscapeError
from landscape.io import read_yaml
from landscape.runner.grid import Grid, Point, dvc_set_args
from landscape.runner.sweep import SweepResult, finished_points, point_keys, prepare_experiment

log = logging.getLogger(__name__)

CLONE_PREFIX = "landscape-sweep-"
PROBE_TIMEOUT_S = 60.0  # the whole Ray handshake of the driver, bounded (a wrong address used to hang > 200 s)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _git(root: Path, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise LandscapeError(f"git {' '.join(args)} failed: {out.stderr.strip()[-300:]}")
    return out.stdout.rstrip("\n")


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """True when the server answers an HTTP/2 client preface with a SETTINGS frame, as every gRPC server (Ray's
    GCS among them) does at once; a web server, a database or a silent listener does not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_HTTP2_PREFACE)
            head = s.recv(9)
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x04  # frame type 4: SETTINGS


def check_reachable(address: str, uri: str, timeout: float = 5.0) -> None:
    """One line, within seconds, when the Ray head or the tracking server is unreachable or is something else."""
    from landscape.tracking import redact_uri

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise InputError(f"Ray head {address} is unreachable ({exc}); start it (scripts/cluster.sh start) or "
                         "pass --address HOST:PORT of a running cluster") from None
    if not uri.startswith(("http://", "https://")):
        raise InputError(f"MLFLOW_TRACKING_URI = {redact_uri(uri)!r}: Ray workers on other machines cannot log to "
                         "it; allowed: the http(s) address of a shared mlflow server (scripts/cluster.sh start "
                         "prints it)")
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except OSError as exc:
        detail = str(exc).replace(uri, redact_uri(uri))
        raise InputError(f"MLflow tracking server {redact_uri(uri)} is unreachable ({detail}); start it or fix "
                         "MLFLOW_TRACKING_URI") from None
    if not _speaks_grpc(host, int(port), timeout):
        raise InputError(f"{address} answers but is not a Ray head (no gRPC handshake within {timeout:.0f} s); "
                         "allowed: the address `scripts/cluster.sh start` or `ray start --head` printed")


_PROBE = """
import json, logging, ray
ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)
print("LANDSCAPE_PROBE " + json.dumps({{"resources": ray.cluster_resources()}}))
"""


def probe_cluster(address: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, float]:
    """The cluster's total resources, from a bounded ``ray.init`` in a child process; one line when the head
    refuses our token (said at its first refusal, not after Ray's 20 s of retries) or does not complete Ray's
    handshake in ``timeout`` s."""
    import select
    import time

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _PROBE.format(address=address)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    err: list[str] = []
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise InputError(f"Ray head {address} did not complete Ray's handshake within {timeout:.0f} s: is it "
                                 "a Ray head of the same Ray version?")
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                line = proc.stderr.readline()
                err.append(line)
                if "InvalidAuthToken" in line or "Unauthenticated" in line:
                    raise InputError(f"Ray head {address} refused our token: set RAY_AUTH_MODE=token and "
                                     "RAY_AUTH_TOKEN to the token in .cluster/ray/token (scripts/cluster.sh start)")
        out, rest = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in out.splitlines():
        if line.startswith("LANDSCAPE_PROBE "):
            return json.loads(line.split(" ", 1)[1])["resources"]
    last = [ln for ln in [*err, *rest.splitlines()] if ln.strip()][-1:] or ["no output"]
    raise InputError(f"could not connect to the Ray cluster at {address}: {last[0].strip()[:200]}")


def remote_experiments(root: Path, remote: str, commit: str) -> set[str]:
    """Names of the DVC experiments of baseline ``commit`` on the git remote (``refs/exps/<2>/<38>/<name>``)."""
    out = _git(root, "ls-remote", remote, f"refs/exps/{commit[:2]}/{commit[2:]}/*")
    return {ln.split("\t", 1)[1].rsplit("/", 1)[1] for ln in out.splitlines() if "\t" in ln}


def _device(point: Point, base: dict[str, Any]) -> str:
    return str(point.overrides.get("train.device", base.get("train", {}).get("device", "cpu")))


def num_gpus(point: Point, base: dict[str, Any], cluster_gpus: float) -> int:
    """1 for ``cuda`` / ``cuda:N``, and for ``auto`` when the cluster has a GPU (where auto will use one)."""
    device = _device(point, base)
    return 1 if device.startswith("cuda") or (device == "auto" and cluster_gpus > 0) else 0


def num_cpus(point: Point, base: dict[str, Any]) -> int:
    return int(point.overrides.get("train.threads", base.get("train", {}).get("threads", 1)))


def task_memory(point: Point, base: dict[str, Any]) -> int:
    """Bytes a point asks Ray for: 1.5 GiB (Python, torch, DVC, MLflow) + four float32 copies of its data
    (the prepared tensors, a batch-norm/evaluation copy, the probe set, headroom); 60,000 + 10,000 examples
    when the data size is not set (the full split)."""
    data = {**base.get("data", {}), **{k.split(".", 1)[1]: v for k, v in point.overrides.items()
                                        if k.startswith("data.")}}
    examples = (data.get("train_samples") or 60_000) + (data.get("test_samples") or 10_000)
    return int(1.5 * 2**30 + 4 * examples * 784 * 4)


def _make_cleaner():
    """The clean-up function, built here so that Ray serializes it by value (see :func:`_make_task`)."""

    def remove_stale_clones(tmp: str | None = None) -> list[str]:
        """Remove ``landscape-sweep-*`` clones whose owner process is gone (a task killed mid-way); return them."""
        import os
        import shutil
        import tempfile

        tmp = tmp or tempfile.gettempdir()
        removed = []
        for entry in os.scandir(tmp):
            if not entry.name.startswith("landscape-sweep-") or not entry.is_dir():
                continue
            try:
                with open(os.path.join(entry.path, ".landscape-owner")) as fh:
                    pid = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is None or not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        return removed

    return remove_stale_clones


remove_stale_clones = _make_cleaner()


def _make_task():
    """The task function, built here so that Ray serializes it by value: a worker needs the environment, not
    this checkout on its import path."""

    def run_point(repo_url: str, ref: str, commit: str, name: str, set_args: list[str], env_extra: dict[str, str],
                  dvc_remote: str | None, git_remote: str, cleaner) -> dict[str, Any]:
        import os
        import shutil
        import subprocess
        import sys
        import tempfile
        import time

        import ray

        node = ray.get_runtime_context().get_node_id()
        t0 = time.time()
        cleaner()  # clones left by tasks killed on this machine
        work = tempfile.mkdtemp(prefix=f"landscape-sweep-{name}-")
        with open(os.path.join(work, ".landscape-owner"), "w") as fh:
            fh.write(f"{os.getpid()} {name}\n")
        repo = os.path.join(work, "repo")
        py = sys.executable
        env = {**os.environ, **env_extra, "PATH": os.path.dirname(py) + os.pathsep + os.environ.get("PATH", "")}

        def run(*cmd: str, cwd: str = repo) -> None:
            out = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
                ours = [ln for ln in lines if ln.startswith("error: ")]  # the stage's own line first
                errors = ours or [ln for ln in lines if "error" in ln.lower()]
                raise RuntimeError(f"{' '.join(cmd[:4])}…: {(errors or lines or ['no output'])[-1][:300]}")

        try:
            run("git", "clone", "--quiet", "--origin", git_remote, repo_url, repo, cwd=work)
            run("git", "fetch", "--quiet", git_remote, ref)
            run("git", "checkout", "--quiet", "--detach", commit)
            pull: list[str] = []
            if dvc_remote:
                run(py, "-m", "dvc", "remote", "add", "--local", "--default", "--force", "sweep", dvc_remote)
                pull = ["--pull"]
            run(py, "-m", "dvc", "exp", "run", *pull, "-n", name, *set_args)
            try:
                run(py, "-m", "dvc", "exp", "push", *([] if dvc_remote else ["--no-cache"]), git_remote, name)
            except RuntimeError as exc:
                raise RuntimeError(f"the point ran but `dvc exp push` failed, so its experiment is only in a deleted "
                                   f"clone (the next sweep runs it again): {exc}") from None
            return {"name": name, "ok": True, "node": node, "seconds": time.time() - t0}
        except Exception as exc:  # reported to the driver, listed at the end
            return {"name": name, "ok": False, "node": node, "error": str(exc), "seconds": time.time() - t0}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return run_point


def _clean_every_node(ray: Any, timeout: float = 60.0) -> None:
    """Send :func:`remove_stale_clones` to every alive node (a node whose task was killed gets no next task)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    clean = ray.remote(num_cpus=0, max_retries=0)(remove_stale_clones)
    refs = [clean.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in ray.nodes() if n.get("Alive")]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    removed = [d for r in ready for d in ray.get(r)]
    if removed:
        log.info("removed %d clone(s) of killed tasks: %s", len(removed), ", ".join(removed))


def run_ray(grid: Grid, root: Path, address: str | None, remote: str = "origin",
            dvc_remote: str | None = None) -> SweepResult:
    """Run the missing points of ``grid`` on the Ray cluster at ``address``."""
    from landscape.runner.sweep import refuse_untracked_code
    from landscape.tracking import tracking_uri

    if not address:
        raise InputError("--engine ray needs --address HOST:PORT (the Ray head; scripts/cluster.sh start)")
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    if status.strip():
        raise InputError(f"the working tree has uncommitted changes ({len(status.splitlines())} path(s), e.g. "
                         f"{status.splitlines()[0][3:]}): commit them first, a sweep runs one commit everywhere")
    refuse_untracked_code(root)
    uri = tracking_uri(root)
    check_reachable(address, uri)
    resources = probe_cluster(address)
    commit = _git(root, "rev-parse", "HEAD").strip()
    repo_url = _git(root, "remote", "get-url", remote).strip()
    ref = f"refs/heads/sweep/{grid.name}-{commit[:10]}"
    _git(root, "push", "--quiet", "--force", remote, f"{commit}:{ref}")
    prepare_experiment(grid.experiment, root)  # once, before any worker logs (concurrent creation loses runs)
    result = SweepResult(grid)
    keys = point_keys(grid, root)
    logged = finished_points(grid, root, keys)
    pushed = remote_experiments(root, remote, commit)
    done = {n: r for n, r in logged.items() if n in pushed}
    unpushed = sorted(set(logged) - set(done))
    if unpushed:
        log.warning("%d point(s) have a finished run but no experiment on %s (their push failed): running them "
                    "again: %s", len(unpushed), remote, ", ".join(unpushed))
    result.skipped, result.runs = sorted(done), dict(done)
    todo = [p for p in grid.points if p.name not in done]
    if not todo:
        return result
    base = read_yaml(root / "params.yaml") or {}
    env_extra = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                 "OPENBLAS_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "LANDSCAPE_ONE_VISIBLE_GPU": "1",
                 # MLflow basic auth (scripts/cluster.sh on a LAN address): the workers log as the driver does
                 **{k: os.environ[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                               "MLFLOW_TRACKING_TOKEN") if k in os.environ}}
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        task = ray.remote(max_retries=0)(_make_task())
        futures = {}
        for p in tqdm(todo, desc=f"submitting {grid.name}", unit="point"):
            opts = {"num_cpus": num_cpus(p, base), "num_gpus": num_gpus(p, base, resources.get("GPU", 0.0)),
                    "memory": task_memory(p, base)}
            futures[task.options(**opts).remote(repo_url, ref, commit, p.name, dvc_set_args(p), env_extra,
                                                dvc_remote, remote, remove_stale_clones)] = p.name
        pending = list(futures)
        bar = tqdm(total=len(todo), desc=f"sweep {grid.name} (ray)", unit="point")
        nodes: dict[str, str] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for f in ready:
                name = futures[f]
                try:
                    out = ray.get(f)
                except Exception as exc:  # the worker died (killed, out of memory): the point failed
                    out = {"name": name, "ok": False, "error": f"{type(exc).__name__}: "
                           + " ".join(str(exc).split())[:300]}
                if out.get("node"):
                    nodes[name] = out["node"]
                if out["ok"]:
                    result.succeeded.append(name)
                else:
                    result.failed[name] = out["error"]
                bar.update(1)
                bar.set_postfix(in_flight=len(pending), failed=len(result.failed), refresh=True)
        bar.close()
        result.nodes = nodes
        _clean_every_node(ray)
    finally:
        ray.shutdown()
    result.runs.update({n: r for n, r in finished_points(grid, root, keys).items() if n in result.succeeded})
    return result
