"""The seed's ``ArtifactCache`` API over the content-addressed blob cache.

``put``/``get`` work on whole artifact versions, as the seed's users know them, but the bytes live once per
content in :class:`BlobCache`: ``get`` returns a directory of hard links to cached blobs (rebuilt on demand),
so an artifact shared by ten versions costs its bytes once and eviction stays one mechanism.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from typing import Any

from ..errors import InvalidNameError, LocalFileNotFoundError
from ..manifest import (
    Manifest,
    ManifestEntry,
    hash_file,
    validate_alias,
    validate_artifact_name,
    validate_path,
)
from ..settings import load_settings
from .materialize import materialize
from .store import BlobCache

logger = logging.getLogger(__name__)


def _validate_artifact_id(artifact_id: str) -> str:
    parts = artifact_id.split("/") if isinstance(artifact_id, str) else [artifact_id]
    if not 1 <= len(parts) <= 2:
        raise InvalidNameError(f"invalid artifact id {artifact_id!r}: expected 'name' or 'project/name'")
    for part in parts:
        validate_artifact_name(part)
    return artifact_id


class ArtifactCache:
    """Local cache of artifact versions (seed-compatible API).

    Args:
        root: cache directory; default ``WANLLMDB_CACHE_DIR`` or ``platformdirs.user_cache_dir("wanllmdb")``.
        max_size_gb: size limit in GB (10**9 bytes), enforced at every write; default ``WANLLMDB_CACHE_SIZE``
            or 10 GB.
        blob_cache: an open :class:`BlobCache` to view instead of opening ``root``.
    """

    def __init__(
        self,
        root: str | None = None,
        max_size_gb: float | None = None,
        *,
        blob_cache: BlobCache | None = None,
    ) -> None:
        if blob_cache is None:
            settings = load_settings()
            limit = settings.cache_max_bytes if max_size_gb is None else int(max_size_gb * 1000**3)
            blob_cache = BlobCache(os.path.expanduser(root or settings.cache_dir), limit)
        self.blobs = blob_cache
        self.root = blob_cache.root

    def close(self) -> None:
        self.blobs.close()

    def record(self, artifact_id: str, version: str, manifest: Manifest, digest: str | None = None) -> None:
        """Remember which files make up ``artifact_id:version`` (blobs are cached separately).

        ``digest``: the version's content digest (paths, sizes, SHA-256s). A ref recorded with the same one
        is only touched: a download of a million files need not write its manifest (~150 MB of JSON) into the
        index again each time.
        """
        _validate_artifact_id(artifact_id)
        validate_alias(version)
        if digest is not None and self.blobs.index.ref_digest(artifact_id, version) == digest:
            self.blobs.index.touch_ref(artifact_id, version)
            return
        self.blobs.index.put_ref(artifact_id, version, manifest.to_json(), digest)

    def get(self, artifact_id: str, version: str) -> str | None:
        """A directory holding the cached files of that version, or None if any file is not cached."""
        _validate_artifact_id(artifact_id)
        validate_alias(version)
        ref = self.blobs.index.get_ref(artifact_id, version)
        if ref is None:
            return None
        manifest = Manifest.from_json(ref.manifest_json)
        if not all(entry.is_checked for entry in manifest):  # unverified references are never cached
            return None
        needed = {entry.sha256 for entry in manifest}
        with self.blobs.hold_stamps():  # restamp needs the stamps lookup_many verified, however many
            present = self.blobs.lookup_many(needed, touch=False)  # touched below, with the new stamps
            if len(present) < len(needed):
                return None
            view = os.path.join(self.root, "views", artifact_id, version)
            try:
                materialize(manifest, view, present)
            except FileNotFoundError:  # a blob was evicted while linking: the version is no longer complete
                return None
            self.blobs.restamp(present, touch=True)  # the view's hard links moved the blobs' ctimes
        self.blobs.index.touch_ref(artifact_id, version)
        return view

    def put(self, artifact_id: str, version: str, path: str) -> None:
        """Cache the file or directory at ``path`` as ``artifact_id:version``.

        Raises:
            LocalFileNotFoundError: ``path`` does not exist.
        """
        _validate_artifact_id(artifact_id)
        validate_alias(version)
        if not os.path.exists(path):
            raise LocalFileNotFoundError(f"cannot cache {artifact_id}:{version}: {path!r} does not exist")
        files: list[tuple[str, str]] = []
        if os.path.isdir(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for filename in sorted(filenames):
                    full = os.path.join(dirpath, filename)
                    files.append((validate_path(os.path.relpath(full, path).replace(os.sep, "/")), full))
        else:
            files.append((validate_path(os.path.basename(path)), path))
        entries = []
        for rel, full in files:
            digest = hash_file(full)
            self.blobs.admit_file(full, digest.sha256, digest.size, label=full)
            entries.append(
                ManifestEntry(rel, digest.size, digest.md5, digest.sha256, digest.chunk_size, digest.chunks)
            )
        self.record(artifact_id, version, Manifest.from_entries(entries))

    def cleanup(self, max_size_gb: float = 10.0, max_age_days: float = 30) -> dict[str, int]:
        """Remove blobs unused for ``max_age_days``, then LRU blobs until at most ``max_size_gb`` remain."""
        plan = self.blobs.plan_cleanup(max_bytes=int(max_size_gb * 1000**3), max_age=max_age_days * 86400)
        removed = len(plan.entries)
        freed = plan.execute()
        stale = [
            (r.artifact_id, r.version)
            for r in self.blobs.index.refs()
            if r.last_access < _now() - max_age_days * 86400
        ]
        self.blobs.index.remove_refs(stale)
        for artifact_id, version in stale:
            shutil.rmtree(os.path.join(self.root, "views", artifact_id, version), ignore_errors=True)
        return {"removed_blobs": removed, "freed_bytes": freed, "removed_refs": len(stale)}

    def list(self) -> list[dict[str, Any]]:
        """One dict per cached artifact version: id, version, size, files, cached bytes, complete, times."""
        out = []
        for ref in self.blobs.index.refs():
            manifest = Manifest.from_json(ref.manifest_json)
            blobs = {entry.sha256: entry.size for entry in manifest if entry.is_checked}
            present = {sha for sha in blobs if self.blobs.contains(sha)}
            out.append(
                {
                    "artifact_id": ref.artifact_id,
                    "version": ref.version,
                    "size": manifest.size,
                    "file_count": manifest.file_count,
                    "cached_bytes": sum(blobs[sha] for sha in present),
                    "complete": len(present) == len(blobs) and all(e.is_checked for e in manifest),
                    "created": _iso(ref.created),
                    "last_accessed": _iso(ref.last_access),
                }
            )
        return out


def _now() -> float:
    return _dt.datetime.now().timestamp()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")
