"""File bytes for the mount: whole small blobs, verified chunks of large ones, read-ahead, all through the cache.

Algorithm
---------
**Complete blobs.** ``open()`` looks the blob up in the shared cache (``blobs/<sha256>``, the same files the
SDK's ``download()`` uses) and keeps a descriptor for the handle; every read is one ``os.preadv`` into the
caller's buffer. Eviction unlinks the file, which never disturbs an open descriptor.

**Single-chunk files** (no chunk digests) are fetched whole at ``open()`` through ``BlobCache.ensure``, which
checks size and SHA-256 before renaming the blob into place; then as above.

**Packed small files.** The small files of a directory the mount announced together are fetched by
:meth:`ChunkReader.fill` into *packs* (``BlobCache.pack_builder``: each blob checked in memory, up to
``PACK_BLOBS`` written as one file), not a file each: creating a file costs this kernel more than reading
4 KiB. A handle of a packed blob keeps a descriptor of the pack and where the blob lies in it (``Handle.pack``);
its pack's stamp is compared at open and on each read, and the blob's bytes hashed again if it moved.

**Larger files** not yet cached get a *partial*: a sparse file from ``BlobCache.new_partial``, shared by all
handles of that blob in this process, with a bitmap of the chunks it holds (a chunk, 1 MiB for new
manifests, is the unit of verification; a request may carry several). A read

1. computes the chunks covering ``[offset, offset + size)``; for each missing one it joins the fetch that
   will bring it, or starts a *demand* fetch of the missing run (a read-ahead of it still queued is
   cancelled and its whole range fetched on the demand pool instead), then waits on the partial's
   condition, holding no lock, until the chunk is present, its fetch failed, or nothing moved for the
   timeout;
2. a fetch is one ranged request (the registry's ``fetch_range_into``) whose bytes go straight into their
   place in the partial file, hashed on the way; each chunk is marked present, and its waiters woken, as
   soon as its last byte is in and its length and SHA-256 match the manifest's chunk digest. Reads only
   ever touch present chunks, so no read can see unverified bytes, and a reader waits for its own chunk,
   not for the rest of the request;
3. returns ``preadv`` of the partial.

**Read-ahead** (per handle, after mountpoint-s3's prefetcher): a read starting within ``SEQ_SLACK`` of
where the handle's reads have reached is sequential (the slack absorbs the kernel's own read-ahead
requests, which arrive in parallel and out of order). Each time a sequential reader enters a new chunk its
window doubles (1, 2, 4, ... chunks, up to ``readahead_bytes``) and the missing chunks of the window ahead
are fetched on the small read-ahead pool, in requests of up to ``fetch_bytes``: a full window that slides
by one chunk is topped up a whole request at a time, not a chunk at a time. Any other read is a seek and
resets the window. So ``head -c 100`` costs the first chunk plus one chunk of read-ahead (2 MiB), a
streaming reader stays up to ``readahead_bytes`` ahead in 8 MiB requests, and random access (``mmap``)
fetches only the chunks it touches.

**Completion.** When the last chunk lands, the worker promotes the partial into ``blobs/``
(``BlobCache.promote_partial``, a hard link: the handles' descriptor now names the complete blob). With
``trust_chunk_digests`` (the mount) it is not hashed again: every chunk was verified against the manifest's
chunk digests as it landed, and the manifest binds those to the whole digest (its writer computed both in
one read of the file; the registry accepted the blob only after checking its SHA-256), so a second SHA-256
pass (~0.7 CPU-s/GiB) would only catch a forged manifest served together with store bytes forged to match
its chunks. Without it the worker hashes the file whole first; if that digest contradicts the manifest,
nothing is admitted and every read of that file fails.
A partial nobody holds open stays resumable for a while (``idle_partials``), then is discarded; at once while
the cache is over its size limit. Partial files count against that limit with the chunks they hold, and no
other process evicts them while this one lives (the cache's module docstring says why).

**References** (entries added with ``add_reference``) are fetched whole from their URI at ``open()``, through
``BlobCache.ensure`` like single-chunk files, by ``transport.references.ReferenceFetcher``, which checks
them against the recorded size and SHA-256 (and the cache checks again before admitting): a reference that
changed or vanished fails the open (EIO) with a log line naming the file and the URI, and nothing of it is
served or cached. A reference recorded without a checksum has nothing to check against, so it is refused
(EIO, logged): ``download()`` fetches those.

**Failures.** A fetch error, a timeout or a digest mismatch fails the read with
:class:`~wanllmdb.errors.FetchError` / :class:`~wanllmdb.errors.ChecksumError` (the FUSE layer answers EIO),
logged with the file and the reason; the chunk is fetched again by the next read that needs it.

**Costs.** Per 1 MiB read of present data: a bitmap test and one ``preadv`` (one copy, no lock, no cache-index
write); through :meth:`ChunkReader.ready` not even the copy (the mount has libfuse splice the bytes from the
descriptor). A fetch holds one network piece (1 MiB) in memory at a time, never a whole request: resident memory
stays flat however many fetches run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

from ..cache.store import PACK_MEMBER_MAX, BlobCache, BlobWriter, PackedBlob, blob_stamp, sha256_file
from ..errors import ChecksumError, FetchError, ReferenceNotFoundError, WanllmdbError
from ..iobuf import pwrite_all
from ..manifest import ManifestEntry
from ..manifest.chunkhash import for_digests
from ..transport.references import ReferenceFetcher
from .flight import Flights, Stopped

logger = logging.getLogger(__name__)

#: ``(sha256, start, length, writer) -> count`` streams a range of a blob into ``writer`` piece by piece
#: (``Registry.fetch_range_into``).
RangeStreamer = Callable[[str, int, int, BlobWriter], int]
#: ``(sha256, size, writer)`` writes a whole blob (``Registry.fetch_blob``).
BlobFetcher = Callable[[str, int, BlobWriter], object]

#: Seconds after a blob enters the cache before the cache index is written (batched, off the read path).
INDEX_FLUSH_DELAY = 1.0
#: Reads starting this close to where a handle's reads reached count as sequential: twice the kernel's
#: read-ahead (``max_readahead``), whose requests arrive in parallel and out of order (at most 16 chunks,
#: at least 2, so that files of small chunks still tell random from sequential reads).
SEQ_SLACK = 16 << 20
#: Most bytes one ranged request fetches: read-ahead is sent in requests this large, while each chunk in it
#: is verified and served as soon as its own bytes are in.
FETCH_BYTES = 8 << 20
#: How far ahead of a sequential reader chunks are fetched, at most.
READ_AHEAD_BYTES = 64 << 20
#: Longest wait of an open for a small blob another thread of the process is writing (the cache fill, which
#: writes one in well under a millisecond once its bundle is in) before fetching it the usual way: short, so
#: that a stalled writer costs a retried read (the kernel retries page by page) no more than this.
LOCAL_WRITER_WAIT = 0.25
#: The cache fill writes the pack it is gathering once it has gathered for this long, full or not: readers
#: waiting for one of its blobs (at most LOCAL_WRITER_WAIT) get it soon even where the bundles come slowly.
PACK_GATHER_SECONDS = 0.05
#: A read whose wanted chunks keep being cancelled under it (never in practice) gives up after this many rounds.
MAX_REFETCH = 3


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
        "entry", "label", "path", "fd", "present", "count", "nchunks", "refs", "cond", "fetching", "failed", "done",
        "stamp", "accounting", "chunk_hash",
    )

    def __init__(self, entry: ManifestEntry, label: str, path: str, fd: int) -> None:
        self.entry = entry
        self.label = label
        self.path = path
        self.fd = fd
        self.nchunks = len(entry.chunks)
        self.chunk_hash = for_digests(entry.chunks)  # how its chunk digests are computed
        self.present = bytearray(self.nchunks)  # chunks written to the partial file and verified there
        self.count = 0
        self.refs = 0
        self.cond = threading.Condition(threading.Lock())  # guards present, count and fetching
        self.fetching: dict[int, _Fetch] = {}  # chunk -> the fetch queued or running that will bring it
        self.failed: WanllmdbError | None = None
        self.done = False  # every chunk present (and promotion attempted)
        self.stamp: str | None = None  # once promoted: the blob's stamp (see ChunkReader._unchanged)
        self.accounting = threading.Lock()  # so that the last count recorded is the newest


class _Fetch:
    """One ranged request for chunks ``[first, stop)`` of a partial, queued or running."""

    __slots__ = ("first", "stop", "ahead", "future", "error", "failed_at", "over", "moved")

    def __init__(self, first: int, stop: int, ahead: bool) -> None:
        self.first = first
        self.stop = stop
        self.ahead = ahead
        self.future: Future | None = None
        self.error: BaseException | None = None
        self.failed_at = stop  # the chunk the fetch was receiving when it failed
        self.over = False  # ended: its chunks are present, or it failed, or it was cancelled before it ran
        self.moved = time.monotonic()  # last sign of life: queued, or the last piece received


class Handle:
    """One open file: a descriptor of the complete blob, or a share of a partial, plus read-ahead state."""

    __slots__ = (
        "entry", "label", "fd", "pack", "stamp", "changed", "partial", "next_offset", "window", "last_chunk"
    )

    def __init__(
        self,
        entry: ManifestEntry,
        label: str,
        fd: int | None,
        partial: _Partial | None,
        *,
        pack: PackedBlob | None = None,
        stamp: str | None = None,
    ) -> None:
        self.entry = entry
        self.label = label
        self.fd = fd
        self.pack = pack  # the file is one blob of a pack (``fd``), which holds many: its bytes start at pack.offset
        self.stamp = stamp if stamp is not None or fd is None else blob_stamp(os.fstat(fd))
        self.changed: ChecksumError | None = None  # the blob changed under this handle: every read fails
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
        fetch_bytes: most bytes one ranged request fetches (the chunks it covers are each served as soon as
            they are verified).
        readahead_bytes: how far ahead of a sequential reader chunks are fetched, at most.
        idle_partials: partial files kept resumable after their last handle closed.
        trust_chunk_digests: admit a completed partial without hashing it whole again, since each of its
            chunks was verified against the manifest's chunk digests (see "Completion" in the module
            docstring); False hashes the whole file before admitting it.
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
        fetch_bytes: int = FETCH_BYTES,
        readahead_bytes: int = READ_AHEAD_BYTES,
        idle_partials: int = 8,
        trust_chunk_digests: bool = False,
    ) -> None:
        self.cache = self._cache = cache
        cache.defer_touches()  # written by _index_soon's timer, not inside the open that hit
        self._fetch_range_into = fetch_range_into
        self._fetch_blob = fetch_blob
        self._timeout = timeout
        self._stop = stop
        self._fetch_bytes = fetch_bytes
        self._readahead_bytes = readahead_bytes
        self._idle_max = idle_partials
        self._trust_chunks = trust_chunk_digests
        self._demand_pool = ThreadPoolExecutor(demand_workers, thread_name_prefix="wanllmdb-fetch")
        self._ahead_pool = ThreadPoolExecutor(readahead_workers, thread_name_prefix="wanllmdb-ahead")
        self._flights = Flights(self._demand_pool, stop)
        self._lock = threading.Lock()
        self._partials: dict[str, _Partial] = {}
        self._idle: OrderedDict[str, _Partial] = OrderedDict()
        self._stats_lock = threading.Lock()
        self.stats = ReadStats()
        self._flush_timer: threading.Timer | None = None
        self._active = 0  # range fetches queued or running
        stop.add_done_callback(lambda _: self._wake_waiters())

    def pending_fetches(self) -> int:
        """Range fetches and whole-blob fetches queued or running (tests wait for it to reach 0)."""
        with self._stats_lock:
            return self._active + len(self._flights)

    # --- open / release ---------------------------------------------------------------------------------

    def open(self, entry: ManifestEntry, label: str) -> Handle:
        """A handle for reading ``entry``; single-chunk files are fetched (and verified) here.

        Raises:
            FetchError, ChecksumError, TransportError: the file could not be fetched.
        """
        if not entry.is_checked:
            logger.error("open of %s refused: reference %s was recorded without a checksum", label, entry.ref)
            raise FetchError(
                f"{label}: the reference {entry.ref} was recorded without a checksum; the mount serves only "
                f"verified bytes (download() fetches it unverified)"
            )
        if entry.size == 0:
            return Handle(entry, label, None, None)
        for _attempt in range(2):
            # A pack this process knows of first: no failing stat of the blob's own name (~70 µs each on a
            # cold walk), and the pack's descriptor is as good as the file's.
            packed = None if entry.is_chunked else self._cache.known_packed(entry.sha256)
            path = None if packed is not None else self._cache.lookup(entry.sha256)
            if path is None and not entry.is_chunked:
                if packed is None:
                    packed = self._cache.lookup_packed(entry.sha256)
                if packed is None and self._after_local_writer(entry):
                    path = self._cache.lookup(entry.sha256)
                    packed = None if path else self._cache.lookup_packed(entry.sha256)
                if packed is not None:
                    handle = self._open_packed(entry, label, packed)
                    if handle is not None:
                        return handle
                    continue
            if path is None:
                if entry.is_chunked and not entry.is_reference:
                    return Handle(entry, label, None, self._acquire_partial(entry, label))
                path = self._fetch_whole(entry, label)
            else:
                self._count(cache_hits=1)
                if self._cache.has_pending():
                    self._index_soon()
            try:
                return Handle(entry, label, os.open(path, os.O_RDONLY | os.O_CLOEXEC), None)
            except FileNotFoundError:
                logger.debug("%s: cached blob evicted before it was opened; fetching again", label)
        raise FetchError(f"{label}: the cached blob keeps disappearing (cache too small?)")

    def _open_packed(self, entry: ManifestEntry, label: str, packed: PackedBlob) -> Handle | None:
        """A handle reading ``entry`` from its pack, or None if the pack is gone (evicted: forgotten here).

        Raises:
            ChecksumError: the pack changed and the blob's bytes in it with it (the pack is evicted).
        """
        if packed.size != entry.size:
            raise ChecksumError(
                f"{label}: the cache's pack holds {packed.size} bytes for it, the manifest {entry.size}",
                expected=str(entry.size),
                actual=str(packed.size),
            )
        try:
            fd = os.open(packed.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            logger.debug("%s: its cache pack was evicted before it was opened; looking again", label)
            self._cache.forget_pack(packed.key)
            return None
        try:
            stamp = self._cache.check_packed(packed, fd)
        except ChecksumError as exc:
            os.close(fd)
            self._count(failures=1)
            logger.error("open of %s failed: %s", label, exc)
            raise
        except BaseException:
            os.close(fd)
            raise
        self._count(cache_hits=1)
        self._cache.touch_packed(packed)
        if self._cache.has_pending():
            self._index_soon()
        return Handle(entry, label, fd, None, pack=packed, stamp=stamp)

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
        fd, pos, count = self._ready(handle, offset, len(view))
        return os.preadv(fd, [view[:count]], pos) if count > 0 else 0

    def ready(self, handle: Handle, offset: int, size: int) -> tuple[int, int, int]:
        """The descriptor holding ``[offset, offset + size)`` of the file, where those bytes start in it, and
        their count (short only at EOF), once they are present and verified: the caller reads them itself
        (the FUSE layer has libfuse splice them from the descriptor). The descriptor stays valid until the
        handle is released.

        Raises:
            FetchError, ChecksumError: as :meth:`read_into`.
        """
        return self._ready(handle, offset, size)

    def _ready(self, handle: Handle, offset: int, size: int) -> tuple[int, int, int]:
        """The descriptor to read ``[offset, offset + size)`` from, the position of ``offset`` in it and the byte
        count there (short at EOF), once those bytes are present and verified (see :meth:`read_into`)."""
        fd = handle.fd
        if fd is not None:
            if handle.changed is not None:
                raise handle.changed
            pack = handle.pack
            try:
                if pack is not None:
                    handle.stamp = self._unchanged_in_pack(handle, pack, fd)
                else:
                    handle.stamp = self._unchanged(handle.entry, handle.label, fd, handle.stamp)
            except ChecksumError as exc:
                handle.changed = exc
                raise
            pos = offset if pack is None else pack.offset + offset
            return fd, pos, max(0, min(size, handle.entry.size - offset))
        part = handle.partial
        if part is None:
            return -1, 0, 0  # an empty file
        end = min(handle.entry.size, offset + size)
        if offset >= end:
            return -1, 0, 0
        if part.count < part.nchunks:
            self._fill(handle, part, offset, end)
        if part.failed is not None:
            raise part.failed
        if part.stamp is not None:
            try:
                part.stamp = self._unchanged(part.entry, part.label, part.fd, part.stamp)
            except ChecksumError as exc:
                self._detach(part, exc)
                raise
        return part.fd, offset, end - offset

    def _unchanged_in_pack(self, handle: Handle, pack: PackedBlob, fd: int) -> str:
        """:meth:`_unchanged` for a packed blob: the pack's stamp (one ``fstat``), the blob's range hashed again
        if it is neither the one the pack was written with nor the handle's last.

        Raises:
            ChecksumError: the blob's bytes in the pack changed (the pack is evicted).
        """
        try:
            return self._cache.check_packed(pack, fd, handle.stamp)
        except ChecksumError:
            self._count(failures=1)
            logger.error("read of %s failed: its bytes in the cache's pack changed while it was open", handle.label)
            raise

    def _unchanged(self, entry: ManifestEntry, label: str, fd: int, stamp: str | None) -> str:
        """The stamp of an open complete blob, after making sure its bytes are still the verified ones.

        Downloads hard-link cached blobs, so a file edited in place changes the blob under an open handle. A
        read costs one ``fstat``; a different stamp (a new link, an eviction, or a write) is accepted if the
        cache recorded it at verification, else the blob is hashed again through the descriptor.

        Raises:
            ChecksumError: the bytes changed; the cache drops the blob and the next ``open`` fetches it again.
        """
        st = os.fstat(fd)
        now = blob_stamp(st)
        if now == stamp or self._cache.is_verified(entry.sha256, st):
            return now
        digest, _ = sha256_file(f"/proc/self/fd/{fd}")
        if digest == entry.sha256 and blob_stamp(os.fstat(fd)) == now:
            return now
        self._cache.lookup(entry.sha256)  # the cache finds the change too, and evicts the blob
        self._count(failures=1)
        error = ChecksumError(
            f"{label}: the cached file changed while it was open (written through a hard link of a download?); "
            f"open it again for the right bytes",
            expected=entry.sha256,
            actual=digest,
        )
        logger.error("read of %s failed: %s", label, error)
        raise error

    def _fill(self, handle: Handle, part: _Partial, offset: int, end: int) -> None:
        chunk_size = handle.entry.chunk_size
        first, last = offset // chunk_size, (end - 1) // chunk_size
        present = part.present
        try:
            # Chunks only ever go from missing to present, so a read whose chunks are all present (the
            # usual case behind read-ahead) needs no lock and no bookkeeping.
            for _attempt in range(MAX_REFETCH + 1):
                if all(present[index] for index in range(first, last + 1)):
                    break
                with part.cond:
                    waits = self._demand(part, first, last)
                # False: a fetch ended without the chunk (cancelled, or an earlier chunk of it was bad) and the
                # next round fetches it again; a list, not a generator, so that every wait runs
                if all([self._await(part, index, fetch) for index, fetch in waits]):
                    break
            else:
                raise FetchError(f"{part.label}: chunks {first}-{last} kept being cancelled before they were fetched")
        except WanllmdbError as exc:
            self._count(failures=1)
            logger.error("read of %s failed: %s", part.label, exc)
            raise
        # Read-ahead only once what this read needed has arrived: on two cores a chunk fetched ahead would
        # otherwise compete with the one a reader is waiting for.
        self._read_ahead(handle, part, offset, end, last)

    def read(self, handle: Handle, size: int, offset: int) -> bytes:
        """Like :meth:`read_into`, returning new bytes (one ``pread``: no zeroed buffer, no second copy)."""
        fd, pos, count = self._ready(handle, offset, size)
        if count <= 0:
            return b""
        data = os.pread(fd, count, pos)
        if len(data) < count:  # one pread returns at most ~2 GiB
            pieces = [data]
            got = len(data)
            while got < count and (piece := os.pread(fd, count - got, pos + got)):
                pieces.append(piece)
                got += len(piece)
            data = b"".join(pieces)
        return data

    # --- whole blobs ------------------------------------------------------------------------------------

    def fill(self, entries: dict[str, ManifestEntry], label: str, lock_timeout: float) -> None:
        """Bring the announced small files into the cache, in order, on the caller's thread.

        Their bundle is fetched whole at the first of them anyway; writing them into the cache from here lets
        the opens that follow find them cached (no fetch, no wait, no thread hop per file) instead of each open
        fetching its own through a flight. They go into packs of up to ``PACK_BLOBS`` (each blob checked,
        size and SHA-256, before it is added): the fill holds the in-process lock of every blob of the pack it
        is gathering, so a file opened meanwhile waits for the pack instead of being fetched again; a blob
        another thread is fetching is left to it. Larger blobs go through ``cache.ensure`` one by one. Stops at
        the first failure, keeping the blobs checked before it (the opens then fetch as before), and at
        shutdown. A pack is written when full or after ``PACK_GATHER_SECONDS`` of gathering. ``lock_timeout``:
        how long a large blob's fetch waits for another fetcher of it.
        """
        filled = filled_bytes = 0
        pack = self._cache.pack_builder()
        held: list[Callable[[], None]] = []

        def commit() -> None:
            nonlocal filled, filled_bytes
            try:
                count, nbytes = len(pack), pack.nbytes
                pack.commit()
                filled += count
                filled_bytes += nbytes
            finally:
                for release in held:
                    release()
                held.clear()

        try:
            held_already = self._cache.likely_held(entries)
            for entry in entries.values():
                sha = entry.sha256
                if self._stop.done():
                    break
                if sha in held_already:
                    continue

                def write(writer: BlobWriter, sha: str = sha, size: int = entry.size) -> None:
                    self._fetch_blob(sha, size, writer)

                what = f"{label}/{entry.path}"
                try:
                    if entry.size > PACK_MEMBER_MAX:
                        self._cache.ensure(sha, entry.size, write, label=what, lock_timeout=lock_timeout)
                        filled += 1
                        filled_bytes += entry.size
                        continue
                    release = self._cache.locks.try_local(sha)
                    if release is None:  # another thread is fetching it
                        continue
                    held.append(release)
                    pack.add(sha, entry.size, write, label=what)
                    if pack.full() or pack.age() >= PACK_GATHER_SECONDS:
                        commit()
                except (WanllmdbError, OSError) as exc:
                    logger.debug("filling the cache with the announced small files stopped: %s", exc)
                    break
        finally:
            try:
                commit()
            except (WanllmdbError, OSError) as exc:
                logger.warning("could not write a pack of %d small files into the cache: %s", len(pack), exc)
        if filled:
            self._count(blobs_fetched=filled, blob_bytes=filled_bytes)
            self._index_soon()

    def _after_local_writer(self, entry: ManifestEntry) -> bool:
        """Whether another thread of this process (the cache fill, mostly) was writing the blob and is done
        (the caller looks it up again); False if none was or it took longer than ``LOCAL_WRITER_WAIT`` (the
        usual fetch then follows, with its deadline). A reader that caught up with the fill waits for the blob
        it is writing instead of fetching it too (a flight, a thread hop and a lock wait each); round 4 found
        a cold walk's CPU set by how often readers fetched for themselves.
        """
        return bool(self._cache.locks.wait_local(entry.sha256, min(self._timeout, LOCAL_WRITER_WAIT)))

    def _fetch_whole(self, entry: ManifestEntry, label: str) -> str:
        progress = _Progress()

        def fetch() -> str:
            def write_blob(writer: BlobWriter) -> None:
                if entry.is_reference:
                    ReferenceFetcher(entry, label)(progress.wrap(writer))
                else:
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
            if isinstance(exc, ReferenceNotFoundError):  # the file is listed: its data is what is missing (EIO)
                raise FetchError(str(exc)) from exc
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

    def _detach(self, part: _Partial, error: ChecksumError) -> None:
        """A promoted partial whose blob changed: its handles fail from now on, new opens start afresh."""
        part.failed = error
        with self._lock:
            sha = part.entry.sha256
            if self._partials.get(sha) is part:
                del self._partials[sha]
            if self._idle.get(sha) is part:
                del self._idle[sha]

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
        if not discard and self._cache.over_limit():
            # Nobody else may evict a live process's partials: idle ones go while the cache is over its limit.
            with self._lock:
                discard, self._idle = list(self._idle.values()), OrderedDict()
        for item in discard:
            self._close_partial(item)

    def _close_partial(self, part: _Partial) -> None:
        os.close(part.fd)
        if not part.done:
            self._cache.discard_partial(part.path)

    def _wake_waiters(self) -> None:
        """Wake every read waiting for a chunk (the filesystem is shutting down: they give up)."""
        with self._lock:
            parts = list(self._partials.values())
        for part in parts:
            with part.cond:
                part.cond.notify_all()

    # --- fetching chunks --------------------------------------------------------------------------------

    def _span(self, entry: ManifestEntry) -> int:
        """Chunks one ranged request fetches at most."""
        return max(1, self._fetch_bytes // entry.chunk_size)

    def _demand(self, part: _Partial, first: int, last: int) -> list[tuple[int, _Fetch]]:
        """The fetch each missing chunk of ``[first, last]`` waits for, starting (demand) fetches where none runs.

        A read-ahead still queued for a wanted chunk is cancelled and its whole range fetched on the demand
        pool instead (it is larger, so the reader does not wait behind other read-ahead, and the range still
        goes in one request). Caller holds ``part.cond``.
        """
        needed: list[int] = []
        start: set[int] = set()
        for index in range(first, last + 1):
            if part.present[index]:
                continue
            needed.append(index)
            fetch = part.fetching.get(index)
            if fetch is not None and fetch.ahead and fetch.future is not None and fetch.future.cancel():
                logger.debug("%s: chunk %d wanted now; its queued read-ahead was cancelled", part.label, index)
                self._forget(part, fetch)
                self._unref(part)  # the worker that would have dropped the fetch's reference never runs
                start.update(range(fetch.first, fetch.stop))
            elif fetch is None:
                start.add(index)
        for run in _runs(sorted(i for i in start if not part.present[i] and i not in part.fetching)):
            self._start_run(part, run, ahead=False)
        return [(index, part.fetching[index]) for index in needed if not part.present[index]]

    def _start_run(self, part: _Partial, run: list[int], ahead: bool) -> None:
        """Start fetches for the consecutive chunks ``run``: as few requests as spans allow, of even sizes."""
        requests = -(-len(run) // self._span(part.entry))
        for at in range(requests):
            lo, hi = len(run) * at // requests, len(run) * (at + 1) // requests
            self._start_fetch(part, run[lo], run[hi - 1] + 1, ahead)

    def _start_fetch(self, part: _Partial, first: int, stop: int, ahead: bool) -> _Fetch:
        """Queue one ranged request for chunks ``[first, stop)``. Caller holds ``part.cond``.

        Raises:
            Stopped: the filesystem is shutting down.
        """
        fetch = _Fetch(first, stop, ahead)
        for index in range(first, stop):
            part.fetching[index] = fetch
        self._ref(part)  # the worker keeps the partial (and its descriptor) alive until its write is done
        with self._stats_lock:
            self._active += 1
        try:
            fetch.future = (self._ahead_pool if ahead else self._demand_pool).submit(self._run_fetch, part, fetch)
        except RuntimeError:  # the pool is shut down
            self._forget(part, fetch)
            self._unref(part)
            raise Stopped("the filesystem is shutting down") from None
        return fetch

    def _forget(self, part: _Partial, fetch: _Fetch) -> None:
        """``fetch`` is over (or will never run): its chunks may be fetched again. Caller holds ``part.cond``."""
        for index in range(fetch.first, fetch.stop):
            if part.fetching.get(index) is fetch:
                del part.fetching[index]
        if not fetch.over:
            fetch.over = True
            part.cond.notify_all()
            with self._stats_lock:
                self._active -= 1

    def _await(self, part: _Partial, index: int, fetch: _Fetch) -> bool:
        """Wait until chunk ``index`` is present; False if ``fetch`` ended without it and it is worth asking again
        (the fetch was cancelled, or a chunk before this one in the same request failed its check).

        The deadline runs from the fetch's last sign of life (queued, or its last piece received), so a slow
        but moving download is never timed out, and a reader joining a stalled one fails without waiting a
        whole timeout more.

        Raises:
            the fetch's error; FetchError: no progress within the timeout; Stopped: shutting down.
        """
        what = f"{part.label}: chunk {index}"
        with part.cond:
            while not part.present[index]:
                if fetch.over:
                    if fetch.error is None or (isinstance(fetch.error, ChecksumError) and index > fetch.failed_at):
                        return False
                    raise fetch.error
                if self._stop.done():
                    raise Stopped(f"{what}: abandoned, the filesystem is shutting down")
                remaining = fetch.moved + self._timeout - time.monotonic()
                if remaining <= 0:
                    raise FetchError(f"{what}: no answer within {self._timeout:g}s (timeout)")
                part.cond.wait(remaining)
        return True

    def _read_ahead(self, handle: Handle, part: _Partial, offset: int, end: int, last: int) -> None:
        chunk_size = handle.entry.chunk_size
        if abs(offset - handle.next_offset) > max(2 * chunk_size, min(SEQ_SLACK, 16 * chunk_size)):
            handle.window = 0
            handle.last_chunk = last
            handle.next_offset = end
            return
        if end > handle.next_offset:
            handle.next_offset = end
        if last <= handle.last_chunk:
            return
        handle.last_chunk = last
        most = max(1, self._readahead_bytes // chunk_size)
        window = handle.window = min(max(1, handle.window * 2), most)
        with part.cond:
            missing = [
                index
                for index in range(last + 1, min(last + 1 + window, part.nchunks))
                if not part.present[index] and index not in part.fetching
            ]
            # A full window slides one chunk per chunk read: top it up a whole span at a time, so read-ahead
            # goes out in requests of fetch_bytes, not one per chunk (unless the reader is about to need the
            # next chunk, or the file ends).
            if not missing or (
                len(missing) < min(self._span(part.entry), window)
                and missing[0] > last + 1
                and missing[-1] < part.nchunks - 1
            ):
                return
            try:
                for run in _runs(missing):
                    self._start_run(part, run, ahead=True)
            except Stopped:
                return

    def _run_fetch(self, part: _Partial, fetch: _Fetch) -> None:
        """Fetch chunks ``[fetch.first, fetch.stop)`` into the partial file (on a pool thread).

        One ranged request; the bytes go into their place in the partial file as they arrive, hashed on the
        way, and each chunk is marked present (and its waiters woken) as soon as its last byte is in and its
        SHA-256 matches: a reader waits for its chunk, not for the whole request. Readers only read present
        chunks, so unverified bytes are never served; a failure leaves the rest unmarked, to be fetched again.
        """
        entry = part.entry
        start = fetch.first * entry.chunk_size
        end = min(entry.size, fetch.stop * entry.chunk_size)
        sink = _SpanSink(part, fetch, start, end)
        try:
            if self._stop.done():
                raise Stopped("the filesystem is shutting down")
            self._fetch_range_into(entry.sha256, start, end - start, sink)
            sink.finish()
        except Exception as exc:
            fetch.error, fetch.failed_at = exc, sink.index
            if fetch.ahead:
                logger.warning("read-ahead of %s chunks %d-%d failed (a read needing them will retry): %s",
                               part.label, sink.index, fetch.stop - 1, exc)
        finally:
            with part.cond:
                self._forget(part, fetch)
            if sink.stored:
                self._count(chunks_fetched=sink.stored, chunk_bytes=sink.stored_bytes,
                            readahead_chunks=sink.stored if fetch.ahead else 0)
            try:
                if sink.completed:
                    self._complete(part)  # on this worker: no reader waits for it any more
                elif sink.stored:
                    self._account(part)
            finally:
                self._unref(part)

    def _account(self, part: _Partial) -> None:
        try:
            with part.accounting:  # fetches of one partial end concurrently: count read and recorded in turn
                self._cache.account_partial(part.path, part.count * part.entry.chunk_size)
        except Exception as exc:  # bookkeeping only: the verified chunk stays readable either way
            logger.warning("%s: could not record partial download in the cache index: %s", part.label, exc)

    def _complete(self, part: _Partial) -> None:
        """Admit the complete file to the cache as a blob (hashed whole first unless chunk digests are trusted)."""
        entry = part.entry
        try:
            if os.fstat(part.fd).st_nlink == 0:
                logger.info("%s: partial file was evicted while open; serving it without caching", part.label)
            else:
                self._cache.promote_partial(part.path, entry.sha256, entry.size, label=part.label,
                                            chunks_verified=self._trust_chunks and part.count == part.nchunks)
                part.stamp = blob_stamp(os.fstat(part.fd))  # now a cached blob: reads check it as one
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


class _SpanSink:
    """Writes a fetch's bytes into their place in the partial file as they arrive, hashing them on the way, and
    publishes each chunk (marks it present, wakes its waiters) as soon as its last byte is in and verified."""

    __slots__ = ("part", "fetch", "end", "index", "chunk_start", "chunk_end", "pos", "sha", "stored",
                 "stored_bytes", "completed")

    def __init__(self, part: _Partial, fetch: _Fetch, start: int, end: int) -> None:
        self.part = part
        self.fetch = fetch
        self.end = end
        self.stored = self.stored_bytes = 0
        self.completed = False
        self._begin(fetch.first, start)

    def _begin(self, index: int, start: int) -> None:
        self.index = index
        self.chunk_start = self.pos = start
        self.chunk_end = min(self.end, start + self.part.entry.chunk_size)
        self.sha = self.part.chunk_hash.new()

    def write(self, data: bytes | memoryview, /) -> int:
        view = memoryview(data)
        n = len(view)
        if self.pos + n > self.end:  # never write past the range: the next chunk may be present already
            raise ChecksumError(
                f"{self.part.label}: chunk {self.index}: received more than the {self.end - self.chunk_start} "
                f"bytes asked for",
                expected=str(self.end - self.chunk_start),
                actual=str(self.pos - self.chunk_start + n),
            )
        while view:
            take = min(len(view), self.chunk_end - self.pos)
            piece = view[:take]
            self.sha.update(piece)
            try:
                pwrite_all(self.part.fd, piece, self.pos)
            except OSError as exc:  # the cache's disk is full or failing: this read fails, a later one retries
                raise FetchError(
                    f"{self.part.label}: chunk {self.index}: could not write it to the cache: {exc}"
                ) from exc
            self.pos += take
            view = view[take:]
            self.fetch.moved = time.monotonic()
            if self.pos == self.chunk_end:
                self._publish()
        return n

    def _publish(self) -> None:
        part, index = self.part, self.index
        digest = part.chunk_hash.digest(self.sha)
        expected = part.entry.chunks[index]
        if digest != expected:
            raise ChecksumError(
                f"{part.label}: chunk {index} (offset {self.chunk_start}): {part.chunk_hash.title} mismatch "
                f"(expected {expected}, got {digest})",
                expected=expected,
                actual=digest,
            )
        with part.cond:
            if not part.present[index]:
                part.present[index] = 1
                part.count += 1
                self.completed = part.count == part.nchunks
            if part.fetching.get(index) is self.fetch:
                del part.fetching[index]
            part.cond.notify_all()
        self.stored += 1
        self.stored_bytes += self.chunk_end - self.chunk_start
        if self.chunk_end < self.end:
            self._begin(index + 1, self.chunk_end)

    def finish(self) -> None:
        """Check that the whole range arrived (a short body leaves its last chunk unverified)."""
        if self.pos != self.end:
            raise ChecksumError(
                f"{self.part.label}: chunk {self.index}: expected {self.chunk_end - self.chunk_start} bytes at "
                f"offset {self.chunk_start}, received {self.pos - self.chunk_start}",
                expected=str(self.chunk_end - self.chunk_start),
                actual=str(self.pos - self.chunk_start),
            )


def _runs(indices: list[int]) -> list[list[int]]:
    """Sorted chunk indices grouped into runs of consecutive ones."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs
