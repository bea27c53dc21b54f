"""What the mount lists, fetched from the registry and held in bounded in-memory caches.

- Listings that change — the projects, a project's artifacts, an artifact's versions and aliases — are
  kept ``ttl`` seconds (``--metadata-ttl``), so a version logged elsewhere or a moved alias shows within
  that time. An expired listing is refreshed by one call in the background (stale-while-revalidate): a
  lookup waits for it at most ``STALE_GRACE`` seconds and is then answered with the listing it has, so
  paths that were visible stay usable, and cached files readable, within a second whatever the server does.
- A registry that failed (an error or a timeout) is remembered as down for ``DOWN_BACKOFF`` seconds:
  meanwhile no lookup waits on it. Expired listings are served as they are, and something never seen fails
  at once (EIO) instead of costing every lookup a full timeout; the first lookup after the backoff tries
  again. Blob fetches ask :meth:`Catalog.registry_down` too (``core._unless_down``), so uncached reads
  fail at once meanwhile.
- The listings loaded when the mount starts (:meth:`Catalog.warm`) stay useful after they expire: the first
  lookup after the mount sat idle for more than ``ttl`` (no lookup at all) refreshes all of them at once, in
  parallel, so the lookups along its path (project, artifact, alias) each join a refresh already running
  instead of each starting its own after the previous one returned.
- "Not found" answers are kept ``ttl`` seconds as well, so a shell probing names does not hammer the server.
- Version trees never change once finalized: an LRU bounded by the total number of entries it holds keeps
  the recently used ones, so memory stays flat however many files a ``find`` walks. A version larger than
  the whole bound is indexed on disk (``fs/index.py``: parsed as it arrives, read a directory at a time),
  so its size does not set the mount's memory either (without an index folder it is kept alone in memory).
- A version deleted in the registry leaves the artifact's listing, so it disappears (its directory, its
  aliases) within ``ttl`` even when its tree is still in memory: :meth:`Catalog.versions` is what decides
  which ``vN`` exist.

Every registry call goes through :class:`~wanllmdb.fs.flight.Flights`: concurrent lookups of one thing make
one request, each wait is bounded by the timeout, and all waits end when the filesystem shuts down.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from cachetools import LRUCache

from ..errors import FetchError, NotFoundError, TransportError, WanllmdbError
from ..manifest.stream import iter_entries
from ..registry import ArtifactInfo, ArtifactSummary, Registry, VersionInfo
from .flight import Flights
from .index import DIR_CACHE_ENTRIES, INDEX_MIN, INDEX_SCHEMA, IndexedTree, IndexFolder, check_index
from .tree import PRESIGN_LARGE, VersionTree

logger = logging.getLogger(__name__)

#: Bytes read at a time while a server-built index arrives.
INDEX_PIECE = 1 << 20

T = TypeVar("T")

#: Entries (files) of version trees kept in memory; roughly 0.5 KB each.
DEFAULT_TREE_ENTRIES = 100_000
#: Listings (projects, artifacts, aliases, not-found answers) kept in memory.
DEFAULT_LISTINGS = 4096
STALE_WARNING_INTERVAL = 60.0
#: Longest wait of a lookup for the refresh of an expired listing before it is answered with the old one.
STALE_GRACE = 0.25
#: Seconds a failing registry is left alone (see the module docstring).
DOWN_BACKOFF = 5.0
#: Added to the wait for a version's tree per file it holds (a 1M-file version: 20 s more).
SECONDS_PER_FILE = 20e-6
#: Projects, and artifacts in all, whose listings are loaded when the mount starts (:meth:`Catalog.warm`).
WARM_PROJECTS = 16
WARM_ARTIFACTS = 64


@dataclass(slots=True)
class _Listing:
    value: Any
    error: NotFoundError | None
    fetched_at: float


class Catalog:
    """Projects, artifacts, aliases and version trees of one registry, cached as described above.

    Args:
        registry: where metadata comes from.
        flights: runs and deduplicates registry calls with deadlines.
        ttl: seconds a listing (or a "not found") stays fresh.
        timeout: seconds a registry call may take.
        max_tree_entries: bound on the entries of all cached version trees together.
    """

    def __init__(
        self,
        registry: Registry,
        flights: Flights,
        *,
        ttl: float = 5.0,
        timeout: float = 30.0,
        max_tree_entries: int = DEFAULT_TREE_ENTRIES,
        max_listings: int = DEFAULT_LISTINGS,
        index_folder: IndexFolder | None = None,
        index_min: int | None = None,
    ) -> None:
        self.registry = registry
        self._flights = flights
        self._ttl = ttl
        self._timeout = timeout
        self._lock = threading.Lock()
        self._listings: LRUCache = LRUCache(max_listings)
        self._trees: LRUCache = LRUCache(max_tree_entries, getsizeof=lambda tree: tree.weight)
        self._oversized: tuple[tuple, VersionTree] | None = None
        self._index_folder = index_folder
        #: Versions of at least this many files are indexed on disk (see ``fs/index.py``), and always those the
        #: in-memory bound could not hold.
        self._index_min = min(INDEX_MIN if index_min is None else index_min, max_tree_entries + 1)
        self._by_number: LRUCache = LRUCache(max_listings)
        self._last_stale_warning = 0.0
        self._down_until = 0.0
        self._slow_until = 0.0
        self._last_failure = ""
        # Listings the warm-up loaded, in its order: key -> (load, what), for the refresh after an idle spell.
        self._warmed: dict[tuple, tuple[Callable[[], Any], str]] = {}
        self._last_lookup = time.monotonic()
        self._counts = {"listing_requests": 0, "rewarms": 0}

    # --- listings ---------------------------------------------------------------------------------------

    def projects(self) -> list[str]:
        return self._listing(("projects",), self.registry.list_projects, "listing projects")

    def artifacts(self, project: str) -> list[ArtifactSummary]:
        return self._listing(
            ("artifacts", project),
            lambda: self.registry.list_artifacts(project),
            f"listing artifacts of project '{project}'",
        )

    def artifact(self, project: str, name: str) -> ArtifactInfo:
        return self._listing(
            ("artifact", project, name),
            lambda: self.registry.get_artifact(project, name),
            f"looking up artifact '{project}/{name}'",
        )

    def versions(self, project: str, name: str) -> dict[int, VersionInfo]:
        """The live versions of an artifact by number (from :meth:`artifact`, so as fresh as it is)."""
        info = self.artifact(project, name)
        key = (project, name)
        with self._lock:
            cached = self._by_number.get(key)
            if cached is not None and cached[0] is info:
                return cached[1]
        by_number = {v.version: v for v in info.versions}
        with self._lock:
            self._by_number[key] = (info, by_number)
        return by_number

    def _listing(self, key: tuple, load: Callable[[], T], what: str) -> T:
        with self._lock:
            cached: _Listing | None = self._listings.get(key)
        now = time.monotonic()
        idle, self._last_lookup = now - self._last_lookup > self._ttl, now
        if cached is not None and now - cached.fetched_at < self._ttl:
            if cached.error is not None:
                raise cached.error.with_traceback(None)
            return cached.value
        stale = cached is not None and cached.error is None
        if idle and stale and self._warmed and not self.registry_down():
            self._rewarm()
            return self._listing(key, load, what)  # its refresh is running now, or even over
        if self.registry_down() or (stale and now < self._slow_until):
            if stale:
                self._refresh_in_background(key, load, what)
                return cached.value
            raise FetchError(f"{what}: {self.down_reason()}")
        try:
            future, created = self._flights.start(key, self._storing(key, load))
        except FetchError:
            if stale:
                return cached.value
            raise
        if created:
            self._count("listing_requests")
            future.add_done_callback(lambda f, key=key: self._refreshed(key, f, what))
        try:
            return self._flights.wait(future, STALE_GRACE if stale else self._timeout, what)
        except NotFoundError:
            raise
        except (TransportError, FetchError) as exc:
            if stale:
                if not future.done():  # slow, not failed (yet): don't make the next lookups wait for it
                    self._slow_until = time.monotonic() + DOWN_BACKOFF
                self._warn_stale(what, exc)
                return cached.value
            if not future.done():  # the whole timeout passed without an answer
                self.mark_down(what, exc)
            raise

    def _rewarm(self) -> None:
        """Start refreshing every expired listing the warm-up loaded, each its own call, all at once."""
        self._count("rewarms")
        now = time.monotonic()
        with self._lock:
            warmed = list(self._warmed.items())
            expired = [
                (key, load, what)
                for key, (load, what) in warmed
                if (listing := self._listings.get(key)) is None or now - listing.fetched_at >= self._ttl
            ]
        for key, load, what in expired:
            self._refresh_in_background(key, load, what)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def counts(self) -> dict[str, int]:
        """Listing calls started by lookups themselves, and refreshes of the warmed listings (for tests)."""
        with self._lock:
            return dict(self._counts)

    def _refresh_in_background(self, key: tuple, load: Callable[[], T], what: str) -> None:
        """While the registry is slow or down, at most one refresh per listing, none more often than
        every ``DOWN_BACKOFF`` seconds (a down registry is probed, not hammered)."""
        if self.registry_down():
            return
        try:
            future, created = self._flights.start(key, self._storing(key, load))
        except FetchError:
            return
        if created:
            future.add_done_callback(lambda f, key=key: self._refreshed(key, f, what))

    def _storing(self, key: tuple, load: Callable[[], T]) -> Callable[[], T]:
        """``load``, storing what it returns before its flight ends: a lookup never finds the call over and its
        answer not stored yet (it would then ask again itself)."""

        def run() -> T:
            value = load()
            self._store(key, _Listing(value, None, time.monotonic()))
            return value

        return run

    def _refreshed(self, key: tuple, future: Any, what: str) -> None:
        """Store what a (background) listing call returned; remember a failing registry."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:  # (stored by the call itself: see _storing)
            self._down_until = self._slow_until = 0.0
        elif isinstance(exc, NotFoundError):
            self._store(key, _Listing(None, exc, time.monotonic()))
        elif isinstance(exc, (TransportError, FetchError)):
            self.mark_down(what, exc)

    def registry_down(self) -> bool:
        return time.monotonic() < self._down_until

    def down_reason(self) -> str:
        return f"the registry is not answering ({self._last_failure}); trying again in a few seconds"

    def mark_down(self, what: str, exc: Exception) -> None:
        """Leave the registry alone for ``DOWN_BACKOFF`` seconds after a failure."""
        self._down_until = time.monotonic() + DOWN_BACKOFF
        self._last_failure = str(exc)
        self._warn_stale(what, exc)

    def _store(self, key: tuple, listing: _Listing) -> None:
        with self._lock:
            self._listings[key] = listing

    def _warn_stale(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_stale_warning > STALE_WARNING_INTERVAL:
            self._last_stale_warning = now
            logger.warning(
                "%s failed (%s); serving the last known listings, and trying the registry again in %gs",
                what,
                exc,
                DOWN_BACKOFF,
            )

    # --- version trees ----------------------------------------------------------------------------------

    def cached_tree(self, project: str, name: str, version: int) -> VersionTree | IndexedTree | None:
        """The tree if it is in memory (never asks the registry)."""
        key = (project, name, version)
        with self._lock:
            tree = self._trees.get(key)
            if tree is None and self._oversized is not None and self._oversized[0] == key:
                tree = self._oversized[1]
        return tree

    def tree(self, project: str, name: str, version: int) -> VersionTree | IndexedTree:
        """The files and directories of ``project/name:v<version>``.

        Raises:
            NotFoundError: no such project, artifact or version (remembered for ``ttl`` seconds).
            FetchError, TransportError: the registry did not answer in time.
        """
        tree = self.cached_tree(project, name, version)
        if tree is not None:
            return tree
        key = ("tree", project, name, version)
        with self._lock:
            missing: _Listing | None = self._listings.get(key)
        if missing is not None and time.monotonic() - missing.fetched_at < self._ttl and missing.error:
            raise missing.error.with_traceback(None)
        what = f"loading the manifest of '{project}/{name}:v{version}'"
        if self.registry_down():
            raise FetchError(f"{what}: {self.down_reason()}")
        listed = self._listed_version(project, name, version)
        # The wait grows with the version: its answer keeps arriving, and a million files take seconds to parse.
        wait = self._timeout + (listed.file_count if listed is not None else 0) * SECONDS_PER_FILE
        try:
            tree = self._flights.call(key, lambda: self._load_tree(project, name, version, listed), wait, what)
        except NotFoundError as exc:
            self._store(key, _Listing(None, exc, time.monotonic()))
            raise
        self._keep_tree((project, name, version), tree)
        # Large files are read in ranges: have their download URLs ready before the first read needs one.
        large = [e.sha256 for e in tree.large_entries[:PRESIGN_LARGE]]
        self.prepare_fetch(("tree", project, name, version), large)
        return tree

    def _load_tree(
        self, project: str, name: str, version: int, listed: VersionInfo | None
    ) -> VersionTree | IndexedTree:
        if listed is not None and listed.file_count >= self._index_min and self._index_folder is not None:
            open_manifest = getattr(self.registry, "open_manifest", None)
            if open_manifest is not None:
                return self._load_indexed(open_manifest, project, name, version, listed)
        # An HTTP registry's answer then carries the large files' download URLs too (one request fewer
        # before the first read of one); any other registry resolves as usual.
        resolve = getattr(self.registry, "resolve_for_reading", self.registry.resolve)
        info = resolve(project, name, f"v{version}")
        if info.manifest is None:
            raise FetchError(f"the registry returned '{project}/{name}:v{version}' without its manifest")
        started = time.monotonic()
        tree = VersionTree(info.manifest, info.created_at)
        logger.debug(
            "loaded %s/%s:v%d (%d files) in %.3fs", project, name, version, tree.file_count,
            time.monotonic() - started,
        )
        return tree

    def _listed_version(self, project: str, name: str, version: int) -> VersionInfo | None:
        """The version as the artifact listing has it (its file count decides where its tree is held). The
        kernel looks up a ``vN`` directory before anything in it, which loads the listing, so this is
        almost always the one in memory; else it is asked for (a failure only leaves the choice unknown)."""
        with self._lock:
            listing: _Listing | None = self._listings.get(("artifact", project, name))
        if listing is not None and listing.value is not None:
            info = listing.value
        else:
            try:
                info = self.artifact(project, name)
            except (NotFoundError, TransportError, FetchError):
                return None
        return next((v for v in info.versions if v.version == version), None)

    def _load_indexed(
        self, open_manifest: Callable[..., Any], project: str, name: str, version: int, listed: VersionInfo
    ) -> IndexedTree:
        folder = self._index_folder
        assert folder is not None
        # a few such trees fit in the bound with the in-memory ones
        dir_entries = max(1, min(DIR_CACHE_ENTRIES, self._trees.maxsize // 5))
        kept = self._kept_tree(listed, dir_entries)
        if kept is not None:
            return kept
        open_index = getattr(self.registry, "open_index", None)
        if open_index is not None:
            fetched = self._fetched_tree(open_index, listed, dir_entries)
            if fetched is not None:
                return fetched
        started = time.monotonic()
        with open_manifest(project, name, f"v{version}") as body:
            tree = IndexedTree.build(folder.new_file(), iter_entries(body), listed.created_at, dir_entries=dir_entries)
        logger.info(
            "indexed %s/%s:v%d (%d files) on disk in %.3fs", project, name, version, tree.file_count,
            time.monotonic() - started,
        )
        folder.keep(tree.path, listed.id)
        return tree

    def _fetched_tree(
        self, open_index: Callable[..., Any], listed: VersionInfo, dir_entries: int
    ) -> IndexedTree | None:
        """The index the server built for this version (``server/indexes.py``), once it passed ``check_index``
        and holds as many files as listed; None (the mount builds it from the manifest) if the server has none
        in this schema or sent one that fails a check."""
        folder = self._index_folder
        assert folder is not None
        path = folder.new_file()
        started = time.monotonic()
        try:
            with open_index(listed.project, listed.name, listed.version, INDEX_SCHEMA) as body, open(path, "wb") as out:
                shutil.copyfileobj(body, out, INDEX_PIECE)
            check_index(path)
            tree = _open_index(path, listed, dir_entries)
        except NotFoundError as exc:
            folder.discard(path)
            logger.info("no server-built index of %s (%s); building it from the manifest", listed.qualified_name, exc)
            return None
        except (WanllmdbError, sqlite3.DatabaseError, OSError) as exc:
            folder.discard(path)
            logger.warning("the server's index of %s is unusable (%s); building it from the manifest",
                           listed.qualified_name, exc)
            return None
        logger.info("%s (%d files): the server's index, fetched and checked in %.3fs", listed.qualified_name,
                    tree.file_count, time.monotonic() - started)
        folder.keep(tree.path, listed.id)
        return tree

    def _kept_tree(self, listed: VersionInfo, dir_entries: int) -> IndexedTree | None:
        """The index an earlier mount kept for this version, if it opens as one of as many files as listed."""
        folder = self._index_folder
        assert folder is not None
        path = folder.kept(listed.id)
        if path is None:
            return None
        try:
            tree = _open_index(path, listed, dir_entries)
        except sqlite3.DatabaseError as exc:
            logger.warning("the kept index of %s is unreadable or another version's (%s); building it again",
                           listed.qualified_name, exc)
            folder.forget(listed.id, path)
            return None
        logger.info("%s (%d files): the index a previous mount kept", listed.qualified_name, tree.file_count)
        return tree

    def close(self) -> None:
        """Remove the index files (after the FUSE loop has ended)."""
        with self._lock:
            self._trees.clear()
            self._oversized = None
        if self._index_folder is not None:
            self._index_folder.close()

    def _keep_tree(self, key: tuple, tree: VersionTree | IndexedTree) -> None:
        with self._lock:
            if tree.weight <= self._trees.maxsize:
                self._trees[key] = tree
            else:
                self._oversized = (key, tree)

    def tree_entries(self) -> int:
        """Entries held by cached trees (for tests and stats)."""
        with self._lock:
            extra = self._oversized[1].weight if self._oversized else 0
            return int(self._trees.currsize) + extra

    # --- hints ------------------------------------------------------------------------------------------

    def warm(self, project: str | None = None) -> None:
        """Load in the background the listings the first lookups after mounting need: the projects (or just
        ``project``), their artifacts, and up to ``WARM_ARTIFACTS`` artifacts with their versions and aliases.

        A path such as ``project/artifact/latest/file`` then costs one request (its manifest) before its first
        byte instead of three in a row. Each is one small request; what fails is left for the lookups to ask
        again (nothing is marked down, nothing is stored but answers).
        """
        try:
            self._flights.start(("warm", project), lambda: self._warm(project))
        except FetchError:  # shutting down
            return

    def _warm(self, project: str | None) -> None:
        try:
            if project is None:
                projects = self._warm_one(("projects",), self.registry.list_projects, "listing projects")
            else:
                projects = [project]
            budget = WARM_ARTIFACTS
            for name in projects[:WARM_PROJECTS]:
                artifacts = self._warm_one(
                    ("artifacts", name),
                    lambda name=name: self.registry.list_artifacts(name),
                    f"listing artifacts of project '{name}'",
                )
                for summary in artifacts[:budget]:
                    self._warm_one(
                        ("artifact", name, summary.name),
                        lambda name=name, artifact=summary.name: self.registry.get_artifact(name, artifact),
                        f"looking up artifact '{name}/{summary.name}'",
                    )
                budget -= min(budget, len(artifacts))
                if not budget:
                    break
        except (NotFoundError, TransportError, FetchError) as exc:
            logger.debug("warming the listings stopped: %s", exc)

    def _warm_one(self, key: tuple, load: Callable[[], T], what: str) -> T:
        value = load()
        self._store(key, _Listing(value, None, time.monotonic()))
        with self._lock:
            self._warmed[key] = (load, what)
        return value

    def prepare_fetch(self, key: tuple, sha256s: Iterable[str], then: Callable[[], None] | None = None) -> None:
        """Ask the registry to prepare downloads of ``sha256s`` in the background (one call per ``key``);
        once it has, run ``then`` in the background too (on success only)."""
        wanted = list(sha256s)
        if not wanted or self.registry_down():
            return
        try:
            future, created = self._flights.start(("prepare", *key), lambda: self.registry.prepare_fetch(wanted))
        except FetchError:
            return
        if created:
            future.add_done_callback(_log_prepare_failure)
            if then is not None:
                future.add_done_callback(lambda f: self._after_prepare(f, key, then))

    def _after_prepare(self, future: Any, key: tuple, then: Callable[[], None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        try:
            self._flights.start(("after-prepare", *key), then)
        except FetchError:  # shutting down
            return


def _open_index(path: str, listed: VersionInfo, dir_entries: int) -> IndexedTree:
    """``path`` opened as the index of the version ``listed``.

    Raises:
        sqlite3.DatabaseError: it does not open as an index, or holds another number of files than listed
            (closed then: its file is gone).
    """
    tree = IndexedTree(path, listed.created_at, dir_entries=dir_entries)
    if tree.file_count != listed.file_count:
        tree.close()
        raise sqlite3.DatabaseError(f"it holds {tree.file_count} files, not {listed.file_count}")
    return tree


def _log_prepare_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("preparing downloads failed (each file will ask on its own): %s", future.exception())
