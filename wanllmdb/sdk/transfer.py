"""The two data paths of the SDK: logging a version (draft, parallel uploads, finalize) and fetching files
of a version into the cache and onto disk (cache hits first, parallel fetches for the rest)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from ..cache.materialize import Placer
from ..manifest import ManifestEntry
from ..registry import DraftSpec, FinalizeResult
from .client import Client
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


def upload_version(
    client: Client, spec: DraftSpec, local_paths: Mapping[str, str], aliases: Sequence[str]
) -> FinalizeResult:
    """Create a draft, upload the blobs the registry lacks, finalize with ``aliases``.

    Args:
        local_paths: sha256 -> a local file holding those bytes.

    On any failure the draft is abandoned (and removed by the registry later): no version appears.
    """
    registry = client.registry
    draft = registry.create_draft(spec)
    try:
        if draft.missing:
            total = sum(t.size for t in draft.missing)
            logger.debug("uploading %d blob(s), %d bytes, for %s", len(draft.missing), total, spec.name)
            with ByteProgress(total, f"upload {spec.name}") as progress:
                run_parallel(
                    lambda t: registry.upload_blob(draft, t, local_paths[t.sha256], progress),
                    draft.missing,
                    client.settings.transfer_threads,
                )
        return registry.finalize_draft(draft.id, aliases)
    except BaseException:
        try:
            registry.abort_draft(draft.id)
        except Exception as exc:  # the draft expires on its own; the original error matters more
            logger.debug("could not abort draft %s: %s", draft.id, exc)
        raise


def fetch_files(
    client: Client,
    entries: Iterable[ManifestEntry],
    placer: Placer | None,
    *,
    label: str,
) -> dict[str, str]:
    """Make every entry's blob present in the cache and, with a placer, place it under its root.

    Returns:
        entry path -> local path (under the placer's root, or the cached blob without a placer).

    Raises:
        ChecksumError: a fetched blob does not match its digest (it is not cached).
    """
    cache = client.cache
    registry = client.registry
    by_sha: dict[str, list[ManifestEntry]] = {}
    for entry in entries:
        by_sha.setdefault(entry.sha256, []).append(entry)
    result: dict[str, str] = {}

    def place(sha: str, blob_path: str) -> None:
        for entry in by_sha[sha]:
            result[entry.path] = placer.place(entry.path, blob_path) if placer else blob_path

    def fetch(sha: str, progress: Callable[[int], object] | None = None) -> None:
        entry = by_sha[sha][0]
        for attempt in range(2):
            blob_path = cache.ensure(
                sha,
                entry.size,
                lambda writer: registry.fetch_blob(sha, entry.size, writer, progress),
                label=f"{label}/{entry.path}",
            )
            try:
                place(sha, blob_path)
                return
            except FileNotFoundError:
                if attempt:
                    raise
                logger.debug("blob %s was evicted before it was placed; fetching it again", sha[:12])

    present = cache.lookup_many(by_sha)
    missing: list[str] = []
    for sha in by_sha:
        if sha in present:
            try:
                place(sha, present[sha])
                continue
            except FileNotFoundError:
                pass
        missing.append(sha)
    if missing:
        prepare = getattr(registry, "prepare_fetch", None)
        if prepare is not None:
            prepare(missing)
        total = sum(by_sha[sha][0].size for sha in missing)
        try:
            with ByteProgress(total, f"download {label}") as progress:
                run_parallel(lambda sha: fetch(sha, progress), missing, client.settings.transfer_threads)
        finally:
            cache.flush()
    return result
