"""ArtifactFS: the read-only filesystem of a registry, independent of FUSE.

Layout (DESIGN.md "Mount")::

    /<project>/<artifact>/v<N>/<file path>      every finalized version is a directory
    /<project>/<artifact>/<alias> -> v<N>       every alias a relative symlink (latest -> v2)
    /<project>/<collection>/v<N> -> ../../<source project>/<source artifact>/v<K>
                                                a link collection's versions are symlinks to their sources

A version directory carries its tags in the xattr ``user.wanllmdb.tags`` (comma-separated). A version
deleted in the registry is gone from the artifact's listing, and so from the mount, within the TTL.

With ``project=`` the root is that project. Operations take paths as FUSE gives them and raise
:mod:`wanllmdb.errors` types (never errno): not found is a ``NotFoundError``, writes a ``ReadOnlyError``,
fetch failures a ``FetchError``/``ChecksumError``/``TransportError``. ``fuse_ops`` maps them to errno.

Metadata comes from :class:`~wanllmdb.fs.catalog.Catalog` (bounded, TTL for what changes), bytes from
:class:`~wanllmdb.fs.reader.ChunkReader` (the shared blob cache, verified chunks). Listings never fetch file
bytes: sizes, times and digests all come from manifests.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from cachetools import TTLCache

from ..cache.store import BlobCache
from ..errors import (
    FetchError,
    InvalidInputError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ProjectNotFoundError,
    ReadOnlyError,
    TransportError,
    WanllmdbError,
)
from ..manifest import ManifestEntry, parse_version, validate_artifact_name, validate_project
from ..registry import Registry, VersionInfo
from .catalog import DEFAULT_TREE_ENTRIES, Catalog
from .flight import Flights
from .index import INDEX_FOLDER, IndexFolder, kept_budget
from .pathhandles import PathHandles
from .reader import ChunkReader, Handle
from .tree import Attr, DirNode, FileNode, LinkNode, VersionRef, artifact_listing, dir_attr, split_path

logger = logging.getLogger(__name__)

T = TypeVar("T")

XATTR_PREFIX = "user.wanllmdb."
XATTR_SHA256 = XATTR_PREFIX + "sha256"
XATTR_MD5 = XATTR_PREFIX + "md5"
#: On a version directory: its tags, comma-separated.
XATTR_TAGS = XATTR_PREFIX + "tags"
XATTR_REF = XATTR_PREFIX + "ref"
#: On the mount root: JSON counters of the read path (chunks and blobs fetched, cache hits...).
XATTR_STATS = XATTR_PREFIX + "stats"
#: Threads answering metadata requests (listings, manifests) to the registry.
METADATA_WORKERS = 8
#: Uncached small files announced to the registry at once (one presign request for many downloads).
PREPARE_BATCH = 1000
#: Most siblings one open looks at (cached ones included) before it stops.
PREPARE_SCAN = 4 * PREPARE_BATCH
#: Fewest uncached small siblings for which opening one fills the cache with the rest (a directory being walked;
#: for a handful the fill saves nothing, and each open fetches its own file as before).
FILL_MIN = 16
#: Longest wait of the cache fill for a blob another fetcher is writing (it then stops; reads go on as usual).
FILL_LOCK_WAIT = 5.0

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class AttributeMissingError(NotFoundError):
    """An extended attribute this file does not have (ENODATA)."""

    code = "no_such_attribute"


class AttributeUnsupportedError(WanllmdbError):
    """An extended-attribute namespace the mount does not serve (``security.``, ``system.``: ENOTSUP).

    Answering "unsupported" rather than "absent" lets tools such as ``ls -l`` remember it for the whole
    filesystem instead of asking again for every file.
    """

    code = "attribute_unsupported"


@dataclass(frozen=True, slots=True)
class Located:
    """A resolved path: its attributes and what it is.

    ``kind`` is one of ``root``, ``project``, ``artifact``, ``dir`` (inside a version, including the version
    directory itself), ``file`` or ``link``.
    """

    kind: str
    attr: Attr
    project: str | None = None
    artifact: str | None = None
    version: int | None = None
    node: FileNode | DirNode | LinkNode | None = None
    rel: str = ""

    @property
    def label(self) -> str:
        """``project/artifact:vN/path`` for log lines and error messages."""
        if self.version is None:
            return "/".join(p for p in (self.project, self.artifact) if p) or "/"
        return f"{self.project}/{self.artifact}:v{self.version}" + (f"/{self.rel}" if self.rel else "")


class ArtifactFS:
    """The mount's logic: path resolution, listings, reads (see the module docstring).

    Args:
        catalog: metadata source.
        reader: byte source.
        stop: completed by :meth:`shutdown`; every pending wait then gives up.
        project: serve only this project, at the root.
    """

    def __init__(
        self,
        catalog: Catalog,
        reader: ChunkReader,
        *,
        stop: Future[None],
        project: str | None = None,
        pools: tuple[ThreadPoolExecutor, ...] = (),
    ) -> None:
        self.catalog = catalog
        self.reader = reader
        self._pools = pools
        self.project = validate_project(project) if project else None
        self._stop = stop
        self._started_at = time.time()
        self._handles: dict[int, Handle] = {}
        #: Files read without an ``open`` (the kernel opens them itself: ``fuse_ops`` "no open"), by path.
        self.paths = PathHandles(reader.release)
        #: Files opened by ``open`` and by their first read (no-open mode): stats for tests and benchmarks.
        self._opens = {"file_opens": 0, "path_opens": 0}
        self._opens_lock = threading.Lock()
        self._fh = itertools.count(1)
        self._prepared: TTLCache = TTLCache(maxsize=256, ttl=60.0)
        self._prepared_lock = threading.Lock()

    # --- resolution -------------------------------------------------------------------------------------

    def locate(self, path: str) -> Located:
        """Resolve ``path``.

        Raises:
            NotFoundError: nothing is there.
        """
        parts = split_path(path)
        if self.project is None:
            if not parts:
                return Located("root", self._root_attr())
            project, rest = parts[0], parts[1:]
            _check_name(validate_project, project, path)
            if not rest:
                return Located("project", self._project_attr(project), project)
        else:
            project, rest = self.project, parts
            if not rest:
                return Located("root", self._mounted_project_attr(project), project)
        name = rest[0]
        _check_name(validate_artifact_name, name, path)
        if len(rest) == 1:
            info = self.catalog.artifact(project, name)
            return Located("artifact", dir_attr(info.latest.created_at, len(info.versions)), project, name)
        version = _version_number(rest[1])
        if version is None:
            if len(rest) > 2:  # the kernel follows symlinks itself; a path never continues through one
                raise NotFoundError(f"no such file: {path}")
            return self._alias(project, name, rest[1], path)
        if len(rest) == 2:
            # Only the version directory itself is checked against the (TTL'd) listing: the kernel looks
            # it up before anything below it, so a deleted version's files vanish with it, and a lookup
            # of a file costs no listing.
            info = self.catalog.versions(project, name).get(version)
            if info is None:
                raise NotFoundError(f"no such version: {project}/{name}:v{version}")
            if info.link_source is not None:
                link = self._link_to_source(info)
                return Located("link", link.attr, project, name, node=link)
        tree = self.catalog.tree(project, name, version)
        node = tree.lookup(rest[2:])
        if node is None:
            raise NotFoundError(f"no such file in {project}/{name}:v{version}: {'/'.join(rest[2:])}")
        kind = "file" if isinstance(node, FileNode) else "dir" if isinstance(node, DirNode) else "link"
        return Located(kind, node.attr, project, name, version, node, "/".join(rest[2:]))

    def _link_to_source(self, info: VersionInfo) -> LinkNode:
        """The symlink a link collection's version is: relative, to the source's version directory."""
        assert info.link_source is not None
        where, _, label = info.link_source.rpartition(":")
        source_project, _, source_name = where.partition("/")
        if self.project is None:
            target = f"../../{source_project}/{source_name}/{label}"
        elif source_project == self.project:
            target = f"../{source_name}/{label}"
        else:  # outside the mounted project: left dangling, but still says what it points at
            target = f"../../{source_project}/{source_name}/{label}"
        return LinkNode(target, info.created_at)

    def _alias(self, project: str, name: str, alias: str, path: str) -> Located:
        info = self.catalog.artifact(project, name)
        created = {v.version: v.created_at for v in info.versions}
        for child, node in artifact_listing(created, info.aliases):
            if child == alias and isinstance(node, LinkNode):
                return Located("link", node.attr, project, name, node=node)
        raise NotFoundError(f"no such version or alias: {path}")

    def _root_attr(self) -> Attr:
        try:
            count = len(self.catalog.projects())
        except (TransportError, FetchError) as exc:
            logger.debug("root attributes without the project count: %s", exc)
            return Attr(dir_attr(self._started_at, 0).mode, 0, self._started_at, 1)
        return dir_attr(self._started_at, count)

    def _mounted_project_attr(self, project: str) -> Attr:
        """The root with ``project=``: it exists even before the project does, or while the server is down."""
        try:
            return self._project_attr(project, missing_ok=True)
        except (TransportError, FetchError) as exc:
            logger.debug("root attributes without the artifact count: %s", exc)
            return Attr(dir_attr(self._started_at, 0).mode, 0, self._started_at, 1)

    def _project_attr(self, project: str, missing_ok: bool = False) -> Attr:
        try:
            artifacts = self.catalog.artifacts(project)
        except ProjectNotFoundError:
            if not missing_ok:
                raise
            artifacts = []
        mtime = max((a.updated_at for a in artifacts), default=self._started_at)
        return dir_attr(mtime, len(artifacts))

    # --- metadata operations ----------------------------------------------------------------------------

    def getattr(self, path: str) -> Attr:
        return self.locate(path).attr

    def readdir(self, path: str) -> list[tuple[str, Attr | None]]:
        """Names in a directory with their attributes (None where knowing them would cost a request).

        Raises:
            NotFoundError: no such directory.
            NotDirectoryError: ``path`` is a file or a symlink.
        """
        here = self.locate(path)
        entries: list[tuple[str, Attr | None]] = [(".", here.attr), ("..", None)]
        if here.kind == "root" and self.project is None:
            entries.extend((project, None) for project in self.catalog.projects())
        elif here.kind in ("root", "project"):
            entries.extend(self._list_project(here.project or ""))
        elif here.kind == "artifact":
            entries.extend(self._list_artifact(here.project or "", here.artifact or ""))
        elif here.kind == "dir":
            node = here.node
            assert isinstance(node, DirNode)
            entries.extend(node.listing())
        else:
            raise NotDirectoryError(f"not a directory: {path}")
        return entries

    def _list_project(self, project: str) -> Iterator[tuple[str, Attr | None]]:
        try:
            artifacts = self.catalog.artifacts(project)
        except ProjectNotFoundError:
            if self.project is None:
                raise
            artifacts = []  # the mounted project has no artifact yet
        for summary in artifacts:
            yield summary.name, dir_attr(summary.updated_at, summary.version_count)

    def _list_artifact(self, project: str, name: str) -> Iterator[tuple[str, Attr | None]]:
        info = self.catalog.artifact(project, name)
        versions = self.catalog.versions(project, name)
        created = {v.version: v.created_at for v in info.versions}
        for child, node in artifact_listing(created, info.aliases):
            if isinstance(node, VersionRef) and versions[node.version].link_source is not None:
                yield child, self._link_to_source(versions[node.version]).attr
            elif isinstance(node, VersionRef):
                # A version directory's link count needs its manifest; give it only when already loaded.
                tree = self.catalog.cached_tree(project, name, node.version)
                yield child, tree.root.attr if tree is not None else None
            else:
                yield child, node.attr

    def readlink(self, path: str) -> str:
        here = self.locate(path)
        if here.kind != "link":
            raise InvalidInputError(f"not a symbolic link: {path}")
        assert isinstance(here.node, LinkNode)
        return here.node.target

    def getxattr(self, path: str, name: str) -> bytes:
        """``user.wanllmdb.sha256`` / ``.md5`` of a file (``.ref``: a reference's URI); ``.stats`` of the root.

        Raises:
            AttributeMissingError: the node has no such attribute.
            AttributeUnsupportedError: ``name`` is outside the ``user.`` namespace.
        """
        if not name.startswith("user."):
            raise AttributeUnsupportedError(f"extended attributes {name.split('.')[0]}.* are not supported")
        here = self.locate(path)
        if here.kind == "file":
            assert isinstance(here.node, FileNode)
            if name == XATTR_SHA256:
                return here.node.entry.sha256.encode()
            if name == XATTR_MD5:
                return here.node.entry.md5.encode()
            if name == XATTR_REF and here.node.entry.ref is not None:
                return here.node.entry.ref.encode()
        if here.kind == "root" and name == XATTR_STATS:
            return json.dumps(self.stats(), sort_keys=True).encode()
        if name == XATTR_TAGS and self._is_version_dir(here):
            info = self.catalog.versions(here.project or "", here.artifact or "").get(here.version or 0)
            return ",".join(info.tags if info else ()).encode()
        raise AttributeMissingError(f"{path} has no attribute {name}")

    def listxattr(self, path: str) -> list[str]:
        here = self.locate(path)
        if here.kind == "file":
            assert isinstance(here.node, FileNode)
            return [XATTR_SHA256, XATTR_MD5, *([XATTR_REF] if here.node.entry.ref is not None else [])]
        if here.kind == "root":
            return [XATTR_STATS]
        if self._is_version_dir(here):
            return [XATTR_TAGS]
        return []

    @staticmethod
    def _is_version_dir(here: Located) -> bool:
        return here.kind == "dir" and here.version is not None and not here.rel

    def stats(self) -> dict[str, int]:
        data = self.reader.stats.as_dict()
        data["open_files"] = len(self._handles) + len(self.paths)
        with self._opens_lock:
            data.update(self._opens)
        data["tree_entries"] = self.catalog.tree_entries()
        data.update(self.catalog.counts())
        return data

    # --- files ------------------------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        """Open a file for reading; returns a handle number.

        Raises:
            ReadOnlyError: opened for writing.
            IsDirectoryError: ``path`` is a directory.
            FetchError, ChecksumError, TransportError: a small file could not be fetched.
        """
        if flags & _WRITE_FLAGS:
            raise ReadOnlyError(f"read-only filesystem: cannot open {path} for writing")
        handle = self.open_handle(self._locate_file(path))
        fh = next(self._fh)
        self._handles[fh] = handle
        self._opened("file_opens")
        return fh

    def _opened(self, kind: str) -> None:
        with self._opens_lock:
            self._opens[kind] += 1

    def _locate_file(self, path: str) -> Located:
        here = self.locate(path)
        if here.kind != "file":
            if here.kind == "link":
                raise NotFoundError(f"dangling alias: {path}")
            raise IsDirectoryError(f"is a directory: {path}")
        return here

    def ready_path(self, path: str, offset: int, size: int) -> tuple[int, int, int]:
        """:meth:`ready` for a file read without an ``open`` (the kernel opened it itself): the file's handle is
        found by path, and opened here by its first read (fetched and verified as :meth:`open` would).

        Raises:
            as :meth:`open` and :meth:`ready`.
        """
        handle = self.paths.take(path)
        if handle is None:
            handle = self.paths.put(path, self.open_handle(self._locate_file(path)))
            self._opened("path_opens")
        return self.reader.ready(handle, offset, size)

    def open_handle(self, here: Located) -> Handle:
        """A reader handle for the file ``here`` (``open`` without a handle number: fsspec keeps its own).

        Raises:
            FetchError, ChecksumError, TransportError: a small file could not be fetched.
        """
        node = here.node
        assert isinstance(node, FileNode)
        if not node.entry.is_chunked and node.entry.size:
            self._prepare_siblings(here)
        return self.reader.open(node.entry, here.label)

    def read_into(self, fh: int, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset`` of the open file ``fh``; returns the byte count."""
        return self.reader.read_into(self._handle(fh), offset, view)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return self.reader.read(self._handle(fh), size, offset)

    def ready(self, fh: int, offset: int, size: int) -> tuple[int, int, int]:
        """The descriptor, position and byte count to serve ``[offset, offset + size)`` of ``fh`` from
        (``ChunkReader.ready``)."""
        return self.reader.ready(self._handle(fh), offset, size)

    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            self.reader.release(handle)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FetchError(f"file handle {fh} is not open") from None

    def _prepare_siblings(self, here: Located) -> None:
        """Announce the uncached small files next to ``here`` to the registry, once per batch.

        The HTTP registry presigns them all in one request, so reading a directory of small files costs
        one round trip per file instead of two.
        """
        node = here.node
        assert isinstance(node, FileNode)
        dir_rel = here.rel.rpartition("/")[0]
        key = (here.project, here.artifact, here.version, dir_rel)
        with self._prepared_lock:
            done = self._prepared.get(key)
        if done is not None and node.entry.sha256 in done:
            return
        tree = self.catalog.cached_tree(here.project or "", here.artifact or "", here.version or 0)
        parent = tree.lookup(split_path(dir_rel)) if tree is not None else None
        if not isinstance(parent, DirNode):
            return
        batch: list[ManifestEntry] = []
        # Every sibling looked at counts as handled, cached or not: its own open returns at once above, so
        # reading a directory of N cached files costs N lookups, not N**2/2 (a warm read of 5,000 small
        # files took 30 s of stat calls before).
        examined: list[str] = []
        own_name = here.rel.rpartition("/")[2]
        cache = self.reader.cache

        def eligible() -> Iterator[ManifestEntry]:
            started = False
            for name, entry in parent.files():
                started = started or name == own_name
                # references are fetched from their URI, not from the registry
                if started and not entry.is_chunked and entry.size and not entry.is_reference:
                    yield entry

        siblings = eligible()
        # In slices no longer than what the batch still lacks, each sorted into cached and not by the cache's
        # index (files and packs, one query a slice; a stat of each uncached blob's name cost ~70 µs on a
        # cold walk): the scan stops where the batch is full, as a look at each would.
        while len(batch) < PREPARE_BATCH and len(examined) < PREPARE_SCAN:
            part = list(itertools.islice(siblings, min(PREPARE_BATCH - len(batch), PREPARE_SCAN - len(examined))))
            if not part:
                break
            held = cache.likely_held(entry.sha256 for entry in part)
            for entry in part:
                examined.append(entry.sha256)
                if entry.sha256 not in held:
                    batch.append(entry)
        with self._prepared_lock:
            self._prepared[key] = frozenset(examined) | (done or frozenset())
        if len(examined) > len(batch):  # cached siblings: their stamps in one query, not one per open
            missing = {entry.sha256 for entry in batch}
            cache.preload_stamps(sha for sha in examined if sha not in missing)
        if len(batch) > 1:
            shas = [entry.sha256 for entry in batch]
            entries = {entry.sha256: entry for entry in batch}
            label = here.label.rpartition("/")[0]
            fill = (lambda: self.reader.fill(entries, label, FILL_LOCK_WAIT)) if len(batch) >= FILL_MIN else None
            self.catalog.prepare_fetch(key, shas, then=fill)

    # --- writes -----------------------------------------------------------------------------------------

    @staticmethod
    def refuse_write(operation: str, path: str) -> None:
        """Every change to the tree ends here.

        Raises:
            ReadOnlyError: always.
        """
        raise ReadOnlyError(f"read-only filesystem: {operation} {path} refused")

    # --- lifecycle --------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Make every pending and future wait give up; idempotent."""
        if not self._stop.done():
            self._stop.set_result(None)

    def close(self) -> None:
        """Release everything (after the FUSE loop has ended)."""
        self.shutdown()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for fh in list(self._handles):
            self.release(fh)
        self.paths.close()
        self.reader.close()
        self.catalog.close()


def open_filesystem(
    registry: Registry,
    cache: BlobCache,
    *,
    project: str | None = None,
    metadata_ttl: float = 5.0,
    timeout: float = 30.0,
    max_tree_entries: int = DEFAULT_TREE_ENTRIES,
    index_min: int | None = None,
) -> ArtifactFS:
    """An ArtifactFS over ``registry`` and ``cache`` with its thread pools (``close()`` releases them).

    Args:
        metadata_ttl: seconds listings and aliases are cached.
        timeout: seconds a read or lookup waits on a registry call that makes no progress.
        max_tree_entries: files of version trees held in memory; larger versions are indexed on disk, in
            ``mount-index/`` under the cache root (see ``fs/index.py``).
        index_min: versions of at least this many files are indexed on disk (default ``INDEX_MIN``; those over
            ``max_tree_entries`` always are).
    """
    stop: Future[None] = Future()
    meta_pool = ThreadPoolExecutor(METADATA_WORKERS, thread_name_prefix="wanllmdb-meta")
    catalog = Catalog(
        registry, Flights(meta_pool, stop), ttl=metadata_ttl, timeout=timeout, max_tree_entries=max_tree_entries,
        index_folder=IndexFolder(os.path.join(cache.root, INDEX_FOLDER), kept_bytes=kept_budget(cache.max_bytes)),
        index_min=index_min,
    )
    fetch_range_into, fetch_blob = (_unless_down(catalog, f) for f in (registry.fetch_range_into, registry.fetch_blob))
    reader = ChunkReader(cache, fetch_range_into, fetch_blob, stop=stop, timeout=timeout, trust_chunk_digests=True)
    return ArtifactFS(catalog, reader, stop=stop, project=project, pools=(meta_pool,))


def _unless_down(catalog: Catalog, fetch: Callable[..., T]) -> Callable[..., T]:
    """``fetch`` (a registry's blob fetcher, called with the blob's SHA-256 first), failing at once while the
    catalog holds the registry for down: an uncached read then fails without waiting out the timeout, as a
    lookup of something never seen does. Cached bytes never reach a fetcher."""

    def fetch_unless_down(sha256: str, *args: Any) -> T:
        if catalog.registry_down():
            raise FetchError(f"blob {sha256[:12]} is not cached, and {catalog.down_reason()}")
        return fetch(sha256, *args)

    return fetch_unless_down


def _check_name(validate, name: str, path: str) -> None:
    try:
        validate(name)
    except InvalidInputError:
        raise NotFoundError(f"no such file: {path}") from None


def _version_number(selector: str) -> int | None:
    try:
        return parse_version(selector)
    except InvalidInputError:
        return None
