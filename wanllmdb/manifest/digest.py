"""Streaming digests: MD5, SHA-256 and per-chunk SHA-256 of a file in one read.

Memory stays at two chunk-sized buffers whatever the file size. For files larger than one buffer, MD5 runs
on a worker thread while the reading thread computes SHA-256 (hashlib releases the GIL on large buffers),
so both digests cost about the time of the slower one; see benchmarks/ for the measurement.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..iobuf import buffer_for
from ..settings import CHUNK_SIZE

_md5_pool: ThreadPoolExecutor | None = None
_md5_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _md5_pool
    with _md5_pool_lock:
        if _md5_pool is None:
            _md5_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wanllmdb-md5")
        return _md5_pool


@dataclass(frozen=True)
class FileDigest:
    size: int
    md5: str
    sha256: str
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()


def _read_full(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` unless EOF comes first; returns the byte count."""
    total = 0
    while total < len(view):
        n = os.readv(fd, [view[total:]])
        if n == 0:
            break
        total += n
    return total


def hash_file(
    path: str | os.PathLike[str],
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int], object] | None = None,
) -> FileDigest:
    """Digest a file in one streaming pass.

    Args:
        path: the file.
        chunk_size: chunk length for per-chunk SHA-256 (files no larger than this get none).
        progress: called with the number of bytes just read.

    Raises:
        OSError: the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size_hint = os.fstat(fd).st_size
        if size_hint <= chunk_size:
            return _hash_small(fd, size_hint, chunk_size, progress)
        return _hash_large(fd, chunk_size, progress)
    finally:
        os.close(fd)


def _hash_small(fd: int, size_hint: int, chunk_size: int, progress: Callable[[int], object] | None) -> FileDigest:
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    size = 0
    buf = buffer_for(size_hint, cap=1 << 20)
    view = memoryview(buf)
    while True:
        n = os.readv(fd, [view])
        if n == 0:
            break
        md5.update(view[:n])
        sha.update(view[:n])
        size += n
        if progress:
            progress(n)
    if size > chunk_size:  # the file grew between fstat and read: fall back to the chunked path
        os.lseek(fd, 0, os.SEEK_SET)
        return _hash_large(fd, chunk_size, progress)
    return FileDigest(size, md5.hexdigest(), sha.hexdigest())


def _hash_large(fd: int, chunk_size: int, progress: Callable[[int], object] | None) -> FileDigest:
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    chunks: list[str] = []
    buffers = [memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))]
    pending: Future[None] | None = None
    size = 0
    index = 0
    pool = _pool()
    try:
        while True:
            view = buffers[index % 2]
            n = _read_full(fd, view)
            if n == 0:
                break
            data = view[:n]
            # The buffer read next was handed to MD5 two rounds ago; wait for that round to finish first.
            if pending is not None:
                pending.result()
            pending = pool.submit(md5.update, data)
            sha.update(data)
            chunks.append(hashlib.sha256(data).hexdigest())
            size += n
            index += 1
            if progress:
                progress(n)
    finally:
        if pending is not None:
            pending.result()
    if size <= chunk_size:
        return FileDigest(size, md5.hexdigest(), sha.hexdigest())
    return FileDigest(size, md5.hexdigest(), sha.hexdigest(), chunk_size, tuple(chunks))


def hash_bytes(data: bytes | memoryview, chunk_size: int = CHUNK_SIZE) -> FileDigest:
    """Digest of in-memory bytes (tests and small generated files)."""
    view = memoryview(data)
    chunks: tuple[str, ...] = ()
    if len(view) > chunk_size:
        chunks = tuple(
            hashlib.sha256(view[i : i + chunk_size]).hexdigest() for i in range(0, len(view), chunk_size)
        )
    return FileDigest(
        len(view),
        hashlib.md5(view, usedforsecurity=False).hexdigest(),
        hashlib.sha256(view).hexdigest(),
        chunk_size if chunks else 0,
        chunks,
    )
