"""The cache's on-disk index: which blobs are stored, how big, when last used; which artifacts were cached.

SQLite in WAL mode, shared by every process using the cache. The files under ``blobs/`` stay the authority on
what is present (a blob is renamed into place only after verification); the index adds sizes and access
times for LRU eviction, and keeps a running total in ``stats`` through triggers so that a size check at every
write costs one row read.

Small blobs the mount fetches together live in *packs* (``packs/<name>``, see store.py): one entry of kind
``pack`` (key ``pack:<name>``) counts and ages the whole file, and ``packed`` says where each blob lies in it.
A trigger drops a pack's ``packed`` rows with its entry, so no row ever points into an evicted pack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..sqlitedb import SQLiteDB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,            -- sha256 of a complete blob, 'partial:<file name>' or 'pack:<file name>'
    kind TEXT NOT NULL,              -- 'blob' | 'partial' | 'pack'
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    stamp TEXT                       -- what stat said of the blob when it was last verified (store.py)
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_access);
CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 0), total INTEGER NOT NULL);
INSERT OR IGNORE INTO stats (id, total) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries
    BEGIN UPDATE stats SET total = total + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries
    BEGIN UPDATE stats SET total = total - OLD.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries
    BEGIN UPDATE stats SET total = total + NEW.size - OLD.size WHERE id = 0; END;
CREATE TABLE IF NOT EXISTS refs (
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    PRIMARY KEY (artifact_id, version)
);
CREATE TABLE IF NOT EXISTS packed (
    sha256 TEXT NOT NULL,            -- a verified blob held in a pack
    pack TEXT NOT NULL,              -- the pack's entry key, 'pack:<file name>'
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (sha256, pack)
);
CREATE INDEX IF NOT EXISTS packed_by_pack ON packed(pack);
CREATE TRIGGER IF NOT EXISTS entries_del_pack AFTER DELETE ON entries WHEN OLD.kind = 'pack'
    BEGIN DELETE FROM packed WHERE pack = OLD.key; END;
"""


@dataclass(frozen=True)
class IndexEntry:
    key: str
    kind: str
    size: int
    created: float
    last_access: float


@dataclass(frozen=True)
class PackRecord:
    """A pack to index: its entry key, file size, stamp, and its blobs as (sha256, offset, size)."""

    key: str
    size: int
    stamp: str
    members: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class PackedRow:
    """Where a blob lies in a pack, and the pack's stamp when it was written (``packed``)."""

    sha256: str
    pack: str
    offset: int
    size: int
    stamp: str | None


@dataclass(frozen=True)
class RefRecord:
    artifact_id: str
    version: str
    manifest_json: str
    created: float
    last_access: float


