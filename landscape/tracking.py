"""Everything MLflow: one parent run per pipeline state, filled from the DVC-tracked files.

* Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` with artifacts under
  ``<root>/mlartifacts``; ``<root>`` is ``$DVC_ROOT`` inside DVC (the main repository, also for queued
  experiments that run in a temporary copy), else the current directory. ``reports/mlflow_run.json`` records
  the default store as ``sqlite:///mlflow.db`` (relative to the repository root), true in any clone.
* Reuse: a run is keyed by :func:`landscape.provenance.run_key` (params, code, data; tag
  ``landscape.run_key``) and carries the digest of the result files it logged (tag
  ``landscape.outputs_digest``). A finished run is reused (nothing logged) only when both match the files on
  disk; otherwise a new run is logged and the reason is said. Writers of one store never lock each other out
  (a server store has no lock): an unfinished run of the same key is deleted only when it stopped logging
  more than :data:`STALE_RUN_S` ago (a crash), never while another writer may still be filling it; two
  FINISHED runs of one key (two writers at once) are both kept and every reader picks the same one
  (:func:`pick_run`).
* Credentials: a tracking URI may carry ``user:password@``; it is written and printed only through
  :func:`redact_uri`.
* What the run holds, by name: :mod:`landscape.run_metrics`.

mlflow is imported lazily: it costs seconds per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError
from landscape.io import read_json
from landscape.provenance import code_digest, git_commit, outputs_digest, run_key
from landscape.run_metrics import _metric_value, epoch_metrics, readable_run_name, surface_summary

log = logging.getLogger(__name__)

RUN_KEY_TAG = "landscape.run_key"
LOGGING_TAG = "landscape.logging_started_ms"  # when the writer created the run (its start_time is the pipeline's)
STALE_RUN_S = 3600.0  # an unfinished run whose writer started longer ago than this crashed (logging takes seconds)
OUTPUTS_TAG = "landscape.outputs_digest"
DEFAULT_STORE = "sqlite:///mlflow.db"  # relative to the repository root
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3 opens on the runs, not GenAI

def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """The URI MLflow is given: ``MLFLOW_TRACKING_URI``, else the absolute path of the root's mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page on an http(s) tracking server, without credentials (a browser asks for them); None for
    file and database stores (``make ui`` serves those)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{re.sub(r'(?<=://)[^/@]+@', '', uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def redact_uri(uri: str) -> str:
    """The URI with any ``user:password@`` (or ``token@``) replaced by ``***@``: safe to write and print."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def recorded_store() -> str:
    """How the store is written into files committed to git: the default store relative to the repository
    root (true in any clone), or the user's ``MLFLOW_TRACKING_URI`` as given, credentials redacted."""
    return redact_uri(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE)


def client_for(root: Path | None = None) -> tuple[Any, str]:
    """(MlflowClient, uri) for the store of ``root`` (``MLFLOW_TRACKING_URI`` or the root's mlflow.db)."""
    prepare_env()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    return MlflowClient(tracking_uri=uri), uri


def pick_run(runs: list[Any]) -> Any | None:
    """The one FINISHED, complete run among ``runs`` that every reader chooses: the one that ended last (the
    newest code, when the runs are one configuration at several code versions), ties broken by run id."""
    done = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("landscape.complete") == "true"]
    return max(done, key=lambda r: (r.info.end_time or 0, r.info.run_id), default=None)


def prepare_env() -> None:
    # Fail fast when a tracking server is down (defaults retry for minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow prints "View run … at <tracking URI>" itself, credentials and all; the track stage prints its own
    # line, with the URI redacted
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def get_or_create_experiment(client: Any, name: str, uri: str, root: Path) -> str:
    """The experiment's id (created with the artifact root beside the store when new), tagged so that
    MLflow 3's UI opens it on its runs (model training), not on the GenAI overview."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        try:
            exp_id = client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
        if any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp_id, k, v)
    return exp_id


def ui_experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment ``name`` in the store, or None when it does not exist (yet)."""
    prepare_env()
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    return None if exp is None else exp.experiment_id


def runs_page_url(base: str, experiment_id: str) -> str:
    """The MLflow UI page listing an experiment's runs, on its model-training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextlib.contextmanager
def store_lock(root: Path, uri: str):
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


TRACK_HINT = ("upstream outputs are intact: fix the store (or unset MLFLOW_TRACKING_URI) and rerun `dvc repro` — "
              "only track will run")


@contextlib.contextmanager
def failures_name_the_store(uri: str, hint: str = TRACK_HINT):
    """Any failure of the tracking store becomes one line that names it (the traceback goes to debug)."""
    try:
        yield
    except LandscapeError:
        raise
    except Exception as exc:
        log.debug("MLflow failure", exc_info=True)
        detail = redact_uri(" ".join(str(exc).split()).replace(uri, redact_uri(uri)))[:300]
        raise LandscapeError(f"MLflow tracking at {redact_uri(uri)} failed ({type(exc).__name__}: {detail}); "
                             f"{hint}") from None


def log_pipeline(
    flat_params: dict[str, Any],
    defaults: dict[str, Any],
    experiment: str,
    run_name: str | None,
    workdir: Path,
    files: dict[str, Path],
    figures: list[Path],
    timings: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Create (or reuse) the parent run of this pipeline state and fill it; return its description.

    ``files`` maps names to the DVC-tracked outputs: ``metrics`` (mnist_geometry_metrics.json), ``line``
    (line_loss.json), ``line_summary``, ``probe_summary``, ``history``, ``dataset``, ``probe_indices``,
    ``spectrum``, ``params``. ``timings`` maps stage names to ``{started_at, finished_at, wall_s}`` (epoch
    seconds); the run spans the earliest start to now, and each stage's wall time is a ``time/`` metric.
    """
    prepare_env()
    root = repo_root()
    uri = tracking_uri(root)
    with failures_name_the_store(uri), store_lock(root, uri):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        dataset = read_json(files["dataset"])
        key = run_key(files["params"], workdir, dataset)
        digest = outputs_digest(result_contents(files))
        client = MlflowClient(tracking_uri=uri)
        exp_id = get_or_create_experiment(client, experiment, uri, root)
        description = {"store": recorded_store(), "experiment_name": experiment, "experiment_id": exp_id,
                       "run_key": key}
        reason = "no run of this pipeline state yet"
        same = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=50)
        reusable = pick_run([r for r in same if r.data.tags.get(OUTPUTS_TAG) == digest])
        if reusable is not None:
            log.info("run %s already holds this pipeline state and these outputs; nothing new logged",
                     reusable.info.run_id)
            return {**description, "run_id": reusable.info.run_id, "run_name": reusable.info.run_name,
                    "reused": True, "url": run_url(uri, exp_id, reusable.info.run_id)}
        for run in same:
            if run.info.status == "FINISHED":
                reason = (f"run {run.info.run_id} has the same params, code and data but other outputs "
                          "(logged before the files on disk were recomputed)")
                log.warning("%s; logging a new run", reason)
            elif run.info.status in ("FAILED", "KILLED") or _stale(run):
                log.warning("deleting run %s of the same pipeline state (%s; a writer that failed, or stopped more "
                            "than %.0f s ago)", run.info.run_id, run.info.status, STALE_RUN_S)
                client.delete_run(run.info.run_id)
            else:  # another writer is filling it right now (a server store has no lock): leave it alone
                log.warning("run %s of the same pipeline state is being written by another process; logging this "
                            "one beside it (readers pick one deterministically)", run.info.run_id)

        history = read_json(files["history"])
        name = run_name or os.environ.get("DVC_EXP_NAME") or readable_run_name(flat_params, defaults, dataset)
        tags = {
            RUN_KEY_TAG: key,
            OUTPUTS_TAG: digest,
            LOGGING_TAG: str(int(time.time() * 1000)),
            "mlflow.source.git.commit": git_commit(workdir),
            "landscape.code_digest": code_digest(workdir),
            "landscape.dataset": dataset.get("dataset", ""),
            "landscape.data_source": dataset.get("source_used", ""),
            "landscape.data": f"{dataset.get('dataset')} from {dataset.get('source_used')}: "
                              f"{dataset['train']['count']} train / {dataset['test']['count']} test",
            "landscape.new_run_reason": reason,
        }
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        for key in ("device", "threads", "torch"):  # what the training actually ran on
            if history.get(key) is not None:
                tags[f"landscape.{key}"] = str(history[key])
        if history.get("diverged"):
            tags["landscape.diverged"] = f"epoch {history.get('diverged_epoch')}"
        starts = [t["started_at"] for t in timings.values() if t.get("started_at")]
        start_ms = int(1000 * min(starts)) if starts else None
        run = client.create_run(exp_id, run_name=name, tags=tags, start_time=start_ms)
        run_id = run.info.run_id
        try:
            params = [Param(k, str(v)[:6000]) for k, v in sorted(flat_params.items())]
            params += [Param("data.source_used", str(dataset.get("source_used"))),
                       Param("data.train_count", str(dataset["train"]["count"])),
                       Param("data.test_count", str(dataset["test"]["count"]))]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])

            now = int(time.time() * 1000)
            metrics = epoch_metrics(read_json(files["metrics"]), history, now)
            summary = {**read_json(files["probe_summary"])}
            summary.update({f"line/{k}": v for k, v in read_json(files["line_summary"]).items()})
            if Path(files.get("connect_summary", "")).is_file():
                connect = read_json(files["connect_summary"])
                summary.update({f"connect/{k}": v for k, v in connect.items()})
                if connect.get("skipped"):  # e.g. no SGD noise: no barrier, and the run says why
                    client.set_tag(run_id, "landscape.connect_skipped", str(connect["skipped"])[:5000])
            summary.update(surface_summary(files))
            if Path(files.get("measures", "")).is_file():  # the generalization measures, as measures/<name>
                measures = read_json(files["measures"])
                for k, v in (measures.get("values") or {}).items():
                    value = _metric_value(v)
                    if value is not None:
                        metrics.append(Metric(f"measures/{k}", value, now, 0))
                if measures.get("at_interval_top"):  # censored at the search interval's top: say which
                    client.set_tag(run_id, "landscape.measures_at_interval_top", ", ".join(measures["at_interval_top"]))
                if measures.get("margin_negative"):  # γ is the size of a wrong margin (measures/margin_signed < 0)
                    client.set_tag(run_id, "landscape.margin_negative", "true")
            for k, v in summary.items():
                value = _metric_value(v)
                if value is not None:
                    metrics.append(Metric(f"summary/{k}", value, now, 0))
            for stage, t in sorted(timings.items()):
                if _metric_value(t.get("wall_s")) is not None:
                    metrics.append(Metric(f"time/{stage}_s", float(t["wall_s"]), now, 0))
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i : i + 1000])

            for name_ in sorted(files):
                if Path(files[name_]).is_file():
                    client.log_artifact(run_id, str(files[name_]), artifact_path="outputs")
            for fig in figures:
                client.log_artifact(run_id, str(fig), artifact_path="plots")
            client.set_tag(run_id, "landscape.complete", "true")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED", end_time=int(time.time() * 1000))
        log.info("logged MLflow run %s (%s) to %s", run_id, name, redact_uri(uri))
        return {**description, "run_id": run_id, "run_name": name, "reused": False, "url": run_url(uri, exp_id, run_id)}


def _stale(run: Any) -> bool:
    """An unfinished run whose writer started more than STALE_RUN_S ago (or never said when): a crash."""
    started = run.data.tags.get(LOGGING_TAG)
    try:
        age_s = time.time() - int(started) / 1000
    except (TypeError, ValueError):
        return True  # written by a version without the tag: only a crash leaves those unfinished
    return age_s > STALE_RUN_S


TIMING_FIELDS = ("wall_time_s", "resumed_from")  # in train_history.json: how long and how, not what


def result_contents(files: dict[str, Path]) -> dict[str, bytes | None]:
    """The bytes of every result file a run logs, with train_history.json's timing fields left out (they
    differ run to run while the results do not)."""
    out: dict[str, bytes | None] = {}
    for name, path in files.items():
        path = Path(path)
        if not path.is_file():
            out[name] = None
        elif name == "history":
            blob = read_json(path)
            blob = {k: v for k, v in blob.items() if k not in TIMING_FIELDS}
            blob["history"] = [{k: v for k, v in h.items() if k not in TIMING_FIELDS} for h in blob.get("history", [])]
            out[name] = json.dumps(blob, sort_keys=True).encode()
        else:
            out[name] = path.read_bytes()
    return out
