"""Content-addressed blob cache on local disk, shared by the SDK and the mount across processes.

Layout under the cache root::

    blobs/ab/abcdef...      complete, verified blobs (mode 0444), named by SHA-256
    packs/pack.<writer>...  verified small blobs the mount fetched together, back to back in one file (0444)
    partial/<sha>.<token>   sparse files a mount fills chunk by chunk (private to one process)
    tmp/                    *.incomplete files being fetched
    locks.bin               one lock byte per blob (locks.py): one fetch per blob, across processes and threads
    index.sqlite            sizes and access times (see index.py)
    views/                  hard-link trees for the seed-compatible ArtifactCache.get()

Correctness rests on the atomic rename: a blob appears under ``blobs/`` only after its size and SHA-256
were checked, so no reader ever sees partial or unverified bytes. The per-blob lock only avoids fetching the
same blob twice. The cache takes a *fetcher* callable and imports no registry.

The size limit holds at every write, across processes: admitting a blob indexes it and picks the
least-recently-used victims in one transaction over the total every process shares (``index.admit_blobs``).
Eviction unlinks files, which never disturbs a reader that holds one open, nor a download that hard-linked it.

Partial files count against the limit with the bytes they hold, and are never evicted while the process that
fills them lives (its name is in the file name): it holds them open, so unlinking one would free nothing while
the index stopped counting it. Eviction takes blobs instead, and partials of dead processes; the owner drops
its idle partials itself while the cache is over its limit. So the disk holds what the index counts, and the
limit is exceeded only by partials of files being read at that moment (at most their sizes).

A hit is never trusted blindly: downloads hard-link cached blobs, and a write through any link changes the
blob. Each blob's *stamp* (inode, size, mtime and ctime, as ``stat`` reports them when it was verified) is
recorded in the index; every hit compares a fresh ``stat`` with it. A difference makes the cache hash the
blob again: intact bytes get a new stamp, changed ones are evicted and fetched again, so no byte that
differs from the digest a blob is filed under is ever served.

Packs: creating a file costs this kernel 60-450 µs (an empty one; 15 µs to append 4 KiB to an open one), so a
directory of small files read through the mount spent most of its cold walk creating cache files. The mount
writes the small blobs of one bundle into one *pack* instead (:class:`PackBuilder`): each blob is checked
(size and SHA-256) in memory, the pack is written under ``tmp/`` and renamed into ``packs/``, then indexed
with where each blob lies in it. A pack is counted, aged and evicted as one entry; it is never linked out
(a download copies a packed blob into ``blobs/`` through the same verified write as a fetch), so its stamp
only moves if someone writes into the cache, and a reader that finds it moved hashes the blob's range again.
:meth:`BlobCache.contains` and :meth:`BlobCache.lookup` see blob files only; :meth:`BlobCache.holds` and
:meth:`BlobCache.lookup_packed` see packs too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from ..errors import CacheError, ChecksumError
from ..iobuf import Drain, buffer_for, pwrite_all
from ..killpoints import kill_point
from ..manifest.chunkhash import for_digests
from ..settings import DEFAULT_CACHE_BYTES
from ..tmpfiles import reclaim_dead, writer_gone, writer_tag
from .index import CacheIndex, IndexEntry, PackedRow, PackRecord
from .locks import BlobLocks

logger = logging.getLogger(__name__)

#: An access time is rewritten at most this often per blob and process (LRU needs no finer grain).
TOUCH_INTERVAL = 60.0
#: New blobs are indexed in batches of this many (or at least every INDEX_FLUSH_SECONDS).
INDEX_BATCH = 256
#: Blobs at least this large are hashed on a worker thread while the next piece is received.
PIPELINE_THRESHOLD = 4 * 1024 * 1024
INDEX_FLUSH_SECONDS = 1.0
#: Blobs at least this large are indexed (and the limit enforced) as soon as they are admitted; smaller ones
#: wait for a batch, but never more than PENDING_SHARE of the limit, so the bytes other processes cannot see
#: yet stay a small part of it.
INDEX_AT_ONCE = 1024 * 1024
PENDING_SHARE = 64
#: In-memory stamps of blobs this process verified, at most this many.
MAX_KNOWN_STAMPS = 100_000
#: A pack holds at most this many bytes and blobs (a pack is evicted whole: it stays a small share of a cache).
PACK_BYTES = 4 * 1024 * 1024
PACK_BLOBS = 512
#: Blobs larger than this are never packed (a file of their own costs little against their bytes).
PACK_MEMBER_MAX = 256 * 1024


def blob_stamp(st: os.stat_result) -> str:
    """What ``stat`` says of a blob that must not change while it is cached (see the module docstring)."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _stamp_size(stamp: str) -> int:
    """The size a :func:`blob_stamp` records."""
    return int(stamp.split(":", 2)[1])


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


#: Writes a whole blob into the writer it is given.
Fetcher = Callable[[BlobWriter], object]
#: Writes ``length`` bytes of a blob from ``start`` into the writer it is given; returns the count.
RangeFetcher = Callable[[int, int, BlobWriter], int]


class _SpanWriter:
    """Receives the bytes ``[start, stop)`` of a blob (chunk-aligned), writes each piece once at its offset
    in the partial file and checks every chunk against its SHA-256 from the manifest as soon as it is whole.

    A span is complete only if exactly its bytes arrived (:meth:`finish`), so every chunk of the blob has been
    checked when all spans finished.
    """

    def __init__(
        self, fd: int, start: int, stop: int, size: int, chunk_size: int, chunks: Sequence[str], label: str
    ) -> None:
        self._fd = fd
        self._pos = start
        self._stop = stop
        self._size = size
        self._chunk_size = chunk_size
        self._chunks = chunks
        self._label = label
        self._hash = for_digests(chunks)
        self._sha = self._hash.new()

    def write(self, data: bytes | memoryview, /) -> int:
        view = memoryview(data)
        n = len(view)
        if self._pos + n > self._stop:
            raise ChecksumError(f"{self._label}: received more than the {self._stop - self._pos} bytes asked for")
        pwrite_all(self._fd, view, self._pos)
        offset = 0
        while offset < n:
            at = self._pos + offset
            index = at // self._chunk_size
            chunk_end = min((index + 1) * self._chunk_size, self._size)
            take = min(n - offset, chunk_end - at)
            self._sha.update(view[offset : offset + take])
            offset += take
            if at + take == chunk_end:
                got = self._hash.digest(self._sha)
                self._sha = self._hash.new()
                if got != self._chunks[index]:
                    raise ChecksumError(
                        f"{self._label}: chunk {index} {self._hash.title} mismatch "
                        f"(expected {self._chunks[index]}, got {got})",
                        expected=self._chunks[index],
                        actual=got,
                    )
        self._pos += n
        kill_point("cache.write")
        return n

    def finish(self) -> None:
        if self._pos != self._stop:
            raise ChecksumError(
                f"{self._label}: a span ended at byte {self._pos}, expected {self._stop}",
                expected=str(self._stop),
                actual=str(self._pos),
            )


