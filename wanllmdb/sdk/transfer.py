"""The two data paths of the SDK: logging a version and fetching files of a version.

Logging:

1. Large files whose digests are not known yet (``Artifact._pending``) are stored first. If no stored blob
   has a file's size (``registry.known_sizes``, one request for all), its content cannot be stored yet, so it
   is uploaded in the same read that hashes it (``registry.store_unhashed``): the log costs about
   max(hash, upload) instead of their sum. Otherwise it is hashed, and the draft decides.
2. ``create_draft`` with the whole manifest; the registry answers what it lacks; small missing blobs go in
   bundles (one request per few MiB), the rest one request each, in parallel; ``finalize_draft``.

Fetching: cache hits first (no registry request), then parallel fetches into the cache, then placement.
Prefetching (:func:`warm_cache`, ``wanllmdb prefetch``) is the same without placement: it only makes the
blobs present in the shared cache, so that a later download, or a read through a mount, costs no fetch.
A reference entry's blob comes from its URI (``transport.references.ReferenceFetcher``, checked against the
entry) unless a stored entry has the same content; a reference recorded without a checksum is streamed
straight to its place, unverified and not cached (the cache holds only verified content).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import partial
from typing import TypeVar

from ..cache.digests import stamp
from ..cache.materialize import Placer
from ..cache.store import BlobWriter
from ..errors import ChecksumError, IncompleteDraftError
from ..killpoints import kill_point
from ..manifest import ManifestEntry
from ..manifest.digest import FileDigest
from ..registry import ArtifactTTL, DraftSpec, FinalizeResult
from ..transport.references import ReferenceFetcher
from .client import Client
from .hashing import digest_file, remember
from .progress import ByteProgress

logger = logging.getLogger(__name__)

T = TypeVar("T")


def run_parallel(fn: Callable[[T], object], items: Sequence[T], threads: int) -> None:
    """Call ``fn`` on every item with up to ``threads`` workers; the first failure cancels the rest."""
    if not items:
        return
    if threads <= 1 or len(items) == 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="wanllmdb-xfer") as pool:
        futures = [pool.submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        for future in futures:
            future.result()


def store_pending(client: Client, pending: Mapping[str, str]) -> dict[str, FileDigest]:
    """Hash the pending large files, storing new content in the same read (step 1 above).

    Args:
        pending: artifact path -> local file.

    Returns:
        artifact path -> digests.
    """
    registry = client.registry
    stats = {path: os.stat(local) for path, local in pending.items()}
    known = registry.known_sizes({st.st_size for st in stats.values()})
    digests: dict[str, FileDigest] = {}
    new = [path for path in pending if stats[path].st_size not in known]
    total = sum(stats[path].st_size for path in new)

    with ByteProgress(total, "hash+upload") as progress:

        def one(path: str) -> None:
            local, st = pending[path], stats[path]
            if path in new:
                digest = registry.store_unhashed(local, st.st_size, progress)
                if stamp(os.stat(local)) != stamp(st):
                    raise ChecksumError(f"{local} changed while it was uploaded; log it again once it is complete")
                remember(client.digests, local, st, digest)
            else:
                digest = digest_file(client.digests, local, st)
            digests[path] = digest

        # Large files: two at a time keep both cores busy without thrashing the disk.
        run_parallel(one, list(pending), min(2, client.settings.transfer_threads))
    return digests


def upload_version(
    client: Client,
    spec: DraftSpec,
    local_paths: Mapping[str, str],
    aliases: Sequence[str],
    tags: Sequence[str] = (),
    ttl: float | None | ArtifactTTL = ArtifactTTL.INHERIT,
) -> FinalizeResult:
    """Create a draft, upload the blobs the registry lacks, finalize with ``aliases``, ``tags`` and ``ttl``.

    Args:
        local_paths: sha256 -> a local file holding those bytes.

    On any failure the draft is abandoned (and removed by the registry later): no version appears.
    """
    registry = client.registry
    draft = registry.create_draft(spec)
    kill_point("log.draft")
    try:
        if draft.missing:
            total = sum(t.size for t in draft.missing)
            logger.debug("uploading %d blob(s), %d bytes, for %s", len(draft.missing), total, spec.name)
            bundled = {t.sha256 for bundle in draft.bundles for t in bundle.targets}
            jobs: list[Callable[[ByteProgress], object]] = [
                partial(registry.upload_bundle, draft, bundle, local_paths) for bundle in draft.bundles
            ]
            jobs += [
                partial(registry.upload_blob, draft, t, local_paths[t.sha256])
                for t in draft.missing
                if t.sha256 not in bundled
            ]
            with ByteProgress(total, f"upload {spec.name}") as progress:

                def run_job(job: Callable[[ByteProgress], object]) -> None:
                    job(progress)
                    kill_point("log.upload")

                run_parallel(run_job, jobs, client.settings.transfer_threads)
        kill_point("log.finalize")
        try:
            return registry.finalize_draft(draft.id, aliases, tags, ttl=ttl)
        except IncompleteDraftError as exc:
            # Garbage collection took a stored blob this draft counted on: upload what is missing, once more.
            again = registry.missing_blobs(draft.id)
            if not again:
                raise
            logger.info("%d blob(s) of %s were collected meanwhile; uploading them again", len(again), spec.name)
            for target in again:
                if target.sha256 not in local_paths:
                    raise exc
                registry.upload_blob(draft, target, local_paths[target.sha256])
            return registry.finalize_draft(draft.id, aliases, tags, ttl=ttl)
    except BaseException:
        try:
            registry.abort_draft(draft.id)
        except Exception as exc:  # the draft expires on its own; the original error matters more
            logger.debug("could not abort draft %s: %s", draft.id, exc)
        raise


#: Blobs presigned (``prepare_fetch``) and fetched per window of a download.
FETCH_WINDOW = 20_000


def fetch_files(
    client: Client,
    entries: Iterable[ManifestEntry],
    placer: Placer | None,
    *,
    label: str,
    paths: bool = True,
) -> dict[str, str]:
    """Make every entry's blob present in the cache and, with a placer, place it under its root.

    Returns:
        entry path -> local path (under the placer's root, or the cached blob without a placer); empty with
        ``paths=False``, for a caller that does not need them (a million of them take ~200 MB).

    Raises:
        ChecksumError: a fetched blob does not match its digest (it is not cached).
    """
    cache = client.cache
    # Stored entries first in each group: their blob comes from the registry rather than from a reference.
    by_sha, unchecked = _group_by_blob(entries)
    result: dict[str, str] = {}

    def place(sha: str, blob_path: str) -> None:
        for entry in by_sha[sha]:
            local = placer.place(entry.path, blob_path) if placer else blob_path
            if paths:
                result[entry.path] = local
            kill_point("download.place")

    def fetch(sha: str, progress: Callable[[int], object] | None = None) -> None:
        entry = by_sha[sha][0]
        for attempt in range(2):
            blob_path = _ensure(client, entry, label, progress)
            try:
                place(sha, blob_path)
                return
            except FileNotFoundError:
                if attempt:
                    raise
                logger.debug("blob %s was evicted before it was placed; fetching it again", sha[:12])

    with cache.hold_stamps():  # restamp (below) needs every stamp verified here, however many
        # Placing files: the hits' access times are written with their new stamps, in one pass at the end,
        # also when a fetch fails (else each blob linked so far would be hashed again at its next hit).
        present = cache.present_blobs(by_sha, touch=placer is None)
        try:
            missing: list[str] = []
            for sha in by_sha:
                if sha in present:
                    try:
                        place(sha, cache.blob_path(sha))
                        continue
                    except FileNotFoundError:
                        pass
                missing.append(sha)
            if missing:
                _fetch_missing(client, by_sha, missing, fetch, label)
        finally:
            if placer is not None:  # the hard links just made moved the blobs' ctimes
                cache.restamp(by_sha, touch=True)
    for entry in unchecked:
        assert placer is not None, "a reference without checksum can only be fetched to a place"
        local = fetch_unchecked(entry, placer, f"{label}/{entry.path}")
        if paths:
            result[entry.path] = local
    return result


def _fetch_missing(
    client: Client,
    by_sha: dict[str, list[ManifestEntry]],
    missing: list[str],
    fetch: Callable[[str, Callable[[int], object]], None],
    label: str,
) -> None:
    """Fetch (and place) the blobs not in the cache, a window at a time, with one progress bar for all."""
    prepare = getattr(client.registry, "prepare_fetch", None)
    total = sum(by_sha[sha][0].size for sha in missing)
    try:
        with ByteProgress(total, f"download {label}") as progress:
            # A window at a time: each presign request, and the URLs and bundles held, stay bounded
            # (one request for a million blobs took 35 s, past the read timeout).
            for start in range(0, len(missing), FETCH_WINDOW):
                window = missing[start : start + FETCH_WINDOW]
                stored = [sha for sha in window if not by_sha[sha][0].is_reference]
                if prepare is not None and stored:
                    prepare(stored)
                run_parallel(lambda sha: fetch(sha, progress), window, client.settings.transfer_threads)
    finally:
        client.cache.flush()


def _group_by_blob(entries: Iterable[ManifestEntry]) -> tuple[dict[str, list[ManifestEntry]], list[ManifestEntry]]:
    """Checked entries by sha256 (stored entries first in each group), and the unchecked references."""
    by_sha: dict[str, list[ManifestEntry]] = {}
    unchecked: list[ManifestEntry] = []
    for entry in entries:
        if entry.is_checked:
            by_sha.setdefault(entry.sha256, []).append(entry)
        else:
            unchecked.append(entry)
    for group in by_sha.values():
        group.sort(key=lambda e: e.is_reference)
    return by_sha, unchecked


#: Stored blobs at least this large (with chunk digests) come as parallel ranged GETs, SPAN_THREADS at once,
#: every chunk checked as it arrives (``BlobCache.ensure_spans``). Spans are at most SPAN_BYTES (1 GiB in
#: 32 MiB spans cost the client ~1.8 CPU-s against ~2.3 in 8 MiB spans or one stream, A/B, 2 rounds) and at
#: least SPAN_MIN_SPAN, about a blob's size over twice the threads in between, so a 16 MiB blob still comes
#: as 4 spans at once.
SPAN_MIN_BYTES = 16 * 1024 * 1024
SPAN_BYTES = 32 * 1024 * 1024
SPAN_MIN_SPAN = 4 * 1024 * 1024
SPAN_THREADS = 4


def span_for(size: int, chunk_size: int, threads: int) -> int:
    """The span length (a whole number of chunks) for fetching ``size`` bytes with ``threads`` threads."""
    wanted = -(-size // (2 * threads))
    wanted = -(-wanted // chunk_size) * chunk_size
    return max(chunk_size, min(SPAN_BYTES, max(SPAN_MIN_SPAN, wanted)) // chunk_size * chunk_size)


class _ProgressWriter:
    """Passes pieces to a writer, reporting each piece's size."""

    def __init__(self, writer: BlobWriter, progress: Callable[[int], object]) -> None:
        self._writer = writer
        self._progress = progress

    def write(self, data: bytes | memoryview, /) -> int:
        n = self._writer.write(data)
        self._progress(n)
        return n


def _ensure(client: Client, entry: ManifestEntry, label: str, progress: Callable[[int], object] | None) -> str:
    """Make ``entry``'s blob present in the cache; returns its path.

    A large stored blob whose manifest entry has chunk digests, from a registry that serves ranges in
    parallel (``ranged_fetch``), comes as parallel spans, each chunk verified on arrival; anything else comes
    as one stream verified against the whole-file SHA-256.
    """
    registry = client.registry
    what = f"{label}/{entry.path}"
    if (
        not entry.is_reference
        and entry.chunks
        and entry.size >= SPAN_MIN_BYTES
        and getattr(registry, "ranged_fetch", False)
    ):

        def fetch_range(start: int, length: int, writer: BlobWriter) -> int:
            return registry.fetch_range_into(
                entry.sha256, start, length, _ProgressWriter(writer, progress) if progress else writer
            )

        threads = max(1, min(SPAN_THREADS, client.settings.transfer_threads))
        return client.cache.ensure_spans(
            entry.sha256, entry.size, entry.chunk_size, entry.chunks, fetch_range,
            span=span_for(entry.size, entry.chunk_size, threads), threads=threads, label=what,
        )  # fmt: skip
    return client.cache.ensure(entry.sha256, entry.size, _fetcher(registry, entry, label, progress), label=what)


def _fetcher(
    registry, entry: ManifestEntry, label: str, progress: Callable[[int], object] | None
) -> Callable[[BlobWriter], object]:
    """What writes ``entry``'s blob: its reference URI, or the registry."""
    if entry.is_reference:
        return ReferenceFetcher(entry, f"{label}/{entry.path}")
    return lambda writer: registry.fetch_blob(entry.sha256, entry.size, writer, progress)


@dataclass
class WarmReport:
    """What :func:`warm_cache` did (or, with ``dry_run``, would do)."""

    #: Files selected, and their logical bytes.
    files: int
    bytes: int
    #: Files (and distinct blobs, and their bytes) that were not cached: fetched, or to fetch with dry_run.
    fetch_files: int
    fetch_blobs: int
    fetch_bytes: int
    #: Files (and bytes) already cached: they cost nothing.
    cached_files: int
    cached_bytes: int
    #: References recorded with ``checksum=False``: never cached, so never prefetched.
    skipped_files: int
    seconds: float
    dry_run: bool

    @property
    def rate(self) -> float:
        """Bytes fetched per second."""
        return self.fetch_bytes / self.seconds if self.seconds > 0 and not self.dry_run else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "bytes_per_second": round(self.rate, 1)}


