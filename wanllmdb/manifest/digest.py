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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..iobuf import Drain, buffer_for, read_full
from ..settings import CHUNK_SIZE
from .chunkhash import ALGORITHMS, ChunkHash, chunk_hash

#: Pieces at least this large have their MD5 computed on the worker thread.
THREAD_MIN_PIECE = 1 << 20

_md5_pool: ThreadPoolExecutor | None = None
_md5_pool_lock = threading.Lock()


def md5_pool() -> ThreadPoolExecutor:
    """The worker threads that compute MD5 beside the caller's other digests."""
    global _md5_pool
    with _md5_pool_lock:
        if _md5_pool is None:
            _md5_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wanllmdb-md5")
        return _md5_pool


@dataclass(frozen=True, slots=True)
class FileDigest:
    size: int
    md5: str
    sha256: str
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()


class ChunkDigester:
    """The chunk digests alone of a stream fed with :meth:`update` (``chunks``: their algorithm, default the
    writers').

    :meth:`digests` covers every byte: whole chunks, then the last partial one, so a stream of at most one
    chunk still has one digest (none when empty). A :class:`FileDigest` stores chunk digests only for files
    over one chunk; the server computes the same list of what it received (``chunk_list_digest``) so that a
    client can check an upload end to end without MD5 or SHA-256 of its own.
    """

    __slots__ = ("_chunk", "_fill", "_hash", "_list", "chunk_size", "size")

    def __init__(self, chunk_size: int = CHUNK_SIZE, chunks: ChunkHash | None = None) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._hash = chunks or chunk_hash()
        self._chunk = self._hash.new()
        self._fill = 0
        self._list: list[str] = []

    @property
    def algorithm(self) -> str:
        return self._hash.name

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        n = len(view)
        self.size += n
        offset = 0
        while offset < n:
            take = min(n - offset, self.chunk_size - self._fill)
            if take == self.chunk_size:  # a whole chunk in one piece: no copy into the running hasher
                self._list.append(self._hash.of(view[offset : offset + take]))
            else:
                self._chunk.update(view[offset : offset + take])
                self._fill += take
                if self._fill == self.chunk_size:
                    self._list.append(self._hash.digest(self._chunk))
                    self._chunk = self._hash.new()
                    self._fill = 0
            offset += take

    def digests(self) -> tuple[str, ...]:
        if self._fill:
            return (*self._list, self._hash.digest(self._chunk))
        return tuple(self._list)


#: Header of an unaddressed upload that asks the server for the chunk digests of what it receives, as
#: ``"<algorithm> <chunk size>"`` (e.g. ``"blake3 1048576"``); the answer then carries their
#: :func:`chunk_list_digest`.
CHUNKS_HEADER = "X-Wanllmdb-Chunks"
#: Chunk sizes such a request may name.
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4096, 64 << 20


def chunks_request(digester: ChunkDigester) -> str:
    """The :data:`CHUNKS_HEADER` value asking for what ``digester`` computes."""
    return f"{digester.algorithm} {digester.chunk_size}"


def digester_for(request: str) -> ChunkDigester:
    """The :class:`ChunkDigester` a :data:`CHUNKS_HEADER` value asks for.

    Raises:
        InvalidInputError: not ``<algorithm> <size>`` of a known algorithm and a size in bounds.
    """
    parts = request.split()
    if len(parts) != 2 or parts[0] not in ALGORITHMS or not parts[1].isdigit():
        raise InvalidInputError(
            f"{CHUNKS_HEADER}: {request[:80]!r} is not '<algorithm> <chunk size>' with one of {', '.join(ALGORITHMS)}"
        )
    size = int(parts[1])
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise InvalidInputError(f"{CHUNKS_HEADER}: chunk size {size} is not within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    return ChunkDigester(size, chunk_hash(parts[0]))


def chunk_list_digest(digests: Sequence[str]) -> str:
    """One SHA-256 over a list of chunk digests (newline-joined): what client and server compare."""
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


class Digester:
    """MD5, SHA-256 and chunk digests of a stream fed with :meth:`update`.

    ``chunks`` names the chunk digests' algorithm (default: the writers', :func:`.chunkhash.writer_algorithm`).

    A piece handed to ``update`` must stay unchanged until the next ``update`` (or ``result``) returns:
    its MD5 may still be running on the worker thread. Immutable ``bytes``, or two buffers used in turn,
    satisfy this.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE, chunks: ChunkHash | None = None) -> None:
        self.chunk_size = chunk_size
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha = hashlib.sha256()
        self._chunks = ChunkDigester(chunk_size, chunks)
        self._pending: Future[None] | None = None

    @property
    def size(self) -> int:
        return self._chunks.size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        n = len(view)
        if not n:
            return
        self._wait_md5()
        if n >= THREAD_MIN_PIECE:
            self._pending = md5_pool().submit(self._md5.update, view)
        else:
            self._md5.update(view)
        self._sha.update(view)
        self._chunks.update(view)

    def _wait_md5(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def result(self) -> FileDigest:
        self._wait_md5()
        return file_digest(self.size, self._md5.hexdigest(), self._sha.hexdigest(), self._chunks)


def file_digest(size: int, md5: str, sha256: str, chunks: ChunkDigester) -> FileDigest:
    """A :class:`FileDigest` with the chunk digests of ``chunks`` (kept only for a file over one chunk)."""
    if size <= chunks.chunk_size:
        return FileDigest(size, md5, sha256)
    return FileDigest(size, md5, sha256, chunks.chunk_size, chunks.digests())


class Pipelined:
    """A digester (:class:`Digester` or :class:`ChunkDigester`) fed from another thread: ``update`` queues the
    piece and returns at once.

    For an upload that hashes what it sends (``registry.store_unhashed``): the sending thread only reads and
    sends while this object's thread hashes (and hands MD5 to the MD5 worker), so hashing runs beside the
    send instead of alternating with it. The queue is bounded (``depth`` pieces), so memory stays flat
    whatever the stream's length. Pieces must be immutable (``bytes``): they are hashed after ``update``
    returns.
    """

    def __init__(self, digester: Digester | ChunkDigester, depth: int = 8) -> None:
        self.digester = digester
        self._drain = Drain(digester.update, depth, "wanllmdb-hash")

    def update(self, data: bytes) -> None:
        self._drain.put(data)

    def close(self) -> None:
        """Stop the hashing thread (idempotent); pieces already queued are hashed first."""
        self._drain.close()

    def finish(self) -> None:
        """Wait until every queued piece is hashed; raises the hashing thread's error, if any."""
        self.close()
        self._drain.check()


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
