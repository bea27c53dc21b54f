"""PostgreSQL as the registry's metadata store (``wanllmdb server --db postgresql://...``).

:class:`PostgresDatabase` has :class:`~.db.Database`'s interface (``write()``, ``read()``, ``query()``,
``close()``, ``path``), so ``LocalRegistry`` runs the same SQL on both:

- the code writes ``?`` placeholders; they become ``%s`` here (a literal ``%`` becomes ``%%``), each
  statement translated once and cached;
- the connection yielded has the sqlite3 surface the registry uses (``execute`` returning a cursor with
  ``fetchone``/``fetchall``/iteration/``rowcount``, ``executemany``), rows indexable by position and by name;
- ``write()`` is a READ COMMITTED transaction: unlike SQLite's ``BEGIN IMMEDIATE`` it does not serialize
  writers, so every write that reads then writes an artifact's versions or aliases takes that artifact's row
  lock first (``SELECT ... FOR UPDATE``, see ``LocalRegistry``); ``read()`` is REPEATABLE READ, READ ONLY.

Each transaction takes a connection from a ``psycopg_pool.ConnectionPool``, so a multi-threaded server runs
transactions concurrently, and several servers (replicas) can share one database.

Errors: a database that cannot be reached (at open, or when the pool has no connection in time) is a
:class:`~wanllmdb.errors.DatabaseUnavailableError` (503) naming the database with its password masked.
A write that loses a deadlock (40P01) or a serialization conflict (40001) is rolled back whole and raised as
:class:`~wanllmdb.errors.DatabaseBusyError` (503): a context manager cannot run its body again, so the retry
is the caller's; the HTTP client retries 503 answers of requests it may repeat.

The schema is a list of numbered migrations (:mod:`.pgschema`), applied at open under a transaction-scoped
advisory lock, so replicas starting together apply each exactly once.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError, DatabaseBusyError, DatabaseError, DatabaseUnavailableError
from .pgschema import MIGRATIONS, SCHEMA_VERSION, applied_migrations, apply_migrations

logger = logging.getLogger(__name__)

#: Seconds to wait for a connection (at open, and from the pool for each transaction).
CONNECT_TIMEOUT = 10.0
#: SQLSTATEs after which the whole transaction may simply be run again.
_RETRYABLE = frozenset({"40P01", "40001"})


def mask_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _one_line(exc: BaseException) -> str:
    """psycopg's message on one line (it spreads connection failures over several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Row(tuple):
    """A result row indexable by position and by column name (like :class:`sqlite3.Row`)."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    index = {column.name: i for i, column in enumerate(description)}
    return lambda values: Row(values, index)


class _Translator:
    """``?`` placeholders to psycopg's ``%s`` (``%`` to ``%%``), each statement translated once."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, sql: str) -> str:
        found = self._cache.get(sql)
        if found is None:
            found = sql.replace("%", "%%").replace("?", "%s")
            with self._lock:
                if len(self._cache) > 4096:  # statements built with IN (?, ?, ...) vary in length
                    self._cache.clear()
                self._cache[sql] = found
        return found


class Connection:
    """The sqlite3-like face of one pooled psycopg connection, for the duration of a transaction."""

    def __init__(self, conn: Any, translate: _Translator) -> None:
        self._conn = conn
        self._translate = translate

    def execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        # Parameters always go along (an empty tuple too): psycopg then reads %% as %, as translated.
        return self._conn.execute(self._translate(sql), tuple(args))

    def executemany(self, sql: str, seq: Iterable[Iterable[Any]]) -> Any:
        rows = [tuple(args) for args in seq]
        cursor = self._conn.cursor()
        if rows:
            cursor.executemany(self._translate(sql), rows)
        return cursor


