"""``wanllmdb://``: the registry as a read-only fsspec filesystem (pandas, pyarrow, DuckDB, torch without a mount).

Registered through the ``fsspec.specs`` entry point (pyproject), so ``pandas.read_csv("wanllmdb://...")``
needs no registration call. URLs::

    wanllmdb://                                     projects
    wanllmdb://<project>                            artifacts
    wanllmdb://<project>/<name>                     versions (v1, v2...) and aliases (directories linking to vN)
    wanllmdb://<project>/<name>:<v2|alias>/<path>   a file or directory of that version
    wanllmdb://<project>/<name>/<v2|alias>/<path>   the same, in the mount's layout

The registry comes from the SDK's settings (``WANLLMDB_BASE_URL`` selects a server, else the embedded registry
in ``WANLLMDB_DIR``); storage options ``base_url=``, ``api_key=``, ``data_dir=``, ``cache_dir=`` override them,
``metadata_ttl=`` (seconds, default 5) bounds how long an alias or a listing is trusted.

It is the mount without FUSE: one :class:`~wanllmdb.fs.core.ArtifactFS` per settings and process answers
every instance (fsspec makes one per thread). So

- ``ls``/``info``/``find``/``glob``/``exists`` come from manifests (``Catalog``: listings and aliases for the
  TTL, a version's tree kept in an LRU for good since it never changes) and never read a blob; ``info`` of a
  file gives ``size``, ``sha256`` and ``md5`` (and ``ref`` for references).
- ``open()`` (``rb`` only) reads through the mount's :class:`~wanllmdb.fs.reader.ChunkReader` and the shared
  blob cache: single-chunk files are fetched whole and verified by ``cache.ensure``; larger ones chunk by
  chunk into a partial file, each chunk served only once its SHA-256 matched the manifest, the whole file
  promoted into the cache once complete; a cached blob changed under a reader fails it. A bad chunk raises
  :class:`~wanllmdb.errors.ChecksumError`; no unverified byte is returned.
- ``get``/``get_file`` use ``download()``'s path (``sdk.transfer.fetch_files``: parallel fetches into the
  cache, then a reflink or hard link to the target).
- Every write (``open(..., "wb")``, ``put``, ``rm``, ``mkdir``, ``mv``...) raises
  :class:`~wanllmdb.errors.ReadOnlyError` (a ``PermissionError``); a missing ref or path ``FileNotFoundError``.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import errno
import os
import stat
import threading
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from wanllmdb.cache.materialize import Placer
from wanllmdb.errors import InvalidInputError, IsDirectoryError, NotFoundError, ReadOnlyError
from wanllmdb.fs.core import ArtifactFS, Located, open_filesystem
from wanllmdb.fs.reader import Handle
from wanllmdb.fs.tree import DirNode, FileNode, LinkNode
from wanllmdb.manifest import ManifestEntry
from wanllmdb.settings import Settings, load_settings

PROTOCOL = "wanllmdb"
#: Seconds listings and aliases are trusted (versions' trees are kept for good: they never change).
DEFAULT_METADATA_TTL = 5.0
#: Links (aliases, link collections) followed at most while resolving one path.
MAX_LINKS = 8
#: The environment ``load_settings`` reads (a change selects other settings, so another backend).
_ENV_VARS = ("WANLLMDB_DIR", "WANLLMDB_CACHE_DIR", "WANLLMDB_CACHE_SIZE", "WANLLMDB_BASE_URL", "WANLLMDB_API_KEY",
             "WANLLMDB_TIMEOUT", "WANLLMDB_TRANSFER_THREADS", "XDG_DATA_HOME", "XDG_CACHE_HOME", "HOME")


class _Backend:
    """What every ``WanllmdbFileSystem`` of one settings shares in a process: SDK client and mount core."""

    def __init__(self, settings: Settings, metadata_ttl: float) -> None:
        from wanllmdb.sdk.client import Client

        self.client = Client(settings)
        self.afs: ArtifactFS = open_filesystem(
            self.client.registry, self.client.cache, metadata_ttl=metadata_ttl, timeout=settings.timeout
        )

    def close(self) -> None:
        self.afs.close()
        self.client.close()


_backends: dict[tuple, _Backend] = {}
_backends_lock = threading.Lock()


def _backend(settings: Settings, metadata_ttl: float) -> _Backend:
    key = (os.getpid(), settings, metadata_ttl)
    backend = _backends.get(key)
    if backend is None:
        with _backends_lock:
            backend = _backends.get(key)
            if backend is None:
                backend = _backends[key] = _Backend(settings, metadata_ttl)
    return backend


@atexit.register
def close_all() -> None:
    """Close every backend of this process (flushes the cache index, drops partial files)."""
    with _backends_lock:
        backends = [b for (pid, *_), b in _backends.items() if pid == os.getpid()]
        _backends.clear()
    for backend in backends:
        try:
            backend.close()
        except Exception:  # exiting: nothing left to tell
            pass


def _not_found(path: str, reason: object = None) -> FileNotFoundError:
    detail = f": {reason}" if reason else ""
    return FileNotFoundError(errno.ENOENT, f"wanllmdb://{path}: not found{detail}", f"{PROTOCOL}://{path}")


def _refuse(operation: str, path: Any) -> ReadOnlyError:
    return ReadOnlyError(f"wanllmdb:// is a read-only filesystem: {operation} {path} refused")


def split_url(path: str) -> list[str]:
    """Segments of a stripped path in the mount's layout: ``p/name:v2/a`` -> ``[p, name, v2, a]``."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and ":" in parts[1]:
        name, _, selector = parts[1].partition(":")
        parts[1:2] = [name, selector]
    return parts


