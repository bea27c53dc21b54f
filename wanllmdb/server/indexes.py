"""Version indexes built once by the server for the mounts (``GET …/versions/vN/index?schema=s1``).

A mount holds a version of ``INDEX_MIN`` files or more as a SQLite index (``fs/index.py``). Built by the
mount, it costs the manifest's download, its parse and an insert per file: ~14 us a file, 1.2-1.5 s of a
fresh mount's first ``ls`` at 100,000 files, on every machine that mounts the version. A version never
changes, so the server builds that file once per version (by its id, in the schema the mount names) and
sends it as a file (``sendfile``, as blobs go) with the SHA-256 taken when it was built; the mount checks
that digest as the bytes arrive, then the file (``check_index``: SQLite's quick_check, the schema's tables,
as many files as the listing says), and opens it.

A version of ``INDEX_MIN`` files or more has its index built right after finalize, in the background, so that
the first mount finds it ready; a request for one not built yet builds it, once (concurrent requests wait
for the same build). The folder, ``<root>/version-index``, is a cache: least recently served first out past
``budget`` bytes (``--index-cache``; 0 builds none), and every replica of a scaled-out server keeps its own.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time

from ..cache.store import sha256_file
from ..errors import NotFoundError
from ..fs.index import INDEX_MIN, INDEX_SCHEMA, index_files, over_budget, write_index
from ..manifest.stream import iter_entries
from ..registry import VersionInfo
from ..registry.local import LocalRegistry
from ..tmpfiles import reclaim_dead, writer_tag

logger = logging.getLogger(__name__)

#: Bytes of built indexes a server keeps (~130 bytes a file: 1 GiB holds about eight million files' worth).
INDEX_CACHE_BYTES = 4 << 30
FOLDER = "version-index"
#: Beside each index: its SHA-256 (hex), taken when it was built.
DIGEST_SUFFIX = ".sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class VersionIndexes:
    """The built indexes under ``<root>/version-index``, at most ``budget`` bytes."""

    def __init__(self, root: str, budget: int = INDEX_CACHE_BYTES) -> None:
        self.folder = os.path.join(root, FOLDER)
        os.makedirs(self.folder, exist_ok=True)
        self.budget = budget
        #: ``budget`` 0 (``--index-cache 0``): no index is built or served, the mounts build their own.
        self.enabled = budget > 0
        self._guard = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        reclaim_dead(self.folder)  # builds of servers killed meanwhile

    def path(self, version_id: str) -> str:
        return os.path.join(self.folder, f"{version_id}.{INDEX_SCHEMA}.sqlite")

    def get(self, registry: LocalRegistry, info: VersionInfo) -> tuple[str, str]:
        """The index file of the version ``info`` (committed, ``info.id`` set) and its SHA-256, built first if
        need be. The digest was taken when the file was built: the mount checks what it receives against it,
        so that neither a damaged file here nor a damaged answer is opened as an index.

        Raises:
            NotFoundError: this server builds no indexes (``--index-cache 0``).
            InvalidManifestError: the stored manifest does not index (it was checked at finalize: not expected).
        """
        if not self.enabled:
            raise NotFoundError("this server builds no version indexes (--index-cache 0)")
        path = self.path(info.id)
        found = _built(path)
        if found is not None:
            return path, found
        with self._guard:
            lock = self._building.setdefault(info.id, threading.Lock())
        with lock:
            try:
                found = _built(path)
                if found is None:
                    found = self._build(registry, info, path)
            finally:
                with self._guard:
                    self._building.pop(info.id, None)
        self._trim()
        return path, found

    def build_soon(self, registry: LocalRegistry, info: VersionInfo) -> None:
        """Build the index of a version just finalized, if it is large enough for a mount to want one, on a
        thread of its own (a failure is logged: the first request builds it again)."""
        if not self.enabled or info.file_count < INDEX_MIN or not info.id:
            return

        def build() -> None:
            try:
                self.get(registry, info)
            except Exception:
                logger.exception("building the index of %s failed", info.qualified_name)

        threading.Thread(target=build, name="wanllmdb-index", daemon=True).start()

    def _build(self, registry: LocalRegistry, info: VersionInfo, path: str) -> str:
        started = time.monotonic()
        # Named by their writer (``tmpfiles``): a server killed mid-build leaves them to the next start.
        tmp = os.path.join(self.folder, f"{info.id}.{writer_tag()}.{secrets.token_hex(6)}.tmp")
        tmp_digest = tmp + DIGEST_SUFFIX
        try:
            with registry.open_manifest(info.project, info.name, f"v{info.version}") as body:
                count = write_index(tmp, iter_entries(body))
            if count != info.file_count:  # the manifest checked at finalize says otherwise: keep nothing
                raise RuntimeError(f"{info.qualified_name}: indexed {count} files, the version has {info.file_count}")
            digest, _size = sha256_file(tmp)
            with open(tmp_digest, "w") as f:
                f.write(digest)
            # the digest first: an index file in place always has one
            os.replace(tmp_digest, path + DIGEST_SUFFIX)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            _unlink(tmp_digest)
            raise
        logger.info("built the index of %s (%d files) in %.2fs", info.qualified_name, count, time.monotonic() - started)
        return digest

    def _trim(self) -> None:
        """Remove the least recently served indexes until the rest fit ``budget`` (a response already sending
        one keeps its open descriptor)."""
        for built in over_budget(index_files(self.folder), self.budget):
            _unlink(built.path)
            _unlink(built.path + DIGEST_SUFFIX)


def _built(path: str) -> str | None:
    """The SHA-256 of the index at ``path``, marked used now (trimmed last); None if it is not there."""
    try:
        os.utime(path)
        with open(path + DIGEST_SUFFIX) as f:
            digest = f.read().strip()
    except FileNotFoundError:
        return None
    return digest if _SHA256.fullmatch(digest) else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
