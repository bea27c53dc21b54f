"""Which hash a file's chunk digests use: SHA-256 (bare hex, every manifest before BLAKE3) or BLAKE3
(``blake3:`` + hex).

A file's identity stays its SHA-256 (object storage checks it) and its MD5 (W&B's digest); the chunk digests
exist only so that a reader can check each chunk it fetches before serving it. BLAKE3 costs ~0.27 CPU-s per
GiB on one core of the benchmark machine against SHA-256's ~0.71 (with SHA-NI), and every cold read through
the mount, every ranged download and every log pays one chunk-digest pass.

The algorithm travels inside each digest string (as OCI's ``sha256:…`` digests do), never in a separate
field: a component that predates BLAKE3 refuses such a manifest ("chunk digests must be 64 lowercase hex
digits") instead of dropping a field and then taking BLAKE3 digests for SHA-256 ones. All chunk digests
of one file use one algorithm.

``WANLLMDB_CHUNK_HASH=sha256`` makes writers produce SHA-256 chunk digests again (for readers older than
BLAKE3 support); readers accept both.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from blake3 import blake3

from ..errors import ConfigError

SHA256 = "sha256"
BLAKE3 = "blake3"
ALGORITHMS = (SHA256, BLAKE3)
#: What a digest string starts with, per algorithm.
PREFIXES = {SHA256: "", BLAKE3: "blake3:"}
#: How errors name each algorithm.
TITLES = {SHA256: "SHA-256", BLAKE3: "BLAKE3"}
#: Writers' algorithm when ``WANLLMDB_CHUNK_HASH`` is unset.
DEFAULT = BLAKE3

#: One chunk digest: 64 hex digits, bare (SHA-256) or after ``blake3:``.
CHUNK_DIGEST = re.compile(r"(?:blake3:)?[0-9a-f]{64}")


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...
    def hexdigest(self) -> str: ...


_FACTORIES: dict[str, Callable[[], Hasher]] = {SHA256: hashlib.sha256, BLAKE3: blake3}


def writer_algorithm() -> str:
    """The algorithm new chunk digests are computed with (``WANLLMDB_CHUNK_HASH``, default BLAKE3).

    Raises:
        ConfigError: an algorithm this wanllmdb does not know.
    """
    name = (os.environ.get("WANLLMDB_CHUNK_HASH") or DEFAULT).strip().lower()
    if name not in ALGORITHMS:
        raise ConfigError(f"WANLLMDB_CHUNK_HASH={name!r}: must be one of {', '.join(ALGORITHMS)}")
    return name


def algorithm_of(digest: str) -> str:
    """The algorithm of one chunk digest string (assumed to match :data:`CHUNK_DIGEST`)."""
    return BLAKE3 if digest.startswith("blake3:") else SHA256


class ChunkHash:
    """Computes chunk digests of one algorithm in the form a manifest stores them.

    ``new()`` gives a hasher (``update``/``hexdigest``); ``digest(hasher)`` the string to store or compare;
    ``of(data)`` both at once for one whole chunk.
    """

    __slots__ = ("name", "new", "prefix", "title")

    def __init__(self, name: str) -> None:
        self.name = name
        self.title = TITLES[name]
        self.new = _FACTORIES[name]
        self.prefix = PREFIXES[name]

    def digest(self, hasher: Hasher) -> str:
        return self.prefix + hasher.hexdigest()

    def of(self, data: Any) -> str:
        hasher = self.new()
        hasher.update(data)
        return self.prefix + hasher.hexdigest()

    def __repr__(self) -> str:
        return f"ChunkHash({self.name!r})"


_BY_NAME = {name: ChunkHash(name) for name in ALGORITHMS}


def chunk_hash(name: str | None = None) -> ChunkHash:
    """The :class:`ChunkHash` of ``name``, or of the writers' algorithm when None."""
    return _BY_NAME[name or writer_algorithm()]


def for_digests(chunks: tuple[str, ...] | list[str]) -> ChunkHash:
    """The :class:`ChunkHash` that checks ``chunks`` (a file's chunk digests, one algorithm)."""
    return _BY_NAME[algorithm_of(chunks[0])] if chunks else _BY_NAME[SHA256]
