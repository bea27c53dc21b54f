"""Digests of local files for the SDK: remembered across runs, so an unchanged file is read once.

A hit in the digest cache (same device, inode, size, mtime and ctime) skips the read entirely. A digest is
remembered only if the file's stamp did not change while it was read, and not while its mtime is so recent
that a write in the same clock tick could go unnoticed (git's "racy" rule).
"""

from __future__ import annotations

import os
import time

from ..cache.digests import DigestCache, stamp
from ..manifest.digest import FileDigest, hash_file
from ..settings import CHUNK_SIZE

#: A file modified this recently (seconds) is hashed but its digest not remembered.
RACY_SECONDS = 2.0


def cached_digest(cache: DigestCache, st: os.stat_result) -> FileDigest | None:
    return cache.get(st, CHUNK_SIZE)


def remember(cache: DigestCache, local: str, st: os.stat_result, digest: FileDigest) -> None:
    """Keep ``digest`` for ``local`` if the file is still what ``st`` (taken before reading) described."""
    try:
        now = os.stat(local)
    except OSError:
        return
    if stamp(now) == stamp(st) and time.time() - st.st_mtime > RACY_SECONDS and digest.size == st.st_size:
        cache.put(st, CHUNK_SIZE, digest)


def digest_file(cache: DigestCache, local: str, st: os.stat_result | None = None) -> FileDigest:
    """The digests of ``local``: remembered if unchanged, else computed in one read (and remembered)."""
    st = st or os.stat(local)
    hit = cached_digest(cache, st)
    if hit is not None:
        return hit
    digest = hash_file(local, CHUNK_SIZE)
    remember(cache, local, st, digest)
    return digest
