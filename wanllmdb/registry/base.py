"""The one registry interface the SDK, the CLI and the mount speak to, and the values it returns.

Two implementations: ``local.LocalRegistry`` (embedded: SQLite + content-addressed blob directory) and
``http.HttpRegistry`` (client of ``wanllmdb server``). The same contract tests run against both.

Writing is batched so that many small files cost few round trips::

    draft = registry.create_draft(DraftSpec(...))        # whole manifest in; missing blobs out
    for target in draft.missing:                         # in parallel
        registry.upload_blob(draft, target, local_path)  # checked by SHA-256 on the storage side
    result = registry.finalize_draft(draft.id, aliases)  # assigns vN atomically, moves aliases

A draft is invisible to every listing and lookup; finalizing content identical to the newest version
creates no new version (``FinalizeResult.created`` is False) but still applies the aliases.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..cache.store import BlobWriter
from ..errors import InvalidInputError, InvalidTagError
from ..manifest import Manifest
from ..manifest.digest import FileDigest

#: Called with a number of bytes just transferred.
Progress = Callable[[int], object]


@dataclass(frozen=True)
class VersionInfo:
    """One finalized version of an artifact; ``manifest`` is set when resolved with it."""

    project: str
    name: str
    type: str
    version: int
    digest: str
    aliases: tuple[str, ...]
    created_at: float
    size: int
    file_count: int
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    logged_by: str | None = None
    manifest: Manifest | None = field(default=None, compare=False, repr=False)
    tags: tuple[str, ...] = ()
    #: Stable opaque id of the version, assigned at finalize and never reused.
    id: str = ""
    #: Time of the last change of metadata, description, aliases or tags.
    updated_at: float | None = None
    #: ``"COMMITTED"``, or ``"DELETED"`` for tombstones returned by lineage queries.
    state: str = "COMMITTED"
    #: For a version of a link collection: the ``"project/name:vN"`` it points at.
    link_source: str | None = None
    #: Time to live in seconds: the version is deleted by ``expire_versions`` once ``expires_at`` has passed;
    #: None keeps it (unless the artifact's keep policy removes it).
    ttl: float | None = None

    @property
    def label(self) -> str:
        return f"v{self.version}"

    @property
    def expires_at(self) -> float | None:
        """``created_at + ttl`` (seconds since the epoch), or None without a TTL."""
        return None if self.ttl is None else self.created_at + self.ttl

    @property
    def qualified_name(self) -> str:
        return f"{self.project}/{self.name}:v{self.version}"

    def to_dict(self, *, with_manifest: bool = True) -> dict[str, Any]:
        data = {
            "project": self.project,
            "name": self.name,
            "type": self.type,
            "version": self.version,
            "digest": self.digest,
            "aliases": list(self.aliases),
            "created_at": self.created_at,
            "size": self.size,
            "file_count": self.file_count,
            "description": self.description,
            "metadata": dict(self.metadata),
            "logged_by": self.logged_by,
            "tags": list(self.tags),
            "id": self.id,
            "updated_at": self.updated_at,
            "state": self.state,
            "link_source": self.link_source,
            "ttl": self.ttl,
            "expires_at": self.expires_at,
        }
        if with_manifest and self.manifest is not None:
            data["manifest"] = self.manifest.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionInfo:
        manifest = data.get("manifest")
        return cls(
            project=data["project"],
            name=data["name"],
            type=data["type"],
            version=int(data["version"]),
            digest=data["digest"],
            aliases=tuple(data.get("aliases", ())),
            created_at=float(data["created_at"]),
            size=int(data["size"]),
            file_count=int(data["file_count"]),
            description=data.get("description"),
            metadata=dict(data.get("metadata") or {}),
            logged_by=data.get("logged_by"),
            manifest=Manifest.from_dict(manifest) if manifest is not None else None,
            tags=tuple(data.get("tags") or ()),
            id=data.get("id") or "",
            updated_at=float(data["updated_at"]) if data.get("updated_at") is not None else None,
            state=data.get("state") or "COMMITTED",
            link_source=data.get("link_source"),
            ttl=float(data["ttl"]) if data.get("ttl") is not None else None,
        )


#: The header of a server-built version index's answer (``GET …/versions/vN/index``) that carries the file's
#: SHA-256, checked by ``HttpRegistry.open_index`` as the bytes arrive.
INDEX_DIGEST_HEADER = "X-Wanllmdb-Sha256"

_TAG = re.compile(r"[-\w]+( +[-\w]+)*")
_MAX_TAG_LENGTH = 128


def validate_tags(tags: Sequence[str]) -> list[str]:
    """The tags without duplicates, in order; W&B's rule: words of letters, digits, ``-`` and ``_``
    separated by single spaces (so no comma, which separates tags in the mount's xattr).

    Raises:
        InvalidTagError: a tag breaks the rule or is longer than 128 characters.
    """
    if isinstance(tags, str):
        raise InvalidTagError(f"tags must be a list of strings, not the string {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag) or len(tag) > _MAX_TAG_LENGTH:
            raise InvalidTagError(
                f"invalid tag {tag!r}: use up to {_MAX_TAG_LENGTH} letters, digits, '-' and '_', "
                "words separated by single spaces"
            )
    return list(dict.fromkeys(tags))


class ArtifactTTL(enum.Enum):
    """W&B's ``wandb.ArtifactTTL``: ``INHERIT`` gives a version the artifact's default TTL."""

    INHERIT = 0


def validate_ttl(ttl: Any, what: str = "ttl") -> float | None:
    """``ttl`` as positive seconds (a number or a ``timedelta``), or None.

    Raises:
        InvalidInputError: not a finite number of seconds greater than zero.
    """
    if ttl is None:
        return None
    if hasattr(ttl, "total_seconds"):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidInputError(f"{what} must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


@dataclass(frozen=True)
class VersionUpdate:
    """Changes to a logged version's metadata (contents stay immutable); ``None`` leaves a field unchanged.

    The TTL: ``ttl`` sets it (seconds, > 0), ``clear_ttl`` removes it (the version is kept), ``inherit_ttl``
    sets it to the artifact's current default (:attr:`RetentionPolicy.ttl`); at most one of the three.
    """

    description: str | None = None
    #: Replaces the whole metadata dict.
    metadata: Mapping[str, Any] | None = None
    #: Replaces the tag set.
    tags: Sequence[str] | None = None
    add_aliases: Sequence[str] = ()
    remove_aliases: Sequence[str] = ()
    ttl: float | None = None
    clear_ttl: bool = False
    inherit_ttl: bool = False

    def checked_ttl(self) -> float | None:
        """``ttl`` validated, and the three TTL fields checked to ask for one change at most.

        Raises:
            InvalidInputError: a bad ``ttl``, or more than one of ``ttl``, ``clear_ttl``, ``inherit_ttl``.
        """
        ttl = validate_ttl(self.ttl)
        if (ttl is not None) + bool(self.clear_ttl) + bool(self.inherit_ttl) > 1:
            raise InvalidInputError("give at most one of ttl, clear_ttl and inherit_ttl")
        return ttl

    @property
    def changes_ttl(self) -> bool:
        return self.ttl is not None or self.clear_ttl or self.inherit_ttl

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "tags": list(self.tags) if self.tags is not None else None,
            "add_aliases": list(self.add_aliases),
            "remove_aliases": list(self.remove_aliases),
            "ttl": self.ttl,
            "clear_ttl": self.clear_ttl,
            "inherit_ttl": self.inherit_ttl,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionUpdate:
        return cls(
            description=data.get("description"),
            metadata=data.get("metadata"),
            tags=data.get("tags"),
            add_aliases=tuple(data.get("add_aliases") or ()),
            remove_aliases=tuple(data.get("remove_aliases") or ()),
            ttl=data.get("ttl"),
            clear_ttl=bool(data.get("clear_ttl")),
            inherit_ttl=bool(data.get("inherit_ttl")),
        )


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``expire_versions`` removes from one artifact, besides versions whose own TTL passed.

    - ``ttl``: the default TTL (seconds) a version logged later gets unless it sets its own (W&B's collection
      TTL); versions already logged keep theirs.
    - ``keep_last`` / ``older_than``: versions beyond the newest ``keep_last`` (when set) and logged at least
      ``older_than`` seconds ago (when set) are deleted; with neither set the policy deletes nothing. The
      newest version (``latest``) is never deleted by them.
    - ``keep_aliased``: spare versions that a custom alias (not ``latest``) points at.
    """

    ttl: float | None = None
    keep_last: int | None = None
    keep_aliased: bool = False
    older_than: float | None = None

    def validated(self) -> RetentionPolicy:
        """Raises InvalidInputError for a TTL not > 0, a negative or non-integer ``keep_last`` or a negative
        ``older_than``."""
        ttl = validate_ttl(self.ttl, "the artifact's default ttl")
        keep_last = self.keep_last
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0):
            raise InvalidInputError(f"keep_last must be a whole number of versions >= 0, not {keep_last!r}")
        older = self.older_than
        if older is not None:
            if hasattr(older, "total_seconds"):
                older = older.total_seconds()
            if isinstance(older, bool) or not isinstance(older, (int, float)) or not math.isfinite(older) or older < 0:
                raise InvalidInputError(f"older_than must be a number of seconds >= 0, not {older!r}")
            older = float(older)
        return RetentionPolicy(ttl, keep_last, bool(self.keep_aliased), older)

    @property
    def deletes(self) -> bool:
        """Whether the keep policy (not the TTL) selects versions at all."""
        return self.keep_last is not None or self.older_than is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "keep_last": self.keep_last,
            "keep_aliased": self.keep_aliased,
            "older_than": self.older_than,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RetentionPolicy:
        data = data or {}
        return cls(
            ttl=data.get("ttl"),
            keep_last=data.get("keep_last"),
            keep_aliased=bool(data.get("keep_aliased")),
            older_than=data.get("older_than"),
        )


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact with all its versions (without manifests) and its alias map."""

    project: str
    name: str
    type: str
    versions: tuple[VersionInfo, ...]
    aliases: Mapping[str, int]
    #: The artifact's default TTL for new versions and its keep policy.
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    @property
    def latest(self) -> VersionInfo:
        return self.versions[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "name": self.name,
            "type": self.type,
            "versions": [v.to_dict(with_manifest=False) for v in self.versions],
            "aliases": dict(self.aliases),
            "retention": self.retention.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactInfo:
        return cls(
            project=data["project"],
            name=data["name"],
            type=data["type"],
            versions=tuple(VersionInfo.from_dict(v) for v in data["versions"]),
            aliases={k: int(v) for k, v in data["aliases"].items()},
            retention=RetentionPolicy.from_dict(data.get("retention")),
        )


@dataclass(frozen=True)
class ArtifactSummary:
    project: str
    name: str
    type: str
    latest_version: int
    version_count: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactSummary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ArtifactUsage:
    """What an artifact's live versions take in the blob store, dedupe-aware.

    ``logical_bytes``: the sizes of its versions added up (what downloading every version moves);
    ``stored_bytes``: its distinct blobs (what it takes in the store, shared blobs counted once);
    ``exclusive_bytes``: the blobs no other artifact's live version names (what deleting it would free,
    once garbage collection has run).
    """

    project: str
    name: str
    versions: int
    logical_bytes: int
    stored_bytes: int
    exclusive_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactUsage:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DraftSpec:
    """Everything needed to create a version, sent in one request."""

    project: str
    name: str
    type: str
    manifest: Manifest
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@dataclass(frozen=True)
class BlobTarget:
    """A blob the registry lacks; ``url`` is a presigned upload URL for the HTTP registry.

    ``headers`` must be sent with the URL (an object store checks the checksums they carry); a blob with
    ``part_size`` is uploaded in parts of that size instead (multipart, no ``url``).
    """

    sha256: str
    size: int
    url: str | None = None
    expires_at: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    part_size: int | None = None


@dataclass(frozen=True)
class UploadBundle:
    """Several small missing blobs sent in one request (HTTP registry); ``url`` is presigned for the list."""

    url: str
    targets: tuple[BlobTarget, ...]
    expires_at: float | None = None


def upload_listing(targets: Sequence[tuple[str, int]]) -> bytes:
    """What an upload bundle's body starts with (and its URL signs): one ``<sha256> <size>`` line per blob."""
    return "".join(f"{sha} {size}\n" for sha, size in targets).encode("ascii")


