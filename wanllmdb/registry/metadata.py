"""Which metadata store a registry uses: SQLite under its root (the default) or a PostgreSQL URL."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .db import Database
from .pgdb import PostgresDatabase, is_postgres_url, mask_url

MetadataDB = Database | PostgresDatabase


def open_metadata(url: str | None, root: str, *, migrate: bool = True) -> MetadataDB:
    """The metadata database for ``url``: PostgreSQL for ``postgresql://`` / ``postgres://`` URLs, the
    SQLite file ``<root>/registry.sqlite`` for None.

    Args:
        migrate: apply missing migrations (PostgreSQL); False fails if the schema is behind. SQLite always
            upgrades in place, as the embedded registry does.

    Raises:
        ConfigError: ``url`` is neither.
        DatabaseUnavailableError: the PostgreSQL database cannot be reached.
    """
    if url is None:
        root = os.path.abspath(os.path.expanduser(root))
        os.makedirs(root, exist_ok=True)
        return Database(os.path.join(root, "registry.sqlite"))
    if is_postgres_url(url):
        return PostgresDatabase(url, migrate=migrate)
    raise ConfigError(
        f"unsupported metadata database {mask_url(url)!r}: expected postgresql://user:password@host:port/dbname"
    )