def _join(base: list[str], target: str) -> list[str]:
    out = list(base)
    for part in target.split("/"):
        if part == "..":
            if out:
                out.pop()
        elif part and part != ".":
            out.append(part)
    return out


class WanllmdbFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over a wanllmdb registry (see the module docstring)."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._overrides = {"base_url": base_url, "api_key": api_key, "data_dir": data_dir, "cache_dir": cache_dir}
        self._ttl = float(metadata_ttl)
        self._settings: dict[tuple, Settings] = {}  # by the WANLLMDB_* environment they were loaded from
        self._pending = threading.local()  # get(): files get_file leaves to one batch

    # fsspec caches instances by their arguments; the settings come from the environment as well, so the
    # backend is looked up per call (a dict lookup) and follows WANLLMDB_* changes.
    @property
    def backend(self) -> _Backend:
        env = tuple(os.environ.get(name) for name in _ENV_VARS)
        settings = self._settings.get(env)
        if settings is None:
            if len(self._settings) > 16:
                self._settings.clear()
            settings = self._settings[env] = load_settings(**self._overrides)
        return _backend(settings, self._ttl)

    @property
    def _afs(self) -> ArtifactFS:
        return self.backend.afs

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{name}"

    # --- resolution -------------------------------------------------------------------------------------

    def _locate(self, path: str) -> Located:
        """Resolve ``path`` (aliases and link collections followed) to what the mount has there.

        Raises:
            FileNotFoundError: no such project, artifact, version, alias or file.
        """
        afs = self._afs
        parts = split_url(path)
        try:
            for _ in range(MAX_LINKS):
                if len(parts) >= 3:
                    head = afs.locate("/" + "/".join(parts[:3]))
                    if head.kind == "link":
                        assert isinstance(head.node, LinkNode)
                        parts = _join(parts[:2], head.node.target) + parts[3:]
                        continue
                here = afs.locate("/" + "/".join(parts))
                if here.kind == "link":  # never in practice: links are version directories
                    raise NotFoundError(f"dangling link: {path}")
                return here
        except (NotFoundError, InvalidInputError) as exc:
            raise _not_found(path, exc) from None
        raise _not_found(path, "too many levels of links")

    def _details(self, name: str, here: Located | None, node: Any = None) -> dict[str, Any]:
        node = node if node is not None else (here.node if here is not None else None)
        if isinstance(node, FileNode):
            entry = node.entry
            info = {"name": name, "size": entry.size, "type": "file", "sha256": entry.sha256, "md5": entry.md5,
                    "mtime": node.mtime}
            if entry.ref is not None:
                info["ref"] = entry.ref
            return info
        mtime = node.mtime if isinstance(node, DirNode) else (here.attr.mtime if here is not None else None)
        return {"name": name, "size": 0, "type": "directory", "mtime": mtime}

    # --- metadata ---------------------------------------------------------------------------------------

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        here = self._locate(path)
        info = self._details(path, here)
        parts = split_url(path)
        if here.kind == "dir" and len(parts) == 3:  # a version directory: named by an alias or a link?
            head = self._afs.locate("/" + "/".join(parts))
            if head.kind == "link":
                assert isinstance(head.node, LinkNode)
                info.update(islink=True, destination=head.node.target)
        return info

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        here = self._locate(path)
        afs = self._afs
        prefix = f"{path}/" if path else ""
        out: list[dict[str, Any]] = []
        if here.kind == "root":
            out = [{"name": p, "size": 0, "type": "directory"} for p in afs.catalog.projects()]
        elif here.kind == "project":
            out = [
                {"name": prefix + a.name, "size": 0, "type": "directory", "mtime": a.updated_at,
                 "artifact_type": a.type, "version_count": a.version_count}
                for a in afs.catalog.artifacts(here.project or "")
            ]
        elif here.kind == "artifact":
            where = "/" + "/".join(split_url(path))
            for child, attr in afs.readdir(where):
                if child in (".", ".."):
                    continue
                entry = {"name": prefix + child, "size": 0, "type": "directory", "mtime": attr and attr.mtime}
                if attr is not None and stat.S_ISLNK(attr.mode):  # an alias, or a link collection's version
                    entry.update(islink=True, destination=afs.readlink(f"{where}/{child}"))
                out.append(entry)
        elif here.kind == "dir":
            assert isinstance(here.node, DirNode)
            out = [self._details(prefix + child, None, node) for child, node in here.node.children.items()]
        else:
            out = [self._details(path, here)]
        if detail:
            return out
        return [item["name"] for item in out]

    def modified(self, path):
        mtime = self.info(path).get("mtime")
        if mtime is None:
            raise NotImplementedError(f"wanllmdb://{path} has no modification time")
        return datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc)

    created = modified  # versions are immutable: a file is created with its version

    def ukey(self, path):
        return self.info(path).get("sha256") or super().ukey(path)

    def checksum(self, path):
        info = self.info(path)
        return int(info["sha256"][:32], 16) if "sha256" in info else super().checksum(path)

    # --- reading ----------------------------------------------------------------------------------------

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if mode != "rb":
            raise _refuse(f"open(mode={mode!r}) of", f"wanllmdb://{path}")
        here = self._locate(path)
        if here.kind != "file":
            raise IsDirectoryError(f"wanllmdb://{path} is a directory")
        return WanllmdbFile(self, path, here, block_size=block_size, cache_options=cache_options, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path) as f:
            size = f.size
            start = 0 if start is None else (start if start >= 0 else max(0, size + start))
            end = size if end is None else (end if end >= 0 else max(0, size + end))
            return f._fetch_range(start, min(end, size)) if start < end else b""

    def get_file(self, rpath, lpath, callback=None, outfile=None, **kwargs):
        rpath = self._strip_protocol(rpath)
        if outfile is not None or (isinstance(lpath, str) and lpath.endswith(os.sep) and os.path.isdir(lpath)):
            return super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
        here = self._locate(rpath)
        if here.kind != "file":
            os.makedirs(lpath, exist_ok=True)
            return None
        assert isinstance(here.node, FileNode)
        entry = here.node.entry
        if not entry.is_checked:  # nothing to verify against: the reader refuses it with a clear error
            return super().get_file(rpath, lpath, callback=callback, **kwargs)
        pending = getattr(self._pending, "files", None)
        if pending is not None:  # inside get(): placed with the others in one batch
            pending.append((entry, os.path.abspath(lpath)))
        else:
            self._place([(entry, os.path.abspath(lpath))], here.label)
        if callback is not None:
            callback.set_size(entry.size)
            callback.relative_update(entry.size)
        return None

    def get(self, rpath, lpath, recursive=False, callback=None, maxdepth=None, **kwargs):
        """fsspec's ``get`` (its rules for where each file lands), then ``download()``'s path for the bytes:
        every file missing from the cache fetched in parallel (small ones in bundles over HTTP), then each
        placed as a reflink or hard link of its cached blob."""
        if callback is not None:
            kwargs["callback"] = callback
        pending: list[tuple[ManifestEntry, str]] = []
        self._pending.files = pending
        try:
            super().get(rpath, lpath, recursive=recursive, maxdepth=maxdepth, **kwargs)
        finally:
            self._pending.files = None
        if pending:
            self._place(pending, "wanllmdb://" + self._strip_protocol(str(rpath)))

    def _place(self, files: list[tuple[ManifestEntry, str]], label: str) -> None:
        from wanllmdb.sdk.transfer import fetch_files

        client = self.backend.client
        unique = {entry.sha256: entry for entry, _ in files}
        # fetch_files answers by entry path: ask by SHA-256, so two files of one path (two versions) never mix
        by_sha = [dataclasses.replace(entry, path=sha) for sha, entry in unique.items()]
        blobs = fetch_files(client, by_sha, None, label=label)
        placers: dict[str, Placer] = {}
        linked = False
        for entry, lpath in files:
            parent = os.path.dirname(lpath)
            placer = placers.get(parent)
            if placer is None:
                placer = placers[parent] = Placer(parent)
            placer.place(os.path.basename(lpath), blobs[entry.sha256])
            linked = linked or placer.link
        if linked:
            client.cache.restamp(unique)  # the links just made moved the blobs' ctimes

    # --- writes: refused --------------------------------------------------------------------------------

    def mkdir(self, path, create_parents=True, **kwargs):
        raise _refuse("mkdir", path)

    def makedirs(self, path, exist_ok=False):
        raise _refuse("makedirs", path)

    def rmdir(self, path):
        raise _refuse("rmdir", path)

    def rm(self, path, recursive=False, maxdepth=None):
        raise _refuse("rm", path)

    def rm_file(self, path):
        raise _refuse("rm", path)

    def _rm(self, path):
        raise _refuse("rm", path)

    def put(self, lpath, rpath, recursive=False, callback=None, maxdepth=None, **kwargs):
        raise _refuse("put to", rpath)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        raise _refuse("put to", rpath)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        raise _refuse("write of", path)

    def touch(self, path, truncate=True, **kwargs):
        raise _refuse("touch", path)

    def cp_file(self, path1, path2, **kwargs):
        raise _refuse("copy to", path2)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        raise _refuse("move of", path1)

    def copy(self, path1, path2, recursive=False, maxdepth=None, on_error=None, **kwargs):
        raise _refuse("copy to", path2)


