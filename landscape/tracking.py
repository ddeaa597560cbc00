"""Everything MLflow: one parent run per pipeline configuration, filled from the DVC-tracked files.

* Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` with artifacts under
  ``<root>/mlartifacts``; ``<root>`` is ``$DVC_ROOT`` inside DVC (the main repository, also for queued
  experiments that run in a temporary copy), else the current directory.
* Run key: SHA-256 of the whole params.yaml (parsed, canonical JSON), the code (``landscape/*.py``,
  ``stages/*.py``: what computes the numbers; the track stage depends on all of it, so a code change always
  gets its own run) and the data digests; stored in the tag ``landscape.run_key``. A finished run with the
  same key is reused and nothing is logged again; an unfinished one (a crash) is replaced.
mlflow is imported lazily: it costs seconds per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from landscape.errors import LandscapeError
from landscape.io import read_json

log = logging.getLogger(__name__)

RUN_KEY_TAG = "landscape.run_key"
CODE_GLOBS = ("landscape/*.py", "stages/*.py")  # dvc.yaml computes nothing (and DVC forbids it as a dep)


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def _prepare_env() -> None:
    # Fail fast when a tracking server is down (defaults retry for minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def code_digest(workdir: Path) -> str:
    h = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for p in sorted(workdir.glob(pattern)):
            h.update(p.as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_key(params_path: Path, workdir: Path, dataset: dict[str, Any]) -> str:
    raw = yaml.safe_load(params_path.read_text())
    payload = {
        "params": raw,
        "code": code_digest(workdir),
        "data": {s: [dataset[s]["sha256_x"], dataset[s]["sha256_y"]] for s in ("train", "test")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def git_commit(workdir: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _metric_value(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def get_or_create_experiment(client: Any, name: str, uri: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def _store_lock(root: Path, uri: str):
    """Serialize writers of one SQLite store (parallel queued experiments log into the same mlflow.db;
    SQLite's first-use schema creation races otherwise)."""
    if not uri.startswith("sqlite:"):
        yield
        return
    with open(root / ".mlflow.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _failures_name_the_store(uri: str):
    """Any failure of the tracking store becomes one line that names it (the traceback goes to debug)."""
    try:
        yield
    except LandscapeError:
        raise
    except Exception as exc:
        log.debug("MLflow failure", exc_info=True)
        detail = " ".join(str(exc).split())[:300]
        raise LandscapeError(
            f"MLflow tracking at {uri} failed ({type(exc).__name__}: {detail}); upstream outputs are intact: "
            "fix the store (or unset MLFLOW_TRACKING_URI) and rerun `dvc repro` — only track will run"
        ) from None


def log_pipeline(
    flat_params: dict[str, Any],
    experiment: str,
    run_name: str | None,
    workdir: Path,
    files: dict[str, Path],
    figures: list[Path],
) -> dict[str, Any]:
    """Create (or find) the parent run of this pipeline state and fill it; return its description.

    ``files`` maps names to the DVC-tracked outputs: ``metrics`` (mnist_geometry_metrics.json), ``line``
    (line_loss.json), ``line_summary``, ``probe_summary``, ``history``, ``dataset``, ``probe_indices``, ``params``.
    """
    _prepare_env()
    root = repo_root()
    uri = tracking_uri(root)
    with _failures_name_the_store(uri), _store_lock(root, uri):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        dataset = read_json(files["dataset"])
        key = run_key(files["params"], workdir, dataset)
        client = MlflowClient(tracking_uri=uri)
        exp_id = get_or_create_experiment(client, experiment, uri, root)
        description = {"tracking_uri": uri, "experiment_name": experiment, "experiment_id": exp_id, "run_key": key}

        for run in client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=50):
            if run.info.status == "FINISHED":
                log.info("run %s already holds this pipeline state; nothing new logged", run.info.run_id)
                return {**description, "run_id": run.info.run_id, "reused": True}
            log.warning("deleting unfinished run %s of the same pipeline state", run.info.run_id)
            client.delete_run(run.info.run_id)

        commit = git_commit(workdir)
        tags = {
            RUN_KEY_TAG: key,
            "mlflow.source.git.commit": commit,
            "landscape.code_digest": code_digest(workdir),
            "landscape.dataset": dataset.get("dataset", ""),
            "landscape.data_source": dataset.get("source_used", ""),
        }
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        history = read_json(files["history"])
        if history.get("diverged"):
            tags["landscape.diverged"] = f"epoch {history.get('diverged_epoch')}"
        run = client.create_run(exp_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            params = [Param(k, str(v)[:6000]) for k, v in sorted(flat_params.items())]
            params += [Param("data.source_used", str(dataset.get("source_used"))),
                       Param("data.train_count", str(dataset["train"]["count"])),
                       Param("data.test_count", str(dataset["test"]["count"]))]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])

            now = int(time.time() * 1000)
            metrics: list[Metric] = []
            for rec in read_json(files["metrics"]):
                for k, v in rec.items():
                    value = _metric_value(v)
                    if k != "epoch" and value is not None:
                        metrics.append(Metric(k, value, now, int(rec["epoch"])))
            for h in history.get("history", []):
                for k in ("train_loss", "wall_time_s"):
                    value = _metric_value(h.get(k))
                    if value is not None:
                        metrics.append(Metric(f"train.running_{k}" if k == "train_loss" else f"train.{k}", value, now,
                                              int(h["epoch"])))
            summary = {**read_json(files["probe_summary"])}
            line_summary = read_json(files["line_summary"])
            summary.update({f"line.{k}": v for k, v in line_summary.items()})
            for k, v in summary.items():
                value = _metric_value(v)
                if value is not None:
                    metrics.append(Metric(f"summary.{k}", value, now, 0))
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i : i + 1000])

            for name in ("metrics", "line", "line_summary", "probe_summary", "history", "dataset", "probe_indices",
                         "spectrum", "params"):
                client.log_artifact(run_id, str(files[name]), artifact_path="outputs")
            for fig in figures:
                client.log_artifact(run_id, str(fig), artifact_path="plots")
            client.set_tag(run_id, "landscape.complete", "true")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        log.info("logged MLflow run %s to %s", run_id, uri)
        return {**description, "run_id": run_id, "reused": False}
