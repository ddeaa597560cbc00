"""Run a sweep grid (:mod:`landscape.runner.grid`) as real DVC experiments, one MLflow parent run per point.

``--engine local`` (the default) uses DVC's own machinery: ``dvc exp run --queue -n <point> -S k=v …`` for
every point, then ``dvc queue start -j N``; every point runs the whole pipeline in its own temporary
workspace and its track stage logs into the one MLflow store at the repository root (``$DVC_ROOT``). The
MLflow experiment is created (and tagged) once before any worker starts: concurrent first-use creation
races. Points whose run already exists (found by its run key: params, code and data) are not run again, so
an interrupted sweep resumes with what is missing. A point that fails is listed at the end with the last
line of its log; the others finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from landscape.errors import LandscapeError
from landscape.provenance import code_digest, data_digest
from landscape.runner.grid import Grid, Point, apply_overrides, dvc_set_args

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    grid: Grid
    skipped: list[str] = field(default_factory=list)  # already had a finished run
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> last error line
    runs: dict[str, str] = field(default_factory=dict)  # name -> MLflow run id
    nodes: dict[str, str] = field(default_factory=dict)  # name -> the Ray node that ran it (engine ray)


def point_run_key(params: dict[str, Any], code: str, dataset: dict[str, Any]) -> str:
    """The run key the point's track stage will compute (see :func:`landscape.provenance.run_key`)."""
    payload = {"params": params, "code": code, "data": data_digest(dataset)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _dataset_records(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dataset record of each distinct data config among the points (data acquired once each)."""
    from landscape.params_file import parse_params
    from landscape.data import prepare
    from landscape.sources import acquire

    out: dict[str, dict[str, Any]] = {}
    for raw in points:
        cfg = parse_params(raw).data
        key = json.dumps(cfg.model_dump(), sort_keys=True)
        if key not in out:
            with tempfile.TemporaryDirectory() as tmp:
                data = acquire(cfg.dataset, cfg.source, cfg.seed, cfg.download_timeout)
                out[key] = prepare(data, Path(tmp), cfg.train_samples, cfg.test_samples, cfg.seed)
    return out


def finished_points(grid: Grid, root: Path) -> dict[str, str]:
    """``{point name: run id}`` of the points whose run (same run key) is already FINISHED in the store."""
    from landscape.params_file import parse_params
    from landscape.tracking import RUN_KEY_TAG, prepare_env, tracking_uri

    prepare_env()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp = client.get_experiment_by_name(grid.experiment)
    if exp is None:
        return {}
    base = yaml.safe_load((root / "params.yaml").read_text()) or {}
    raws = {p.name: apply_overrides(base, p.overrides) for p in grid.points}
    records = _dataset_records(list(raws.values()))
    code = code_digest(root)
    out = {}
    for p in grid.points:
        cfg = parse_params(raws[p.name]).data
        dataset = records[json.dumps(cfg.model_dump(), sort_keys=True)]
        key = point_run_key(raws[p.name], code, dataset)
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                  max_results=5)
        done = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("landscape.complete") == "true"]
        if done:
            out[p.name] = done[0].info.run_id
    return out


def prepare_experiment(name: str, root: Path) -> str:
    """Create the store's schema and the MLflow experiment once, before parallel writers start."""
    from landscape.tracking import get_or_create_experiment, prepare_env, store_lock, tracking_uri

    prepare_env()
    uri = tracking_uri(root)
    from mlflow.tracking import MlflowClient

    with store_lock(root, uri):
        return get_or_create_experiment(MlflowClient(tracking_uri=uri), name, uri, root)


def _dvc(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout)


def _queue_status(root: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {e.get("name"): e["status"] for e in repo.experiments.celery_queue.status() if e.get("name")}


def _last_error(root: Path, name: str) -> str:
    out = _dvc(root, "queue", "logs", name, timeout=120)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "failed")) or "Error" in ln]
    return (errors or lines or ["no log"])[-1][:300]


def run_local(grid: Grid, root: Path, jobs: int = 1, poll_s: float = 3.0) -> SweepResult:
    """Queue every missing point as a DVC experiment and run them with ``jobs`` local workers."""
    result = SweepResult(grid)
    prepare_experiment(grid.experiment, root)
    done = finished_points(grid, root)
    result.skipped = sorted(done)
    result.runs.update(done)
    todo: list[Point] = [p for p in grid.points if p.name not in done]
    if done:
        log.info("%d of %d points already have a finished run; running the other %d", len(done), len(grid.points),
                 len(todo))
    for p in todo:
        q = _dvc(root, "exp", "run", "--queue", "-f", "-n", p.name, *dvc_set_args(p))
        if q.returncode != 0:
            raise LandscapeError(f"could not queue {p.name} ({p.label()}): {q.stderr.strip()[-300:]}")
    if not todo:
        return result
    starter = subprocess.Popen([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    names = {p.name for p in todo}
    bar = tqdm(total=len(todo), desc=f"sweep {grid.name}", unit="point")
    finished: dict[str, str] = {}
    status: dict[str, str] = {}
    while True:
        status = {n: s for n, s in _queue_status(root).items() if n in names}
        for n, s in status.items():
            if s in ("Success", "Failed") and n not in finished:
                finished[n] = s
                bar.update(1)
                bar.set_postfix(failed=sum(v == "Failed" for v in finished.values()), refresh=False)
        started = starter.poll()
        if started not in (None, 0):
            raise LandscapeError(f"dvc queue start failed: {starter.stderr.read().strip()[-300:]}")
        if len(finished) == len(todo):
            break
        if started == 0 and status and all(s not in ("Queued", "Running") for s in status.values()):
            break
        time.sleep(poll_s)
    bar.close()
    if starter.poll() is None:
        starter.wait(timeout=60)
    for p in todo:
        s = finished.get(p.name, status.get(p.name, "unknown"))
        if s == "Success":
            result.succeeded.append(p.name)
        else:
            result.failed[p.name] = f"{s}: {_last_error(root, p.name)}"
    result.runs.update(_runs_by_exp_name(grid.experiment, root, result.succeeded))
    return result


def _runs_by_exp_name(experiment: str, root: Path, names: list[str]) -> dict[str, str]:
    from landscape.tracking import prepare_env, tracking_uri

    prepare_env()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp = client.get_experiment_by_name(experiment)
    out = {}
    if exp is None:
        return out
    for run in client.search_runs([exp.experiment_id], max_results=50000):
        name = run.data.tags.get("dvc.exp_name")
        if name in names and run.info.status == "FINISHED":
            out[name] = run.info.run_id
    return out


def report(result: SweepResult) -> str:
    """The lines a user sees at the end of a sweep."""
    g = result.grid
    lines = [f"sweep {g.name}: {len(g.points)} points, MLflow experiment '{g.experiment}'",
             f"  finished now: {len(result.succeeded)}; already finished before: {len(result.skipped)}; "
             f"failed: {len(result.failed)}"]
    for name, why in sorted(result.failed.items()):
        point = next(p for p in g.points if p.name == name)
        lines.append(f"  FAILED {name} ({point.label()}): {why}")
    if result.nodes:
        lines.append(f"  Ray nodes used: {len(set(result.nodes.values()))}")
    if result.failed:
        lines.append("  rerun `landscape sweep` to run only the failed and missing points")
    return "\n".join(lines)
