"""Digests of local files for the SDK: remembered across runs, so an unchanged file is read once.

A hit in the digest cache (same device, inode, size, mtime and ctime) skips the read entirely. A digest is
remembered only if the file's stamp did not change while it was read, and not while its mtime is so recent
that a write in the same clock tick could go unnoticed (git's "racy" rule).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from ..cache.digests import DigestCache, StatLike, stamp
from ..manifest.digest import FileDigest, hash_file
from ..settings import CHUNK_SIZE

#: A file modified this recently (seconds) is hashed but its digest not remembered.
RACY_SECONDS = 2.0
#: Files handed to the hashing threads at once (see :func:`digest_files`).
HASH_WINDOW = 1024


def cached_digest(cache: DigestCache, st: StatLike) -> FileDigest | None:
    return cache.get(st, CHUNK_SIZE)


def remember(cache: DigestCache, local: str, st: StatLike, digest: FileDigest) -> None:
    """Keep ``digest`` for ``local`` if the file is still what ``st`` (taken before reading) described."""
    try:
        now = os.stat(local)
    except OSError:
        return
    if stamp(now) == stamp(st) and time.time() - st.st_mtime > RACY_SECONDS and digest.size == st.st_size:
        cache.put(st, CHUNK_SIZE, digest)


def remember_many(cache: DigestCache, items: list[tuple[str, StatLike, FileDigest]]) -> None:
    """``remember`` of many files (local path, stat taken before reading, digest) in one transaction."""
    keep = []
    for local, st, digest in items:
        try:
            now = os.stat(local)
        except OSError:
            continue
        if stamp(now) == stamp(st) and time.time() - st.st_mtime > RACY_SECONDS and digest.size == st.st_size:
            keep.append((st, digest))
    cache.put_many(keep, CHUNK_SIZE)


def digest_files(cache: DigestCache, items: list[tuple[str, StatLike]],
                 map_fn: Callable[..., Iterable[FileDigest]] = map) -> list[FileDigest]:
    """``digest_file`` of many files (local path, stat): the remembered ones in a few queries, the others
    hashed through ``map_fn`` (a thread pool's map) and remembered in one transaction."""
    digests = cache.get_many([st for _, st in items], CHUNK_SIZE)
    todo = [i for i, d in enumerate(digests) if d is None]
    # A window at a time: a thread pool's map submits every item at once, and a future costs ~1 KB (100,000
    # files: ~150 MB held until the last one is hashed).
    for start in range(0, len(todo), HASH_WINDOW):
        window = todo[start : start + HASH_WINDOW]
        for i, digest in zip(window, map_fn(lambda i: hash_file(items[i][0], CHUNK_SIZE), window), strict=True):
            digests[i] = digest
    remember_many(cache, [(items[i][0], items[i][1], digests[i]) for i in todo])
    return digests  # type: ignore[return-value]  # every None was replaced


def digest_file(cache: DigestCache, local: str, st: StatLike | None = None) -> FileDigest:
    """The digests of ``local``: remembered if unchanged, else computed in one read (and remembered)."""
    st = st or os.stat(local)
    hit = cached_digest(cache, st)
    if hit is not None:
        return hit
    digest = hash_file(local, CHUNK_SIZE)
    remember(cache, local, st, digest)
    return digest