class _VerifyingWriter:
    """Writes to a file while computing SHA-256 and counting bytes."""

    def __init__(self, file: BinaryIO, limit: int, label: str) -> None:
        self._file = file
        self._label = label
        self._sha = hashlib.sha256()
        self._limit = limit
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        n = len(data)
        self.size += n
        if self.size > self._limit:
            raise ChecksumError(f"{self._label}: received more than the expected {self._limit} bytes")
        self._sha.update(data)
        self._file.write(data)
        kill_point("cache.write")
        return n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def finish(self) -> None:
        """Wait until everything written has been hashed and written."""


class _PipelinedWriter(_VerifyingWriter):
    """A verifying writer that hashes and writes on a worker thread.

    The caller (a socket read loop) hands over a piece and goes back to receiving while the previous piece
    is hashed and written: on two cores a download then costs about max(receive, hash) instead of their sum.
    The queue is bounded, so memory stays at a few pieces whatever the blob size.
    """

    def __init__(self, file: BinaryIO, limit: int, label: str) -> None:
        super().__init__(file, limit, label)
        self._queued = 0
        self._drain = Drain(super().write, 8, "wanllmdb-verify", reuse=True)

    def write(self, data: bytes | memoryview, /) -> int:
        self._drain.check()
        n = len(data)
        self._queued += n
        if self._queued > self._limit:
            raise ChecksumError(f"{self._label}: received more than the expected {self._limit} bytes")
        self._drain.put(data)
        return n

    def finish(self) -> None:
        self._drain.close()
        self._drain.check()


@dataclass(frozen=True)
class PackedBlob:
    """A verified blob inside a pack file: ``size`` bytes at ``offset`` of ``path``.

    ``stamp`` is what ``stat`` said of the pack when it was written: a reader that finds another checks the
    blob's bytes again before serving them (:meth:`BlobCache.check_packed`).
    """

    sha256: str
    path: str
    offset: int
    size: int
    key: str
    stamp: str | None


class PackBuilder:
    """Small blobs gathered in memory, each checked as it is added, then written as one pack (:meth:`commit`).

    Made by :meth:`BlobCache.pack_builder`. A blob whose bytes do not match is refused (its :meth:`add` raises)
    and the ones added before it are kept; nothing is on disk before :meth:`commit`.
    """

    def __init__(self, cache: BlobCache) -> None:
        self._cache = cache
        self._pieces: list[bytes] = []
        self._members: list[tuple[str, int, int]] = []
        self._shas: set[str] = set()
        self.nbytes = 0
        self._started = 0.0  # when the first blob of the pack being gathered was asked for

    def __len__(self) -> int:
        return len(self._members)

    def age(self) -> float:
        """Seconds since the pack being gathered was begun (its first blob asked for)."""
        return time.monotonic() - self._started

    def full(self) -> bool:
        """Whether the pack has reached ``PACK_BLOBS`` blobs or its byte size: ``PACK_BYTES``, or a 64th of
        the cache's limit if that is smaller (a pack is evicted whole, and never by its own admission)."""
        return len(self._members) >= PACK_BLOBS or self.nbytes >= min(PACK_BYTES, self._cache.max_bytes // 64)

    def add(self, sha256: str, size: int, fetch: Fetcher, label: str | None = None) -> None:
        """Fetch one blob into memory through ``fetch`` and check it.

        Raises:
            ChecksumError: the bytes differ in size or SHA-256 (the blob is not added).
            ValueError: the blob is too large for a pack (``PACK_MEMBER_MAX``).
        """
        if size > PACK_MEMBER_MAX:
            raise ValueError(f"blob {sha256[:12]} of {size} bytes is too large for a pack")
        if sha256 in self._shas:
            return
        if not self._members:
            self._started = time.monotonic()
        out = io.BytesIO()
        _fetch_checked(_VerifyingWriter(out, size, label or f"blob {sha256[:12]}"), fetch, size, sha256, label)
        self._pieces.append(out.getvalue())
        self._members.append((sha256, self.nbytes, size))
        self._shas.add(sha256)
        self.nbytes += size

    def commit(self) -> list[str]:
        """Write the pack and index it; returns the blobs it holds (none if none were added)."""
        if not self._members:
            return []
        members, pieces = self._members, self._pieces
        self._members, self._pieces, self._shas, self.nbytes = [], [], set(), 0
        self._cache._admit_pack(pieces, members)
        return [sha for sha, _, _ in members]


@dataclass(frozen=True)
class CleanupPlan:
    """Entries a cleanup would remove, and the bytes that frees; nothing happens until :meth:`execute`."""

    cache: BlobCache = field(repr=False)
    entries: tuple[IndexEntry, ...]

    @property
    def freed_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def execute(self) -> int:
        """Remove the planned entries; returns the bytes freed."""
        return self.cache._evict(self.entries)


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    corrupt: tuple[str, ...]
    healed_index: int


class BlobCache:
    """Blobs by SHA-256, fetched once, verified, bounded in size.

    Args:
        root: cache directory (created if missing).
        max_bytes: size limit enforced at every write.
    """

    def __init__(self, root: str, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.max_bytes = int(max_bytes)
        for sub in ("tmp", "partial", "views", "packs"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        if not os.path.isdir(os.path.join(self.root, "blobs", "ff")):
            for i in range(256):
                os.makedirs(os.path.join(self.root, "blobs", f"{i:02x}"), exist_ok=True)
        self.locks = BlobLocks(self.root)
        self.index = CacheIndex(os.path.join(self.root, "index.sqlite"))
        reclaim_dead(os.path.join(self.root, "tmp"))
        dead_partials, _ = reclaim_dead(os.path.join(self.root, "partial"))
        self.index.remove("partial:" + name for name in dead_partials)
        self._touched: dict[str, float] = {}
        self._touched_lock = threading.Lock()
        # Stamps this process knows to describe verified bytes: a hit that matches one needs no query.
        self._stamps: dict[str, str] = {}
        # The index's rowids of blobs whose stamps came from it (kept and dropped with _stamps): a write to
        # many of them goes in rowid order, with no lookup in the key index each (index._update_by_rowid).
        self._rowids: dict[str, int] = {}
        # While above zero (hold_stamps), remembered stamps are not dropped at MAX_KNOWN_STAMPS.
        self._holding = 0
        self._holding_lock = threading.Lock()
        # Small new blobs waiting to be indexed (sha -> (size, stamp)).
        self._pending: dict[str, tuple[int, str]] = {}
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        # The shared total as of this process's last transaction: only decides when to flush early.
        self._known_total = self.index.total_size()
        # Access times waiting for the next flush (sha -> size), when an owner flushes on a timer
        # (``defer_touches``); else each hit's due touch is written at once.
        self._pending_touches: dict[str, int] = {}
        self._defer_touches = False
        # Packed blobs this process knows of (sha -> where), and pack access times waiting for the next flush.
        self._packed: dict[str, PackedBlob] = {}
        self._pack_shas: dict[str, set[str]] = {}  # pack key -> its blobs in _packed
        self._pack_touches: set[str] = set()
        self._packs_seen = (-1, False)  # (mtime of packs/, whether it held a file then): see _may_hold_packs
        self._packs_reclaimed = False

    def close(self) -> None:
        self.flush()
        self.index.close()

    def defer_touches(self) -> None:
        """Queue hits' access-time updates for the next :meth:`flush` instead of writing each at once.

        For an owner that flushes on a timer (the mount's reader, a moment after any hit: see
        :meth:`has_pending`). A hit on a fresh mount otherwise costs a write transaction inside the ``open``
        that a reader waits for; LRU order needs no such precision (a touch is already skipped for
        ``TOUCH_INTERVAL`` after the last).
        """
        self._defer_touches = True

    def has_pending(self) -> bool:
        """Whether admissions or access times wait for :meth:`flush`."""
        return bool(self._pending or self._pending_touches or self._pack_touches)

    def preload_stamps(self, sha256s: Iterable[str]) -> None:
        """Learn the recorded stamps of these blobs in one query, so that the hits that follow (a directory's
        files opened one by one on a fresh mount) need no query each. A stamp learnt here is what a hit would
        have read from the index: each hit still compares it with a fresh ``stat``."""
        unknown = [sha for sha in sha256s if sha not in self._stamps]
        if not unknown:
            return
        for sha, rowid, stamp in self.index.iter_stamp_rows(unknown):
            self._remember(sha, stamp, rowid)

    # --- paths ------------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> str:
        # Formatted, not os.path.join: this runs several times per small file read or written.
        return f"{self.root}/blobs/{sha256[:2]}/{sha256}"

    def pack_path(self, key: str) -> str:
        return f"{self.root}/packs/{key.partition(':')[2]}"

    def _tmp_path(self, sha256: str) -> str:
        return f"{self.root}/tmp/{sha256}.{writer_tag()}.{secrets.token_hex(4)}.incomplete"

    # --- lookups ----------------------------------------------------------------------------------------

    def lookup(self, sha256: str) -> str | None:
        """Path of the complete blob, or None; a hit refreshes its LRU position."""
        return self.lookup_many([sha256]).get(sha256)

    def lookup_many(self, sha256s: Iterable[str], *, touch: bool = True) -> dict[str, str]:
        """Paths of the complete, unchanged blobs among ``sha256s``: :meth:`present_blobs` with their paths."""
        return {sha: self.blob_path(sha) for sha in self.present_blobs(sha256s, touch=touch)}

    def present_blobs(self, sha256s: Iterable[str], *, touch: bool = True) -> set[str]:
        """The blobs among ``sha256s`` whose file (:meth:`blob_path`) is complete and unchanged (one index
        transaction for all hits).

        A blob whose stamp differs from the one recorded when it was verified is hashed again first, and
        evicted if its bytes changed (see the module docstring). ``touch=False`` leaves the hits' access times
        to the caller's :meth:`restamp` with ``touch``, which writes them with the new stamps in one pass.

        What it holds per blob while it works is a stamp string, not a ``stat`` result, a path and a map of the
        index's rows (a cached download of a million files peaked at 2.2 GB with those, 1.2 GB without).
        """
        found: set[str] = set()
        sizes: dict[str, int] = {}  # the hits' sizes, for their access times (with touch)
        unsure: dict[str, str] = {}  # sha -> its stamp now, where it differs from the one this process knows
        for sha in sha256s:
            try:
                st = os.stat(self.blob_path(sha))
            except FileNotFoundError:
                continue
            current = blob_stamp(st)
            if self._stamps.get(sha) == current:
                found.add(sha)
                if touch:
                    sizes[sha] = st.st_size
            else:
                unsure[sha] = current
        if unsure:
            rowids: dict[str, int] = {}  # of the rows whose recorded stamp differs
            for sha, rowid, known in self.index.iter_stamp_rows(unsure):
                if known == unsure[sha]:
                    self._remember(sha, known, rowid)
                    found.add(sha)
                    if touch:
                        sizes[sha] = _stamp_size(known)
                else:
                    rowids[sha] = rowid
            rechecked: dict[str, tuple[int, str]] = {}
            for sha in unsure:  # unknown to the index, or changed since it was verified: hash it again
                if sha not in found and self._recheck(sha, rechecked):
                    size, current = rechecked[sha]
                    self._remember(sha, current, rowids.get(sha))
                    found.add(sha)
                    if touch:
                        sizes[sha] = size
            if rechecked:  # one transaction for all new stamps, not one per blob
                self.index.set_stamps(rechecked, self._rowids)
        if touch:
            self._touch(sizes)
        return found

    def _remember(self, sha256: str, stamp: str, rowid: int | None = None) -> None:
        if len(self._stamps) >= MAX_KNOWN_STAMPS and not self._holding:
            self._stamps.clear()
            self._rowids.clear()
        self._stamps[sha256] = stamp
        if rowid is not None:
            self._rowids[sha256] = rowid

    @contextlib.contextmanager
    def hold_stamps(self) -> Iterator[None]:
        """Keep every stamp remembered inside the block (a download of more than MAX_KNOWN_STAMPS blobs must
        still know, when it restamps at the end, the stamps it verified at the start; else every blob's ctime,
        moved by its hard link, reads as a change and the next lookup hashes them all again)."""
        with self._holding_lock:
            self._holding += 1
        try:
            yield
        finally:
            with self._holding_lock:
                self._holding -= 1
                if not self._holding and len(self._stamps) > MAX_KNOWN_STAMPS:
                    self._stamps.clear()
                    self._rowids.clear()

    def _recheck(self, sha256: str, rechecked: dict[str, tuple[int, str]]) -> bool:
        """Hash a blob whose stamp is unknown or changed: if intact, put its size and new stamp in ``rechecked``
        (for the caller to record), else evict it."""
        path = self.blob_path(sha256)
        try:
            st = os.stat(path)
            digest, size = sha256_file(path)
            after = os.stat(path)
        except FileNotFoundError:
            return False
        if digest == sha256 and blob_stamp(after) == blob_stamp(st):
            rechecked[sha256] = (size, blob_stamp(after))
            return True
        if digest != sha256:
            logger.warning(
                "cache blob %s was changed after it was verified (written through a hard link of a download?); "
                "evicted, it will be fetched again",
                sha256,
            )
            self._unlink_if_same(path, st)
            self.index.remove([sha256])
            self._stamps.pop(sha256, None)
            self._rowids.pop(sha256, None)
        return False

    @staticmethod
    def _unlink_if_same(path: str, st: os.stat_result) -> None:
        try:
            if os.stat(path).st_ino == st.st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def is_verified(self, sha256: str, st: os.stat_result) -> bool:
        """Whether ``st`` (a fresh ``stat`` of an open blob) is the stamp recorded when the blob was verified."""
        stamp = blob_stamp(st)
        if self._stamps.get(sha256) == stamp:
            return True
        rowid, known = self.index.stamp_rows([sha256]).get(sha256, (None, None))
        if known == stamp:
            self._remember(sha256, stamp, rowid)
            return True
        return False

    def restamp(self, sha256s: Iterable[str], *, touch: bool = False) -> None:
        """Record the current stamps of blobs this process just hard-linked (a new link moves the ctime).

        Only the ctime may have moved since this process verified or checked a blob: one whose inode, size
        or mtime changed is left for its next hit to hash again. ``touch``: also record the access time of
        every blob this process verified, in the same write (after ``lookup_many(..., touch=False)``).
        """
        fresh: dict[str, tuple[int, str]] = {}
        same: dict[str, int] = {}
        for sha in sha256s:
            known = self._stamps.get(sha)
            if known is None:
                continue
            try:
                st = os.stat(self.blob_path(sha))
            except FileNotFoundError:
                continue
            stamp = blob_stamp(st)
            if known == stamp:
                same[sha] = st.st_size
            elif known.rsplit(":", 1)[0] == stamp.rsplit(":", 1)[0]:
                self._remember(sha, stamp)
                fresh[sha] = (st.st_size, stamp)
        if touch:
            self._touch(same)
        if fresh:
            self.index.set_stamps(fresh, self._rowids, touch=touch)

    def contains(self, sha256: str) -> bool:
        """Whether the blob has a file of its own in the cache (packs not included: see :meth:`holds`)."""
        return os.path.exists(self.blob_path(sha256))

    def holds(self, sha256: str) -> bool:
        """Whether the cache holds the blob's verified bytes, in a file of its own or in a pack."""
        return sha256 in self.holds_many([sha256])

    def holds_many(self, sha256s: Iterable[str]) -> set[str]:
        """The blobs among ``sha256s`` the cache holds (:meth:`holds`): a ``stat`` each, one query for the rest."""
        held: set[str] = set()
        ask: list[str] = []
        for sha in sha256s:
            if os.path.exists(self.blob_path(sha)) or sha in self._packed:
                held.add(sha)
            else:
                ask.append(sha)
        if ask:
            found = self._learn_packed(ask)
            held.update(found)
        return held

    def likely_held(self, sha256s: Iterable[str]) -> set[str]:
        """The blobs among ``sha256s`` the cache probably holds, by its index and what this process knows: no
        ``stat`` each. A hint for deciding what to fetch ahead (the mount's sibling scan); a blob named wrongly
        either way is fetched again or fetched by its own open, as before. :meth:`holds_many` is exact."""
        held: set[str] = set()
        ask: list[str] = []
        with self._touched_lock:
            pending = set(self._pending)
        for sha in sha256s:
            if sha in self._packed or sha in self._stamps or sha in pending:
                held.add(sha)
            else:
                ask.append(sha)
        if ask:
            held.update(self.index.present(ask))
            held.update(self._learn_packed([sha for sha in ask if sha not in held]))
        return held

    # --- packs ------------------------------------------------------------------------------------------

    def _may_hold_packs(self) -> bool:
        """Whether ``packs/`` holds any file: a ``stat`` of the folder, and a look inside when it changed. So a
        cache no mount ever packed into (a download's, mostly) asks its index nothing about packs."""
        try:
            mtime = os.stat(f"{self.root}/packs").st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime != self._packs_seen[0]:
            with os.scandir(f"{self.root}/packs") as found:
                self._packs_seen = (mtime, next(found, None) is not None)
        return self._packs_seen[1]

    def _learn_packed(self, sha256s: Sequence[str]) -> dict[str, PackedBlob]:
        if not sha256s or not self._may_hold_packs():
            return {}
        found = {sha: self._packed_blob(row) for sha, row in self.index.packed(sha256s).items()}
        self._know_packed(found.values())
        return found

    def _know_packed(self, blobs: Iterable[PackedBlob]) -> None:
        with self._touched_lock:
            for blob in blobs:
                if len(self._packed) >= MAX_KNOWN_STAMPS:
                    self._packed.clear()
                    self._pack_shas.clear()
                self._packed[blob.sha256] = blob
                self._pack_shas.setdefault(blob.key, set()).add(blob.sha256)

    def _packed_blob(self, row: PackedRow) -> PackedBlob:
        return PackedBlob(row.sha256, self.pack_path(row.pack), row.offset, row.size, row.pack, row.stamp)

    def known_packed(self, sha256: str) -> PackedBlob | None:
        """:meth:`lookup_packed` from what this process already knows: no query."""
        return self._packed.get(sha256)

    def lookup_packed(self, sha256: str) -> PackedBlob | None:
        """Where a pack holds the blob, or None. The pack may be evicted by the time it is opened: a caller that
        finds it gone calls :meth:`forget_pack` and looks again."""
        found = self._packed.get(sha256)
        if found is None:
            found = self._learn_packed([sha256]).get(sha256)
        return found

    def forget_pack(self, key: str) -> None:
        """Drop what this process remembers of a pack (found gone, or evicted)."""
        with self._touched_lock:
            for sha in self._pack_shas.pop(key, ()):
                if (blob := self._packed.get(sha)) is not None and blob.key == key:
                    del self._packed[sha]
            self._pack_touches.discard(key)
            self._touched.pop(key, None)

    def touch_packed(self, blob: PackedBlob) -> None:
        """Record a hit on a packed blob: its pack's access time (written at most every ``TOUCH_INTERVAL``)."""
        now = time.time()
        with self._touched_lock:
            if not self._due_touches([blob.key], now):
                return
            if self._defer_touches:
                self._pack_touches.add(blob.key)
                return
        self.index.touch([blob.key], now)

    def check_packed(self, blob: PackedBlob, fd: int, known: str | None = None) -> str:
        """The stamp of an open pack, after making sure ``blob``'s bytes in it are still the verified ones
        (hashed again when the pack's stamp is neither the one it was written with nor ``known``).

        Raises:
            ChecksumError: the blob's bytes changed; the pack is evicted (every later open fetches again).
        """
        stamp = blob_stamp(os.fstat(fd))
        if stamp in (blob.stamp, known):
            return stamp
        sha = hashlib.sha256(os.pread(fd, blob.size, blob.offset)).hexdigest()
        if sha == blob.sha256 and blob_stamp(os.fstat(fd)) == stamp:
            return stamp
        logger.warning("cache pack %s was changed after it was written; evicted, its blobs will be fetched again",
                       blob.key)
        self.remove_pack(blob.key)
        raise ChecksumError(
            f"blob {blob.sha256[:12]}: its bytes in cache pack {blob.key} changed after they were verified",
            expected=blob.sha256,
            actual=sha,
        )

    def remove_pack(self, key: str) -> None:
        """Drop one pack (found changed); a no-op if absent."""
        self.index.remove([key])
        _unlink_quietly(self.pack_path(key))
        self.forget_pack(key)

    def pack_builder(self) -> PackBuilder:
        """A :class:`PackBuilder` writing into this cache (the first of a process first removes the packs that
        dead writers renamed into place but never indexed)."""
        if not self._packs_reclaimed:
            self._packs_reclaimed = True
            self._reclaim_packs()
        return PackBuilder(self)

    def _admit_pack(self, pieces: Sequence[bytes], members: Sequence[tuple[str, int, int]]) -> None:
        """Write checked blobs as one pack (under ``tmp/``, renamed into ``packs/``), index it and enforce the
        limit in one transaction. A writer killed before the index names the pack leaves an unindexed file,
        which the next pack writer on this root removes (:meth:`_reclaim_packs`)."""
        name = f"pack.{writer_tag()}.{secrets.token_hex(6)}"
        key = f"pack:{name}"
        tmp = f"{self.root}/tmp/{name}.incomplete"
        path = self.pack_path(key)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        renamed = False
        try:
            pwrite_all(fd, b"".join(pieces), 0)
            kill_point("cache.pack_written")
            os.replace(tmp, path)
            renamed = True
            stamp = blob_stamp(os.fstat(fd))
        finally:
            os.close(fd)
            if not renamed:
                _unlink_quietly(tmp)
        kill_point("cache.pack_renamed")
        size = sum(size for _, _, size in members)
        record = PackRecord(key, size, stamp, tuple(members))
        with self._touched_lock:
            self._touched[key] = time.time()
        victims, self._known_total = self.index.admit_blobs({}, self.max_bytes, {key}, _evictable, packs=[record])
        self._know_packed(PackedBlob(sha, path, offset, n, key, stamp) for sha, offset, n in members)
        if victims:
            self._evict_files(victims)

    def _reclaim_packs(self) -> None:
        """Remove pack files no index entry names whose writer is dead (killed between rename and index).

        Run by the first pack writer of a process, ``verify`` and ``plan_cleanup``: only a pack writer leaves
        such a file, and the next one finds it (not every process that opens the cache lists ``packs/``)."""
        directory = os.path.join(self.root, "packs")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        indexed = self.index.present(f"pack:{name}" for name in names)
        for name in names:
            if f"pack:{name}" not in indexed and writer_gone(name):
                _unlink_quietly(os.path.join(directory, name))
                logger.info("removed cache pack %s: its writer died before indexing it", name)

    def _touch(self, sizes: dict[str, int]) -> None:
        if not sizes:
            return
        now = time.time()
        with self._touched_lock:
            due = {key: sizes[key] for key in self._due_touches(sizes, now)}
            if self._defer_touches:
                self._pending_touches.update(due)
                return
        if due:
            # An upsert, not an update: a blob renamed into place by a process that died before indexing
            # it is healed here.
            self.index.touch_blobs(due, now, self._rowids)

    def _due_touches(self, keys: Iterable[str], now: float) -> list[str]:
        """The keys (blobs or packs) whose access time is due to be written, marked as written now: each at most
        every ``TOUCH_INTERVAL`` per process. The caller holds ``_touched_lock``."""
        due = [key for key in keys if now - self._touched.get(key, 0.0) > TOUCH_INTERVAL]
        for key in due:
            self._touched[key] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        return due

    # --- fetching ---------------------------------------------------------------------------------------

    def ensure(
        self,
        sha256: str,
        size: int,
        fetch: Fetcher,
        *,
        label: str | None = None,
        lock_timeout: float | None = None,
    ) -> str:
        """Path of the blob, fetching it through ``fetch`` if it is not cached yet.

        Two callers (threads or processes) asking for one blob fetch it once: the second waits on the
        blob's lock and then finds it present.

        Raises:
            ChecksumError: the fetched bytes differ in size or SHA-256 (nothing is kept).
            CacheError: waiting for another fetcher of this blob took longer than ``lock_timeout``.
        """
        path = self.lookup(sha256)
        if path:
            return path
        with self._blob_lock(sha256, lock_timeout):
            path = self.lookup(sha256)
            if path:
                return path
            if not self._copy_from_pack(sha256, size, label):
                self._fetch_into_cache(sha256, size, fetch, label)
        return self.blob_path(sha256)

    def _copy_from_pack(self, sha256: str, size: int, label: str | None) -> bool:
        """Make a packed blob a file of its own (a download links files, not ranges), checked as a fetch is;
        False if no pack holds it, or the copy failed (the caller fetches it)."""
        blob = self.lookup_packed(sha256)
        if blob is None or blob.size != size:
            return False

        def fetch(writer: BlobWriter) -> None:
            with open(blob.path, "rb", buffering=0) as pack:
                writer.write(os.pread(pack.fileno(), blob.size, blob.offset))

        try:
            self._fetch_into_cache(sha256, size, fetch, label)
        except FileNotFoundError:
            self.forget_pack(blob.key)
            return False
        except ChecksumError as exc:
            logger.warning("cache pack %s holds bad bytes for %s (%s); evicted", blob.key, sha256[:12], exc)
            self.remove_pack(blob.key)
            return False
        return True

    def _fetch_into_cache(self, sha256: str, size: int, fetch: Fetcher, label: str | None) -> None:
        tmp = self._tmp_path(sha256)
        admitted = False
        try:
            # Created read-only (the mode binds later opens, not this descriptor): no chmod once written.
            with open(tmp, "xb", opener=_read_only) as out:
                kind = _PipelinedWriter if size >= PIPELINE_THRESHOLD else _VerifyingWriter
                _fetch_checked(kind(out, size, label or f"blob {sha256[:12]}"), fetch, size, sha256, label)
                out.flush()
                # Renamed while still open, its stamp read through the descriptor: per small blob the
                # admission's syscalls are most of its cost.
                self._admit(tmp, sha256, size, fd=out.fileno())
                admitted = True
        finally:
            if not admitted:  # once renamed, the temporary name is gone: no unlink to fail
                _unlink_quietly(tmp)

    def ensure_spans(
        self,
        sha256: str,
        size: int,
        chunk_size: int,
        chunks: Sequence[str],
        fetch_range: RangeFetcher,
        *,
        span: int,
        threads: int,
        label: str | None = None,
        lock_timeout: float | None = None,
    ) -> str:
        """Path of the blob, fetching it as parallel chunk-aligned spans if it is not cached yet.

        Like :meth:`ensure`, but ``threads`` ranged fetches of ``span`` bytes run at once, each written once at
        its offset in a partial file (:meth:`new_partial`) and each chunk checked against ``chunks`` (the
        manifest's chunk SHA-256s, which the manifest binds to ``sha256``) as it arrives. When every chunk has
        been checked the file is admitted without hashing it as a whole again.

        Raises:
            ChecksumError: a chunk differs, or a span is short or long (nothing is kept).
            CacheError: waiting for another fetcher of this blob took longer than ``lock_timeout``.
        """
        if chunk_size <= 0 or len(chunks) != -(-size // chunk_size) or span % chunk_size:
            raise ValueError(f"blob {sha256[:12]}: chunk digests do not cover {size} bytes in spans of {span}")
        path = self.lookup(sha256)
        if path:
            return path
        what = label or f"blob {sha256[:12]}"
        with self._blob_lock(sha256, lock_timeout):
            path = self.lookup(sha256)
            if path:
                return path
            partial = self.new_partial(sha256, size)
            try:
                fd = os.open(partial, os.O_WRONLY)
                try:

                    def one(start: int) -> None:
                        stop = min(start + span, size)
                        writer = _SpanWriter(fd, start, stop, size, chunk_size, chunks, what)
                        fetch_range(start, stop - start, writer)
                        writer.finish()

                    starts = list(range(0, size, span))
                    with ThreadPoolExecutor(max(1, min(threads, len(starts))), "wanllmdb-span") as pool:
                        futures = [pool.submit(one, start) for start in starts]
                        wait(futures, return_when=FIRST_EXCEPTION)
                        for future in futures:
                            future.cancel()
                        for future in futures:
                            if not future.cancelled():
                                future.result()
                finally:
                    os.close(fd)
                self._admit_partial(partial, sha256, size)
            finally:
                self.discard_partial(partial)
        self.restamp([sha256])  # unlinking the partial name moved the blob's ctime
        return self.blob_path(sha256)

    def admit_file(
        self, src: str, sha256: str, size: int, *, label: str | None = None, link: bool = False
    ) -> str:
        """Bring a local file into the cache after checking it (copy, or hard link when ``link``).

        Raises:
            ChecksumError: ``src`` does not have the given size and SHA-256.
        """
        path = self.lookup(sha256)
        if path:
            return path
        with self._blob_lock(sha256, None):
            if self.contains(sha256):
                return self.lookup(sha256) or self.blob_path(sha256)
            tmp = self._tmp_path(sha256)
            try:
                if link:
                    os.link(src, tmp)
                    digest, got = sha256_file(tmp)
                else:
                    with open(src, "rb", buffering=0) as fin, open(tmp, "wb") as out:
                        writer = _VerifyingWriter(out, size, label or src)
                        buf = buffer_for(size)
                        view = memoryview(buf)
                        while n := fin.readinto(buf):
                            writer.write(view[:n])
                    digest, got = writer.hexdigest(), writer.size
                _check(got, digest, size, sha256, label or src)
                self._admit(tmp, sha256, size)
            finally:
                _unlink_quietly(tmp)
        return self.blob_path(sha256)

    def _admit(self, tmp: str, sha256: str, size: int, *, fd: int | None = None) -> None:
        """Rename the checked, read-only file ``tmp`` into place as the blob (``fd``: a descriptor of it the
        caller holds open, to read its stamp through)."""
        path = self.blob_path(sha256)
        # ext4 moves the ctime of a renamed inode: the stamp is taken after the rename, or this process's
        # first hit on every blob it just admitted would hash it again (same inode: nothing else changed).
        if fd is not None:
            os.replace(tmp, path)
            stamp = blob_stamp(os.fstat(fd))
        else:
            os.chmod(tmp, 0o444)
            before = os.stat(tmp)
            os.replace(tmp, path)
            try:
                after = os.stat(path)
            except FileNotFoundError:  # evicted at once by another process: nothing to remember
                after = before
            stamp = blob_stamp(after if after.st_ino == before.st_ino else before)
        self._remember(sha256, stamp)
        with self._touched_lock:
            self._pending[sha256] = (size, stamp)
            self._touched[sha256] = time.time()  # indexed as used now: its first hit needs no touch
            self._pending_bytes += size
            due = (
                size >= INDEX_AT_ONCE
                or len(self._pending) >= INDEX_BATCH
                or time.monotonic() - self._last_flush > INDEX_FLUSH_SECONDS
                or self._pending_bytes * PENDING_SHARE > self.max_bytes
                or self._known_total + self._pending_bytes > self.max_bytes
            )
        if due:
            self._flush(keep={sha256})

    def flush(self) -> None:
        """Index the blobs admitted since the last flush and enforce the limit (one transaction)."""
        self._flush(keep=())

    def _flush(self, keep: Iterable[str]) -> int:
        with self._touched_lock:
            pending, self._pending, self._pending_bytes = self._pending, {}, 0
            touches, self._pending_touches = self._pending_touches, {}
            pack_touches, self._pack_touches = self._pack_touches, set()
            self._last_flush = time.monotonic()
        # Only blobs still there: one evicted since its hit (by any process) must not come back to the index.
        touches = {sha: size for sha, size in touches.items() if self.contains(sha)}
        if touches:
            self.index.touch_blobs(touches, rowids=self._rowids)
        if pack_touches:
            self.index.touch(pack_touches)  # an update: a pack evicted meanwhile stays gone
        victims, self._known_total = self.index.admit_blobs(pending, self.max_bytes, keep, _evictable)
        return self._evict_files(victims) if victims else 0

    def over_limit(self) -> bool:
        """Whether the shared total (as the index has it now) exceeds the limit."""
        return self.index.total_size() > self.max_bytes

    def _blob_lock(self, sha256: str, timeout: float | None):
        return self.locks.hold(sha256, timeout)

    # --- partial files (chunked reads by the mount) -----------------------------------------------------

    def new_partial(self, sha256: str, size: int) -> str:
        """Create an empty sparse file of ``size`` bytes for chunked filling; returns its path.

        It enters the index with its first accounted bytes (:meth:`account_partial`), not here: an entry of 0
        bytes counted nothing, and its write transaction sat on the ``open`` of every uncached large file,
        before the first chunk was asked for. A file left by a writer that died is reclaimed by its name
        (``reclaim_dead``), indexed or not.
        """
        path = os.path.join(self.root, "partial", f"{sha256}.{writer_tag()}.{secrets.token_hex(4)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return path

    @staticmethod
    def _partial_key(path: str) -> str:
        return "partial:" + os.path.basename(path)

    def account_partial(self, path: str, present_bytes: int) -> None:
        """Record how many bytes of a partial file are filled, evicting LRU entries if over the limit (never
        a partial a live process holds: see the module docstring)."""
        key = self._partial_key(path)
        self.index.upsert(key, "partial", present_bytes)
        self.enforce_limit(keep={key})

    def promote_partial(
        self, path: str, sha256: str, size: int, *, label: str | None = None, chunks_verified: bool = False
    ) -> str:
        """Check a completely filled partial file as a whole and make it the cached blob.

        ``chunks_verified``: the caller checked every chunk of the file against the chunk digests of the
        manifest that names ``sha256`` (the mount's reader does, as each chunk lands). The whole-file hash
        is then skipped (a second SHA-256 pass over the file) and only the size is checked: the manifest
        binds its chunk digests to the whole digest (its writer computed both in one read, and the registry
        accepted the blob only after checking its SHA-256), so admitting a wrong blob needs a forged
        manifest *and* store bytes that match its forged chunks. Without it, the file is hashed whole.

        Raises:
            ChecksumError: the whole file does not match; the partial file is discarded.
        """
        key = self._partial_key(path)
        try:
            if self.contains(sha256):
                return self.lookup(sha256) or self.blob_path(sha256)
            if chunks_verified:
                got = os.stat(path).st_size
                _check(got, sha256, size, sha256, label)
            else:
                digest, got = sha256_file(path)
                _check(got, digest, size, sha256, label)
            with self._blob_lock(sha256, None):
                if not self.contains(sha256):
                    self._admit_partial(path, sha256, size)
            return self.blob_path(sha256)
        finally:
            self.discard_partial(path, key)
            self.restamp([sha256])  # unlinking the partial name moved the blob's ctime

    def _admit_partial(self, path: str, sha256: str, size: int) -> None:
        """Make a checked partial file the cached blob (the caller holds the blob's lock)."""
        tmp = self._tmp_path(sha256)
        try:
            os.link(path, tmp)
            # The bytes change entries, not place: the partial's stops counting as the blob's starts.
            self.index.remove([self._partial_key(path)])
            self._admit(tmp, sha256, size)
        finally:
            _unlink_quietly(tmp)

    def discard_partial(self, path: str, key: str | None = None) -> None:
        _unlink_quietly(path)
        self.index.remove([key or self._partial_key(path)])

    # --- size limit, cleanup, verification --------------------------------------------------------------

    def total_size(self) -> int:
        self.flush()
        return self.index.total_size()

    def entries(self) -> list[IndexEntry]:
        self.flush()
        return self.index.entries_lru()

    def enforce_limit(self, keep: Iterable[str] = ()) -> int:
        """Evict least-recently-used entries until the cache fits its limit; returns bytes freed."""
        return self._flush(keep)

    def plan_cleanup(
        self,
        max_bytes: int | None = None,
        max_age: float | None = None,
        keep: Iterable[str] = (),
    ) -> CleanupPlan:
        """Plan removing entries older than ``max_age`` seconds, then LRU entries past ``max_bytes``."""
        self.flush()
        self._reclaim_packs()
        keep = set(keep)
        now = time.time()
        chosen: list[IndexEntry] = []
        remaining: list[IndexEntry] = []
        for entry in self.index.entries_lru():
            if entry.key in keep or not _evictable(entry):
                remaining.append(entry)
            elif max_age is not None and now - entry.last_access > max_age:
                chosen.append(entry)
            else:
                remaining.append(entry)
        if max_bytes is not None:
            total = sum(e.size for e in remaining)
            for entry in remaining:
                if total <= max_bytes:
                    break
                if entry.key in keep or not _evictable(entry):
                    continue
                chosen.append(entry)
                total -= entry.size
        return CleanupPlan(self, tuple(chosen))

    def _evict(self, entries: Iterable[IndexEntry]) -> int:
        entries = list(entries)
        self.index.remove([e.key for e in entries])
        return self._evict_files(entries)

    def _evict_files(self, entries: Iterable[IndexEntry]) -> int:
        """Unlink the files of entries already taken out of the index; a blob being fetched right now is
        indexed again instead (its fetcher is about to use it)."""
        freed = 0
        removed: list[str] = []
        kept: dict[str, int] = {}
        for entry in entries:
            if entry.kind == "partial":
                path = os.path.join(self.root, "partial", entry.key.split(":", 1)[1])
                _unlink_quietly(path)
            elif entry.kind == "pack":  # readers holding it open read on; the index rows went with the entry
                _unlink_quietly(self.pack_path(entry.key))
                self.forget_pack(entry.key)
            elif not self._try_unlink_blob(entry.key):
                kept[entry.key] = entry.size
                continue
            removed.append(entry.key)
            freed += entry.size
        if kept:
            self.index.touch_blobs(kept)
        if removed:
            # Views hold hard links to blobs; drop them so evicted bytes really leave the disk.
            shutil.rmtree(os.path.join(self.root, "views"), ignore_errors=True)
            try:
                os.makedirs(os.path.join(self.root, "views"), exist_ok=True)
            except FileExistsError:  # another process cleared it between our mkdir and its check: theirs now
                pass
            with self._touched_lock:
                for key in removed:
                    self._touched.pop(key, None)
                    self._pending_touches.pop(key, None)
                    self._stamps.pop(key, None)
            logger.debug("evicted %d cache entries (%d bytes)", len(removed), freed)
        return freed

    def _try_unlink_blob(self, sha256: str) -> bool:
        """Unlink a blob unless someone is fetching it right now."""
        try:
            held = self.locks.acquire(sha256, timeout=0.0)
        except CacheError:
            return False
        try:
            _unlink_quietly(self.blob_path(sha256))
            return True
        finally:
            held.release()

    def remove_blob(self, sha256: str) -> None:
        """Drop one blob (e.g. found corrupt); a no-op if absent."""
        _unlink_quietly(self.blob_path(sha256))
        self.index.remove([sha256])
        with self._touched_lock:
            self._touched.pop(sha256, None)
            self._stamps.pop(sha256, None)

    def verify(self, progress: Callable[[int], object] | None = None) -> VerifyReport:
        """Re-hash every blob; remove those whose content no longer matches their name."""
        self.flush()
        checked = 0
        corrupt: list[str] = []
        healed = 0
        blobs_dir = os.path.join(self.root, "blobs")
        for prefix in sorted(os.listdir(blobs_dir)):
            for name in sorted(os.listdir(os.path.join(blobs_dir, prefix))):
                path = os.path.join(blobs_dir, prefix, name)
                digest, size = sha256_file(path)
                checked += 1
                if progress:
                    progress(size)
                if digest != name:
                    logger.warning(
                        "cache blob %s is corrupt (content hashes to %s: changed after it was verified, e.g. "
                        "written through a hard link of a download); removed",
                        name,
                        digest,
                    )
                    corrupt.append(name)
                    self.remove_blob(name)
                else:
                    if self.index.get(name) is None:
                        healed += 1
                    stamp = blob_stamp(os.stat(path))
                    self.index.set_stamp(name, size, stamp)
                    self._remember(name, stamp)
        indexed = {e.key for e in self.index.entries_lru() if e.kind == "blob"}
        missing = [key for key in indexed if not self.contains(key)]
        self.index.remove(missing)
        packs_checked, bad_packs, gone = self._verify_packs(progress)
        return VerifyReport(checked + packs_checked, tuple(corrupt) + bad_packs, healed + len(missing) + gone)

    def _verify_packs(self, progress: Callable[[int], object] | None) -> tuple[int, tuple[str, ...], int]:
        """Hash every blob of every pack: a pack with one wrong blob is removed whole, an indexed pack whose file
        is gone leaves the index, a file no entry names (and no live writer owns) is removed. Returns the blobs
        checked, the removed packs' keys, and how many index entries were dropped."""
        checked = 0
        corrupt: list[str] = []
        gone = 0
        indexed = [e.key for e in self.index.entries_lru() if e.kind == "pack"]
        for key in indexed:
            try:
                with open(self.pack_path(key), "rb", buffering=0) as pack:
                    fd = pack.fileno()
                    bad = []
                    for sha, offset, size in self.index.pack_members(key):
                        checked += 1
                        if hashlib.sha256(os.pread(fd, size, offset)).hexdigest() != sha:
                            bad.append(sha)
                        if progress:
                            progress(size)
            except FileNotFoundError:
                self.index.remove([key])
                self.forget_pack(key)
                gone += 1
                continue
            if bad:
                logger.warning("cache pack %s is corrupt (%d blob(s) changed after they were verified); removed",
                               key, len(bad))
                corrupt.append(key)
                self.remove_pack(key)
        self._reclaim_packs()
        return checked, tuple(corrupt), gone


def _evictable(entry: IndexEntry) -> bool:
    """Blobs always; partial files (``partial:<sha>.<writer>.<token>``) only once the process filling them is
    gone (see :mod:`wanllmdb.tmpfiles`)."""
    if entry.kind != "partial":
        return True
    return writer_gone(entry.key.split(":", 1)[1])


def _read_only(path: str, flags: int) -> int:
    """``open``'s opener for a new blob: created with mode 0444."""
    return os.open(path, flags, 0o444)


def _fetch_checked(
    writer: _VerifyingWriter, fetch: Fetcher, size: int, sha256: str, label: str | None
) -> None:
    """Run ``fetch`` into ``writer`` and check what it wrote.

    Raises:
        ChecksumError: the bytes differ in size or SHA-256.
    """
    try:
        fetch(writer)
    finally:
        writer.finish()
    _check(writer.size, writer.hexdigest(), size, sha256, label)


def _check(got_size: int, got_sha: str, size: int, sha256: str, label: str | None) -> None:
    what = label or f"blob {sha256[:12]}"
    if got_size != size:
        raise ChecksumError(
            f"{what}: expected {size} bytes, received {got_size}", expected=str(size), actual=str(got_size)
        )
    if got_sha != sha256:
        raise ChecksumError(
            f"{what}: SHA-256 mismatch (expected {sha256}, got {got_sha})", expected=sha256, actual=got_sha
        )


def sha256_file(path: str) -> tuple[str, int]:
    """SHA-256 (hex) and byte count of a file, in one streaming pass: how the cache checks a blob."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = buffer_for(os.fstat(f.fileno()).st_size)
        view = memoryview(buf)
        while n := f.readinto(buf):
            sha.update(view[:n])
            size += n
    return sha.hexdigest(), size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            logger.debug("could not remove %s: %s", path, exc)
