"""One SQLite connection shared by a process's threads, the way every wanllmdb database uses it.

WAL mode lets readers run while a writer commits; ``write()`` is ``BEGIN IMMEDIATE``, serialized against
every other writer in any process; a generous busy timeout makes writers wait rather than fail. Used by the
embedded registry, the cache index and the digest cache.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class SQLiteDB:
    """A connection, its lock, and transactions.

    Args:
        path: database file (created if missing).
        schema: SQL run once at open (``CREATE ... IF NOT EXISTS``).
        rows_by_name: rows as :class:`sqlite3.Row` instead of tuples.
    """

    def __init__(self, path: str, schema: str, *, rows_by_name: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        if rows_by_name:
            self._conn.row_factory = sqlite3.Row
        for pragma in ("busy_timeout = 60000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
            self._conn.execute(f"PRAGMA {pragma}")
        with self._lock:
            self._conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction: serialized against every other writer, in any process."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def query(self, sql: str, args: Iterable[object] = ()) -> list:
        """All rows of one statement (its own implicit transaction)."""
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()
