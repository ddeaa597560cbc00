"""Run a sweep grid (:mod:`landscape.runner.grid`) as real DVC experiments, one MLflow parent run per point.

``--engine local`` (the default) uses DVC's own machinery: every missing point is queued as ``dvc exp run
--queue -n <point> -S k=v …`` (in this process, with progress), then ``dvc queue start -j N`` runs them; every
point runs the whole pipeline in its own temporary workspace and its track stage logs into the one MLflow store
at the repository root (``$DVC_ROOT``). The MLflow experiment is created (and tagged) once before any worker
starts: concurrent first-use creation races.

What is finished is decided by results, never by names:

* a point is *done* when the store holds a FINISHED, complete run with the point's run key (params, code, data);
  duplicates of one key (two writers) resolve deterministically (:func:`landscape.tracking.pick_run`);
* the queue entries this sweep created are tracked by their stash revisions (DVC's queue keeps old entries of
  the same name: a Failed one from an earlier try must not mask a Running one), recorded in
  ``.dvc/tmp/landscape-sweeps/<grid>.json`` as each is queued, so that a rerun after Ctrl-C or a killed driver
  follows the entries still queued or running instead of queueing them twice; entries are removed from DVC's
  queue once finished (their result collected), so polling never walks old entries again;
* a point whose entry succeeded but whose run key is not in the store (params or code changed while it waited)
  is reported as failed, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from landscape.errors import InputError, LandscapeError
from landscape.io import read_json, read_yaml, write_json
from landscape.provenance import code_digest, data_digest
from landscape.runner.dvc_queue import DvcQueue
from landscape.runner.grid import Grid, apply_overrides

log = logging.getLogger(__name__)

STATE_DIR = Path(".dvc") / "tmp" / "landscape-sweeps"
MISSING_GIVE_UP_S = 60.0  # an entry in none of DVC's lists for this long was removed
RESTART_WORKERS_S = 60.0  # queued entries but nothing running for this long: start the workers again
NO_WORKER_GIVE_UP_S = 600.0  # …and give up (one line) when still nothing ran after this long (entries of other
                             # sweeps running ahead of ours count as work: the queue is served in order)


@dataclass
class SweepResult:
    grid: Grid
    skipped: list[str] = field(default_factory=list)  # already had a finished run
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> last error line
    runs: dict[str, str] = field(default_factory=dict)  # name -> MLflow run id
    nodes: dict[str, str] = field(default_factory=dict)  # name -> the Ray node that ran it (engine ray)
    followed: list[str] = field(default_factory=list)  # queued or running before this call: followed, not requeued
    queued: list[str] = field(default_factory=list)  # queued by this call


class SweepInterrupted(LandscapeError):
    """Ctrl-C: the message says what keeps running and how to follow or stop it."""


def point_run_key(params: dict[str, Any], code: str, dataset: dict[str, Any]) -> str:
    """The run key the point's track stage will compute (see :func:`landscape.provenance.run_key`)."""
    payload = {"params": params, "code": code, "data": data_digest(dataset)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _dataset_records(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dataset record of each distinct data config among the points (data acquired once each)."""
    from landscape.data import prepare
    from landscape.params_file import parse_params
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


def point_keys(grid: Grid, root: Path) -> dict[str, str]:
    """``{point name: run key}`` for the code and data of this checkout."""
    from landscape.params_file import parse_params

    base = read_yaml(root / "params.yaml") or {}
    raws = {p.name: apply_overrides(base, p.overrides) for p in grid.points}
    records = _dataset_records(list(raws.values()))
    code = code_digest(root)
    keys = {}
    for p in grid.points:
        cfg = parse_params(raws[p.name]).data
        keys[p.name] = point_run_key(raws[p.name], code, records[json.dumps(cfg.model_dump(), sort_keys=True)])
    return keys


def finished_points(grid: Grid, root: Path, keys: dict[str, str] | None = None) -> dict[str, str]:
    """``{point name: run id}`` of the points whose run (same run key) is FINISHED and complete in the store;
    where two writers left two such runs, the same one is named every time."""
    from landscape.tracking import RUN_KEY_TAG, client_for, pick_run

    keys = keys if keys is not None else point_keys(grid, root)
    client, _ = client_for(root)
    exp = client.get_experiment_by_name(grid.experiment)
    if exp is None:
        return {}
    out = {}
    for p in grid.points:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{keys[p.name]}'",
                                  max_results=50)
        chosen = pick_run(runs)
        if chosen is not None:
            out[p.name] = chosen.info.run_id
    return out


def prepare_experiment(name: str, root: Path) -> str:
    """Create the store's schema and the MLflow experiment once, before parallel writers start. An unreachable
    store stops the sweep here, in one line, before anything is queued."""
    from landscape.tracking import failures_name_the_store, get_or_create_experiment, prepare_env, store_lock
    from landscape.tracking import tracking_uri

    prepare_env()
    uri = tracking_uri(root)
    try:
        with failures_name_the_store(uri, "check MLFLOW_TRACKING_URI and that the server is up; nothing was queued"):
            from mlflow.tracking import MlflowClient

            with store_lock(root, uri):
                return get_or_create_experiment(MlflowClient(tracking_uri=uri), name, uri, root)
    except LandscapeError as exc:
        raise InputError(str(exc)) from None


def untracked_code(root: Path) -> list[str]:
    """Untracked ``.py`` files under ``landscape/`` and ``stages/``: they enter this checkout's code digest (the
    run key) but not a queued experiment or a clone, so the runs could never be recognized as finished."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "landscape", "stages"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    return [ln[3:] for ln in out.stdout.splitlines() if ln.startswith("??") and ln.endswith(".py")]


def refuse_untracked_code(root: Path) -> None:
    files = untracked_code(root)
    if files:
        raise InputError(f"untracked code {', '.join(files[:3])}{' …' if len(files) > 3 else ''}: it would enter the "
                         "run key here but not the experiments DVC runs; git add (or remove) it first")


def _state_path(root: Path, grid: Grid) -> Path:
    return root / STATE_DIR / f"{grid.name}.json"


def _load_state(root: Path, grid: Grid) -> dict[str, dict[str, str]]:
    path = _state_path(root, grid)
    try:
        return read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def run_local(grid: Grid, root: Path, jobs: int = 1, poll_s: float = 2.0) -> SweepResult:
    """Queue every missing point as a DVC experiment and run them with ``jobs`` local workers."""
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: allowed: 1 or more local workers (dvc queue start -j N)")
    refuse_untracked_code(root)
    result = SweepResult(grid)
    prepare_experiment(grid.experiment, root)
    keys = point_keys(grid, root)
    done = finished_points(grid, root, keys)
    result.skipped, result.runs = sorted(done), dict(done)
    todo = [p for p in grid.points if p.name not in done]
    queue = DvcQueue(root, root / STATE_DIR)
    state = _load_state(root, grid)
    _fail_orphans(queue, poll_s)
    pending = queue.pending()
    # entries this sweep recorded earlier that have finished: collected already, or stale; drop them
    queue.remove([s["rev"] for s in state.values() if s["rev"] not in pending])
    state = {n: s for n, s in state.items() if s["rev"] in pending}
    mine: dict[str, str] = {}  # point name -> stash rev followed by this call
    names = {p.name for p in todo}
    for rev, (name, status) in pending.items():
        if name not in names:
            continue
        rec = state.get(name)
        if rec and rec["rev"] == rev and rec["key"] == keys[name]:
            mine[name] = rev
            result.followed.append(name)
        else:
            raise InputError(f"point {name} is still {status.lower()} in DVC's queue (entry {rev[:7]}) from an earlier "
                             f"sweep with other params or code: wait for it (dvc queue status) or stop it (dvc queue "
                             f"kill {name} / dvc queue remove {name}), then rerun")
    if result.followed:
        log.info("following %d point(s) queued or running before this call: %s", len(result.followed),
                 ", ".join(sorted(result.followed)))
    if done:
        log.info("%d of %d points already have a finished run; running the other %d", len(done), len(grid.points),
                 len(todo))
    if not todo:
        return result
    try:
        for p in tqdm([p for p in todo if p.name not in mine], desc=f"queueing {grid.name}", unit="point"):
            mine[p.name] = queue.put(p)
            result.queued.append(p.name)
            state[p.name] = {"rev": mine[p.name], "key": keys[p.name]}
            write_json(_state_path(root, grid), state)
        queue.start_workers(jobs)
        outcomes = _follow(queue, grid, mine, jobs, poll_s)
    except KeyboardInterrupt:
        raise SweepInterrupted(_interrupted_message(queue, grid, mine)) from None
    finished = finished_points(grid, root, keys)
    for p in todo:
        ok, why = outcomes[p.name]
        if ok and p.name in finished:
            result.succeeded.append(p.name)
            result.runs[p.name] = finished[p.name]
        elif ok:
            result.failed[p.name] = ("its experiment succeeded but the store has no finished run with this point's "
                                     "run key (params, code or data changed while it was queued?)")
        else:
            result.failed[p.name] = why
    queue.remove(list(mine.values()))
    state = {n: s for n, s in state.items() if n not in mine}
    write_json(_state_path(root, grid), state)
    return result


def _fail_orphans(queue: DvcQueue, poll_s: float) -> None:
    """Entries DVC lists as running whose process is gone (seen twice, ``poll_s`` apart, so that a process
    that just ended has time to record its end) are marked failed: their points run again."""
    first = queue.orphans()
    if not first:
        return
    time.sleep(poll_s)
    gone = {rev: v for rev, v in queue.orphans().items() if rev in first}
    queue.fail(list(gone))
    for name, pid in sorted(gone.values()):
        log.warning("%s: DVC lists it as running but its process (pid %d) is gone (a machine restart or a killed "
                    "queue worker); marked failed, it runs again", name, pid)


def _follow(queue: DvcQueue, grid: Grid, mine: dict[str, str], jobs: int, poll_s: float) -> dict[str, tuple[bool, str]]:
    """Poll the entries in ``mine`` until each has finished; ``{name: (succeeded, error line)}``. A progress bar
    shows finished and running points; queued entries with no worker are restarted, then given up on."""
    outcomes: dict[str, tuple[bool, str]] = {}
    bar = tqdm(total=len(mine), desc=f"sweep {grid.name}", unit="point")
    idle_since = time.monotonic()
    last_restart = idle_since
    missing_since: dict[str, float] = {}
    orphaned: dict[str, tuple[str, int]] = {}
    try:
        while len(outcomes) < len(mine):
            seen, orphaned = orphaned, queue.orphans()
            gone = [rev for rev in orphaned if rev in seen and rev in mine.values()]  # twice, a poll apart
            queue.fail(gone)
            for name, rev in mine.items():
                if rev in gone and name not in outcomes:
                    outcomes[name] = (False, f"its process (pid {orphaned[rev][1]}) ended but no queue worker "
                                             "recorded the result (a killed worker?)")
                    bar.update(1)
            pending = queue.pending()
            busy = any(status == "Running" for _, status in pending.values())  # on ours, or on earlier entries
            running = 0
            for name, rev in mine.items():
                if name in outcomes:
                    continue
                if rev in pending:
                    running += pending[rev][1] == "Running"
                    missing_since.pop(name, None)
                    continue
                result = queue.outcome(rev)
                if result is None:  # in transit between DVC's lists; gone for good only after a minute
                    first = missing_since.setdefault(name, time.monotonic())
                    if time.monotonic() - first < MISSING_GIVE_UP_S:
                        continue
                    result = (False, "its queue entry disappeared from DVC's queue (removed by hand?)")
                outcomes[name] = result
                bar.update(1)
            failed = sum(not ok for ok, _ in outcomes.values())
            bar.set_postfix(running=running, failed=failed, refresh=True)
            now = time.monotonic()
            if busy or len(outcomes) == len(mine):
                idle_since = now
            elif now - idle_since > NO_WORKER_GIVE_UP_S:
                raise LandscapeError(f"DVC's queue workers ran nothing for {NO_WORKER_GIVE_UP_S:.0f} s while "
                                     f"{len(mine) - len(outcomes)} point(s) waited; see `dvc queue status`")
            elif now - last_restart > RESTART_WORKERS_S:
                queue.start_workers(jobs)
                last_restart = now
            if len(outcomes) < len(mine):
                time.sleep(poll_s)
    finally:
        bar.close()
    return outcomes


def _interrupted_message(queue: DvcQueue, grid: Grid, mine: dict[str, str]) -> str:
    try:
        pending = queue.pending()
    except Exception:  # the message must come out even when the queue cannot be read
        pending = {}
    running = sorted(n for n, r in mine.items() if pending.get(r, ("", ""))[1] == "Running")
    waiting = sorted(n for n, r in mine.items() if pending.get(r, ("", ""))[1] == "Queued")
    if not running and not waiting:
        return "interrupted; nothing of this sweep is queued or running"
    return (f"interrupted: DVC's queue workers keep going with {len(running)} running "
            f"({', '.join(running[:4])}{' …' if len(running) > 4 else ''}) and {len(waiting)} queued point(s) of "
            f"{grid.name}. Rerun the same `landscape sweep` to follow them (nothing is queued twice); stop them with "
            "`dvc queue kill <name>…` and `dvc queue remove --queued`, or all workers with `dvc queue stop --kill`")


def report(result: SweepResult) -> str:
    """The lines a user sees at the end of a sweep."""
    g = result.grid
    lines = [f"sweep {g.name}: {len(g.points)} points, MLflow experiment '{g.experiment}'",
             f"  finished now: {len(result.succeeded)}; already finished before: {len(result.skipped)}; "
             f"failed: {len(result.failed)}"]
    if result.followed or result.queued:
        lines.append(f"  queued now: {len(result.queued)}; followed {len(result.followed)} point(s) queued by an "
                     "earlier call")
    for name, why in sorted(result.failed.items()):
        point = next(p for p in g.points if p.name == name)
        lines.append(f"  FAILED {name} ({point.label()}): {why}")
    if result.nodes:
        lines.append(f"  Ray nodes used: {len(set(result.nodes.values()))}")
    if result.failed:
        lines.append("  rerun `landscape sweep` to run only the failed and missing points")
    return "\n".join(lines)
