"""``landscape sweep GRID.yaml --engine ray --address HOST:PORT``: the same sweep on a Ray cluster.

Driver (this process): refuses a working tree with uncommitted changes (a sweep must name a commit), pushes
that commit to the shared git remote as ``refs/heads/sweep/<name>-<commit>``, checks that the Ray head and the
MLflow tracking server answer (seconds, one line when not), creates the MLflow experiment once and skips the
points whose run already exists (by run key), then submits one Ray task per missing point with
``num_cpus = train.threads`` (and ``num_gpus = 1`` when ``train.device`` is ``cuda…``), shows progress and lists
failures at the end. Tasks are not retried: a worker that dies fails its point, which the next sweep runs again.

Task (on a worker): a fresh ``git clone`` of that commit in a temporary directory, ``dvc exp run -n <point>
-S k=v …`` there (pulling from the DVC remote where one is given), then ``dvc exp push <remote> <point>``; the
track stage logs to the shared server (``MLFLOW_TRACKING_URI``). Every point comes back as a real DVC
experiment (``dvc exp pull``, ``show``, ``apply``) and one complete MLflow run. Workers need the project's
environment (the same ``python`` with torch, dvc, mlflow, ray), a reachable git remote and the tracking server.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from landscape.errors import LandscapeError
from landscape.runner.grid import Grid, Point, dvc_set_args
from landscape.runner.sweep import SweepResult, finished_points, prepare_experiment

log = logging.getLogger(__name__)


def _git(root: Path, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise LandscapeError(f"git {' '.join(args)} failed: {out.stderr.strip()[-300:]}")
    return out.stdout.rstrip("\n")


def check_reachable(address: str, uri: str, timeout: float = 5.0) -> None:
    """One line, within seconds, when the Ray head or the tracking server does not answer."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise LandscapeError(f"Ray head {address} is unreachable ({exc}); start it (scripts/cluster.sh start) or "
                             "pass --address HOST:PORT of a running cluster") from None
    if not uri.startswith(("http://", "https://")):
        raise LandscapeError(f"MLFLOW_TRACKING_URI = {uri!r}: Ray workers on other machines cannot log to it; "
                             "allowed: the http(s) address of a shared mlflow server (scripts/cluster.sh start "
                             "prints it)")
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except OSError as exc:
        raise LandscapeError(f"MLflow tracking server {uri} is unreachable ({exc}); start it or fix "
                             "MLFLOW_TRACKING_URI") from None


def _num_gpus(point: Point, base: dict[str, Any]) -> int:
    device = point.overrides.get("train.device", base.get("train", {}).get("device", "cpu"))
    return 1 if str(device).startswith("cuda") else 0


def _num_cpus(point: Point, base: dict[str, Any]) -> int:
    return int(point.overrides.get("train.threads", base.get("train", {}).get("threads", 1)))


def _make_task():
    """The task function, built here so that Ray serializes it by value: a worker needs the environment, not
    this checkout on its import path."""

    def run_point(repo_url: str, ref: str, commit: str, name: str, set_args: list[str], env_extra: dict[str, str],
                  dvc_remote: str | None, git_remote: str) -> dict[str, Any]:
        import os
        import shutil
        import subprocess
        import sys
        import tempfile
        import time

        import ray

        node = ray.get_runtime_context().get_node_id()
        t0 = time.time()
        work = tempfile.mkdtemp(prefix=f"landscape-{name}-")
        py = sys.executable
        env = {**os.environ, **env_extra, "PATH": os.path.dirname(py) + os.pathsep + os.environ.get("PATH", "")}

        def run(*cmd: str, cwd: str = work) -> None:
            out = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
                errors = [ln for ln in lines if "error" in ln.lower()]
                raise RuntimeError(f"{' '.join(cmd[:4])}…: {(errors or lines or ['no output'])[-1].strip()[:300]}")

        try:
            run("git", "clone", "--quiet", "--origin", git_remote, repo_url, work, cwd=tempfile.gettempdir())
            run("git", "fetch", "--quiet", git_remote, ref)
            run("git", "checkout", "--quiet", "--detach", commit)
            pull: list[str] = []
            if dvc_remote:
                run(py, "-m", "dvc", "remote", "add", "--local", "--default", "--force", "sweep", dvc_remote)
                pull = ["--pull"]
            run(py, "-m", "dvc", "exp", "run", *pull, "-n", name, *set_args)
            run(py, "-m", "dvc", "exp", "push", *([] if dvc_remote else ["--no-cache"]), git_remote, name)
            return {"name": name, "ok": True, "node": node, "seconds": time.time() - t0}
        except Exception as exc:  # reported to the driver, listed at the end
            return {"name": name, "ok": False, "node": node, "error": str(exc), "seconds": time.time() - t0}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return run_point


def run_ray(grid: Grid, root: Path, address: str | None, remote: str = "origin",
            dvc_remote: str | None = None) -> SweepResult:
    """Run the missing points of ``grid`` on the Ray cluster at ``address``."""
    import yaml

    from landscape.tracking import tracking_uri

    if not address:
        raise LandscapeError("--engine ray needs --address HOST:PORT (the Ray head; scripts/cluster.sh start)")
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    if status.strip():
        raise LandscapeError(f"the working tree has uncommitted changes ({len(status.splitlines())} path(s), e.g. "
                             f"{status.splitlines()[0][3:]}): commit them first, a sweep runs one commit everywhere")
    uri = tracking_uri(root)
    check_reachable(address, uri)
    commit = _git(root, "rev-parse", "HEAD").strip()
    repo_url = _git(root, "remote", "get-url", remote).strip()
    ref = f"refs/heads/sweep/{grid.name}-{commit[:10]}"
    _git(root, "push", "--quiet", "--force", remote, f"{commit}:{ref}")
    prepare_experiment(grid.experiment, root)  # once, before any worker logs (concurrent creation loses runs)
    result = SweepResult(grid)
    done = finished_points(grid, root)
    result.skipped, result.runs = sorted(done), dict(done)
    todo = [p for p in grid.points if p.name not in done]
    if not todo:
        return result
    base = yaml.safe_load((root / "params.yaml").read_text()) or {}
    env_extra = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                 "OPENBLAS_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        task = ray.remote(max_retries=0)(_make_task())
        futures = {task.options(num_cpus=_num_cpus(p, base), num_gpus=_num_gpus(p, base)).remote(
            repo_url, ref, commit, p.name, dvc_set_args(p), env_extra, dvc_remote, remote): p.name for p in todo}
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
                bar.set_postfix(failed=len(result.failed), refresh=False)
        bar.close()
        result.nodes = nodes
    finally:
        ray.shutdown()
    from landscape.runner.sweep import _runs_by_exp_name

    result.runs.update(_runs_by_exp_name(grid.experiment, root, result.succeeded))
    return result
