"""One SQLite connection shared by a process's threads, the way every wanllmdb database uses it.

WAL mode lets readers run while a writer commits; ``write()`` is ``BEGIN IMMEDIATE``, serialized against
every other writer in any process; a generous busy timeout makes writers wait rather than fail. Used by the
embedded registry, the cache index and the digest cache.

Opening is safe when several processes create the same database at once (two servers started together on
one root): switching to WAL takes a lock SQLite does not wait for, so the set-up is retried until the busy
timeout, and the schema runs in an immediate transaction. A damaged file, or one that is not a database, is
a :class:`~wanllmdb.errors.DatabaseError` naming the file, at open or on any later statement.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .errors import DatabaseError

logger = logging.getLogger(__name__)

#: Seconds a writer waits for another writer's lock (and the set-up at open for a concurrent opener).
BUSY_TIMEOUT = 60.0


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
        try:
            self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open database {path}: {exc}") from None
        if rows_by_name:
            self._conn.row_factory = sqlite3.Row
        try:
            self._set_up(schema)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from None

    def _set_up(self, schema: str) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                for pragma in _PRAGMAS:
                    self._conn.execute(f"PRAGMA {pragma}")
                with self._lock:
                    self._conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
                return
            except sqlite3.OperationalError as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                logger.debug("%s is being set up by another process (%s); trying again", self.path, exc)
                time.sleep(0.05)

    def _error(self, exc: sqlite3.Error) -> Exception:
        """The error to raise for ``exc``: a damaged file becomes a DatabaseError naming it."""
        if type(exc) is sqlite3.DatabaseError or getattr(exc, "sqlite_errorname", "") in _DAMAGED:
            return DatabaseError(
                f"database {self.path} is damaged or is not a SQLite database ({exc}); "
                "move it aside or restore it from a backup"
            )
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            return DatabaseError(f"cannot open database {self.path}: {exc}")
        return exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction: serialized against every other writer, in any process."""
        with self._lock:
            with self._translated():
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries."""
        with self._lock:
            with self._translated():
                self._conn.execute("BEGIN")
                try:
                    yield self._conn
                finally:
                    if self._conn.in_transaction:
                        self._conn.execute("COMMIT")

    def query(self, sql: str, args: Iterable[object] = ()) -> list:
        """All rows of one statement (its own implicit transaction)."""
        with self._lock, self._translated():
            return self._conn.execute(sql, tuple(args)).fetchall()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc


_PRAGMAS = ("busy_timeout = 60000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON")
#: SQLite's codes for a file that is damaged or is not a database.
_DAMAGED = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
