"""The registry's metadata on PostgreSQL: concurrent finalizes, migrations, an unreachable database, ordering.

Every test here needs the session's private PostgreSQL cluster (``tests/support/postgres.py``): they skip
where PostgreSQL is not installed, and fail when ``WANLLMDB_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.data import log_files, manifest_for, write_files
from tests.support.postgres import free_port
from tests.support.server import log_version, start_server
from wanllmdb.errors import ConfigError, DatabaseError, DatabaseUnavailableError, DraftNotFoundError
from wanllmdb.registry import DraftSpec
from wanllmdb.registry.db import Database
from wanllmdb.registry.local import LocalRegistry
from wanllmdb.registry.metadata import open_metadata
from wanllmdb.registry.pgdb import PostgresDatabase, Row, _Translator, mask_url
from wanllmdb.registry.pgschema import SCHEMA_VERSION

logger = logging.getLogger(__name__)
CLI = [sys.executable, "-m", "wanllmdb.cli.main"]

CHILD = r"""
import os, sys, time
import wanllmdb
project, name, src, start_file, count = sys.argv[1:6]
import wanllmdb.sdk.run  # noqa: F401  (imports done before the barrier)
open(f"{start_file}.ready.{os.getpid()}", "w").close()
while not os.path.exists(start_file):
    time.sleep(0.001)
with wanllmdb.init(project=project, name="child") as run:
    for i in range(int(count)):
        with open(os.path.join(src, "step.txt"), "w") as f:
            f.write(f"{os.getpid()} {i}")
        art = wanllmdb.Artifact(name, "dataset")
        art.add_dir(src)
        run.log_artifact(art)
        print(art.version, flush=True)