@dataclass(frozen=True)
class Draft:
    """A version being written. ``missing`` lists every blob to upload; ``bundles`` group some of them."""

    id: str
    digest: str
    missing: tuple[BlobTarget, ...]
    bundles: tuple[UploadBundle, ...] = ()


@dataclass(frozen=True)
class FinalizeResult:
    version: VersionInfo
    created: bool


@dataclass(frozen=True)
class RunInfo:
    id: str
    project: str
    name: str
    state: str
    created_at: float
    finished_at: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["tags"] = list(self.tags)
        data["config"] = dict(self.config)
        data["summary"] = dict(self.summary)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunInfo:
        values = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        values["tags"] = tuple(values.get("tags") or ())
        values["config"] = dict(values.get("config") or {})
        values["summary"] = dict(values.get("summary") or {})
        return cls(**values)


@dataclass(frozen=True)
class RunSpec:
    project: str
    id: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    tags: Sequence[str] = ()
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None


@runtime_checkable
class Registry(Protocol):
    """What every registry implementation provides. Errors are :mod:`wanllmdb.errors` types."""

    #: Human-readable location, for messages ("embedded registry at ...", "server http://...").
    description: str

    # --- reading ----------------------------------------------------------------------------------------
    def list_projects(self) -> list[str]: ...

    def list_artifacts(self, project: str) -> list[ArtifactSummary]: ...

    def get_artifact(self, project: str, name: str) -> ArtifactInfo: ...

    def resolve(self, project: str, name: str, selector: str = "latest") -> VersionInfo:
        """The version ``selector`` (``vN`` or an alias) names, with its manifest."""
        ...

    # --- blobs ------------------------------------------------------------------------------------------
    def fetch_blob(
        self, sha256: str, size: int, writer: BlobWriter, progress: Progress | None = None
    ) -> None:
        """Write the whole blob into ``writer`` (the caller verifies it)."""
        ...

    def fetch_range_into(self, sha256: str, start: int, length: int, writer: BlobWriter) -> int:
        """Write ``length`` bytes of the blob from ``start`` into ``writer`` piece by piece as they arrive
        (fewer at the blob's end), never holding the range whole; returns the count. The caller verifies them.
        """
        ...

    def prepare_fetch(self, sha256s: Iterable[str]) -> None:
        """Hint that these blobs will be fetched soon.

        The HTTP registry presigns all of them in one request and caches the URLs until shortly before
        they expire, so that many small fetches cost no extra round trip each; the embedded registry
        does nothing. Call it with the blobs that are *not* cached yet: a fully cached artifact then
        costs no blob request at all.
        """
        ...

    # --- writing ----------------------------------------------------------------------------------------
    def known_sizes(self, sizes: Iterable[int]) -> set[int]:
        """Which of ``sizes`` some stored blob has. A file of any other size cannot be stored yet, so the
        SDK may upload it in the same read that hashes it (:meth:`store_unhashed`)."""
        ...

    def store_unhashed(self, path: str, size: int, progress: Progress | None = None) -> FileDigest:
        """Store a local file whose digests are not known yet, computing them in the same read.

        Raises:
            ChecksumError: the file changed while it was read (the storage side disagrees).
        """
        ...

    def create_draft(self, spec: DraftSpec) -> Draft: ...

    def upload_blob(
        self, draft: Draft, target: BlobTarget, path: str, progress: Progress | None = None
    ) -> None:
        """Store the local file ``path`` as the blob ``target`` names; refused if its digest differs."""
        ...

    def upload_bundle(
        self, draft: Draft, bundle: UploadBundle, paths: Mapping[str, str], progress: Progress | None = None
    ) -> None:
        """Upload the small blobs of ``bundle`` (``paths``: sha256 -> local file) in one request."""
        ...

    def finalize_draft(
        self,
        draft_id: str,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        ttl: float | None | ArtifactTTL = ArtifactTTL.INHERIT,
    ) -> FinalizeResult:
        """Create the version (or find identical content); apply ``aliases`` and add ``tags`` to it.

        ``ttl``: seconds (> 0) the version lives, None to keep it, or ``INHERIT`` (default) for the artifact's
        default TTL (:attr:`RetentionPolicy.ttl`). Given explicitly, it is also set on identical content.
        """
        ...

    def storage_usage(self, project: str) -> list[ArtifactUsage]:
        """Per artifact of ``project``: logical, stored and exclusive bytes (see :class:`ArtifactUsage`)."""
        ...

    def missing_blobs(self, draft_id: str) -> tuple[BlobTarget, ...]:
        """The blobs a draft still lacks, with fresh upload URLs over HTTP (after a finalize answered
        ``IncompleteDraftError``: garbage collection took a blob the draft counted on)."""
        ...

    def abort_draft(self, draft_id: str) -> None: ...

    def set_alias(self, project: str, name: str, alias: str, version: int) -> None: ...

    def delete_alias(self, project: str, name: str, alias: str) -> None: ...

    # --- changing and deleting logged versions ----------------------------------------------------------
    def update_version(self, project: str, name: str, version: int, update: VersionUpdate) -> VersionInfo:
        """Apply ``update`` (aliases follow :meth:`set_alias`'s rules; ``latest`` is the registry's)."""
        ...

    def delete_version(self, project: str, name: str, version: int, *, delete_aliases: bool = False) -> None:
        """Delete a version, keeping a tombstone for lineage.

        Numbers are never reused; ``latest`` moves to the highest remaining version; link versions that
        point at it are deleted with it.

        Raises:
            AliasProtectedError: custom aliases (not ``latest``) point at it, or at a link to it, and
                ``delete_aliases`` is False.
        """
        ...

    def delete_artifact(self, project: str, name: str) -> int:
        """Delete every version (and alias) of an artifact; returns how many versions were deleted."""
        ...

    def set_retention(self, project: str, name: str, policy: RetentionPolicy) -> RetentionPolicy:
        """Replace the artifact's retention policy (read back in :attr:`ArtifactInfo.retention`); returns it.

        Raises:
            InvalidInputError: a bad value (see :meth:`RetentionPolicy.validated`), or a ``ttl`` on a link
                collection (links live as long as what they point at).
        """
        ...

    def link_version(
        self,
        project: str,
        name: str,
        version: int,
        target_project: str,
        target_name: str,
        aliases: Sequence[str] = (),
    ) -> VersionInfo:
        """Add to the link collection ``target_project/target_name`` (created on first link, with the
        source's type) a version that points at ``project/name:vN``; resolving it returns the source's
        manifest with ``link_source`` set. Linking the same source again returns the existing link version.
        """
        ...

    def logged_artifacts(self, run_id: str) -> list[VersionInfo]:
        """Versions the run logged, oldest first, deleted ones included as tombstones (``state``)."""
        ...

    def used_artifacts(self, run_id: str) -> list[VersionInfo]:
        """Versions the run used, in order of first use, deleted ones included as tombstones."""
        ...

    # --- runs and lineage -------------------------------------------------------------------------------
    def create_run(self, spec: RunSpec) -> RunInfo: ...

    def update_run(
        self,
        run_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        state: str | None = None,
    ) -> None: ...

    def get_run(self, run_id: str) -> RunInfo: ...

    def run_history(self, run_id: str) -> list[dict[str, Any]]: ...

    def record_use(self, run_id: str, project: str, name: str, version: int) -> None: ...

    def logged_by(self, project: str, name: str, version: int) -> RunInfo | None: ...

    def used_by(self, project: str, name: str, version: int) -> list[RunInfo]: ...

    def close(self) -> None: ...
