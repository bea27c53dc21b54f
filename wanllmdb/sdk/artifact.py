"""``Artifact`` and ``ArtifactFile``: the W&B-shaped objects users build, log, use and download.

An Artifact starts as a draft the user fills (``add_file``, ``add_dir``, ``new_file``): each file is hashed
once as it is added (MD5, SHA-256 and chunk digests in one pass). ``run.log_artifact`` turns it into a
finalized version; ``run.use_artifact`` and ``Api().artifact`` return Artifacts bound to a version, whose
files come from the shared cache (``download``, ``get_path``) and can be checked (``verify``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from ..cache.digests import FileStamp
from ..cache.materialize import Placer
from ..errors import (
    ArtifactFinalizedError,
    ArtifactNotLoggedError,
    ArtifactVerificationError,
    FileNotInArtifactError,
    InvalidInputError,
    InvalidPathError,
    LocalFileNotFoundError,
    VersionNotFoundError,
)
from ..manifest import (
    Manifest,
    ManifestEntry,
    hash_file,
    validate_artifact_name,
    validate_artifact_type,
    validate_path,
)
from ..manifest.digest import FileDigest
from ..manifest.entry import check_tree
from ..registry import ArtifactTTL, RunInfo, VersionInfo, VersionUpdate
from ..registry.base import validate_ttl
from .client import Client
from .hashing import cached_digest, digest_file, digest_files

logger = logging.getLogger(__name__)

#: add_dir hashes files on this many threads (hashlib releases the GIL on large buffers).
HASH_THREADS = 4


class ArtifactFilePath(str):
    """A local path (``str``) to one file of an artifact, with W&B's ``.download()`` for old code."""

    def download(self, root: str | None = None) -> str:
        return str(self)


class ArtifactFile:
    """One file of an artifact: its path inside the artifact, size and digests.

    A large file added but not logged yet may not be hashed yet (it will be hashed while it is uploaded);
    asking for its digests hashes it now.
    """

    def __init__(self, path: str, artifact: Artifact, local_path: str | None = None) -> None:
        self.path = path
        self._artifact = artifact
        self.local_path = local_path

    @property
    def entry(self) -> ManifestEntry:
        return self._artifact._entry_for(self.path)

    @property
    def size(self) -> int:
        return self._artifact._size_of(self.path)

    md5 = property(lambda self: self.entry.md5)
    sha256 = property(lambda self: self.entry.sha256)
    ref = property(lambda self: self.entry.ref)

    @property
    def name(self) -> str:
        """The file's path inside the artifact (W&B's ``name``)."""
        return self.path

    @property
    def digest(self) -> str:
        """W&B's digest: the MD5, base64-encoded. The SHA-256 the file is stored under is ``sha256``."""
        return self.entry.digest

    # Seed names for the same values.
    md5_hash = md5
    sha256_hash = sha256

    def download(self, root: str | None = None, replace: bool = False, exist_ok: bool = False) -> str:
        """Fetch this file (through the cache) under ``root`` (the artifact's download root by default);
        returns its local path.

        Raises:
            InvalidInputError: a different file is already there and neither ``replace`` nor ``exist_ok``.
        """
        if root is not None and not replace:
            target = os.path.join(root, *self.path.split("/"))
            if os.path.exists(target):
                if exist_ok:
                    return target
                if _compare(target, self.entry) is not None:
                    raise InvalidInputError(
                        f"{target} already exists: pass replace=True to overwrite it or exist_ok=True to keep it"
                    )
                return target
        return self._artifact._download_entries([self.entry], root)[self.path]

    def __repr__(self) -> str:
        return f"ArtifactFile(path={self.path!r}, size={self.size})"


