"""SQLite schema and connection handling for the embedded registry.

WAL mode lets readers (a mount, an SDK script) run while a writer finalizes; every write that must be
atomic across processes runs in ``BEGIN IMMEDIATE`` so that two processes finalizing at once are serialized
and get consecutive version numbers.

``_SCHEMA`` is the first version of the schema; later changes are numbered migrations (``_MIGRATIONS``)
applied in order under the write lock when a database is opened, so a registry written by an older
wanllmdb is upgraded in place (``PRAGMA user_version`` records how far).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..sqlitedb import SQLiteDB

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT,
    UNIQUE (artifact_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    PRIMARY KEY (artifact_id, alias)
);
CREATE TABLE IF NOT EXISTS drafts (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    run_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL,
    tags TEXT NOT NULL,
    notes TEXT,
    run_group TEXT,
    job_type TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS run_history (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS artifact_uses (
    run_id TEXT NOT NULL REFERENCES runs(id),
    version_id INTEGER NOT NULL REFERENCES versions(id),
    used_at REAL NOT NULL,
    PRIMARY KEY (run_id, version_id)
);
CREATE INDEX IF NOT EXISTS drafts_age ON drafts(created_at);
CREATE TABLE IF NOT EXISTS blob_sizes (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blob_sizes_size ON blob_sizes(size);
CREATE TABLE IF NOT EXISTS blob_md5 (   -- MD5 of stored blobs, computed by the storage side
    sha256 TEXT PRIMARY KEY,
    md5 TEXT NOT NULL
);
"""



def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for column, declaration in columns.items():
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _migrate_lifecycle(conn: sqlite3.Connection) -> None:
    """2: tags, stable ids, tombstones, link collections, and a per-artifact counter so that numbers
    are never reused after a deletion."""
    _add_columns(
        conn,
        "artifacts",
        {"last_version": "INTEGER NOT NULL DEFAULT 0", "is_link": "INTEGER NOT NULL DEFAULT 0"},
    )
    _add_columns(
        conn,
        "versions",
        {
            "uid": "TEXT",
            "tags": "TEXT NOT NULL DEFAULT '[]'",
            "updated_at": "REAL",
            "state": "TEXT NOT NULL DEFAULT 'COMMITTED'",
            "link_version_id": "INTEGER REFERENCES versions(id)",
        },
    )
    conn.execute(
        "UPDATE artifacts SET last_version = "
        "(SELECT COALESCE(MAX(version), 0) FROM versions WHERE artifact_id = artifacts.id) "
        "WHERE last_version = 0"
    )
    conn.execute("UPDATE versions SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL")
    conn.execute("UPDATE versions SET updated_at = created_at WHERE updated_at IS NULL")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS versions_uid ON versions(uid)")
    conn.execute("CREATE INDEX IF NOT EXISTS versions_link ON versions(link_version_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS versions_run ON versions(run_id)")


def _migrate_retention(conn: sqlite3.Connection) -> None:
    """3: retention (a TTL per version; per artifact a default TTL for new versions and a keep policy) and the
    blobs garbage collection has marked (see registry/gc.py)."""
    _add_columns(
        conn,
        "artifacts",
        {"ttl": "REAL", "keep_last": "INTEGER", "keep_aliased": "INTEGER NOT NULL DEFAULT 0", "older_than": "REAL"},
    )
    _add_columns(conn, "versions", {"ttl": "REAL"})
    conn.execute("CREATE INDEX IF NOT EXISTS versions_created ON versions(created_at)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS gc_candidates (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, "
        "marked_at REAL NOT NULL)"
    )


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _migrate_lifecycle, 3: _migrate_retention}

#: Values bound in one ``IN (...)`` list (old SQLite builds allow 999 variables in a statement).
IN_BATCH = 500


def select_in(conn: Any, sql: str, values: Sequence[Any]) -> Iterator[Any]:
    """Run the ``SELECT`` ``sql``, whose ``{in}`` stands for an ``IN (?, ...)`` list, over ``values`` in
    batches of ``IN_BATCH``; yields the rows of every batch. Works on both databases' connections."""
    for i in range(0, len(values), IN_BATCH):
        part = values[i : i + IN_BATCH]
        yield from conn.execute(_in_list(sql, len(part)), part)


def execute_in(conn: Any, sql: str, values: Sequence[Any]) -> None:
    """``select_in`` for a statement without rows (``DELETE ... WHERE sha256 {in}``)."""
    for i in range(0, len(values), IN_BATCH):
        part = values[i : i + IN_BATCH]
        conn.execute(_in_list(sql, len(part)), part)


def _in_list(sql: str, n: int) -> str:
    return sql.replace("{in}", f"IN ({','.join('?' * n)})")


class Database(SQLiteDB):
    """The registry's database (one connection shared by threads; see :mod:`wanllmdb.sqlitedb`)."""

    #: SQL dialect, for the few statements that differ (``FOR UPDATE`` only on PostgreSQL).
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__(path, _SCHEMA, rows_by_name=True)
        self._migrate()

    def for_update(self, table: str = "") -> str:
        """The row-lock suffix of a ``SELECT``: nothing on SQLite, whose write transactions are serialized
        whole (``BEGIN IMMEDIATE``); PostgreSQL's says ``FOR UPDATE [OF table]``."""
        return ""

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process may run the background work ``name`` now: always, for SQLite (one machine;
        its work is idempotent). PostgreSQL's version lets one replica at a time run it."""
        yield True

    def _migrate(self) -> None:
        with self.write() as conn:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for number in sorted(n for n in _MIGRATIONS if n > current):
                logger.info("upgrading the registry database %s to schema %d", self.path, number)
                _MIGRATIONS[number](conn)
            if current < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