def warm_cache(
    client: Client,
    entries: Iterable[ManifestEntry],
    *,
    label: str,
    threads: int | None = None,
    dry_run: bool = False,
    progress: bool | None = None,
) -> WarmReport:
    """Make every entry's blob present in the shared cache, fetching the missing ones in parallel.

    Cached blobs cost no registry request; the missing ones are presigned in one request
    (``prepare_fetch``) and fetched with ``threads`` workers (default: the settings' transfer threads),
    each verified before it is admitted. With ``dry_run`` nothing is fetched: the report says what would be.
    ``progress``: a tqdm bar on stderr (default: when stderr is a terminal and the transfer is large).
    """
    started = time.monotonic()
    entries = list(entries)
    by_sha, unchecked = _group_by_blob(entries)
    cache = client.cache
    present = cache.present_blobs(by_sha)
    missing = [sha for sha in by_sha if sha not in present]
    fetch_files = sum(len(by_sha[sha]) for sha in missing)
    fetch_bytes = sum(by_sha[sha][0].size for sha in missing)
    if missing and not dry_run:
        registry = client.registry
        stored = [sha for sha in missing if not by_sha[sha][0].is_reference]
        if stored:
            registry.prepare_fetch(stored)
        try:
            with ByteProgress(fetch_bytes, f"prefetch {label}", enabled=progress) as bar:

                def fetch(sha: str) -> None:
                    _ensure(client, by_sha[sha][0], label, bar)

                run_parallel(fetch, missing, threads or client.settings.transfer_threads)
        finally:
            cache.flush()
    checked = [e for group in by_sha.values() for e in group]
    cached = [e for sha in present for e in by_sha[sha]]
    return WarmReport(
        files=len(entries),
        bytes=sum(e.size for e in entries),
        fetch_files=fetch_files,
        fetch_blobs=len(missing),
        fetch_bytes=fetch_bytes,
        cached_files=len(cached),
        cached_bytes=sum(e.size for e in cached),
        skipped_files=len(entries) - len(checked),
        seconds=time.monotonic() - started,
        dry_run=dry_run,
    )


def fetch_unchecked(entry: ManifestEntry, placer: Placer, label: str) -> str:
    """Stream a reference recorded with ``checksum=False`` from its URI to its place; returns the path.

    Nothing can be checked (no digest was recorded), so the bytes never enter the content-addressed cache.
    """
    target = placer.target(entry.path)
    tmp = os.path.join(os.path.dirname(target), f".wanllmdb-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as out:
            ReferenceFetcher(entry, label)(out)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    logger.info("%s: fetched from %s unverified (recorded with checksum=False)", label, entry.ref)
    return target