"""


def _registry_on(url: str, root) -> LocalRegistry:
    return LocalRegistry(str(root), database=PostgresDatabase(url))


# --- the pieces -------------------------------------------------------------------------------------------


def test_placeholders_translate_once_and_keep_literal_percent_signs():
    translate = _Translator()
    sql = "SELECT name FROM t WHERE name LIKE 'a%' AND id = ? AND x IN (?, ?)"
    assert translate(sql) == "SELECT name FROM t WHERE name LIKE 'a%%' AND id = %s AND x IN (%s, %s)"
    assert translate(sql) is translate(sql)


def test_rows_index_by_name_and_position():
    row = Row((7, "mnist"), {"id": 0, "name": 1})
    assert (row[0], row["id"], row[1], row["name"]) == (7, 7, "mnist", "mnist")
    assert tuple(row) == (7, "mnist") and row.keys() == ["id", "name"]
    with pytest.raises(IndexError, match="nope"):
        row["nope"]


def test_urls_are_masked_and_unknown_schemes_refused(tmp_path):
    assert mask_url("postgresql://bob:s3cret@db:5432/reg") == "postgresql://bob:***@db:5432/reg"
    assert "s3cret" not in mask_url("postgres://db/reg?user=bob&password=s3cret&sslmode=require")
    with pytest.raises(ConfigError, match="mysql://bob:\\*\\*\\*@db/x"):
        open_metadata("mysql://bob:pw@db/x", str(tmp_path))
    sqlite = open_metadata(None, str(tmp_path))
    assert isinstance(sqlite, Database) and sqlite.dialect == "sqlite"
    sqlite.close()


def test_percent_signs_and_placeholders_reach_postgres_intact(pg_url):
    db = PostgresDatabase(pg_url)
    try:
        with db.write() as conn:
            conn.execute("INSERT INTO projects (name, created_at) VALUES (?, ?)", ("100%_sure", 1.5))
            conn.executemany("INSERT INTO projects (name, created_at) VALUES (?, ?)", [("a", 2.0), ("b", 3.0)])
        rows = db.query("SELECT name, created_at FROM projects WHERE name LIKE '%\\%%' ORDER BY name")
        assert [(r["name"], r[1]) for r in rows] == [("100%_sure", 1.5)]
        with db.read() as conn:
            cur = conn.execute("SELECT name FROM projects ORDER BY name")
            assert [r[0] for r in cur] == ["100%_sure", "a", "b"]
        with db.write() as conn:
            assert conn.execute("DELETE FROM projects WHERE name IN (?, ?)", ("a", "b")).rowcount == 2
    finally:
        db.close()


# --- concurrency ------------------------------------------------------------------------------------------


def test_eight_processes_logging_one_artifact_through_a_server_get_dense_versions(
    pg_server, project, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANLLMDB_BASE_URL", pg_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", pg_server.api_key)
    start, per_child = tmp_path / "go", 4
    children = []
    for i in range(8):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "common.bin").write_bytes(b"shared by all" * 100)
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, project, "shared", str(src), str(start), str(per_child)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < len(children):
        assert time.monotonic() < deadline, "children did not reach the barrier"
        time.sleep(0.01)
    start.write_text("go")
    printed = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        printed += out.split()
    total = 8 * per_child
    assert sorted(printed, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, total + 1)]
    registry = pg_server.registry()
    try:
        info = registry.get_artifact(project, "shared")
        assert [v.version for v in info.versions] == list(range(1, total + 1))
        assert info.aliases["latest"] == total
        assert len({v.digest for v in info.versions}) == total
    finally:
        registry.close()


def test_finalizing_one_draft_twice_at_once_on_two_replicas_makes_one_version(pg_url, tmp_path):
    # Two registries on one database and one blob directory: two server replicas.
    replicas = [_registry_on(pg_url, tmp_path / "blobs"), _registry_on(pg_url, tmp_path / "blobs")]
    try:
        for round_ in range(10):
            paths = write_files(str(tmp_path / f"src{round_}"), {"a.txt": f"round {round_}".encode()})
            manifest = manifest_for(paths)
            draft = replicas[0].create_draft(DraftSpec("p", "m", "dataset", manifest))
            for target in draft.missing:
                replicas[0].upload_blob(draft, target, paths["a.txt"])
            barrier = threading.Barrier(2)

            def finalize(registry, draft_id=draft.id, barrier=barrier):
                barrier.wait()
                try:
                    return registry.finalize_draft(draft_id, ["best"])
                except DraftNotFoundError as exc:
                    return exc

            with ThreadPoolExecutor(2) as pool:
                outcomes = list(pool.map(finalize, replicas))
            results = [o for o in outcomes if not isinstance(o, Exception)]
            assert len(results) == 1 and len(outcomes) == 2, outcomes
            assert isinstance(next(o for o in outcomes if isinstance(o, Exception)), DraftNotFoundError)
            assert results[0].created and results[0].version.version == round_ + 1
        versions = replicas[1].get_artifact("p", "m").versions
        assert [v.version for v in versions] == list(range(1, 11))
    finally:
        for registry in replicas:
            registry.close()


def test_threads_finalizing_one_artifact_get_dense_numbers(pg_url, tmp_path):
    """Eight loggers at once on one registry (a server's threads), 160 versions; measures finalizes/s."""
    registry = _registry_on(pg_url, tmp_path / "root")
    per_thread, threads = 20, 8
    try:
        drafts = []
        for i in range(threads * per_thread):
            paths = write_files(str(tmp_path / f"s{i}"), {"f.txt": f"content {i}".encode()})
            draft = registry.create_draft(DraftSpec("p", "hot", "dataset", manifest_for(paths)))
            for target in draft.missing:
                registry.upload_blob(draft, target, paths["f.txt"])
            drafts.append(draft.id)
        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            numbers = list(pool.map(lambda d: registry.finalize_draft(d).version.version, drafts))
        elapsed = time.monotonic() - started
        logger.info("%d finalizes by %d threads in %.2fs: %.0f/s", len(drafts), threads, elapsed, len(drafts) / elapsed)
        assert sorted(numbers) == list(range(1, len(drafts) + 1))
        info = registry.get_artifact("p", "hot")
        assert info.aliases == {"latest": len(drafts)}
    finally:
        registry.close()


def test_two_server_replicas_on_one_database_give_out_each_number_once(postgres_cluster, tmp_path):
    """Two servers on one PostgreSQL database and one blob directory, eight clients split between them."""
    url = postgres_cluster.create_database()
    replicas = [start_server(tmp_path / "shared", extra_args=("--db", url), api_key="k") for _ in range(2)]
    try:
        clients = [replicas[i % 2].registry() for i in range(8)]
        sources = [write_files(str(tmp_path / f"s{i}"), {f"{i}.txt": str(i).encode()}) for i in range(40)]

        def log(i):
            return log_version(clients[i % 8], "p", "m", {"f.txt": sources[i][f"{i}.txt"]}, threads=1).version.version

        with ThreadPoolExecutor(8) as pool:
            numbers = list(pool.map(log, range(40)))
        assert sorted(numbers) == list(range(1, 41))
        for replica in clients[:2]:
            assert replica.get_artifact("p", "m").aliases == {"latest": 40}
        for client in clients:
            client.close()
    finally:
        for server in replicas:
            server.stop()


# --- migrations -------------------------------------------------------------------------------------------


def test_a_fresh_database_migrated_by_several_processes_at_once_is_migrated_once(pg_url):
    procs = [
        subprocess.Popen(
            [*CLI, "server", "migrate", "--db", pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out)
    every = ", ".join(str(n) for n in range(1, SCHEMA_VERSION + 1))
    assert sum(f"applied migration(s) {every};" in out for out in outputs) == 1, outputs
    assert sum("nothing to apply" in out for out in outputs) == 5, outputs
    db = PostgresDatabase(pg_url, migrate=False)
    try:
        applied = [tuple(r) for r in db.query("SELECT version FROM schema_migrations ORDER BY version")]
        assert applied == [(n,) for n in range(1, SCHEMA_VERSION + 1)]
    finally:
        db.close()
    again = subprocess.run([*CLI, "server", "migrate", "--db", pg_url], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and f"schema {SCHEMA_VERSION} is current; nothing to apply" in again.stdout


def test_registries_opening_a_fresh_database_at_once_all_work(pg_url, tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dbs = list(pool.map(lambda _: PostgresDatabase(pg_url, min_size=0, max_size=2), range(8)))
    try:
        assert sorted(len(db.applied) for db in dbs) == [0] * 7 + [SCHEMA_VERSION]
        registry = LocalRegistry(str(tmp_path), database=dbs[0])
        assert log_files(registry, str(tmp_path), "p", "m", {"a": b"1"}).version.version == 1
    finally:
        for db in dbs:
            db.close()


def test_no_migrate_on_an_empty_database_refuses_clearly(pg_url, tmp_path):
    with pytest.raises(DatabaseError, match=f"is at schema 0, this wanllmdb needs {SCHEMA_VERSION}.*server migrate"):
        PostgresDatabase(pg_url, migrate=False)
    done = subprocess.run(
        [*CLI, "server", "--port", "0", "--root", str(tmp_path / "r"), "--db", pg_url, "--no-migrate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "is at schema 0" in done.stderr and "server migrate" in done.stderr
    assert not (tmp_path / "r").exists()


# --- an unreachable database ------------------------------------------------------------------------------


def test_unreachable_database_is_one_line_naming_it_and_nothing_is_written(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://bob:s3cret@127.0.0.1:{port}/registry"
    with pytest.raises(DatabaseUnavailableError) as caught:
        PostgresDatabase(url)
    message = str(caught.value)
    assert f"postgresql://bob:***@127.0.0.1:{port}/registry" in message and "\n" not in message
    assert "s3cret" not in message and caught.value.http_status == 503

    root, port_file = tmp_path / "root", tmp_path / "port"
    done = subprocess.run(
        [*CLI, "server", "--port", "0", "--root", str(root), "--port-file", str(port_file), "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert f"bob:***@127.0.0.1:{port}/registry" in errors[0] and "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not root.exists() and not port_file.exists()


def test_database_going_away_while_serving_is_a_503(postgres_cluster, tmp_path):
    """A server whose database is dropped answers 503 database_unavailable, not 500."""
    import psycopg
    import requests

    url = postgres_cluster.create_database()
    server = start_server(tmp_path / "srv", extra_args=("--db", url))
    try:
        base = f"{server.url}/api/v1/projects"
        assert requests.get(base, headers=server.headers, timeout=10).status_code == 200
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        answer = requests.get(base, headers=server.headers, timeout=60)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable"
        assert "postgres@127.0.0.1" in answer.json()["error"]["message"]
    finally:
        server.stop()


# --- ordering ---------------------------------------------------------------------------------------------

NAMES = ["b", "B", "a", "A", "a-b", "a_b", "a.b", "a0", "_z", "Z-", "aa", "a-B", "9", "-x", "a.B", "Ab"]


def test_listings_sort_exactly_as_on_sqlite(pg_url, tmp_path):
    sqlite = LocalRegistry(str(tmp_path / "sqlite"))
    postgres = _registry_on(pg_url, tmp_path / "pg")
    try:
        listed = []
        for registry in (sqlite, postgres):
            for name in NAMES:
                log_files(registry, str(tmp_path / "src"), "proj", name, {"f": name.encode()}, aliases=[f"x{name}"])
                log_files(registry, str(tmp_path / "src"), f"P{name}", "m", {"f": b"1"})
            listed.append(
                (
                    registry.list_projects(),
                    [a.name for a in registry.list_artifacts("proj")],
                    registry.resolve("proj", "a").aliases,
                )
            )
        assert listed[0] == listed[1]
        assert listed[0][1] == sorted(NAMES)  # code point order, as SQLite's BINARY collation
    finally:
        sqlite.close()
        postgres.close()
