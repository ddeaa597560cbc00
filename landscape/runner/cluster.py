"""Start and stop, on one box, what a multi-machine sweep needs: PostgreSQL (the MLflow backend store), an
``mlflow server`` on it with served artifacts, and a Ray head. Used by ``scripts/cluster.sh`` and by the tests.

    python -m landscape.runner.cluster start [--dir .cluster] [--host HOST] [--ray-port 6379] [--mlflow-port 5001]
                                             [--auth | --no-auth]
    python -m landscape.runner.cluster stop  [--dir .cluster]

Safety (docs/scaling.md says what stays open and why):

* ``--dir`` is created 0700 and every file in it 0600 (the Ray token, the database password, the MLflow
  credentials); no secret is printed, logged or put on a command line: the start message says which file holds it.
* PostgreSQL listens on 127.0.0.1 and its own socket only (only the MLflow server on this box talks to it). The
  MLflow store belongs to a role ``mlflow`` that is not a superuser (no ``COPY … FROM PROGRAM``), with a
  generated password checked by scram-sha-256 and handed to the server in a 0600 ``PGPASSFILE``; the cluster's
  superuser can log in only through the local socket as the operating-system user that owns the data.
* The MLflow server binds ``--host``; on any address other than loopback it starts with MLflow's basic-auth app
  and a generated admin password (``--no-auth`` turns that off, ``--auth`` turns it on for loopback too).
* The Ray head uses token authentication, ``--node-ip-address HOST``, no dashboard, and no metrics export (its
  Prometheus ports take no token); Ray 2.60 still binds its gRPC ports (GCS, raylet, agents) on all interfaces,
  and those need the token.
* ``state.json`` is written as each service comes up, so ``stop`` finds everything even after a failed start,
  and a failed start stops what it had started. ``stop`` ends every process of each service's own session
  (PostgreSQL with ``pg_ctl stop``), escalates to SIGKILL, and checks that none is left.
PostgreSQL: :mod:`landscape.runner.postgres`; processes and secrets: :mod:`landscape.runner.processes`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from landscape.runner.postgres import _pg, start_postgres, stop_postgres  # noqa: F401 - re-exported for callers
from landscape.runner.processes import (  # noqa: F401 - free_port, stop_pid, wait_http: re-exported for callers
    ClusterError,
    free_port,
    is_loopback,
    session_members,
    stop_pid,
    stop_session,
    wait_http,
    write_secret,
)


def start_mlflow_server(backend_uri: str, artifacts: Path, host: str = "127.0.0.1", port: int | None = None,
                        allowed_hosts: list[str] | None = None, log: Path | None = None, pgpass: str | None = None,
                        auth_dir: Path | None = None) -> dict[str, Any]:
    """``mlflow server`` on ``backend_uri`` with served artifacts in ``artifacts``, in its own session; one worker
    and no job execution (starts in ~10 s with ~0.6 GB instead of ~30 s and ~3.6 GB). ``pgpass``: the 0600
    password file of the backend store. ``auth_dir``: start MLflow's basic-auth app there, with a generated admin
    password in ``auth_dir/credentials`` (0600, in the form ``set -a; . FILE`` exports). Returns {pid, uri}."""
    port = port or free_port(host)
    artifacts.mkdir(parents=True, exist_ok=True, mode=0o700)
    hosts = sorted({host, f"{host}:{port}", "localhost", f"localhost:{port}", *(allowed_hosts or [])})
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if pgpass:
        env["PGPASSFILE"] = pgpass
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
           str(artifacts), "--serve-artifacts", "--host", host, "--port", str(port), "--workers", "1",
           "--allowed-hosts", ",".join(hosts)]
    info: dict[str, Any] = {}
    if auth_dir is not None:
        creds = auth_dir / "credentials"
        # the auth app keeps its users in basic_auth.db and creates the admin only once: keep its password
        old = creds.read_text().split("MLFLOW_TRACKING_PASSWORD=")[-1].strip() if creds.is_file() else ""
        password = old if old and (auth_dir / "basic_auth.db").exists() else secrets.token_urlsafe(18)
        write_secret(auth_dir / "basic_auth.ini", "[mlflow]\ndefault_permission = READ\n"
                     f"database_uri = sqlite:///{auth_dir / 'basic_auth.db'}\nadmin_username = admin\n"
                     f"admin_password = {password}\n"
                     "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        write_secret(auth_dir / "credentials", f"MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD={password}\n")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_dir / "basic_auth.ini")
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(32)  # CSRF protection of the auth app
        cmd += ["--app-name", "basic-auth"]
        info["credentials"] = str(auth_dir / "credentials")
    out = open(log, "w") if log else subprocess.DEVNULL  # the server keeps writing to it
    if log:
        os.chmod(log, 0o600)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://{host}:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
    except ClusterError:
        stop_pid(proc.pid)
        raise
    return {**info, "pid": proc.pid, "uri": uri}


def start_ray_head(directory: Path, host: str, port: int) -> dict[str, Any]:
    """A Ray head in a session of its own: token authentication (the token in ``directory/ray/token``, 0600),
    ``--node-ip-address host``, no dashboard, no metrics export. Returns {address, sid, temp_dir, token_file}."""
    token = secrets.token_hex(24)
    ray_dir = directory / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(ray_dir / "token", token + "\n")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_enable_metrics_collection": "0"}
    # Ray's sockets live in its temp dir and a socket path has at most 107 bytes: a short private dir in /tmp
    temp = Path(tempfile.mkdtemp(prefix="landscape-ray-"))
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", host,
                             "--port", str(port), "--temp-dir", str(temp), "--disable-usage-stats",
                             "--include-dashboard", "false", "--dashboard-host", host],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    info = {"address": f"{host}:{port}", "sid": proc.pid, "temp_dir": str(temp), "token_file": str(ray_dir / "token")}
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        stop_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)
        raise ClusterError(f"ray start --head on {host}:{port} did not finish within 180 s") from None
    if proc.returncode != 0:  # the temp dir stays: it holds the logs the message points to
        stop_session(proc.pid)
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise ClusterError(f"ray start --head on {host}:{port} failed: {last[0].strip()[:300]}")
    return info


def _save(state_file: Path, state: dict[str, Any]) -> None:
    write_secret(state_file, json.dumps(state, indent=2))


def stop(directory: Path) -> str:
    """Stop what ``state.json`` in ``directory`` lists (whatever a start got to), and check nothing is left."""
    state_file = directory / "state.json"
    if not state_file.exists():
        return f"nothing to stop: no {state_file}"
    state = json.loads(state_file.read_text())
    left: list[str] = []
    if "ray" in state:
        # gcs_server, raylet and the agents ignore SIGTERM (Ray's own `ray stop` waits, then kills): 3 s
        left += [f"ray pid {p}" for p in stop_session(state["ray"]["sid"], timeout=3)]
        if Path(state["ray"]["temp_dir"]).name.startswith("landscape-ray-"):
            shutil.rmtree(state["ray"]["temp_dir"], ignore_errors=True)
    if "mlflow" in state:
        left += [f"mlflow pid {p}" for p in stop_session(state["mlflow"]["pid"])]
    if "postgres" in state:
        stop_postgres(state["postgres"]["pgdata"])
        if (Path(state["postgres"]["pgdata"]) / "postmaster.pid").exists():
            left.append("postgres (postmaster.pid still there)")
    if left:
        raise ClusterError(f"could not stop {', '.join(left)}; {state_file} kept")
    state_file.unlink()
    return f"stopped {', '.join(k for k in ('ray', 'mlflow', 'postgres') if k in state)} started from {directory}"


def start(directory: Path, host: str, ray_port: int, mlflow_port: int, auth: bool | None = None) -> dict[str, Any]:
    """Start the three services, recording each in ``state.json`` as it comes up; on a failure, stop what was
    started and raise. ``auth`` None: basic auth on unless ``host`` is a loopback address."""
    old = os.umask(0o077)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        state_file = directory / "state.json"
        if state_file.exists():
            raise ClusterError(f"{state_file} exists: services may be running; stop them first")
        state: dict[str, Any] = {"host": host}
        try:
            state["postgres"] = start_postgres(directory / "postgres")
            _save(state_file, state)
            auth_dir = directory / "mlflow" if (auth if auth is not None else not is_loopback(host)) else None
            state["mlflow"] = start_mlflow_server(state["postgres"]["uri"], directory / "artifacts", host, mlflow_port,
                                                  log=directory / "mlflow.log", pgpass=state["postgres"]["pgpass"],
                                                  auth_dir=auth_dir)
            _save(state_file, state)
            state["ray"] = start_ray_head(directory, host, ray_port)
            _save(state_file, state)
        except BaseException as exc:
            _save(state_file, state)
            try:
                stop(directory)
            except ClusterError as again:
                raise ClusterError(f"{exc}; and stopping what had started failed: {again}") from None
            raise
        return state
    finally:
        os.umask(old)


def start_message(state: dict[str, Any], directory: str) -> str:
    ml, ray = state["mlflow"], state["ray"]
    creds = (f"  set -a; . {ml['credentials']}; set +a       # MLflow basic-auth user and password\n"
             if ml.get("credentials") else "")
    open_note = ("" if is_loopback(state["host"]) else
                 f"\nexposed on {state['host']}: MLflow {ml['uri']}"
                 + (" (basic auth)" if ml.get("credentials") else " (NO authentication: anyone who reaches it can "
                    "write and delete runs)")
                 + f"; Ray's gRPC ports (token required; GCS {ray['address']}, raylet and agent ports on all "
                   "interfaces). PostgreSQL listens on 127.0.0.1 only. Firewall them to your network.")
    return (f"MLflow      {ml['uri']}\nRay head    {ray['address']}\n(secrets are in {directory}/, mode 0600)\n"
            f"{open_note}\n\non this machine:\n"
            f"  export MLFLOW_TRACKING_URI={ml['uri']}\n{creds}"
            f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {ray['token_file']})\n"
            f"  landscape sweep sweeps/default.yaml --engine ray --address {ray['address']}\n"
            "on every other machine (with this repository's environment; copy the token file there):\n"
            f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat TOKEN_FILE) ray start --address {ray['address']}\n"
            f"  export MLFLOW_TRACKING_URI={ml['uri']}\n{creds}"
            f"stop: scripts/cluster.sh stop --dir {directory}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m landscape.runner.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("--dir", default=".cluster")
    ap.add_argument("--host", default="127.0.0.1", help="the address other machines reach this one at")
    ap.add_argument("--ray-port", type=int, default=6379)
    ap.add_argument("--mlflow-port", type=int, default=5001)
    ap.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                    help="MLflow basic auth (default: on unless --host is a loopback address)")
    args = ap.parse_args(argv)
    directory = Path(args.dir).resolve()
    try:
        if args.action == "stop":
            print(stop(directory))
            return 0
        state = start(directory, args.host, args.ray_port, args.mlflow_port, args.auth)
    except (ClusterError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(start_message(state, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
