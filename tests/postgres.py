"""A real PostgreSQL for the tests, started by the tests themselves: `initdb` and `pg_ctl` from
Debian's `postgresql` package (`make test` installs it when missing), run as the `postgres` user
(the server refuses to run as root), in a fresh folder under /tmp owned by that user, on a free
port of 127.0.0.1, its socket in the same folder. A missing PostgreSQL FAILS the tests that need
it, never skips them.

    server = PostgresServer.create()       # initdb + start, password authentication
    url = server.new_database()            # postgresql://monitor:...@127.0.0.1:PORT/test_3
    server.stop(); server.start()          # `pg_ctl stop -m fast` / `pg_ctl start`, same data
    server.destroy()                       # stop and delete the folder

`postgres_server` is a session-scoped fixture (one server for the whole run, stopped at the end);
`pg_url` gives each test a database of its own on it.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER = "postgres"            # the operating-system user the server runs as
ROLE = "monitor"             # the database role the monitors log in as (password authentication)


def _bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.fail(f"{name} not found: run the tests with `make test`, which installs Debian's `postgresql`",
                pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", USER, "--", *args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd="/")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class PostgresServer:
    def __init__(self, folder: Path, port: int, password: str):
        self.folder, self.port, self.password = folder, port, password
        self.data = folder / "data"
        self._databases = 0

    @classmethod
    def create(cls, **settings) -> "PostgresServer":
        """initdb a new cluster and start it. `settings`: extra server settings (-c name=value)."""
        folder = Path(tempfile.mkdtemp(prefix="monitor-pg-", dir="/tmp"))
        owner = pwd.getpwnam(USER) if os.geteuid() == 0 else None
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        password = secrets.token_hex(12)
        server = cls(folder, free_port(), password)
        server.settings = {"listen_addresses": "127.0.0.1", "port": str(server.port),
                           "unix_socket_directories": str(folder), "max_connections": "100",
                           "shared_buffers": "32MB", "logging_collector": "off", **settings}
        pwfile = folder / "pw"
        pwfile.write_text(password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            # The superuser and a login role for the monitors, both with the password; scram on
            # every connection, so the tests go through password authentication as production does.
            _as_postgres([_bin("initdb"), "-D", str(server.data), "-U", USER, "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "--no-instructions", "-E", "UTF8", "--locale=C.UTF-8"])
            server.start()
            server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        except BaseException:
            server.destroy()
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        return server

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        _as_postgres([_bin("pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "30", "-l", str(self.log_path),
                      "-o", options])

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([_bin("pg_ctl"), "stop", "-D", str(self.data), "-w", "-t", "30", "-m", mode])

    def running(self) -> bool:
        return subprocess.run(["runuser", "-u", USER, "--", _bin("pg_ctl"), "status", "-D", str(self.data)]
                              if os.geteuid() == 0 else [_bin("pg_ctl"), "status", "-D", str(self.data)],
                              capture_output=True, cwd="/").returncode == 0

    def destroy(self) -> None:
        if self.data.exists():
            try:
                if self.running():
                    self.stop("immediate")
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = ROLE) -> str:
        return f"postgresql://{user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the socket folder; returns the unaligned output."""
        proc = subprocess.run([_bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", USER, "-d", database, "-c", sql],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": self.password})
        if proc.returncode != 0:
            raise AssertionError(f"psql {sql!r} failed: {proc.stderr}")
        return proc.stdout.strip()

    def new_database(self) -> str:
        """A new, empty database owned by the monitors' role; returns its URL."""
        self._databases += 1
        name = f"test_{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)


def wait_for_port_closed(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} still open after {timeout} s")


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer.create()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(postgres_server) -> str:
    return postgres_server.new_database()
