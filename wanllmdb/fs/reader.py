"""File bytes for the mount: whole small blobs, verified chunks of large ones, read-ahead, all through the cache.

Algorithm
---------
**Complete blobs.** ``open()`` looks the blob up in the shared cache (``blobs/<sha256>``, the same files the
SDK's ``download()`` uses) and keeps a descriptor for the handle; every read is one ``os.preadv`` into the
caller's buffer. Eviction unlinks the file, which never disturbs an open descriptor.

**Single-chunk files** (no chunk digests) are fetched whole at ``open()`` through ``BlobCache.ensure``, which
checks size and SHA-256 before renaming the blob into place; then as above.

**Larger files** not yet cached get a *partial*: a sparse file from ``BlobCache.new_partial``, shared by all
handles of that blob in this process, with a bitmap of the chunks it holds. A read

1. computes the chunks covering ``[offset, offset + size)``; for each missing one it joins the fetch in
   flight or starts one on the *demand* pool (a read-ahead of that chunk still queued is cancelled and
   replaced), then waits with the timeout, holding no lock;
2. a fetch streams the range (the registry's ``fetch_range_into``) straight into the chunk's place in the
   partial file, hashing each piece on the way, and marks the chunk present only once its length and
   SHA-256 match the manifest's chunk digest; reads only ever touch present chunks, so no read can see
   unverified bytes;
3. returns ``preadv`` of the partial.

**Read-ahead** (per handle, after mountpoint-s3's prefetcher): a read starting within ``SEQ_SLACK`` (at most
two chunks) of where the handle's reads have reached is sequential (the slack absorbs the kernel issuing
readahead requests in parallel, which arrive out of order). Each time a sequential reader enters a new
chunk its window doubles (1, 2, 4, ... ``max_window`` chunks) and the missing chunks of the window ahead
are queued on the small read-ahead pool; any other read is a seek and resets the window to 0. So
``head -c 100`` costs the first chunk plus one chunk of read-ahead, a streaming reader stays up to
``max_window`` chunks ahead, and random access (``mmap``) fetches only the chunks it touches.

**Completion.** When the last chunk lands, the worker hashes the partial as a whole and promotes it into
``blobs/`` (``BlobCache.promote_partial``, a hard link: the handles' descriptor now names the complete blob).
If the whole-file digest contradicts the manifest, nothing is admitted and every read of that file fails.
A partial nobody holds open stays resumable for a while (``idle_partials``), then is discarded.

**Failures.** A fetch error, a timeout or a digest mismatch fails the read with
:class:`~wanllmdb.errors.FetchError` / :class:`~wanllmdb.errors.ChecksumError` (the FUSE layer answers EIO),
logged with the file and the reason; the chunk is fetched again by the next read that needs it.

**Costs.** Per 1 MiB read of present data: a bitmap test and one ``preadv`` (one copy, no lock, no cache-index
write). A fetch holds one network piece (1 MiB) in memory at a time, never a whole chunk: no chunk-sized
buffers, so resident memory stays flat however many fetches run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

from ..cache.store import BlobCache, BlobWriter
from ..errors import ChecksumError, FetchError, WanllmdbError
from ..manifest import ManifestEntry
from .flight import Flights

logger = logging.getLogger(__name__)

#: ``(sha256, start, length, writer) -> count`` streams a range of a blob into ``writer`` piece by piece
#: (``Registry.fetch_range_into``).
RangeStreamer = Callable[[str, int, int, BlobWriter], int]
#: ``(sha256, size, writer)`` writes a whole blob (``Registry.fetch_blob``).
BlobFetcher = Callable[[str, int, BlobWriter], object]

#: Seconds after a blob enters the cache before the cache index is written (batched, off the read path).
INDEX_FLUSH_DELAY = 1.0
#: Reads starting this close to where a handle's reads reached count as sequential (at most two chunks).
SEQ_SLACK = 8 << 20


@dataclass
class ReadStats:
    """Counters for tests, logs and benchmarks (``user.wanllmdb.stats`` on the mount root)."""

    chunks_fetched: int = 0
    chunk_bytes: int = 0
    blobs_fetched: int = 0
    blob_bytes: int = 0
    readahead_chunks: int = 0
    cache_hits: int = 0
    promoted: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Partial:
    """A blob being filled chunk by chunk in this process."""

    __slots__ = (
        "entry", "label", "path", "fd", "present", "count", "nchunks", "refs", "lock", "failed", "done",
    )

    def __init__(self, entry: ManifestEntry, label: str, path: str, fd: int) -> None:
        self.entry = entry
        self.label = label
        self.path = path
        self.fd = fd
        self.nchunks = len(entry.chunks)
        self.present = bytearray(self.nchunks)  # chunks written to the partial file and verified there
        self.count = 0
        self.refs = 0
        self.lock = threading.Lock()
        self.failed: WanllmdbError | None = None
        self.done = False  # every chunk present (and promotion attempted)


class Handle:
    """One open file: a descriptor of the complete blob, or a share of a partial, plus read-ahead state."""

    __slots__ = ("entry", "label", "fd", "partial", "next_offset", "window", "last_chunk")

    def __init__(self, entry: ManifestEntry, label: str, fd: int | None, partial: _Partial | None) -> None:
        self.entry = entry
        self.label = label
        self.fd = fd
        self.partial = partial
        self.next_offset = 0
        self.window = 0
        self.last_chunk = -1


class ChunkReader:
    """Serves reads of blobs from the cache, fetching what is missing (see the module docstring).

    Args:
        cache: the shared blob cache.
        fetch_range_into: streams a range of a blob into a writer (the registry's ``fetch_range_into``).
        fetch_blob: whole-blob reads (the registry's ``fetch_blob``).
        stop: completed when the filesystem shuts down: every wait gives up at once.
        timeout: seconds a read waits for a fetch that makes no progress.
        readahead_workers: threads fetching ahead of sequential readers.
        demand_workers: threads fetching what a read waits for (small files and missing chunks).
        max_window: most chunks a sequential reader is kept ahead by.
        idle_partials: partial files kept resumable after their last handle closed.
    """

    def __init__(
        self,
        cache: BlobCache,
        fetch_range_into: RangeStreamer,
        fetch_blob: BlobFetcher,
        *,
        stop: Future[None],
        timeout: float = 30.0,
        readahead_workers: int = 3,
        demand_workers: int = 16,
        max_window: int = 8,
        idle_partials: int = 8,
    ) -> None:
        self.cache = self._cache = cache
        self._fetch_range_into = fetch_range_into
        self._fetch_blob = fetch_blob
        self._timeout = timeout
        self._max_window = max(1, max_window)
        self._idle_max = idle_partials
        self._demand_pool = ThreadPoolExecutor(demand_workers, thread_name_prefix="wanllmdb-fetch")
        self._ahead_pool = ThreadPoolExecutor(readahead_workers, thread_name_prefix="wanllmdb-ahead")
        self._flights = Flights(self._demand_pool, stop)
        self._lock = threading.Lock()
        self._partials: dict[str, _Partial] = {}
        self._idle: OrderedDict[str, _Partial] = OrderedDict()
        self._stats_lock = threading.Lock()
        self.stats = ReadStats()
        self._flush_timer: threading.Timer | None = None
        self._ahead: weakref.WeakSet[Future] = weakref.WeakSet()  # read-ahead fetches (a demand may cancel them)

    # --- open / release ---------------------------------------------------------------------------------

    def open(self, entry: ManifestEntry, label: str) -> Handle:
        """A handle for reading ``entry``; single-chunk files are fetched (and verified) here.

        Raises:
            FetchError, ChecksumError, TransportError: the file could not be fetched.
        """
        if entry.size == 0:
            return Handle(entry, label, None, None)
        for _attempt in range(2):
            path = self._cache.lookup(entry.sha256)
            if path is None:
                if entry.is_chunked:
                    return Handle(entry, label, None, self._acquire_partial(entry, label))
                path = self._fetch_whole(entry, label)
            else:
                self._count(cache_hits=1)
            try:
                return Handle(entry, label, os.open(path, os.O_RDONLY | os.O_CLOEXEC), None)
            except FileNotFoundError:
                logger.debug("%s: cached blob evicted before it was opened; fetching again", label)
        raise FetchError(f"{label}: the cached blob keeps disappearing (cache too small?)")

    def release(self, handle: Handle) -> None:
        if handle.fd is not None:
            os.close(handle.fd)
            handle.fd = None
        if handle.partial is not None:
            self._unref(handle.partial)
            handle.partial = None

    # --- reading ----------------------------------------------------------------------------------------

    def read_into(self, handle: Handle, offset: int, view: memoryview) -> int:
        """Fill ``view`` with the file's bytes from ``offset``; returns the count (short only at EOF).

        Raises:
            FetchError: a chunk could not be fetched in time (or the filesystem is shutting down).
            ChecksumError: fetched bytes did not match their digest.
        """
        fd = handle.fd
        if fd is not None:
            return os.preadv(fd, [view], offset)
        part = handle.partial
        if part is None:
            return 0  # an empty file
        end = min(handle.entry.size, offset + len(view))
        if offset >= end:
            return 0
        if part.count < part.nchunks:
            self._fill(handle, part, offset, end)
        if part.failed is not None:
            raise part.failed
        return os.preadv(part.fd, [view[: end - offset]], offset)

    def _fill(self, handle: Handle, part: _Partial, offset: int, end: int) -> None:
        chunk_size = handle.entry.chunk_size
        first, last = offset // chunk_size, (end - 1) // chunk_size
        present = part.present
        needed = [(index, self._start_demand(part, index)) for index in range(first, last + 1) if not present[index]]
        for index, future in needed:
            self._wait_demand(part, index, future)
        # Read-ahead only once what this read needed has arrived: on two cores a chunk fetched ahead would
        # otherwise compete with the one a reader is waiting for.
        self._read_ahead(handle, part, offset, end, last)
        for index in range(first, last + 1):  # a fetch that ended without storing its chunk: fetch again
            if not present[index]:
                self._wait_demand(part, index, self._start_demand(part, index))

    def read(self, handle: Handle, size: int, offset: int) -> bytes:
        """Like :meth:`read_into`, returning new bytes."""
        buf = bytearray(max(0, min(size, handle.entry.size - offset)))
        n = self.read_into(handle, offset, memoryview(buf)) if buf else 0
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    # --- whole blobs ------------------------------------------------------------------------------------

    def _fetch_whole(self, entry: ManifestEntry, label: str) -> str:
        progress = _Progress()

        def fetch() -> str:
            def write_blob(writer: BlobWriter) -> None:
                self._fetch_blob(entry.sha256, entry.size, progress.wrap(writer))
                self._count(blobs_fetched=1, blob_bytes=entry.size)

            path = self._cache.ensure(entry.sha256, entry.size, write_blob, label=label, lock_timeout=self._timeout)
            self._index_soon()
            return path

        future, _ = self._flights.start(("blob", entry.sha256), fetch)
        try:
            return self._flights.wait(future, self._timeout, label, progress=progress.value)
        except WanllmdbError as exc:
            self._count(failures=1)
            logger.error("read of %s failed: %s", label, exc)
            raise

    # --- partials ---------------------------------------------------------------------------------------

    def _acquire_partial(self, entry: ManifestEntry, label: str) -> _Partial:
        sha = entry.sha256
        with self._lock:
            part = self._partials.get(sha)
            if part is None:
                part = self._idle.pop(sha, None)
                if part is None:
                    path = self._cache.new_partial(sha, entry.size)
                    part = _Partial(entry, label, path, os.open(path, os.O_RDWR | os.O_CLOEXEC))
                self._partials[sha] = part
            part.refs += 1
        return part

    def _ref(self, part: _Partial) -> None:
        with self._lock:
            part.refs += 1

    def _unref(self, part: _Partial) -> None:
        discard: list[_Partial] = []
        with self._lock:
            part.refs -= 1
            if part.refs > 0:
                return
            sha = part.entry.sha256
            if self._partials.get(sha) is part:
                del self._partials[sha]
            if part.done or part.failed is not None or self._idle_max <= 0:
                discard.append(part)
            else:
                self._idle[sha] = part
                while len(self._idle) > self._idle_max:
                    discard.append(self._idle.popitem(last=False)[1])
        for item in discard:
            self._close_partial(item)

    def _close_partial(self, part: _Partial) -> None:
        os.close(part.fd)
        if not part.done:
            self._cache.discard_partial(part.path)

    def _start_demand(self, part: _Partial, index: int) -> Future:
        key = (part.entry.sha256, index)
        queued = self._flights.inflight(key)
        if queued is not None and queued in self._ahead and queued.cancel():
            logger.debug("%s: chunk %d wanted now; its queued read-ahead was cancelled", part.label, index)
        return self._start_chunk(part, index, ahead=False)

    def _start_chunk(self, part: _Partial, index: int, ahead: bool) -> Future:
        """The fetch of chunk ``index`` in flight, or a new one; its future completes once the chunk is verified."""
        self._ref(part)  # the worker keeps the partial (and its descriptor) alive until its write is done
        try:
            future, created = self._flights.start(
                (part.entry.sha256, index),
                lambda publish: self._fetch_chunk(part, index, publish, ahead),
                pool=self._ahead_pool if ahead else None,
                early=True,
                on_exit=lambda: self._unref(part),
            )
        except BaseException:
            self._unref(part)
            raise
        if not created:
            self._unref(part)
        elif ahead:
            self._ahead.add(future)
        return future

    def _wait_demand(self, part: _Partial, index: int, future: Future) -> None:
        try:
            self._flights.wait(future, self._timeout, f"{part.label}: chunk {index}")
        except WanllmdbError as exc:
            self._count(failures=1)
            logger.error("read of %s failed: %s", part.label, exc)
            raise

    def _read_ahead(self, handle: Handle, part: _Partial, offset: int, end: int, last: int) -> None:
        if abs(offset - handle.next_offset) > min(SEQ_SLACK, 2 * handle.entry.chunk_size):
            handle.window = 0
            handle.last_chunk = last
            handle.next_offset = end
            return
        if end > handle.next_offset:
            handle.next_offset = end
        if last <= handle.last_chunk:
            return
        handle.last_chunk = last
        window = handle.window = min(max(1, handle.window * 2), self._max_window)
        present = part.present
        for index in range(last + 1, min(last + 1 + window, part.nchunks)):
            if not present[index]:
                self._prefetch(part, index)

    def _prefetch(self, part: _Partial, index: int) -> None:
        if self._flights.inflight((part.entry.sha256, index)) is not None:
            return
        try:
            future = self._start_chunk(part, index, ahead=True)
        except FetchError:
            return  # shutting down
        future.add_done_callback(lambda f: _log_readahead_failure(f, part.label, index))

    def _fetch_chunk(self, part: _Partial, index: int, publish: Callable[[], None], ahead: bool) -> None:
        """Fetch one chunk into the partial file, verify it there, mark it present (runs on a pool thread).

        The bytes are written into the chunk's own range of the partial file as they arrive and hashed on
        the way; the chunk is marked present only once its length and SHA-256 match, and readers only ever
        read present chunks, so unverified bytes are never served (a failed fetch leaves them unmarked, to
        be overwritten by the next fetch). ``publish`` then completes the flight before the bookkeeping.
        """
        if part.present[index]:
            return
        entry = part.entry
        start, length = entry.chunk_range(index)
        sink = _ChunkSink(part, index, start, length)
        self._fetch_range_into(entry.sha256, start, length, sink)
        sink.verify()
        with part.lock:
            if part.present[index]:
                return
            part.present[index] = 1
            part.count += 1
            complete = part.count == part.nchunks
        publish()
        self._count(chunks_fetched=1, chunk_bytes=length, readahead_chunks=int(ahead))
        if complete:
            self._complete(part)  # on this worker: no reader waits for it any more
        else:
            self._account(part)

    def _account(self, part: _Partial) -> None:
        try:
            self._cache.account_partial(part.path, part.count * part.entry.chunk_size)
        except Exception as exc:  # bookkeeping only: the verified chunk stays readable either way
            logger.warning("%s: could not record partial download in the cache index: %s", part.label, exc)

    def _complete(self, part: _Partial) -> None:
        """Check the whole file and admit it to the cache as a complete blob."""
        entry = part.entry
        try:
            if os.fstat(part.fd).st_nlink == 0:
                logger.info("%s: partial file was evicted while open; serving it without caching", part.label)
            else:
                self._cache.promote_partial(part.path, entry.sha256, entry.size, label=part.label)
                self._count(promoted=1)
                self._index_soon()
        except ChecksumError as exc:
            part.failed = exc
            logger.error("read of %s failed: the complete file does not match its digest: %s", part.label, exc)
        except OSError as exc:
            logger.warning("%s: could not admit the completed file to the cache: %s", part.label, exc)
        finally:
            part.done = True

    # --- bookkeeping ------------------------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _index_soon(self) -> None:
        """Have the cache index the blobs this process admitted, in one batch a moment from now.

        The cache batches index writes; a long-lived mount must still flush them, or other processes'
        eviction would not see (and could not bound) what the mount brought in.
        """
        with self._lock:
            if self._flush_timer is not None:
                return
            self._flush_timer = timer = threading.Timer(INDEX_FLUSH_DELAY, self._flush_index)
        timer.daemon = True
        timer.start()

    def _flush_index(self) -> None:
        with self._lock:
            self._flush_timer = None
        try:
            self._cache.flush()
        except Exception as exc:  # bookkeeping only; the next admission tries again
            logger.warning("could not update the cache index: %s", exc)

    def close(self) -> None:
        """Stop fetching and drop this process's partial files (complete blobs stay cached)."""
        self._demand_pool.shutdown(wait=False, cancel_futures=True)
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()
            self._flush_index()
        with self._lock:
            parts = list(self._partials.values()) + list(self._idle.values())
            self._partials.clear()
            self._idle.clear()
        for part in parts:
            try:
                if not part.done:
                    self._cache.discard_partial(part.path)
            except Exception as exc:  # shutting down: a stale partial is reclaimed by cache eviction later
                logger.debug("could not discard %s: %s", part.path, exc)


class _Progress:
    """Counts bytes a whole-blob fetch has written, so a slow but moving download is not timed out."""

    def __init__(self) -> None:
        self.bytes = 0

    def value(self) -> int:
        return self.bytes

    def wrap(self, writer: BlobWriter) -> BlobWriter:
        progress = self

        class _Counting:
            def write(self, data: bytes | memoryview, /) -> int:
                n = writer.write(data)
                progress.bytes += len(data)
                return n

        return _Counting()


class _ChunkSink:
    """Writes a chunk's bytes into its range of the partial file as they arrive, hashing them on the way."""

    __slots__ = ("part", "index", "start", "length", "pos", "sha")

    def __init__(self, part: _Partial, index: int, start: int, length: int) -> None:
        self.part = part
        self.index = index
        self.start = start
        self.length = length
        self.pos = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes | memoryview, /) -> int:
        n = len(data)
        if self.pos + n > self.length:  # never write past the chunk: the next one may be present already
            raise ChecksumError(
                f"{self.part.label}: chunk {self.index}: received more than its {self.length} bytes",
                expected=str(self.length),
                actual=str(self.pos + n),
            )
        self.sha.update(data)
        try:
            _pwrite_all(self.part.fd, data, self.start + self.pos)
        except OSError as exc:  # the cache's disk is full or failing: this read fails, a later one retries
            raise FetchError(f"{self.part.label}: chunk {self.index}: could not write it to the cache: {exc}") from exc
        self.pos += n
        return n

    def verify(self) -> None:
        label, index = self.part.label, self.index
        if self.pos != self.length:
            raise ChecksumError(
                f"{label}: chunk {index}: expected {self.length} bytes at offset {self.start}, received {self.pos}",
                expected=str(self.length),
                actual=str(self.pos),
            )
        digest = self.sha.hexdigest()
        expected = self.part.entry.chunks[index]
        if digest != expected:
            raise ChecksumError(
                f"{label}: chunk {index} (offset {self.start}): SHA-256 mismatch (expected {expected}, got {digest})",
                expected=expected,
                actual=digest,
            )


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _log_readahead_failure(future: Future, label: str, index: int) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        logger.warning("read-ahead of %s chunk %d failed (a read needing it will retry): %s", label, index, exc)
