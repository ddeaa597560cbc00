"""Start and stop, on one box, what a multi-machine sweep needs: PostgreSQL (the MLflow backend store), an
``mlflow server`` on it with served artifacts, and a Ray head. Used by ``scripts/cluster.sh`` and by the tests
(which start their own Ray nodes with ``ray.cluster_utils.Cluster``).

    python -m landscape.runner.cluster start [--dir .cluster] [--host HOST] [--ray-port 6379] [--mlflow-port 5001]
    python -m landscape.runner.cluster stop  [--dir .cluster]

Everything lives in ``--dir`` (data, logs, and ``state.json`` with the PIDs); ``stop`` ends exactly the
processes it started, by PID — never ``ray stop``, which kills every Ray process on the machine. PostgreSQL
refuses to run as root: as root, its commands run as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg(tool: str) -> str:
    for d in PG_BIN_DIRS:
        if (d / tool).exists():
            return str(d / tool)
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {tool} is not installed (apt-get install postgresql)")
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: run its tools as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_postgres(directory: Path, host: str = "127.0.0.1", port: int | None = None) -> dict[str, Any]:
    """initdb + pg_ctl start in ``directory``; a database ``mlflow`` owned by user ``mlflow`` (trust auth on
    ``host`` only). Returns {pgdata, host, port, uri} with a SQLAlchemy URI for MLflow."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    if os.geteuid() == 0:  # the postgres user must own and reach its data: a directory of its own under /tmp
        home = Path(tempfile.mkdtemp(prefix="landscape-pg-"))
        shutil.chown(home, "postgres")
    else:
        home = directory
    pgdata = home / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(_as_postgres([_pg("initdb"), "-D", str(pgdata), "-U", "mlflow", "--auth=trust", "-E", "UTF8"]),
                       check=True, capture_output=True, text=True)
    subprocess.run(_as_postgres([_pg("pg_ctl"), "-D", str(pgdata), "-o", f"-h {host} -p {port} -k {home}",
                                 "-l", str(home / "postgres.log"), "-w", "start"]),
                   check=True, capture_output=True, text=True)
    exists = subprocess.run(_as_postgres([_pg("psql"), "-h", host, "-p", str(port), "-U", "mlflow", "-d", "postgres",
                                          "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'mlflow'"]),
                            capture_output=True, text=True)
    if exists.stdout.strip() != "1":
        subprocess.run(_as_postgres([_pg("createdb"), "-h", host, "-p", str(port), "-U", "mlflow", "mlflow"]),
                       check=True, capture_output=True, text=True)
    # postgresql+psycopg2: the bare postgresql:// scheme now selects psycopg 3, which is not installed
    return {"pgdata": str(pgdata), "host": host, "port": port,
            "uri": f"postgresql+psycopg2://mlflow@{host}:{port}/mlflow"}


def stop_postgres(pgdata: str) -> None:
    subprocess.run(_as_postgres([_pg("pg_ctl"), "-D", pgdata, "-m", "fast", "-w", "stop"]), capture_output=True)
    home = Path(pgdata).parent
    if home.name.startswith("landscape-pg-"):  # the directory start_postgres made for the postgres user
        shutil.rmtree(home, ignore_errors=True)


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


def start_mlflow_server(backend_uri: str, artifacts: Path, host: str = "127.0.0.1", port: int | None = None,
                        allowed_hosts: list[str] | None = None, log: Path | None = None) -> dict[str, Any]:
    """``mlflow server`` on ``backend_uri`` with served artifacts in ``artifacts``; one worker and no job
    execution (starts in ~10 s with ~0.6 GB instead of ~30 s and ~3.6 GB). Returns {pid, uri}."""
    port = port or free_port(host)
    artifacts.mkdir(parents=True, exist_ok=True)
    hosts = sorted({host, f"{host}:{port}", "localhost", f"localhost:{port}", *(allowed_hosts or [])})
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = open(log, "w") if log else subprocess.DEVNULL  # the server keeps writing to it
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                             "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", host,
                             "--port", str(port), "--workers", "1", "--allowed-hosts", ",".join(hosts)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://{host}:{port}"
    wait_http(f"{uri}/health", proc=proc)
    return {"pid": proc.pid, "uri": uri}


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


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM the process group ``pid`` leads (the processes this module started), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _gone(pid):
                return
            time.sleep(0.2)


def start_ray_head(directory: Path, host: str, port: int) -> dict[str, Any]:
    """A Ray head with token authentication and its own temp dir; returns the address, token and the join
    command for other machines."""
    token = secrets.token_hex(24)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = directory / "ray"
    temp.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", host,
                    "--port", str(port), "--temp-dir", str(temp), "--disable-usage-stats", "--include-dashboard",
                    "false"], env=env, check=True, capture_output=True, text=True)
    return {"address": f"{host}:{port}", "token": token, "temp_dir": str(temp),
            "join": f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token} ray start --address {host}:{port}"}


def stop_ray(temp_dir: str) -> None:
    """End the Ray processes whose command line names our temp dir (and only those)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmd:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m landscape.runner.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("--dir", default=".cluster")
    ap.add_argument("--host", default="127.0.0.1", help="the address other machines reach this one at")
    ap.add_argument("--ray-port", type=int, default=6379)
    ap.add_argument("--mlflow-port", type=int, default=5001)
    args = ap.parse_args(argv)
    directory = Path(args.dir).resolve()
    state_file = directory / "state.json"
    if args.action == "stop":
        if not state_file.exists():
            print(f"nothing to stop: no {state_file}")
            return 0
        state = json.loads(state_file.read_text())
        if "ray" in state:
            stop_ray(state["ray"]["temp_dir"])
        if "mlflow" in state:
            stop_pid(state["mlflow"]["pid"])
        if "postgres" in state:
            stop_postgres(state["postgres"]["pgdata"])
        state_file.unlink()
        print("stopped Ray head, MLflow server and PostgreSQL started from", directory)
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    pg = start_postgres(directory / "postgres", args.host)
    ml = start_mlflow_server(pg["uri"], directory / "artifacts", args.host, args.mlflow_port,
                             log=directory / "mlflow.log")
    ray = start_ray_head(directory, args.host, args.ray_port)
    state_file.write_text(json.dumps({"postgres": pg, "mlflow": ml, "ray": ray}, indent=2))
    print(f"PostgreSQL  {pg['uri']}\nMLflow      {ml['uri']}\nRay head    {ray['address']}\n")
    print("on this machine:\n"
          f"  export MLFLOW_TRACKING_URI={ml['uri']}\n"
          f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={ray['token']}\n"
          f"  landscape sweep sweeps/default.yaml --engine ray --address {ray['address']}\n"
          "on every other machine (with this repository's environment):\n"
          f"  {ray['join']}\n"
          f"  export MLFLOW_TRACKING_URI={ml['uri']}\n"
          f"stop: python -m landscape.runner.cluster stop --dir {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
