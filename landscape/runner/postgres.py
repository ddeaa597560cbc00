"""PostgreSQL for the MLflow backend store: listening on 127.0.0.1 and a private socket only, the store owned by a
non-superuser role with a generated scram-sha-256 password (its verifier computed here, so the clear password
never reaches the server, its log or a command line) handed to the MLflow server in a 0600 ``PGPASSFILE``.
PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from landscape.runner.processes import ClusterError, _run, free_port, stop_pid, write_secret

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


DB_ROLE = "mlflow"


def _pg(tool: str) -> str:
    for d in PG_BIN_DIRS:
        if (d / tool).exists():
            return str(d / tool)
    found = shutil.which(tool)
    if found is None:
        raise ClusterError(f"PostgreSQL's {tool} is not installed (apt-get install postgresql)")
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: run its tools as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a scram-sha-256 password (RFC 5802/7677), so the clear password never reaches
    the server, its log or a command line: SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def start_postgres(directory: Path, port: int | None = None) -> dict[str, Any]:
    """initdb + pg_ctl start, listening on 127.0.0.1:``port`` and a private socket; a database ``mlflow`` owned by
    the non-superuser role ``mlflow`` with a generated password in ``directory/pgpass`` (0600). Returns {pgdata,
    socket_dir, host, port, uri (no password), pgpass}."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = port or free_port()
    if os.geteuid() == 0:  # the postgres user must own and reach its data: a directory of its own under /tmp
        home = Path(tempfile.mkdtemp(prefix="landscape-pg-"))
        shutil.chown(home, "postgres")
    else:
        home = directory
    pgdata = home / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        _run(_as_postgres([_pg("initdb"), "-D", str(pgdata), "--auth-local=peer", "--auth-host=scram-sha-256",
                           "-E", "UTF8"]), "initdb")
    _run(_as_postgres([_pg("pg_ctl"), "-D", str(pgdata), "-o", f"-h 127.0.0.1 -p {port} -k {home}",
                       "-l", str(home / "postgres.log"), "-w", "start"]), "pg_ctl start")
    info = {"pgdata": str(pgdata), "socket_dir": str(home), "host": "127.0.0.1", "port": port,
            "uri": f"postgresql+psycopg2://{DB_ROLE}@127.0.0.1:{port}/mlflow", "pgpass": str(directory / "pgpass")}
    psql = _as_postgres([_pg("psql"), "-h", str(home), "-p", str(port), "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                         "-qtA"])
    password = secrets.token_urlsafe(24)
    exists = _run([*psql, "-c", f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_ROLE}'"], "psql").strip() == "1"
    verb = "ALTER" if exists else "CREATE"
    # the verifier travels on stdin; the clear password only into the 0600 file the MLflow server reads
    _run(psql, "psql (role)", stdin=f"{verb} ROLE {DB_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                    f"PASSWORD '{scram_verifier(password)}';\n")
    if _run([*psql, "-c", "SELECT 1 FROM pg_database WHERE datname = 'mlflow'"], "psql").strip() != "1":
        _run([*psql, "-c", f"CREATE DATABASE mlflow OWNER {DB_ROLE}"], "psql (database)")
    write_secret(Path(info["pgpass"]), f"127.0.0.1:{port}:mlflow:{DB_ROLE}:{password}\n")
    return info


def stop_postgres(pgdata: str, timeout: float = 30) -> None:
    """``pg_ctl stop -m fast``; if the postmaster is still there, SIGKILL it; remove a /tmp home we made."""
    subprocess.run(_as_postgres([_pg("pg_ctl"), "-D", pgdata, "-m", "fast", "-w", "-t", str(int(timeout)), "stop"]),
                   capture_output=True)
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((Path(pgdata) / "postmaster.pid").read_text().split()[0])
        stop_pid(pid, timeout=5, group=False)
    home = Path(pgdata).parent
    if home.name.startswith("landscape-pg-"):  # the directory start_postgres made for the postgres user
        shutil.rmtree(home, ignore_errors=True)
