"""Large versions on disk: a version's tree as a SQLite index, read a directory at a time.

:class:`~.tree.VersionTree` holds every file of a version as Python objects (~0.5 KB each, ~0.9 KB at the
peak of parsing the manifest): 900 MB for a million files. From ``INDEX_MIN`` files the mount builds an
:class:`IndexedTree` instead, once per version (versions never change): the manifest is parsed as it arrives
(:func:`~wanllmdb.manifest.stream.iter_entries`), each entry checked as :meth:`Manifest.from_dict` checks it,
into a SQLite file in the mount's private index folder. Lookups and listings then read what they need:

- a lookup asks for one directory or one file by (parent, name): the primary keys;
- a listing loads the directory's children (its files with what ``stat`` and the reader need, its
  subdirectories with their subdirectory counts) into a bounded LRU of directories, weighed by entries.

So the mount's memory is bounded by that LRU and by the largest single directory being listed, whatever the
version's size. The file is written by this mount alone (``synchronous=OFF``, no journal): it is built in one
transaction, and a failure (a bad entry, a broken answer) removes it whole; this mount's name for it is
deleted when the tree is dropped from the catalog and when the mount ends (:class:`IndexFolder`).

A finished index is also kept for later mounts, by the version's id (a version never changes, and its id is
never reused): a hard link in ``kept/`` beside the mounts' folders, least recently used first out past
``KEPT_BYTES``. The next mount links it into its own folder instead of fetching and parsing the manifest
again (at 1M files that was 13-15 s of a fresh mount's ``ls -lR``); one that does not open as an index of
as many files as the listing says is dropped and built again.

The checks only the whole manifest can make, done here with the index's keys: a path given twice (the
primary key of ``files``), and a path that is both a file and a directory (one join at the end).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from ..errors import InvalidManifestError
from ..manifest import ManifestEntry
from ..manifest.entry import trusted_entry
from .tree import FILE_MODE, PRESIGN_LARGE, Attr, DirNode, FileNode, Node, dir_attr

logger = logging.getLogger(__name__)

#: Versions of at least this many files get an on-disk index instead of an in-memory tree (``--index-min``):
#: ``ls -lR`` of 100,000 files costs the same either way (3.17-3.21 s against 3.23-3.26 s, mount CPU
#: 1.98-2.08 against 1.99-2.03 s, interleaved pairs), in half the memory (63 against 136 MB).
INDEX_MIN = 20_000
#: Entries (files and subdirectories) of an index's directories kept loaded, per index.
DIR_CACHE_ENTRIES = 20_000
#: Bytes of finished indexes kept for later mounts (each at most ``cache limit / KEPT_SHARE``).
KEPT_BYTES = 1 << 30
KEPT_SHARE = 8
#: The index file's format, in a kept index's name and in a request for a server-built one: a change of
#: the schema below must change it, leaving the old files unused (trimmed in time).
INDEX_SCHEMA = "s1"
#: What a version id must look like to name a kept index (the registries' ids are 32 hex digits).
_KEPT_ID = re.compile(r"[0-9A-Za-z_-]{8,128}")
#: Rows inserted per statement batch while building.
BATCH = 5000
#: Directory ids remembered by path while building (entries come in path order, so a few suffice).
BUILD_DIR_CACHE = 4096
ROOT_ID = 0
#: The root's parent: no directory, so that the root is nobody's child.
NO_PARENT = -1

_SCHEMA = """
CREATE TABLE dirs (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    subdirs INTEGER NOT NULL DEFAULT 0,
    UNIQUE (parent, name)
);
CREATE TABLE files (
    dir INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    digests TEXT NOT NULL,
    extra TEXT,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
"""


def _schema_tables() -> dict[str, str]:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        return {row[0]: row[1] for row in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


#: The tables of an index, as ``sqlite_master`` holds their definitions (what ``check_index`` compares).
_SCHEMA_TABLES = _schema_tables()

#: A file's row: ``digests`` is its MD5 and SHA-256 in hex, one after the other; ``extra`` is null for a plain
#: file, else the JSON of what a chunked or reference entry adds. Five columns rather than one per field:
#: binding parameters is most of an insert (300,000 rows, interleaved: 0.8-1.2 against 1.4-1.6 CPU-s).
_FILE_COLUMNS = "name, size, digests, extra"


#: The folder under the cache root holding the mounts' index folders and ``kept/``.
INDEX_FOLDER = "mount-index"


@dataclass(frozen=True)
class KeptIndex:
    """One kept index file (for ``wanllmdb cache ls`` and ``cleanup``)."""

    path: str
    size: int
    last_used: float

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def kept_indexes(cache_root: str) -> list[KeptIndex]:
    """The indexes kept under the cache at ``cache_root``, least recently used first."""
    return index_files(os.path.join(cache_root, INDEX_FOLDER, "kept"))


def index_files(folder: str) -> list[KeptIndex]:
    """The index files (``*.sqlite``) in ``folder``, least recently used (by mtime) first."""
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if not name.endswith(".sqlite"):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        found.append(KeptIndex(path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda kept: (kept.last_used, kept.name))


def kept_budget(cache_max_bytes: int) -> int:
    """Bytes of kept indexes a cache of ``cache_max_bytes`` holds: its share, at most ``KEPT_BYTES``."""
    return min(KEPT_BYTES, cache_max_bytes // KEPT_SHARE)


def plan_kept_cleanup(cache_root: str, *, max_bytes: int | None, max_age: float | None) -> list[KeptIndex]:
    """The kept indexes a cache cleanup removes: those unused for ``max_age`` seconds, then the least recently
    used until the rest fit the share of ``max_bytes`` a mount would keep (:func:`kept_budget`)."""
    cutoff = None if max_age is None else time.time() - max_age
    doomed: list[KeptIndex] = []
    left: list[KeptIndex] = []
    for kept in kept_indexes(cache_root):
        (doomed if cutoff is not None and kept.last_used < cutoff else left).append(kept)
    if max_bytes is not None:
        doomed += over_budget(left, kept_budget(max_bytes))
    return doomed


def over_budget(kept: list[KeptIndex], budget: int) -> list[KeptIndex]:
    """The least recently used of ``kept`` (listed in that order) whose removal leaves at most ``budget`` bytes."""
    total = sum(k.size for k in kept)
    over = []
    for k in kept:
        if total <= budget:
            break
        over.append(k)
        total -= k.size
    return over


class IndexFolder:
    """The folder of one mount's index files, under the cache root; removed when the mount ends. Beside it,
    ``kept/``: finished indexes kept for later mounts by version id, at most ``kept_bytes`` in all.

    A mount killed with -9 leaves its folder behind: each folder holds a lock file its mount keeps locked, so
    the next mount removes every folder whose lock it can take.
    """

    def __init__(self, parent: str, *, kept_bytes: int = KEPT_BYTES) -> None:
        os.makedirs(parent, exist_ok=True)
        _remove_abandoned(parent)
        self.path = tempfile.mkdtemp(prefix="mount-index-", dir=parent)
        self._lock = open(os.path.join(self.path, "lock"), "wb")  # noqa: SIM115 (held for the mount's life)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._serial = 0
        self._serial_lock = threading.Lock()
        self.kept_dir = os.path.join(parent, "kept")
        self._kept_bytes = kept_bytes
        os.makedirs(self.kept_dir, exist_ok=True)

    def new_file(self) -> str:
        with self._serial_lock:
            self._serial += 1
            return os.path.join(self.path, f"v-{self._serial}.sqlite")

    def kept(self, version_id: str) -> str | None:
        """A new file of this folder that is the kept index of ``version_id`` (a hard link), or None."""
        kept = self._kept_path(version_id)
        if kept is None or not os.path.exists(kept):
            return None
        local = self.new_file()
        try:
            os.link(kept, local)
            os.utime(kept)  # used now: trimmed last
        except FileNotFoundError:
            _unlink(local)
            return None
        return local

    def keep(self, built: str, version_id: str) -> None:
        """Keep the finished index ``built`` (a file of this folder) for later mounts; then trim ``kept/``."""
        kept = self._kept_path(version_id)
        if kept is None or self._kept_bytes <= 0:
            return
        try:
            os.link(built, kept)
        except FileExistsError:  # another mount kept it first
            return
        except OSError as exc:  # a full disk, a filesystem without hard links: only the next mount pays
            logger.debug("could not keep the index of version %s: %s", version_id, exc)
            return
        self._trim()

    def discard(self, path: str) -> None:
        """Remove a file of this folder that did not become an index (a download that failed its checks)."""
        _unlink(path)

    def forget(self, version_id: str, link: str) -> None:
        """Drop the kept index of ``version_id`` (one that did not open as it should) and ``link``, this folder's
        name for it (:meth:`kept`)."""
        kept = self._kept_path(version_id)
        if kept is not None:
            _unlink(kept)
        _unlink(link)

    def _kept_path(self, version_id: str) -> str | None:
        if not _KEPT_ID.fullmatch(version_id or ""):
            return None
        return os.path.join(self.kept_dir, f"{version_id}.{INDEX_SCHEMA}.sqlite")

    def _trim(self) -> None:
        """Remove the least recently used kept indexes until the rest fit ``kept_bytes`` (a mount still using
        one keeps its own link: nothing breaks under it)."""
        for kept in over_budget(index_files(self.kept_dir), self._kept_bytes):
            _unlink(kept.path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


def _remove_abandoned(parent: str) -> None:
    for name in os.listdir(parent):
        folder = os.path.join(parent, name)
        if not name.startswith("mount-index-") or not os.path.isdir(folder):
            continue
        try:
            with open(os.path.join(folder, "lock"), "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except FileNotFoundError:
            pass  # a folder whose mount died before it made its lock: abandoned too
        except OSError:
            continue  # locked: a live mount's
        logger.info("removing the index folder a stopped mount left: %s", folder)
        shutil.rmtree(folder, ignore_errors=True)


class IndexedDir(DirNode):
    """A directory of an :class:`IndexedTree`: its children are loaded when asked for."""

    __slots__ = ("_tree", "id")

    def __init__(self, tree: IndexedTree, dir_id: int, subdirs: int) -> None:
        # (DirNode.__init__ is not called: ``children`` is the property below, not a dict of its own)
        self._tree = tree
        self.id = dir_id
        self.mtime = tree.mtime
        self.subdirs = subdirs

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        return self._tree.children_of(self.id)

    def listing(self) -> list[tuple[str, Attr]]:
        return self._tree.listing_of(self.id)

    def files(self) -> Iterator[tuple[str, ManifestEntry]]:
        return iter(self._tree.files_of(self.id))


class IndexedFile(FileNode):
    """A file of an :class:`IndexedTree`: its name and size (all a listing needs); the entry is read from the
    index when asked for (open, xattrs)."""

    __slots__ = ("_tree", "_dir_id", "_name", "_size")

    def __init__(self, tree: IndexedTree, dir_id: int, name: str, size: int, mtime: float) -> None:
        self._tree = tree
        self._dir_id = dir_id
        self._name = name
        self._size = size
        self.mtime = mtime

    @property  # type: ignore[override]
    def entry(self) -> ManifestEntry:
        return self._tree.file_entry(self._dir_id, self._name)

    @property
    def attr(self) -> Attr:
        return Attr(FILE_MODE, self._size, self.mtime, 1)


def _entry(prefix: str, row: tuple) -> ManifestEntry:
    """The entry of a row this mount wrote from a checked entry (so not checked again)."""
    name, size, digests, extra = row[:4]
    if extra is None:
        return trusted_entry(prefix + name, size, digests[:32], digests[32:], 0, (), None, None)
    more = json.loads(extra)
    return trusted_entry(
        prefix + name, size, digests[:32], digests[32:], more.get("chunk_size", 0), tuple(more.get("chunks", ())),
        more.get("ref"), more.get("etag"),
    )


def _extra(entry: ManifestEntry) -> str:
    """The ``extra`` column of a chunked or reference entry."""
    more: dict[str, Any] = {}
    if entry.chunks:
        more["chunk_size"] = entry.chunk_size
        more["chunks"] = entry.chunks
    if entry.ref is not None:
        more["ref"] = entry.ref
    if entry.etag is not None:
        more["etag"] = entry.etag
    return json.dumps(more, separators=(",", ":"))


class IndexedTree:
    """The tree of one version, from an index file built by :meth:`build` (the same interface as
    :class:`~.tree.VersionTree`: ``root``, ``lookup``, ``file_count``, ``large_entries``, ``weight``)."""

    def __init__(self, path: str, mtime: float, *, dir_entries: int = DIR_CACHE_ENTRIES) -> None:
        self.path = path
        self.mtime = mtime
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA query_only = ON")
        self._lock = threading.Lock()
        self._dirs: LRUCache = LRUCache(dir_entries, getsizeof=lambda children: len(children) + 1)
        self.file_count = self._one("SELECT count(*) FROM files")[0]
        self.root = IndexedDir(self, ROOT_ID, self._one("SELECT subdirs FROM dirs WHERE id = ?", (ROOT_ID,))[0])
        # The file goes when the tree is dropped by the last thread using it (not when the catalog evicts it
        # while a read still holds it), or when the process ends.
        self._finalizer = weakref.finalize(self, _drop, self._conn, path)

    @classmethod
    def build(cls, path: str, entries: Iterable[ManifestEntry], mtime: float, **kwargs: Any) -> IndexedTree:
        """Write the index of ``entries`` to ``path`` (a new file) and open it.

        Raises:
            InvalidManifestError: a bad entry, a path given twice, or a path that is both a file and a
                directory; nothing is left at ``path``.
            whatever iterating ``entries`` raises (e.g. a broken answer): nothing is left at ``path`` either.
        """
        write_index(path, entries)
        try:
            return cls(path, mtime, **kwargs)
        except BaseException:
            _unlink(path)
            raise

    def close(self) -> None:
        self._finalizer()

    # --- the VersionTree interface ----------------------------------------------------------------------

    @property
    def weight(self) -> int:
        """What this tree may hold in memory, in entries (for the catalog's LRU of trees)."""
        return int(self._dirs.maxsize) + 1

    @property
    def large_entries(self) -> list[ManifestEntry]:
        """Chunked files, the first ``PRESIGN_LARGE`` the catalog prepares downloads for."""
        rows = self._all(
            f"SELECT {_FILE_COLUMNS}, dir FROM files WHERE json_extract(extra, '$.chunks') IS NOT NULL LIMIT ?",
            (PRESIGN_LARGE,),
        )
        return [_entry(self._dir_path(row[-1]), row) for row in rows]

    def lookup(self, parts: list[str] | tuple[str, ...]) -> Node | None:
        node: Node = self.root
        for part in parts:
            if not isinstance(node, IndexedDir):
                return None
            loaded = self._loaded(node.id)
            child = loaded.get(part) if loaded is not None else self._child(node, part)
            if child is None:
                return None
            node = child
        return node

    # --- directories ------------------------------------------------------------------------------------

    def children_of(self, dir_id: int) -> dict[str, Node]:
        loaded = self._loaded(dir_id)
        if loaded is not None:
            return loaded
        subdirs, files = self._contents(dir_id)
        children: dict[str, Node] = {name: IndexedDir(self, child_id, count) for child_id, name, count in subdirs}
        mtime = self.mtime
        for name, size in files:
            children[name] = IndexedFile(self, dir_id, name, size, mtime)
        with self._lock:
            if len(children) + 1 <= self._dirs.maxsize:
                self._dirs[dir_id] = children
        return children

    def listing_of(self, dir_id: int) -> list[tuple[str, Attr]]:
        """Names and attributes straight from the index, without node objects (``ls -lR`` lists every
        directory once and looks nothing up: READDIRPLUS carries the attributes); files of one size share
        one ``Attr``."""
        loaded = self._loaded(dir_id)
        if loaded is not None:
            return [(name, child.attr) for name, child in loaded.items()]
        mtime = self.mtime
        subdirs, files = self._contents(dir_id)
        listing = [(name, dir_attr(mtime, count)) for _id, name, count in subdirs]
        by_size: dict[int, Attr] = {}
        for name, size in files:
            attr = by_size.get(size)
            if attr is None:
                attr = by_size[size] = Attr(FILE_MODE, size, mtime, 1)
            listing.append((name, attr))
        return listing

    def _contents(self, dir_id: int) -> tuple[list[tuple], list[tuple]]:
        """(id, name, subdirectory count) of a directory's subdirectories, (name, size) of its files."""
        with self._lock:
            execute = self._conn.execute
            subdirs = execute("SELECT id, name, subdirs FROM dirs WHERE parent = ? ORDER BY name", (dir_id,))
            files = execute("SELECT name, size FROM files WHERE dir = ? ORDER BY name", (dir_id,))
            return subdirs.fetchall(), files.fetchall()

    def files_of(self, dir_id: int) -> list[tuple[str, ManifestEntry]]:
        """The files of a directory with their entries, in one query."""
        prefix = self._dir_path(dir_id)
        rows = self._all(f"SELECT {_FILE_COLUMNS} FROM files WHERE dir = ? ORDER BY name", (dir_id,))
        return [(row[0], _entry(prefix, row)) for row in rows]

    def loaded_entries(self) -> int:
        """Entries of the directories held in memory (for tests and stats)."""
        with self._lock:
            return int(self._dirs.currsize)

    def _loaded(self, dir_id: int) -> dict[str, Node] | None:
        with self._lock:
            return self._dirs.get(dir_id)

    def _child(self, parent: IndexedDir, name: str) -> Node | None:
        row = self._one("SELECT id, subdirs FROM dirs WHERE parent = ? AND name = ?", (parent.id, name))
        if row is not None:
            return IndexedDir(self, row[0], row[1])
        row = self._one("SELECT size FROM files WHERE dir = ? AND name = ?", (parent.id, name))
        if row is None:
            return None
        return IndexedFile(self, parent.id, name, row[0], self.mtime)

    def file_entry(self, dir_id: int, name: str) -> ManifestEntry:
        row = self._one(f"SELECT {_FILE_COLUMNS} FROM files WHERE dir = ? AND name = ?", (dir_id, name))
        return _entry(self._dir_path(dir_id), row)

    def _dir_path(self, dir_id: int) -> str:
        with self._lock:
            return _dir_path(self._conn.execute, dir_id)

    def _one(self, sql: str, params: tuple = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()


def _dir_path(execute: Callable[..., sqlite3.Cursor], dir_id: int) -> str:
    """``"a/b/"`` for directory ``a/b``, ``""`` for the root (the prefix of its files' paths)."""
    parts = []
    while dir_id != ROOT_ID:
        parent, name = execute("SELECT parent, name FROM dirs WHERE id = ?", (dir_id,)).fetchone()
        parts.append(name)
        dir_id = parent
    return "".join(f"{part}/" for part in reversed(parts))


def _drop(conn: sqlite3.Connection, path: str) -> None:
    conn.close()
    _unlink(path)


def _unlink(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def write_index(path: str, entries: Iterable[ManifestEntry]) -> int:
    """Write the index of ``entries`` to ``path`` (a new file) for :class:`IndexedTree` to open (the server
    builds one per large version for the mounts, see ``server/indexes.py``); returns the files indexed.

    Raises:
        InvalidManifestError: as :meth:`IndexedTree.build`; nothing is left at ``path``.
    """
    try:
        return _write_index(path, entries)
    except BaseException:
        _unlink(path)
        raise


def check_index(path: str) -> int:
    """The number of files the index at ``path`` holds, once SQLite's ``quick_check`` passed and its tables
    are the ones :class:`IndexedTree` reads (an index that came over the network is checked before use).

    Raises:
        sqlite3.DatabaseError: not an index of this schema, or damaged.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA cell_size_check = ON")
        verdict = conn.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            raise sqlite3.DatabaseError(f"quick_check: {'; '.join(str(row[0]) for row in verdict[:3])}")
        tables = {row[0]: row[1] for row in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
        if tables != _SCHEMA_TABLES:
            raise sqlite3.DatabaseError(f"not an index of schema {INDEX_SCHEMA}: tables {sorted(tables)}")
        return conn.execute("SELECT count(*) FROM files").fetchone()[0]
    finally:
        conn.close()


def _write_index(path: str, entries: Iterable[ManifestEntry]) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO dirs (id, parent, name) VALUES (?, ?, '')", (ROOT_ID, NO_PARENT))
        builder = _Builder(conn)
        builder.add_all(entries)
        conn.execute("COMMIT")
        return builder.count
    finally:
        conn.close()


class _Builder:
    """Inserts entries in batches; directories get their ids as they first appear."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._dir_ids: LRUCache = LRUCache(BUILD_DIR_CACHE)
        self._dir_ids[""] = ROOT_ID
        self._next_id = ROOT_ID + 1
        self._rows: list[tuple] = []
        #: Files inserted so far.
        self.count = 0

    def add_all(self, entries: Iterable[ManifestEntry]) -> None:
        # (Reading the entries on a thread of their own, beside the inserts, measured slower: 3.1-3.9 s
        # against 2.1-2.4 s for 300,000 entries; the two threads only traded the GIL.)
        last_dir_path: str | None = None
        dir_id = ROOT_ID
        rows = self._rows
        for entry in entries:
            dir_path, _, name = entry.path.rpartition("/")
            if dir_path != last_dir_path:
                dir_id = self._dir_id(dir_path)
                last_dir_path = dir_path
            extra = None if not entry.chunks and entry.ref is None else _extra(entry)
            rows.append((dir_id, name, entry.size, entry.md5 + entry.sha256, extra))
            if len(rows) >= BATCH:
                self._flush()
        self._flush()
        self._conn.execute("UPDATE dirs SET subdirs = (SELECT count(*) FROM dirs AS c WHERE c.parent = dirs.id)")
        clash = self._conn.execute(
            "SELECT f.dir, f.name FROM files AS f JOIN dirs AS d ON d.parent = f.dir AND d.name = f.name LIMIT 1"
        ).fetchone()
        if clash is not None:
            path = _dir_path(self._conn.execute, clash[0]) + clash[1]
            raise InvalidManifestError(f"{path!r} is a file and also a directory holding other files")

    def _dir_id(self, dir_path: str) -> int:
        known = self._dir_ids.get(dir_path)
        if known is not None:
            return known
        parent_path, _, name = dir_path.rpartition("/")
        parent = self._dir_id(parent_path)
        row = self._conn.execute("SELECT id FROM dirs WHERE parent = ? AND name = ?", (parent, name)).fetchone()
        if row is not None:
            dir_id = row[0]
        else:
            dir_id = self._next_id
            self._next_id += 1
            self._conn.execute("INSERT INTO dirs (id, parent, name) VALUES (?, ?, ?)", (dir_id, parent, name))
        self._dir_ids[dir_path] = dir_id
        return dir_id

    def _flush(self) -> None:
        if not self._rows:
            return
        before = self._conn.total_changes
        try:
            self._conn.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", self._rows)
        except sqlite3.IntegrityError:
            # The rows before the one refused went in: it is the one after them.
            row = self._rows[self._conn.total_changes - before]
            path = _dir_path(self._conn.execute, row[0]) + row[1]
            raise InvalidManifestError(f"duplicate path in manifest: {path!r}") from None
        self.count += len(self._rows)
        self._rows.clear()
