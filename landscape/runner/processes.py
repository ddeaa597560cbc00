"""Processes and ports of the services a multi-machine sweep runs on one box: free ports, waiting for a server,
secrets written 0600, and stopping exactly what we started — by process group, or by the session a service was
started in (every process it spawns stays in that session, Ray's renamed ``ray::`` agents included)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

class ClusterError(RuntimeError):
    """A service could not start or stop; one line."""


def _run(cmd: list[str], what: str, stdin: str | None = None, timeout: float = 120) -> str:
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        last = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise ClusterError(f"{what} failed: {last[0].strip()[:300]}")
    return out.stdout


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (created 0600 before anything is written)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"the server for {url} exited with code {proc.returncode} before answering "
                                   "(see its log)") from None
            if time.time() > deadline:
                raise ClusterError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (reaping it if it is our child; a zombie counts as gone)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def session_members(sid: int) -> list[int]:
    """PIDs of the live processes of session ``sid`` (a service started in a session of its own keeps every
    process it spawns there, Ray's renamed ``ray::`` agents included)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(proc.name))
    return out


def stop_session(sid: int, timeout: float = 10) -> list[int]:
    """SIGTERM every process of session ``sid``, SIGKILL what is left after ``timeout`` s (Ray's gcs_server and
    raylet can take longer than that to exit); return the PIDs still alive after that (none, normally)."""
    signalled: set[int] = set()
    try:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            for pid in session_members(sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    signalled.add(pid)
            deadline = time.time() + wait
            while time.time() < deadline:
                if not [p for p in session_members(sid) if not _gone(p)]:
                    return []
                time.sleep(0.2)
        return [p for p in session_members(sid) if not _gone(p)]
    finally:
        for pid in signalled:  # reap our own children among them (zombies otherwise)
            _gone(pid)


def stop_pid(pid: int, timeout: float = 30, group: bool = True) -> None:
    """SIGTERM the process (group) ``pid`` (leads), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            (os.killpg if group else os.kill)(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _gone(pid):
                return
            time.sleep(0.2)
