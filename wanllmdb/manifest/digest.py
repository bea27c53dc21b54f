"""Streaming digests: MD5, SHA-256 and per-chunk digests (BLAKE3, or SHA-256: :mod:`.chunkhash`) of a byte
stream in one pass.

:class:`Digester` takes the bytes in pieces of any size (a file read, an upload being sent) and yields a
:class:`FileDigest`. For large pieces MD5 runs on a worker thread while the caller's thread computes the
SHA-256s (hashlib releases the GIL on large buffers), so all three cost about the time of the slowest; see
benchmarks/ for the measurement. Memory stays at the caller's buffers whatever the stream's length.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..iobuf import Drain, buffer_for, read_full
from ..settings import CHUNK_SIZE
from .chunkhash import ChunkHash, chunk_hash

#: Pieces at least this large have their MD5 computed on the worker thread.
THREAD_MIN_PIECE = 1 << 20

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


class Digester:
    """MD5, SHA-256 and chunk digests of a stream fed with :meth:`update`.

    ``chunks`` names the chunk digests' algorithm (default: the writers', :func:`.chunkhash.writer_algorithm`).

    A piece handed to ``update`` must stay unchanged until the next ``update`` (or ``result``) returns:
    its MD5 may still be running on the worker thread. Immutable ``bytes``, or two buffers used in turn,
    satisfy this.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE, chunks: ChunkHash | None = None) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha = hashlib.sha256()
        self._hash = chunks or chunk_hash()
        self._chunk = self._hash.new()
        self._chunk_fill = 0
        self._chunks: list[str] = []
        self._pending: Future[None] | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        n = len(view)
        if not n:
            return
        self._wait_md5()
        if n >= THREAD_MIN_PIECE:
            self._pending = _pool().submit(self._md5.update, view)
        else:
            self._md5.update(view)
        self._sha.update(view)
        self.size += n
        offset = 0
        while offset < n:
            take = min(n - offset, self.chunk_size - self._chunk_fill)
            if take == self.chunk_size:  # a whole chunk in one piece: no copy into the running hasher
                self._chunks.append(self._hash.of(view[offset : offset + take]))
            else:
                self._chunk.update(view[offset : offset + take])
                self._chunk_fill += take
                if self._chunk_fill == self.chunk_size:
                    self._chunks.append(self._hash.digest(self._chunk))
                    self._chunk = self._hash.new()
                    self._chunk_fill = 0
            offset += take

    def _wait_md5(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def result(self) -> FileDigest:
        self._wait_md5()
        if self.size <= self.chunk_size:
            return FileDigest(self.size, self._md5.hexdigest(), self._sha.hexdigest())
        chunks = list(self._chunks)
        if self._chunk_fill:
            chunks.append(self._hash.digest(self._chunk))
        return FileDigest(self.size, self._md5.hexdigest(), self._sha.hexdigest(), self.chunk_size, tuple(chunks))


class PipelinedDigester:
    """A :class:`Digester` fed from another thread: ``update`` queues the piece and returns at once.

    For an upload that hashes what it sends (``registry.store_unhashed``): the sending thread only reads and
    sends while this object's thread computes SHA-256 and the chunk digests (and hands MD5 to the MD5
    worker), so the three run side by side instead of alternating with the send. The queue is bounded
    (``depth`` pieces), so memory stays flat whatever the stream's length. Pieces must be immutable
    (``bytes``): they are hashed after ``update`` returns.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE, depth: int = 8) -> None:
        self._digester = Digester(chunk_size)
        self._drain = Drain(self._digester.update, depth, "wanllmdb-hash")

    def update(self, data: bytes) -> None:
        self._drain.put(data)

    def close(self) -> None:
        """Stop the hashing thread (idempotent); pieces already queued are hashed first."""
        self._drain.close()

    def result(self) -> FileDigest:
        self.close()
        self._drain.check()
        return self._digester.result()


def hash_file(
    path: str | os.PathLike[str],
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int], object] | None = None,
) -> FileDigest:
    """Digest a file in one streaming pass (two buffers of up to ``iobuf.MAX_BUFFER`` used in turn).

    Raises:
        OSError: the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size_hint = os.fstat(fd).st_size
        digester = Digester(chunk_size)
        # Two buffers in turn when MD5 may still be reading the previous one on the worker thread.
        count = 1 if size_hint < THREAD_MIN_PIECE else 2
        buffers = [memoryview(buffer_for(size_hint)) for _ in range(count)]
        index = 0
        while n := read_full(fd, buffers[index % count]):
            digester.update(buffers[index % count][:n])
            index += 1
            if progress:
                progress(n)
        return digester.result()
    finally:
        os.close(fd)


def hash_bytes(data: bytes | memoryview, chunk_size: int = CHUNK_SIZE) -> FileDigest:
    """Digest of in-memory bytes (tests and small generated files)."""
    digester = Digester(chunk_size)
    digester.update(data)
    return digester.result()