class WanllmdbFile(AbstractBufferedFile):
    """A read-only, seekable file whose bytes come verified from the mount's chunk reader.

    The reader's partial file or cached blob is already the buffer, so fsspec's own read cache is off by
    default (``cache_type="none"``): each read is one ``preadv`` of verified bytes (chunks fetched on
    demand, with the mount's read-ahead for sequential readers).
    """

    def __init__(self, fs: WanllmdbFileSystem, path: str, here: Located, **kwargs: Any) -> None:
        assert isinstance(here.node, FileNode)
        entry, label = here.node.entry, here.label
        afs = fs._afs
        self._reader = afs.reader
        # As the mount opens it: the uncached small files next to it are announced in one batch (one presign
        # request for many over HTTP), then a single-chunk file is fetched whole and verified.
        self._handle: Handle | None = afs.open_handle(here)
        kwargs.setdefault("cache_type", "none")
        try:
            super().__init__(fs, path, mode="rb", size=entry.size, **kwargs)
        except BaseException:
            self._release()
            raise
        self.entry = entry
        self.label = label

    def _fetch_range(self, start: int, end: int) -> bytes:
        handle = self._handle
        if handle is None:
            raise ValueError("I/O operation on closed file.")
        end = min(end, self.size)
        return self._reader.read(handle, end - start, start) if start < end else b""

    def readinto(self, b):
        """Read straight into ``b`` (one copy fewer than ``read``)."""
        if self._handle is None:
            raise ValueError("I/O operation on closed file.")
        view = memoryview(b).cast("B")
        want = min(len(view), max(0, self.size - self.loc))
        got = 0
        while got < want:
            n = self._reader.read_into(self._handle, self.loc + got, view[got:want])
            if n <= 0:
                break
            got += n
        self.loc += got
        return got

    def _release(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._reader.release(handle)

    def close(self):
        try:
            super().close()
        finally:
            self._release()
