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

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    digest TEXT,                     -- the version's content digest, where the recorder knew it
    PRIMARY KEY (artifact_id, version)
);
-- A ref's later access times, apart from its row: updating any column of a row rewrites the whole row, and a
-- ref's manifest is ~150 MB of JSON at a million files. A ref was last used at the later of the two times.
CREATE TABLE IF NOT EXISTS ref_access (
    artifact_id TEXT NOT NULL,
    version TEXT NOT NULL,
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


#: A stamp query for at least this many keys, when they are at least 1/SCAN_SHARE of the index's rows, reads the
#: whole table in one pass instead of looking each key up: 1.1-1.5 µs a key against 4.2 (100k rows) and 5.5 µs
#: (1M rows), as measured on this project's 2-core machine; a lookup each descends a deeper tree as the
#: index grows, a pass does not.
SCAN_MIN_KEYS = 20_000
SCAN_SHARE = 4


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
        # Columns added since the first release: an index without ``stamp`` verifies its blobs again once; one
        # without ``refs.digest`` records each version's manifest again at its next download.
        for table, column in (("entries", "stamp"), ("refs", "digest")):
            if column not in {row[1] for row in self._query(f"PRAGMA table_info({table})")}:
                with self._tx() as conn:
                    if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")

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

    def touch_blobs(
        self, sizes: Mapping[str, int], now: float | None = None, rowids: Mapping[str, int] | None = None
    ) -> None:
        """Refresh the access time of complete blobs, indexing any that were missing from the index.

        ``rowids`` (from ``stamp_rows``): rows known by rowid are updated in rowid order with no key lookup
        each; if any of them is gone (or its rowid now holds another key), all are upserted by key after all.
        """
        if not sizes:
            return
        now = time.time() if now is None else now
        with self._tx() as conn:
            left = _update_by_rowid(
                conn, "UPDATE entries SET last_access = ? WHERE rowid = ? AND key = ?", sizes, rowids or {},
                lambda key: (now,),
            )
            conn.executemany(
                "INSERT INTO entries (key, kind, size, created, last_access) VALUES (?, 'blob', ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET last_access = excluded.last_access",
                [(key, sizes[key], now, now) for key in left],
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
        return {key: stamp for key, (_rowid, stamp) in self.stamp_rows(keys).items()}

    def stamp_rows(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """The rowids and recorded stamps of these blobs (those that have a stamp): key -> (rowid, stamp).

        A later write given the rowids (``set_stamps``, ``touch_blobs``) finds each row without a lookup in the
        key index. Many keys, a large share of the index: one pass over the table (see SCAN_MIN_KEYS).
        """
        return {key: (rowid, stamp) for key, rowid, stamp in self.iter_stamp_rows(keys)}

    def iter_stamp_rows(self, keys: Iterable[str]) -> Iterator[tuple[str, int, str]]:
        """:meth:`stamp_rows` as (key, rowid, stamp) rows, for a caller that uses each row at once and keeps no
        map of them all (a million rows: ~150 MB). The one-pass read holds the index's lock until the iterator
        is exhausted or closed: the caller must not use the index (or wait on a thread that does) meanwhile.
        """
        keys = keys if isinstance(keys, (set, frozenset, dict)) else set(keys)
        if len(keys) >= SCAN_MIN_KEYS and len(keys) * SCAN_SHARE >= self._row_count():
            with self._db.read() as conn:
                for rowid, key, stamp in conn.execute("SELECT rowid, key, stamp FROM entries WHERE stamp IS NOT NULL"):
                    if key in keys:
                        yield key, rowid, stamp
            return
        sql = "SELECT key, rowid, stamp FROM entries WHERE stamp IS NOT NULL AND key IN ({marks})"
        yield from self._rows_in(sql, keys)

    def _row_count(self) -> int:
        return int(self._query("SELECT count(*) FROM entries")[0][0])

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

    def set_stamps(
        self, blobs: Mapping[str, tuple[int, str]], rowids: Mapping[str, int] | None = None, *, touch: bool = False
    ) -> None:
        """Record new stamps of verified blobs (sha -> (size, stamp)), indexing any that were missing;
        ``touch``: their access time too, in the same write. ``rowids`` as for :meth:`touch_blobs`."""
        if not blobs:
            return
        now = time.time()
        with self._tx() as conn:
            left = _update_by_rowid(
                conn,
                "UPDATE entries SET stamp = ?, size = ?"
                + (", last_access = ?" if touch else "")
                + " WHERE rowid = ? AND key = ?",
                blobs, rowids or {}, lambda key: (blobs[key][1], blobs[key][0], *((now,) if touch else ())),
            )
            conn.executemany(
                "INSERT INTO entries (key, kind, size, created, last_access, stamp) VALUES (?, 'blob', ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET stamp = excluded.stamp, size = excluded.size"
                + (", last_access = excluded.last_access" if touch else ""),
                [(key, blobs[key][0], now, now, blobs[key][1]) for key in left],
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

    def put_ref(self, artifact_id: str, version: str, manifest_json: str, digest: str | None = None) -> None:
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO refs (artifact_id, version, manifest, created, last_access, digest) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(artifact_id, version) DO UPDATE SET manifest = excluded.manifest, "
                "last_access = excluded.last_access, digest = excluded.digest",
                (artifact_id, version, manifest_json, now, now, digest),
            )

    def ref_digest(self, artifact_id: str, version: str) -> str | None:
        """The content digest recorded with a ref (None: no such ref, or recorded without one)."""
        rows = self._query("SELECT digest FROM refs WHERE artifact_id = ? AND version = ?", (artifact_id, version))
        return rows[0][0] if rows else None

    def get_ref(self, artifact_id: str, version: str) -> RefRecord | None:
        rows = self._query(_REF_ROWS + "WHERE r.artifact_id = ? AND r.version = ?", (artifact_id, version))
        return RefRecord(*rows[0]) if rows else None

    def touch_ref(self, artifact_id: str, version: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO ref_access (artifact_id, version, last_access) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM refs WHERE artifact_id = ? AND version = ?) "
                "ON CONFLICT(artifact_id, version) DO UPDATE SET last_access = excluded.last_access",
                (artifact_id, version, time.time(), artifact_id, version),
            )

    def refs(self) -> list[RefRecord]:
        return [RefRecord(*row) for row in self._query(_REF_ROWS + "ORDER BY r.artifact_id, r.version")]

    def remove_refs(self, keys: Iterable[tuple[str, str]]) -> None:
        rows = list(keys)
        if rows:
            with self._tx() as conn:
                conn.executemany("DELETE FROM refs WHERE artifact_id = ? AND version = ?", rows)
                conn.executemany("DELETE FROM ref_access WHERE artifact_id = ? AND version = ?", rows)


#: A ref's row as a RefRecord, last used at the later of its own access time and the one kept apart.
_REF_ROWS = (
    "SELECT r.artifact_id, r.version, r.manifest, r.created, max(r.last_access, coalesce(a.last_access, 0)) "
    "FROM refs r LEFT JOIN ref_access a ON a.artifact_id = r.artifact_id AND a.version = r.version "
)


def _update_by_rowid(
    conn: sqlite3.Connection, sql: str, keys: Iterable[str], rowids: Mapping[str, int],
    values: Callable[[str], tuple],
) -> list[str]:
    """Run ``sql`` (its last two marks: rowid, key) for the keys of known rowid, in rowid order; returns the
    keys left for the caller to upsert by key in the same transaction: those of no known rowid, or every key
    when a row was gone (a rowid that no longer holds its key updates nothing).

    Rows are stored in rowid order, so a million updates in that order touch each page once (3 µs a row,
    flat in the table's size), where the same updates by key read the key index at random (4.6 µs a row at
    100k rows, 6.3 at 1M, as measured on this project's 2-core machine).
    """
    keys = list(keys)
    known: list[tuple[int, str]] = []
    unknown: list[str] = []
    for key in keys:
        rowid = rowids.get(key)
        if rowid is None:
            unknown.append(key)
        else:
            known.append((rowid, key))
    if not known:
        return keys
    known.sort()
    cursor = conn.executemany(sql, ((*values(key), rowid, key) for rowid, key in known))
    return unknown if cursor.rowcount == len(known) else keys
