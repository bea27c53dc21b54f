"""SQLite schema and connection handling for the embedded registry.

WAL mode lets readers (a mount, an SDK script) run while a writer finalizes; every write that must be
atomic across processes runs in ``BEGIN IMMEDIATE`` so that two processes finalizing at once are serialized
and get consecutive version numbers.
"""

from __future__ import annotations

from ..sqlitedb import SQLiteDB

SCHEMA_VERSION = 1

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


class Database(SQLiteDB):
    """The registry's database (one connection shared by threads; see :mod:`wanllmdb.sqlitedb`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};", rows_by_name=True)
