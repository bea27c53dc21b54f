"""A private PostgreSQL cluster for tests (a pytest plugin, listed in conftest ``pytest_plugins``).

Debian's PostgreSQL binaries (``/usr/lib/postgresql/<n>/bin``, or ``pg_ctl`` on PATH) start a throwaway
cluster: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with durability off
(``fsync=off``: nothing here must survive a crash), trust authentication. As root both run as the
``postgres`` user (PostgreSQL refuses to run as root).

Fixtures:

- ``postgres_cluster`` (session): the running cluster; stopped at the end of the session. Skips the tests
  that need it where PostgreSQL is not installed, and fails them instead when ``WANLLMDB_REQUIRE_POSTGRES=1``.
- ``pg_url`` (function): the URL of a fresh, empty database of the test's own (``CREATE DATABASE test_<hex>``).
- ``pg_server`` (session): a real ``wanllmdb server --db postgresql://...`` (directory blobs, an API key),
  shared like ``live_server`` by the tests that use unique project names.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import postgres_required
from tests.support.server import start_server

START_TIMEOUT = 60.0


def find_bindir() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (the newest Debian version), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for bindir in candidates:
        if os.path.exists(os.path.join(bindir, "initdb")) and os.path.exists(os.path.join(bindir, "pg_ctl")):
            return bindir
    on_path = shutil.which("pg_ctl")
    if on_path and os.path.exists(os.path.join(os.path.dirname(on_path), "initdb")):
        return os.path.dirname(on_path)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One running cluster; ``url(dbname)`` names a database in it, ``create_database()`` makes one."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="wanllmdb-pg-")
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self.started = False

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        data = os.path.join(self.dir, "data")
        self._run(f"{self.bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300"
        )
        log = os.path.join(self.dir, "log")
        self._run(f"{self.bindir}/pg_ctl", "-D", data, "-l", log, "-w", "start", "-o", options)
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._run(f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return Path(self.dir, "log").read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def postgres_cluster():
    bindir = find_bindir()
    if bindir is None:
        if postgres_required():
            pytest.fail("WANLLMDB_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) were found")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    started = time.monotonic()
    try:
        cluster.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        if postgres_required():
            pytest.fail(f"WANLLMDB_REQUIRE_POSTGRES=1 but PostgreSQL did not start: {exc}")
        pytest.skip(f"PostgreSQL did not start: {exc}")
    print(f"PostgreSQL cluster on port {cluster.port} up in {time.monotonic() - started:.2f}s")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster) -> str:
    return postgres_cluster.create_database()


@pytest.fixture(scope="session")
def pg_server(postgres_cluster, tmp_path_factory):
    """One real server on PostgreSQL metadata for the whole session."""
    url = postgres_cluster.create_database()
    server = start_server(tmp_path_factory.mktemp("pg-server"), extra_args=("--db", url))
    server.db_url = url  # type: ignore[attr-defined]
    yield server
    assert server.stop() is not None