class PostgresDatabase:
    """The registry's metadata in PostgreSQL (see the module docstring).

    Args:
        url: ``postgresql://user:password@host:port/dbname`` (any libpq URL).
        migrate: apply the migrations not yet applied; False only checks that none is missing.
        min_size, max_size: connections the pool keeps open and opens at most.
        timeout: seconds to wait for a connection.

    Raises:
        DatabaseUnavailableError: the database cannot be reached or refuses the credentials.
        DatabaseError: ``migrate=False`` and the schema is behind this wanllmdb's.
    """

    dialect = "postgresql"

    def for_update(self, table: str = "") -> str:
        """`` FOR UPDATE [OF table]``: the rows a ``SELECT`` reads stay locked until the transaction ends."""
        return f" FOR UPDATE OF {table}" if table else " FOR UPDATE"

    def __init__(
        self, url: str, *, migrate: bool = True, min_size: int = 1, max_size: int = 16, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.path = mask_url(url)
        self._timeout = timeout
        self._translate = _Translator()
        #: Migration numbers this open applied (empty when the schema was already current).
        self.applied: list[int] = []
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
                if migrate:
                    self.applied = apply_migrations(conn, self.path)
                else:
                    self._check_current(conn)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to the metadata database {self.path}: {_one_line(exc)}"
            ) from None
        except psycopg.ProgrammingError as exc:  # e.g. a URL libpq cannot parse
            raise ConfigError(f"bad metadata database URL {self.path}: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot set up the metadata database {self.path}: {_one_line(exc)}") from None
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": _row_factory},
            timeout=timeout,
            check=ConnectionPool.check_connection,
            name="wanllmdb-metadata",
            open=False,
        )
        self._pool.open(wait=False)

    def _check_current(self, conn: Any) -> None:
        applied = applied_migrations(conn)
        missing = sorted(set(MIGRATIONS) - set(applied))
        if missing:
            have = max(applied, default=0)
            raise DatabaseError(
                f"the metadata database {self.path} is at schema {have}, this wanllmdb needs {SCHEMA_VERSION} "
                f"(migrations {', '.join(map(str, missing))} not applied): run 'wanllmdb server migrate --db URL' "
                "or start without --no-migrate"
            )

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Connection]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as raw:
                raw.execute(begin)
                try:
                    yield Connection(raw, self._translate)
                except BaseException:
                    if not raw.closed:
                        raw.execute("ROLLBACK")
                    raise
                raw.execute("COMMIT")
        except PoolTimeout as exc:
            raise DatabaseUnavailableError(
                f"the metadata database {self.path} is unavailable: no connection within {self._timeout:g}s "
                f"({_one_line(exc)})"
            ) from None
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> Exception:
        import psycopg

        state = getattr(exc, "sqlstate", None)
        if state in _RETRYABLE:
            return DatabaseBusyError(
                f"the metadata database {self.path} rolled the write back ({_one_line(exc)}); it is safe to retry"
            )
        if isinstance(exc, psycopg.OperationalError) and (state is None or state[:2] in ("08", "57", "53")):
            return DatabaseUnavailableError(f"the metadata database {self.path} is unavailable: {_one_line(exc)}")
        return exc

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process holds the advisory lock ``name`` for the block (it does not wait for it).

        Replicas run background work (draft expiry, stale uploads) inside it, so one of them does it at a
        time: ``pg_try_advisory_lock`` on a connection held for the block, released at its end (or when the
        connection dies with a killed replica).
        """
        import psycopg

        key = _ADVISORY_BASE + zlib.crc32(name.encode())
        try:
            with self._pool.connection() as raw:
                raw.autocommit = True
                try:
                    held = bool(raw.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
                    try:
                        yield held
                    finally:
                        if held and not raw.closed:
                            raw.execute("SELECT pg_advisory_unlock(%s)", (key,))
                finally:
                    raw.autocommit = False
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A READ COMMITTED transaction on a pooled connection (committed when the block ends)."""
        with self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A consistent snapshot for several queries (REPEATABLE READ, READ ONLY)."""
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            yield conn

    def query(self, sql: str, args: Iterable[object] = ()) -> list:
        """All rows of one statement (its own transaction, which commits what it writes)."""
        with self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED") as conn:
            return conn.execute(sql, args).fetchall()


#: Advisory lock keys of background work: this base plus the CRC-32 of the work's name.
_ADVISORY_BASE = 0x77616E6C << 32


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))