class Artifact:
    """A versioned set of files.

    Args:
        name: ``[A-Za-z0-9._-]``, 1-128 characters.
        type: e.g. ``"dataset"`` or ``"model"``; fixed per name once logged.
        description: free text.
        metadata: JSON-serialisable dict stored with the version.
    """

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        **_wandb_compat: Any,
    ) -> None:
        self._name = validate_artifact_name(name)
        self._type = validate_artifact_type(type)
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._entries: dict[str, ManifestEntry] = {}
        # Large files added but not hashed yet: artifact path -> local path (hashed while uploaded).
        self._pending: dict[str, str] = {}
        self._local_paths: dict[str, str] = {}
        self._staging: str | None = None
        self._info: VersionInfo | None = None
        self._client: Client | None = None
        self._download_root: str | None = None
        #: Tags of the version (W&B's ``tags``); written by ``log_artifact`` and ``save()``.
        self.tags: list[str] = list(_wandb_compat.get("tags") or [])
        self._aliases: list[str] = []
        # "name:v3" or "name:best" for an artifact fetched by that ref; None for one logged here.
        self._fetched_as: str | None = None
        # Seconds, None (kept), or INHERIT (the artifact's default, resolved when logged); see ``ttl``.
        self._ttl: float | None | ArtifactTTL = ArtifactTTL.INHERIT
        self._ttl_changed = False

    # --- construction from a registry version -----------------------------------------------------------

    @classmethod
    def _from_version(cls, info: VersionInfo, client: Client, fetched_as: str | None = None) -> Artifact:
        art = cls(info.name, info.type, info.description, dict(info.metadata))
        art._bind(info, client)
        art._fetched_as = f"{info.name}:{fetched_as or info.label}"
        return art

    def _bind(self, info: VersionInfo, client: Client) -> None:
        assert info.manifest is not None
        self._info = info
        self._client = client
        self._entries = dict(info.manifest.entries)
        self._name = info.name
        self._type = info.type
        self._rebind_fields(info)

    def _rebind_fields(self, info: VersionInfo) -> None:
        self._info = info
        self.description = info.description
        self.metadata = dict(info.metadata)
        self.tags = list(info.tags)
        self._aliases = list(info.aliases)
        self._ttl = info.ttl
        self._ttl_changed = False

    # --- identity -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """W&B's shape: ``"mnist:v2"`` (or ``"mnist:best"``) for an artifact fetched by that ref; the bare
        name for a draft and for the artifact just passed to ``log_artifact`` (``collection.name`` is always
        the bare name)."""
        return self._fetched_as or self._name

    @property
    def type(self) -> str:
        return self._type

    @property
    def version(self) -> str:
        """``"v2"`` once logged or fetched.

        Raises:
            ArtifactNotLoggedError: the artifact is a draft (check ``is_draft()`` first).
        """
        if self._info is None:
            raise ArtifactNotLoggedError(
                f"artifact '{self._name}' is not logged yet, so it has no version: call run.log_artifact() first"
            )
        return self._info.label

    def is_draft(self) -> bool:
        """True until the artifact is logged (or for one never fetched from the registry)."""
        return self._info is None

    @property
    def id(self) -> str:
        """The version's stable id."""
        info = self._logged("id")
        return info.id or f"{info.project}/{info.name}:{info.label}"

    @property
    def collection(self):
        """The artifact's collection (its versions under one name): ``.name``, ``.type``, ``.versions()``."""
        from .collection import ArtifactCollection

        return ArtifactCollection(self._client, self._info.project if self._info else None, self._name, self._type)

    def _logged(self, what: str) -> VersionInfo:
        if self._info is None:
            raise ArtifactNotLoggedError(f"{what}: artifact '{self._name}' is not logged yet")
        return self._info

    @property
    def project(self) -> str | None:
        return self._info.project if self._info else None

    @property
    def qualified_name(self) -> str | None:
        return self._info.qualified_name if self._info else None

    @property
    def source_name(self) -> str:
        return f"{self._name}:{self._info.label}" if self._info else self._name

    @property
    def aliases(self) -> list[str]:
        """The version's aliases: a list to change in place (``aliases.append("best")``), then ``save()``."""
        return self._aliases

    @aliases.setter
    def aliases(self, value: list[str]) -> None:
        self._aliases = list(value)

    @property
    def ttl(self) -> datetime.timedelta | None:
        """W&B's time-to-live: the version is deleted once this long has passed since it was logged (None:
        kept). Set it before logging (default: ``ArtifactTTL.INHERIT``, the artifact's default TTL, see
        ``wanllmdb artifact retain --ttl``), or on a logged version and ``save()``.

        Raises:
            ArtifactNotLoggedError: the TTL is inherited and not known yet (a draft, or ``INHERIT`` set on a
                logged version and not saved).
        """
        if isinstance(self._ttl, ArtifactTTL):
            raise ArtifactNotLoggedError(
                f"artifact '{self._name}' inherits its TTL from the artifact's default: it is known once "
                "logged (or saved)"
            )
        return None if self._ttl is None else datetime.timedelta(seconds=self._ttl)

    @ttl.setter
    def ttl(self, ttl: datetime.timedelta | ArtifactTTL | None) -> None:
        if self._info is not None and self._info.link_source is not None:
            raise ValueError(
                "Cannot set TTL for link artifact. Unlink the artifact first then set the TTL for the source artifact"
            )
        if isinstance(ttl, ArtifactTTL):
            value: float | None | ArtifactTTL = ttl
        elif ttl is None or isinstance(ttl, datetime.timedelta):
            value = validate_ttl(ttl, "Artifact TTL duration")
        else:
            raise TypeError(f"ttl must be a datetime.timedelta, None or ArtifactTTL.INHERIT, not {ttl!r}")
        self._ttl = value
        self._ttl_changed = True

    @property
    def expires_at(self) -> str | None:
        """When the version expires (ISO-8601, UTC), or None without a TTL (wanllmdb's)."""
        info = self._logged("expires_at")
        return _iso(info.expires_at) if info.expires_at is not None else None

    @property
    def created_at(self) -> str:
        """When the version was logged, ISO-8601 (UTC)."""
        return _iso(self._logged("created_at").created_at)

    @property
    def updated_at(self) -> str:
        """When the version last changed (aliases, tags, metadata), ISO-8601 (UTC)."""
        info = self._logged("updated_at")
        return _iso(info.updated_at or info.created_at)

    @property
    def state(self) -> str:
        return self._info.state if self._info else "PENDING"

    @property
    def manifest(self) -> Manifest:
        self._hash_pending()
        return Manifest(dict(self._entries))

    @property
    def digest(self) -> str:
        """Digest of the content (paths, sizes, SHA-256s): equal content, equal digest."""
        return self._info.digest if self._info else self.manifest.digest

    @property
    def size(self) -> int:
        return sum(e.size for e in self._entries.values()) + sum(self._size_of(p) for p in self._pending)

    @property
    def file_count(self) -> int:
        return len(self._entries) + len(self._pending)

    def files(self, names: list[str] | None = None, per_page: int = 50) -> list[ArtifactFile]:
        """The artifact's files (only those in ``names`` when given); ``per_page`` is W&B's paging, unused
        here: the manifest is already local."""
        self._hash_pending()
        wanted = set(names) if names is not None else None
        return [
            ArtifactFile(path, self, self._local_paths.get(path))
            for path in self._entries
            if wanted is None or path in wanted
        ]

    def _entry_for(self, path: str) -> ManifestEntry:
        if path in self._pending:
            self._hash_pending([path])
        return self._entries[path]

    def _size_of(self, path: str) -> int:
        if path in self._pending:
            return os.stat(self._pending[path]).st_size
        return self._entries[path].size

    def __repr__(self) -> str:
        return f"<Artifact {self.qualified_name or self._name} type={self._type} files={self.file_count}>"

    # --- adding files (before logging) -------------------------------------------------------------------

    def _check_mutable(self) -> None:
        if self._info is not None:
            raise ArtifactFinalizedError(
                f"artifact {self.qualified_name} is logged and can no longer change; "
                f"create a new Artifact('{self._name}', ...) for a new version"
            )

    def _add_local(self, items: list[tuple[str, str]], overwrite: bool) -> None:
        """Add (artifact path, local file) pairs all at once, or none of them if any conflicts.

        Files smaller than ``single_pass_min`` are hashed now (several at once), or taken from the digest
        cache; larger ones whose digest is not remembered wait in ``_pending``, to be hashed while they are
        uploaded (``run.log_artifact``) or when their digests are first asked for.
        """
        from .client import get_client

        client = get_client()
        threshold = client.settings.single_pass_min
        stats = {path: FileStamp.of(os.stat(local)) for path, local in items}
        later = {
            path
            for path, _ in items
            if stats[path].st_size >= threshold
            and cached_digest(client.digests, stats[path]) is None
            and (overwrite or path not in self._entries)
        }
        now = [(path, local) for path, local in items if path not in later]
        with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="wanllmdb-hash") as pool:
            digests = digest_files(client.digests, [(local, stats[path]) for path, local in now], pool.map)
        trial = dict(self._entries)
        for (path, _local), d in zip(now, digests, strict=True):
            existing = trial.get(path)
            if existing is not None and existing.sha256 != d.sha256 and not overwrite:
                raise InvalidInputError(
                    f"artifact '{self._name}' already holds a different file at {path!r} "
                    f"(pass overwrite=True to replace it)"
                )
            trial[path] = ManifestEntry(path, d.size, d.md5, d.sha256, d.chunk_size, d.chunks)
        for path in later:
            trial.pop(path, None)
        check_tree([*trial, *self._pending, *later])  # refuses a path that is both a file and a directory
        self._entries = trial
        if later:
            local_of = dict(items)
            for path in later:
                self._pending[path] = local_of[path]
        for path, _ in now:
            self._pending.pop(path, None)
        self._local_paths.update(items)

    def _hash_pending(self, paths: list[str] | None = None) -> None:
        """Hash pending large files now (their digests were asked for before logging)."""
        from .client import get_client

        for path in list(self._pending) if paths is None else paths:
            local = self._pending.pop(path)
            d = digest_file(get_client().digests, local)
            self._entries[path] = ManifestEntry(path, d.size, d.md5, d.sha256, d.chunk_size, d.chunks)

    def _take_pending(self) -> dict[str, str]:
        """The pending large files (artifact path -> local path), for the logging path to hash and store."""
        return dict(self._pending)

    def _set_digests(self, digests: dict[str, FileDigest]) -> None:
        for path, d in digests.items():
            self._pending.pop(path, None)
            self._entries[path] = ManifestEntry(path, d.size, d.md5, d.sha256, d.chunk_size, d.chunks)

    def add_file(
        self,
        local_path: str | os.PathLike[str],
        name: str | None = None,
        *,
        overwrite: bool = False,
        **_: Any,
    ) -> ArtifactFile:
        """Add one file, stored at ``name`` (default: its file name).

        Raises:
            LocalFileNotFoundError: ``local_path`` does not exist.
            InvalidPathError: ``local_path`` is a directory, or ``name`` is not a valid artifact path.
        """
        self._check_mutable()
        local = os.fspath(local_path)
        if not os.path.exists(local):
            raise LocalFileNotFoundError(f"add_file: {local!r} does not exist")
        if os.path.isdir(local):
            raise InvalidPathError(f"add_file: {local!r} is a directory; use add_dir for directories")
        if not os.path.isfile(local):
            raise InvalidPathError(f"add_file: {local!r} is not a regular file")
        path = validate_path(name if name is not None else os.path.basename(local))
        self._add_local([(path, os.path.abspath(local))], overwrite)
        return ArtifactFile(path, self, os.path.abspath(local))

    def add_dir(self, local_path: str | os.PathLike[str], name: str | None = None, **_: Any) -> None:
        """Add every file under a directory (recursively), under the prefix ``name`` if given.

        Raises:
            LocalFileNotFoundError: the directory does not exist.
            InvalidPathError: it is not a directory, or a file name is not a valid artifact path.
        """
        self._check_mutable()
        root = os.fspath(local_path)
        if not os.path.exists(root):
            raise LocalFileNotFoundError(f"add_dir: {root!r} does not exist")
        if not os.path.isdir(root):
            raise InvalidPathError(f"add_dir: {root!r} is not a directory; use add_file for files")
        prefix = validate_path(name.strip("/")) + "/" if name and name.strip("/") else ""
        files: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                full = os.path.join(dirpath, filename)
                if not os.path.isfile(full):
                    logger.warning("add_dir: skipping %s (not a regular file)", full)
                    continue
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                files.append((validate_path(prefix + rel), os.path.abspath(full)))
        self._add_local(files, overwrite=True)

    def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
    ) -> list[ArtifactFile]:
        """Record files that stay where they are (``file://`` paths and directories, ``http(s)://`` URLs).

        Nothing is uploaded; readers fetch from ``uri`` and check the bytes against what was recorded here
        (see :mod:`wanllmdb.sdk.references`). Returns the entries added, as W&B does.

        Raises:
            UnsupportedReferenceError: an unsupported scheme (``s3://`` included).
            ReferenceNotFoundError: ``checksum=True`` and nothing is at ``uri``.
            InvalidInputError: a path the artifact already holds with other content, or more than
                ``max_objects`` files under a directory.
        """
        from .references import reference_entries

        self._check_mutable()
        entries = reference_entries(uri, name, checksum=checksum, max_objects=max_objects)
        trial = dict(self._entries)
        for entry in entries:
            existing = trial.get(entry.path)
            if entry.path in self._pending or (existing is not None and existing != entry):
                raise InvalidInputError(f"artifact '{self._name}' already holds a different file at {entry.path!r}")
            trial[entry.path] = entry
        check_tree([*trial, *self._pending])
        self._entries = trial
        return [ArtifactFile(entry.path, self) for entry in entries]

    @contextlib.contextmanager
    def new_file(self, name: str, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
        """Write a new file into the artifact: ``with art.new_file("config.json") as f: f.write(...)``."""
        self._check_mutable()
        path = validate_path(name)
        if "r" in mode and "+" not in mode:
            raise InvalidInputError(f"new_file: mode {mode!r} cannot write")
        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="wanllmdb-new-file-")
        local = os.path.join(self._staging, *path.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
        self.add_file(local, path, overwrite=True)

    def remove(self, name: str) -> None:
        """Remove a file added before logging, or every file under a directory."""
        self._check_mutable()
        prefix = name.strip("/") + "/"
        doomed = [p for p in [*self._entries, *self._pending] if p == name or p.startswith(prefix)]
        if not doomed:
            raise FileNotInArtifactError(f"artifact '{self._name}' has no file or directory {name!r}")
        for path in doomed:
            self._entries.pop(path, None)
            self._pending.pop(path, None)
            self._local_paths.pop(path, None)

    def _cleanup_staging(self) -> None:
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    # --- reading (after logging or fetching) --------------------------------------------------------------

    def _require_bound(self, what: str) -> Client:
        if self._info is None or self._client is None:
            raise ArtifactFinalizedError(
                f"{what}: artifact '{self._name}' has not been logged; call run.log_artifact() first"
            )
        return self._client

    def _require_live(self, what: str) -> Client:
        client = self._require_bound(what)
        assert self._info is not None
        if self._info.state == "DELETED":
            raise VersionNotFoundError(f"{what}: artifact '{self.qualified_name}' was deleted")
        return client

    def get_entry(self, name: str) -> ArtifactFile:
        entry = self._entries.get(name) or (self._entry_for(name) if name in self._pending else None)
        if entry is None:
            close = sorted(p for p in self._entries if os.path.basename(p) == os.path.basename(name))[:5]
            hint = f"; did you mean {', '.join(close)}?" if close else f" ({self.file_count} files)"
            raise FileNotInArtifactError(f"artifact '{self.source_name}' has no file {name!r}{hint}")
        return ArtifactFile(name, self, self._local_paths.get(name))

    def default_root(self) -> str:
        return os.path.join(".", "artifacts", f"{self._name}:{self._info.label if self._info else 'draft'}")

    def _download_entries(
        self, entries: list[ManifestEntry], root: str | None, *, paths: bool = True
    ) -> dict[str, str]:
        """Place ``entries`` under ``root``; returns entry path -> local path (empty with ``paths=False``)."""
        from .transfer import fetch_files

        client = self._require_live("download")
        root = root or self._download_root or self.default_root()
        placer = Placer(root)
        placed = fetch_files(client, entries, placer, label=self.qualified_name or self._name, paths=paths)
        self._download_root = placer.root
        return placed

    def get_path(self, name: str) -> ArtifactFilePath:
        """Local path of one file: the added file before logging; fetched (through the cache) after."""
        item = self.get_entry(name)
        if self._info is None:
            return ArtifactFilePath(item.local_path or "")
        return ArtifactFilePath(self._download_entries([item.entry], None)[name])

    def download(self, root: str | None = None, path_prefix: str | None = None, **_: Any) -> str:
        """Place every file (or those under ``path_prefix``) under ``root`` (default
        ``./artifacts/<name>:<version>``); returns the root.

        Files come from the shared cache, fetched only if missing there, and are hard-linked where the
        filesystem allows (copied otherwise). Nothing is written outside ``root``.

        Raises:
            ChecksumError: a fetched file does not match its digest (nothing corrupt is cached).
        """
        client = self._require_live("download")
        entries = [e for e in self._entries.values() if not path_prefix or e.path.startswith(path_prefix)]
        if path_prefix and not entries:
            raise FileNotInArtifactError(f"artifact '{self.source_name}' has no file under {path_prefix!r}")
        self._download_entries(entries, root, paths=False)
        assert self._info is not None and self._download_root is not None
        if not path_prefix:  # a logged version's files never change: its manifest as the registry gave it
            manifest = self._info.manifest if self._info.manifest is not None else self.manifest
            client.artifact_cache().record(
                f"{self._info.project}/{self._name}", self._info.label, manifest, self._info.digest
            )
        return self._download_root

    def checkout(self, root: str | None = None) -> str:
        """Make ``root`` hold exactly this version: download it, then remove every file it does not hold."""
        root = self.download(root)
        listed = {os.path.join(root, *p.split("/")) for p in self._entries}
        for dirpath, _dirs, filenames in os.walk(root, topdown=False):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                if full not in listed:
                    os.unlink(full)
            if dirpath != root and not os.listdir(dirpath):
                os.rmdir(dirpath)
        return root

    def file(self, root: str | None = None) -> str:
        """Download the one file of a single-file artifact; returns its path.

        Raises:
            InvalidInputError: the artifact holds more (or fewer) than one file.
        """
        if self.file_count != 1:
            raise InvalidInputError(
                f"file(): artifact '{self.source_name}' holds {self.file_count} files; use download() instead"
            )
        return self._download_entries(list(self._entries.values()), root)[next(iter(self._entries))]

    def verify(self, root: str | None = None) -> bool:
        """Check that the files under ``root`` match the manifest; True when they all do.

        Raises:
            ArtifactVerificationError: (a ``ValueError``, as W&B raises) naming every file that is missing
                or differs.
        """
        self._require_bound("verify")
        root = os.path.abspath(root or self._download_root or self.default_root())
        problems: list[str] = []
        for entry in self._entries.values():
            local = os.path.join(root, *entry.path.split("/"))
            problem = _compare(local, entry)
            if problem:
                problems.append(f"{entry.path} {problem}")
                logger.warning("verify %s: %s %s", self.source_name, entry.path, problem)
                self._drop_corrupt_cache_link(local, entry)
        listed = {os.path.join(root, *p.split("/")) for p in self._entries}
        for dirpath, _dirs, filenames in os.walk(root):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                if full not in listed:
                    logger.info("verify %s: %s is not part of the artifact", self.source_name, full)
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise ArtifactVerificationError(f"artifact '{self.source_name}' under {root}: {shown}")
        return True

    def _drop_corrupt_cache_link(self, local: str, entry: ManifestEntry) -> None:
        # A downloaded file is often a hard link to the cached blob: if it was modified in place, the cached
        # blob is damaged too and must not be served again.
        assert self._client is not None
        cache = self._client.cache
        blob = cache.blob_path(entry.sha256)
        with contextlib.suppress(OSError):
            if os.path.samefile(local, blob):
                logger.warning(
                    "cached blob %s (%s) was modified through a hard link; removed it", entry.sha256, entry.path
                )
                cache.remove_blob(entry.sha256)

    def logged_by(self) -> RunInfo | None:
        client = self._require_bound("logged_by")
        assert self._info is not None
        return client.registry.logged_by(self._info.project, self._name, self._info.version)

    def used_by(self) -> list[RunInfo]:
        client = self._require_bound("used_by")
        assert self._info is not None
        return client.registry.used_by(self._info.project, self._name, self._info.version)

    def wait(self, timeout: float | None = None) -> Artifact:
        """W&B compatibility: logging here is synchronous, so there is nothing to wait for."""
        return self

    def save(self, project: str | None = None) -> Artifact:
        """A draft: log it with the current run, or without a run into ``project``. A logged version: write
        what was changed on it (aliases added or removed, description, metadata, tags); its files never change.
        """
        from . import run as run_module

        if self._info is not None:
            return self._save_changes()
        current = run_module.current_run()
        if current is not None and project in (None, current.project):
            return current.log_artifact(self)
        return run_module.log_artifact_without_run(self, project)

    def _save_changes(self) -> Artifact:
        client = self._require_bound("save")
        info = self._logged("save")
        wanted = list(dict.fromkeys(self._aliases))
        update = VersionUpdate(
            description=self.description if self.description != info.description else None,
            metadata=self.metadata if self.metadata != dict(info.metadata) else None,
            tags=self.tags if list(self.tags) != list(info.tags) else None,
            add_aliases=[a for a in wanted if a not in info.aliases and a != "latest"],
            remove_aliases=[a for a in info.aliases if a not in wanted and a != "latest"],
            **self._ttl_update(),
        )
        fresh = client.registry.update_version(info.project, info.name, info.version, update)
        if fresh.manifest is None:
            fresh = dataclasses.replace(fresh, manifest=info.manifest)
        self._rebind_fields(fresh)
        return self

    def _ttl_update(self) -> dict[str, Any]:
        if not self._ttl_changed:
            return {}
        if isinstance(self._ttl, ArtifactTTL):
            return {"inherit_ttl": True}
        return {"clear_ttl": True} if self._ttl is None else {"ttl": self._ttl}

    def delete(self, delete_aliases: bool = False) -> None:
        """Delete this version. Refused (``AliasProtectedError``) while custom aliases point at it, unless
        ``delete_aliases``; its number is never given out again and ``latest`` moves to the newest left."""
        client = self._require_bound("delete")
        info = self._logged("delete")
        client.registry.delete_version(info.project, info.name, info.version, delete_aliases=delete_aliases)
        self._info = dataclasses.replace(info, state="DELETED")

    def link(self, target_path: str, aliases: list[str] | None = None) -> Artifact:
        """Link this version into the collection ``target_path`` (``project/name`` or ``name``, in this
        artifact's project); returns the link version, which resolves to this version's files."""
        from ..manifest import parse_ref

        client = self._require_bound("link")
        info = self._logged("link")
        ref = parse_ref(target_path)
        linked = client.registry.link_version(
            info.project, info.name, info.version, ref.project or info.project, ref.name, list(aliases or ())
        )
        if linked.manifest is None:
            linked = dataclasses.replace(linked, manifest=info.manifest)
        return Artifact._from_version(linked, client)

    def new_draft(self) -> Artifact:
        """A draft holding this version's files, description, metadata and tags, to change and log."""
        draft = Artifact(self._name, self._type, self.description, dict(self.metadata))
        draft._entries = dict(self._entries)
        draft.tags = list(self.tags)
        return draft


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).isoformat()


def _compare(local: str, entry: ManifestEntry) -> str | None:
    """Why ``local`` differs from ``entry``, or None when it matches."""
    try:
        size = os.stat(local).st_size
    except FileNotFoundError:
        return "is missing"
    if not entry.is_checked:  # a reference added with checksum=False: nothing recorded to compare with
        return None
    if size != entry.size:
        return f"has {size} bytes, expected {entry.size}"
    try:
        digest = hash_file(local)
    except OSError as exc:
        return f"cannot be read ({exc})"
    if digest.sha256 != entry.sha256 or digest.md5 != entry.md5:
        return f"content differs (sha256 {digest.sha256[:12]}..., expected {entry.sha256[:12]}...)"
    return None


__all__ = ["Artifact", "ArtifactFile", "ArtifactFilePath"]