class CacheIndex:
    """Thread-safe access to the index database (one connection, one lock)."""

    def __init__(self, path: str) -> None:
        self._db = SQLiteDB(path, _SCHEMA)
        self._tx = self._db.write
        self._query = self._db.query
        columns = {row[1] for row in self._query("PRAGMA table_info(entries)")}
        if "stamp" not in columns:  # an index written before stamps: its blobs are verified again once
            with self._tx() as conn:
                if "stamp" not in {row[1] for row in conn.execute("PRAGMA table_info(entries)")}:
                    conn.execute("ALTER TABLE entries ADD COLUMN stamp TEXT")

    def close(self) -> None:
        self._db.close()

    # --- entries ----------------------------------------------------------------------------------------

    def upsert(self, key: str, kind: str, size: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO entries (key, kind, size, created, last_access) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET size = excluded.size, last_access = excluded.last_access",
                (key, kind, size, now, now),
            )

    def touch(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        rows = [(now, key) for key in keys]
        if rows:
            with self._tx() as conn:
                conn.executemany("UPDATE entries SET last_access = ? WHERE key = ?", rows)

    def touch_blobs(self, sizes: dict[str, int], now: float | None = None) -> None:
        """Refresh the access time of complete blobs, indexing any that were missing from the index."""
        now = time.time() if now is None else now
        rows = [(key, size, now, now) for key, size in sizes.items()]
        if rows:
            with self._tx() as conn:
                conn.executemany(
                    "INSERT INTO entries (key, kind, size, created, last_access) VALUES (?, 'blob', ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET last_access = excluded.last_access",
                    rows,
                )

    def admit_blobs(
        self,
        blobs: dict[str, tuple[int, str]],
        max_bytes: int,
        keep: Iterable[str] = (),
        evictable: Callable[[IndexEntry], bool] = lambda entry: True,
        packs: Iterable[PackRecord] = (),
    ) -> tuple[list[IndexEntry], int]:
        """Index verified blobs (sha -> (size, stamp)) and packs and, in the same transaction, take the least
        recently used entries out of the index until the total fits ``max_bytes``; returns those victims and
        the total left.

        One ``BEGIN IMMEDIATE`` transaction reads the total every process shares and picks the victims, so
        concurrent writers never decide from stale totals, and two of them never pick the same victim.
        Entries ``evictable`` refuses (partial files a live process holds open) stay counted but are never
        picked. The caller unlinks the victims' files.
        """
        now = time.time()
        keep = set(keep)
        with self._tx() as conn:
            if blobs:
                conn.executemany(
                    "INSERT INTO entries (key, kind, size, created, last_access, stamp) "
                    "VALUES (?, 'blob', ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "size = excluded.size, last_access = excluded.last_access, stamp = excluded.stamp",
                    [(key, size, now, now, stamp) for key, (size, stamp) in blobs.items()],
                )
            for pack in packs:
                conn.execute(
                    "INSERT INTO entries (key, kind, size, created, last_access, stamp) VALUES (?, 'pack', ?, ?, ?, ?)",
                    (pack.key, pack.size, now, now, pack.stamp),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO packed (sha256, pack, offset, size) VALUES (?, ?, ?, ?)",
                    [(sha, pack.key, offset, size) for sha, offset, size in pack.members],
                )
            total = int(conn.execute("SELECT total FROM stats WHERE id = 0").fetchone()[0])
            excess = total - max_bytes
            victims: list[IndexEntry] = []
            if excess > 0:
                cursor = conn.execute(
                    "SELECT key, kind, size, created, last_access FROM entries ORDER BY last_access, key"
                )
                for row in cursor:
                    if excess <= 0:
                        break
                    entry = IndexEntry(*row)
                    if entry.key in keep or not evictable(entry):
                        continue
                    victims.append(entry)
                    excess -= entry.size
                conn.executemany("DELETE FROM entries WHERE key = ?", [(e.key,) for e in victims])
            return victims, total - sum(e.size for e in victims)

    def _rows_in(self, sql: str, keys: Iterable[str]) -> Iterator[tuple]:
        """The rows of ``sql`` (its ``{marks}`` an ``IN`` list) for ``keys``, 500 at a time (SQLite's bound on
        variables is 999 on older builds)."""
        keys = list(keys)
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            yield from self._query(sql.format(marks=",".join("?" * len(part))), part)

    def stamps(self, keys: Iterable[str]) -> dict[str, str]:
        """The recorded stamps of these blobs (those that have one)."""
        sql = "SELECT key, stamp FROM entries WHERE stamp IS NOT NULL AND key IN ({marks})"
        return {key: stamp for key, stamp in self._rows_in(sql, keys)}

    def packed(self, sha256s: Iterable[str]) -> dict[str, PackedRow]:
        """Where these blobs lie in packs (one pack each, for those any pack holds)."""
        sql = (
            "SELECT p.sha256, p.pack, p.offset, p.size, e.stamp FROM packed p JOIN entries e ON e.key = p.pack "
            "WHERE p.sha256 IN ({marks})"
        )
        found: dict[str, PackedRow] = {}
        for row in self._rows_in(sql, sha256s):
            found.setdefault(row[0], PackedRow(*row))
        return found

    def present(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` that have an entry (blobs: indexed as present)."""
        return {row[0] for row in self._rows_in("SELECT key FROM entries WHERE key IN ({marks})", keys)}

    def pack_members(self, key: str) -> list[tuple[str, int, int]]:
        """The blobs of one pack as (sha256, offset, size), in file order."""
        return [
            tuple(row)
            for row in self._query("SELECT sha256, offset, size FROM packed WHERE pack = ? ORDER BY offset", (key,))
        ]

    def set_stamp(self, key: str, size: int, stamp: str) -> None:
        self.set_stamps({key: (size, stamp)})

    def set_stamps(self, blobs: dict[str, tuple[int, str]]) -> None:
        """Record new stamps of verified blobs (sha -> (size, stamp)), indexing any that were missing."""
        now = time.time()
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO entries (key, kind, size, created, last_access, stamp) VALUES (?, 'blob', ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET stamp = excluded.stamp, size = excluded.size",
                [(key, size, now, now, stamp) for key, (size, stamp) in blobs.items()],
            )

    def remove(self, keys: Iterable[str]) -> None:
        rows = [(key,) for key in keys]
        if rows:
            with self._tx() as conn:
                conn.executemany("DELETE FROM entries WHERE key = ?", rows)

    def get(self, key: str) -> IndexEntry | None:
        rows = self._query("SELECT key, kind, size, created, last_access FROM entries WHERE key = ?", (key,))
        return IndexEntry(*rows[0]) if rows else None

    def total_size(self) -> int:
        return int(self._query("SELECT total FROM stats WHERE id = 0")[0][0])

    def entries_lru(self) -> list[IndexEntry]:
        """All entries, least recently used first."""
        rows = self._query(
            "SELECT key, kind, size, created, last_access FROM entries ORDER BY last_access, key"
        )
        return [IndexEntry(*row) for row in rows]

    # --- refs (the seed's artifact-level view) ----------------------------------------------------------

    def put_ref(self, artifact_id: str, version: str, manifest_json: str) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO refs (artifact_id, version, manifest, created, last_access) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(artifact_id, version) DO UPDATE SET manifest = excluded.manifest, "
                "last_access = excluded.last_access",
                (artifact_id, version, manifest_json, now, now),
            )

    def get_ref(self, artifact_id: str, version: str) -> RefRecord | None:
        rows = self._query(
            "SELECT artifact_id, version, manifest, created, last_access FROM refs "
            "WHERE artifact_id = ? AND version = ?",
            (artifact_id, version),
        )
        return RefRecord(*rows[0]) if rows else None

    def touch_ref(self, artifact_id: str, version: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE refs SET last_access = ? WHERE artifact_id = ? AND version = ?",
                (time.time(), artifact_id, version),
            )

    def refs(self) -> list[RefRecord]:
        rows = self._query(
            "SELECT artifact_id, version, manifest, created, last_access FROM refs ORDER BY artifact_id, version"
        )
        return [RefRecord(*row) for row in rows]

    def remove_refs(self, keys: Iterable[tuple[str, str]]) -> None:
        rows = list(keys)
        if rows:
            with self._tx() as conn:
                conn.executemany("DELETE FROM refs WHERE artifact_id = ? AND version = ?", rows)
