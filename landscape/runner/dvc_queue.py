"""The few operations on DVC's Celery experiment queue a sweep needs, by stash revision (DVC keeps old entries
of the same name, so a name never identifies an entry): queue a point, list what is queued or running, read a
finished entry's outcome and its stage's own error line, remove finished entries, start the workers."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from landscape.errors import LandscapeError
from landscape.runner.grid import Point, dvc_set_args


class DvcQueue:
    """The few operations on DVC's Celery queue a sweep needs, by stash revision."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root, self.state_dir = root, state_dir

    @contextlib.contextmanager
    def _repo(self):
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            yield repo

    def pending(self) -> dict[str, tuple[str, str]]:
        """``{stash rev: (name, 'Queued' | 'Running')}`` of every entry not finished yet (this sweep's and
        any other's: the workers serve the queue in order)."""
        with self._repo() as repo:
            q = repo.experiments.celery_queue
            out = {e.stash_rev: (e.name or "", "Running") for e in q.iter_active()}
            out.update({e.stash_rev: (e.name or "", "Queued") for e in q.iter_queued()})
        return out

    def orphans(self) -> dict[str, tuple[str, int]]:
        """``{stash rev: (name, pid)}`` of entries DVC lists as running whose experiment process has ended or
        is gone (a worker collects an ended process at once; after a machine restart or a killed worker nothing
        does, and DVC would list the entry as running for ever)."""
        with self._repo() as repo:
            q = repo.experiments.celery_queue
            out = {}
            for e in q.iter_active():
                info = q.proc.get(e.stash_rev)
                if info is not None and (info.returncode is not None or not _is_dvc_process(info.pid)):
                    out[e.stash_rev] = (e.name or "", info.pid)
        return out

    def fail(self, revs: list[str]) -> None:
        """Mark orphaned running entries failed, as ``dvc queue kill`` does for an entry whose process is gone
        (DVC's own step for it, which it keeps private)."""
        if not revs:
            return
        with self._repo() as repo:
            q = repo.experiments.celery_queue
            entries = {e: e.stash_rev for e in q.iter_active() if e.stash_rev in set(revs)}
            for e in entries:
                info = q.proc.get(e.stash_rev)
                if info is not None and info.returncode is None:
                    info.returncode = -1
                    q.proc[e.stash_rev] = info
            if entries:
                kombu = logging.getLogger("kombu")  # says 'No hostname was supplied' when it asks the workers
                level, kombu.level = kombu.level, logging.ERROR
                try:
                    with contextlib.suppress(Exception):  # a live worker still holds it: it will record the end
                        q._mark_inactive_tasks_failure(entries)
                finally:
                    kombu.setLevel(level)

    def put(self, point: Point) -> str:
        """Queue one point (as ``dvc exp run --queue -f -n NAME -S …``); return its stash revision."""
        with self._repo() as repo:
            q = repo.experiments.celery_queue
            before = {e.stash_rev for e in q.iter_queued()}
            args = dvc_set_args(point)
            with contextlib.redirect_stdout(io.StringIO()):
                repo.experiments.run(params=[args[i + 1] for i in range(0, len(args), 2)], queue=True,
                                     name=point.name, force=True)
            new = [e.stash_rev for e in q.iter_queued() if e.name == point.name and e.stash_rev not in before]
        if len(new) != 1:
            raise LandscapeError(f"queued {point.name} but found {len(new)} new queue entries for it")
        return new[0]

    def outcome(self, rev: str) -> tuple[bool, str] | None:
        """(succeeded, the last error line of its log) of a finished entry; None while it is in none of DVC's
        lists (a worker taking it from the queue is briefly neither queued, running nor done)."""
        with self._repo() as repo:
            q = repo.experiments.celery_queue
            entry = next((e for e, _ in q.iter_done() if e.stash_rev == rev), None)
            if entry is None:
                return None
            try:
                result = q.get_result(entry)
            except Exception as exc:  # DVC reports a broken entry by raising
                return False, f"{type(exc).__name__}: {exc}"
            if result is not None and result.exp_hash and result.ref_info:
                return True, ""
            try:
                log_text = Path(q.proc[rev].stdout).read_text(errors="replace")
            except (KeyError, OSError):
                log_text = ""
        return False, stage_error_line(log_text)

    def remove(self, revs: list[str]) -> None:
        """Drop finished entries (their results are collected; the experiments stay)."""
        if not revs:
            return
        from dvc.repo.experiments.queue.remove import remove_tasks

        with self._repo() as repo:
            q = repo.experiments.celery_queue
            done = [e for e, _ in q.iter_done() if e.stash_rev in set(revs)]
            if done:
                remove_tasks(q, done)

    def start_workers(self, jobs: int) -> None:
        """``dvc queue start -j N``. The workers it spawns inherit its standard streams and live for the whole
        queue: its output goes to a file, never to a pipe this process would wait on until they exit."""
        log_file = self.state_dir / "queue-start.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as fh:
            try:
                out = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=self.root,
                                     stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
            except subprocess.TimeoutExpired:
                raise LandscapeError("dvc queue start did not return within 300 s; see `dvc queue status`") from None
        if out.returncode != 0:
            raise LandscapeError(f"dvc queue start failed: {log_file.read_text().strip()[-300:]}")


def _is_dvc_process(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) still a DVC process, not a pid reused after a restart."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"dvc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def stage_error_line(log_text: str) -> str:
    """The line that says why a point failed: the stage's own ``error: …`` line (one per failure, written by
    :func:`landscape.runtime.run_stage`) before DVC's generic ``ERROR: failed to reproduce …``."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("error: ")]
    if ours:
        return ours[-1][:300]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "failed")) or "Error" in ln]
    return (errors or lines or ["no log"])[-1][:300]
