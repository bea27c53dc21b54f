"""The embedded registry: SQLite (WAL) + a content-addressed blob directory, nothing to start.

Layout under the data directory (``WANLLMDB_DIR`` or ``platformdirs.user_data_dir("wanllmdb")``)::

    registry.sqlite    projects, artifacts, versions, aliases, drafts, runs, lineage
    blobs/ab/<sha256>  file contents, once per content
    tmp/               blobs being written

A version is created in one ``BEGIN IMMEDIATE`` transaction that checks every blob is stored, takes the next
number and moves the aliases, so a killed logger leaves either no version or a complete one, numbers are
never skipped or duplicated, and a draft is never visible. The server serves this same class over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

from ..cache.store import BlobWriter
from ..errors import (
    AliasError,
    ArtifactNotFoundError,
    ArtifactTypeMismatchError,
    BlobNotFoundError,
    ConflictError,
    DraftNotFoundError,
    EmptyArtifactError,
    IncompleteDraftError,
    InvalidManifestError,
    ManifestMismatchError,
    ProjectNotFoundError,
    RunNotFoundError,
    VersionNotFoundError,
)
from ..iobuf import buffer_for
from ..killpoints import kill_point
from ..manifest import (
    Manifest,
    parse_version,
    validate_alias,
    validate_artifact_name,
    validate_artifact_type,
    validate_project,
)
from ..manifest.digest import FileDigest
from ..manifest.entry import MAX_FILE_SIZE
from .base import (
    ArtifactInfo,
    ArtifactSummary,
    ArtifactTTL,
    ArtifactUsage,
    BlobTarget,
    Draft,
    DraftSpec,
    FinalizeResult,
    Progress,
    RunInfo,
    RunSpec,
    UploadBundle,
    VersionInfo,
    validate_tags,
)
from .blobstore import COPY_PIECE, BlobStore
from .db import Database, select_in
from .gc import GCReport, collect_garbage
from .lifecycle import (
    HAS_LIVE_VERSION,
    VERSION_COLUMNS,
    LifecycleOps,
    add_tags,
    finalize_ttl,
    retention_of,
    set_ttl_at_finalize,
)
from .pgdb import PostgresDatabase

logger = logging.getLogger(__name__)

DEFAULT_DRAFT_MAX_AGE = 24 * 3600.0
#: The largest integer an SQLite column holds.
MAX_SQLITE_INT = 2**63 - 1


def describe_versions(versions: Sequence[int], aliases: Sequence[str]) -> str:
    """``"versions: v1..v5; aliases: best, latest"`` for error messages."""
    if not versions:
        return "no versions"
    ordered = sorted(versions)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        shown = f"v{ordered[0]}..v{ordered[-1]}"
    else:
        shown = ", ".join(f"v{v}" for v in ordered)
    return f"versions: {shown}; aliases: {', '.join(sorted(aliases)) or 'none'}"


class LocalRegistry(LifecycleOps):
    """Registry in a local directory.

    Args:
        root: data directory (created if missing).
        draft_max_age: drafts (and temporary blob files) older than this many seconds are removed.
        database: an open metadata database (:class:`Database`, or a
            :class:`~.pgdb.PostgresDatabase` for a server); default: ``registry.sqlite`` under ``root``. The
            registry closes it.
    """

    def __init__(
        self,
        root: str,
        *,
        draft_max_age: float = DEFAULT_DRAFT_MAX_AGE,
        verify_md5: bool = False,
        database: Database | PostgresDatabase | None = None,
        blobstore: BlobStore | None = None,
    ) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        os.makedirs(self.root, exist_ok=True)
        self.db = database if database is not None else Database(os.path.join(self.root, "registry.sqlite"))
        #: Compute the MD5 of every blob received and hold every manifest entry to it (the server does:
        #: its clients are not trusted); otherwise MD5s are checked where they were recorded.
        self.verify_md5 = verify_md5
        #: The blobs: a directory under root by default; the server may give an object store
        #: (``s3blobs.S3BlobStore``), whose stored blobs are those recorded here after checking.
        self.blobs = blobstore if blobstore is not None else BlobStore(self.root)
        self.blobs.on_install = self._note_blobs
        self.blobs.compute_md5 = self.blobs.compute_md5 or verify_md5
        # The MD5s this process's own drafts state for the blobs they upload (see BlobStore.put_file).
        self._draft_md5s: dict[str, dict[str, str]] = {}
        self.draft_max_age = draft_max_age
        self.description = f"embedded registry at {self.root}"

    def close(self) -> None:
        self.db.close()

    # --- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _project_id(conn: sqlite3.Connection, project: str, *, create: bool = False) -> int | None:
        row = conn.execute("SELECT id FROM projects WHERE name = ?", (project,)).fetchone()
        if row:
            return int(row["id"])
        if not create:
            return None
        # Another writer (another replica) may create it at the same time: whoever inserts, both read it.
        conn.execute(
            "INSERT INTO projects (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (project, time.time()),
        )
        return int(conn.execute("SELECT id FROM projects WHERE name = ?", (project,)).fetchone()["id"])

    def _artifact_row(
        self, conn: sqlite3.Connection, project: str, name: str, *, with_deleted: bool = False, lock: bool = False
    ) -> sqlite3.Row:
        """The artifact's row; one whose versions were all deleted is not found unless ``with_deleted``.

        ``lock`` takes the artifact's row lock (PostgreSQL) until the transaction ends: every write that reads
        then changes an artifact's versions or aliases takes it, so such writes are serialized per artifact.
        """
        validate_project(project)
        validate_artifact_name(name)
        row = conn.execute(
            "SELECT a.id, a.name, a.type, a.is_link FROM artifacts a JOIN projects p ON p.id = a.project_id "
            "WHERE p.name = ? AND a.name = ?"
            + ("" if with_deleted else f" AND {HAS_LIVE_VERSION}")
            + (self.db.for_update("a") if lock else ""),
            (project, name),
        ).fetchone()
        if row is None:
            if self._project_id(conn, project) is None:
                raise ArtifactNotFoundError(
                    f"artifact '{name}' not found: project '{project}' does not exist in the {self.description}"
                )
            names = [
                r["name"]
                for r in conn.execute(
                    "SELECT a.name FROM artifacts a JOIN projects p ON p.id = a.project_id WHERE p.name = ? "
                    f"AND {HAS_LIVE_VERSION} ORDER BY a.name LIMIT 20",
                    (project,),
                )
            ]
            raise ArtifactNotFoundError(
                f"artifact '{name}' not found in project '{project}' (artifacts: {', '.join(names) or 'none'})"
            )
        return row

    def _stored_locked(self, conn: Any, sha256s: Iterable[str]) -> set[str]:
        """Which of ``sha256s`` are stored, their ``blob_sizes`` rows held (``FOR SHARE`` on PostgreSQL) until
        the transaction ends, so that garbage collection cannot delete them under a finalize."""
        wanted = sorted(set(sha256s))
        share = " FOR SHARE" if self.db.dialect == "postgresql" else ""
        rows = select_in(conn, "SELECT sha256 FROM blob_sizes WHERE sha256 {in} ORDER BY sha256" + share, wanted)
        recorded = {row[0] for row in rows}
        if not self.blobs.lists_itself:
            return recorded
        # A directory store is its own authority: a file present is stored (its record may lag).
        return {sha for sha in wanted if self.blobs.exists(sha)}

    def storage_usage(self, project: str) -> list[ArtifactUsage]:
        validate_project(project)
        owners: dict[str, set[tuple[str, str]]] = {}
        sizes: dict[str, int] = {}
        per_artifact: dict[tuple[str, str], list[int]] = {}
        with self.db.read() as conn:
            if self._project_id(conn, project) is None:
                raise ProjectNotFoundError(f"project '{project}' does not exist in the {self.description}")
            rows = conn.execute(
                "SELECT p.name AS project, a.name AS artifact, v.size, v.manifest FROM versions v "
                "JOIN artifacts a ON a.id = v.artifact_id JOIN projects p ON p.id = a.project_id "
                "WHERE v.state = 'COMMITTED'"
            )
            for row in rows:
                key = (row["project"], row["artifact"])
                counts = per_artifact.setdefault(key, [0, 0])
                counts[0] += 1
                counts[1] += int(row["size"])
                for entry in json.loads(row["manifest"])["entries"]:
                    if entry.get("ref"):
                        continue
                    owners.setdefault(entry["sha256"], set()).add(key)
                    sizes[entry["sha256"]] = int(entry["size"])
        usage = []
        for (proj, name), (count, logical) in sorted(per_artifact.items()):
            if proj != project:
                continue
            mine = [sha for sha, keys in owners.items() if (proj, name) in keys]
            usage.append(
                ArtifactUsage(
                    proj, name, count, logical,
                    stored_bytes=sum(sizes[sha] for sha in mine),
                    exclusive_bytes=sum(sizes[sha] for sha in mine if len(owners[sha]) == 1),
                )  # fmt: skip
            )
        return usage

    def missing_blobs(self, draft_id: str) -> tuple[BlobTarget, ...]:
        """The blobs a draft still lacks (after a finalize answered IncompleteDraftError)."""
        return self.draft_missing(draft_id)

    def collect_garbage(self, *, grace: float, now: float | None = None, dry_run: bool = False) -> GCReport:
        """Delete blobs no version or draft has needed for ``grace`` seconds (see :mod:`.gc`)."""
        return collect_garbage(self, grace=grace, now=now, dry_run=dry_run)

    def maintain(self, *, grace: float, now: float | None = None, dry_run: bool = False) -> GCReport | None:
        """Retention, then garbage collection, by one process or replica at a time (None: another one is at
        it). What ``wanllmdb gc`` and the server's background work run."""
        with self.db.exclusive("gc") as mine:
            if not mine:
                return None
            expired = self.expire_versions(now, dry_run=dry_run)
            report = self.collect_garbage(grace=grace, now=now, dry_run=dry_run)
            report.expired = len(expired)
            return report

    @staticmethod
    def _aliases_by_version(conn: sqlite3.Connection, artifact_id: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for row in conn.execute(
            "SELECT al.alias, v.version FROM aliases al JOIN versions v ON v.id = al.version_id "
            "WHERE al.artifact_id = ? AND v.state = 'COMMITTED' ORDER BY al.alias",
            (artifact_id,),
        ):
            out.setdefault(int(row["version"]), []).append(row["alias"])
        return out

    @staticmethod
    def _version_info(
        row: sqlite3.Row, project: str, name: str, type_: str, aliases: Sequence[str], with_manifest: bool
    ) -> VersionInfo:
        return VersionInfo(
            project=project,
            name=name,
            type=type_,
            version=int(row["version"]),
            digest=row["digest"],
            aliases=tuple(sorted(aliases)),
            created_at=float(row["created_at"]),
            size=int(row["size"]),
            file_count=int(row["file_count"]),
            description=row["description"],
            metadata=json.loads(row["metadata"]),
            logged_by=row["run_id"],
            manifest=Manifest.from_json(row["manifest"]) if with_manifest else None,
            tags=tuple(json.loads(row["tags"])),
            id=row["uid"],
            updated_at=row["updated_at"],
            state=row["state"],
            link_source=row["link_source"],
            ttl=row["ttl"],
        )

    # --- reading ----------------------------------------------------------------------------------------

    def list_projects(self) -> list[str]:
        with self.db.read() as conn:
            return [r["name"] for r in conn.execute("SELECT name FROM projects ORDER BY name")]

    def list_artifacts(self, project: str) -> list[ArtifactSummary]:
        validate_project(project)
        with self.db.read() as conn:
            if self._project_id(conn, project) is None:
                raise ProjectNotFoundError(f"project '{project}' does not exist in the {self.description}")
            rows = conn.execute(
                "SELECT a.name, a.type, MAX(v.version) AS latest, COUNT(v.id) AS n, MAX(v.created_at) AS updated "
                "FROM artifacts a JOIN projects p ON p.id = a.project_id JOIN versions v ON v.artifact_id = a.id "
                "WHERE p.name = ? AND v.state = 'COMMITTED' GROUP BY a.id ORDER BY a.name",
                (project,),
            ).fetchall()
        return [
            ArtifactSummary(project, r["name"], r["type"], int(r["latest"]), int(r["n"]), float(r["updated"]))
            for r in rows
        ]

    def get_artifact(self, project: str, name: str) -> ArtifactInfo:
        with self.db.read() as conn:
            art = self._artifact_row(conn, project, name)
            by_version = self._aliases_by_version(conn, art["id"])
            rows = conn.execute(
                f"SELECT {VERSION_COLUMNS}, '' AS manifest FROM versions v "
                "WHERE v.artifact_id = ? AND v.state = 'COMMITTED' ORDER BY v.version",
                (art["id"],),
            ).fetchall()
            retention = retention_of(conn, int(art["id"]))
        versions = tuple(
            self._version_info(r, project, name, art["type"], by_version.get(int(r["version"]), []), False)
            for r in rows
        )
        aliases = {alias: v for v, names in by_version.items() for alias in names}
        return ArtifactInfo(project, name, art["type"], versions, aliases, retention)

    def resolve(self, project: str, name: str, selector: str = "latest") -> VersionInfo:
        info, _ = self._resolve(project, name, selector, parse=True)
        return info

    def resolve_stored(self, project: str, name: str, selector: str = "latest") -> tuple[VersionInfo, str]:
        """:meth:`resolve` without parsing the manifest: the version (``manifest`` None) and its manifest's JSON
        text as stored at finalize (``Manifest.to_json`` of a checked manifest), for the server to pass on."""
        return self._resolve(project, name, selector, parse=False)

    @contextmanager
    def open_manifest(self, project: str, name: str, selector: str) -> Iterator[BinaryIO]:
        """The manifest's JSON text as stored (the canonical form, see :meth:`resolve_stored`), as a binary file
        object (the HTTP registry streams it; here the text is one column, read whole, and encoded a piece at a
        time as it is read, so that it is not held twice)."""
        _info, text = self.resolve_stored(project, name, selector)
        yield _EncodedText(text)

    def _resolve(self, project: str, name: str, selector: str, *, parse: bool) -> tuple[VersionInfo, str]:
        validate_alias(selector)
        with self.db.read() as conn:
            art = self._artifact_row(conn, project, name)
            number = parse_version(selector)
            if number is not None:
                row = conn.execute(
                    f"SELECT {VERSION_COLUMNS}, v.manifest FROM versions v "
                    "WHERE v.artifact_id = ? AND v.version = ? AND v.state = 'COMMITTED'",
                    (art["id"], number),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {VERSION_COLUMNS}, v.manifest FROM aliases al JOIN versions v ON v.id = al.version_id "
                    "WHERE al.artifact_id = ? AND al.alias = ?",
                    (art["id"], selector),
                ).fetchone()
            by_version = self._aliases_by_version(conn, art["id"])
            if row is None:
                numbers = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT version FROM versions WHERE artifact_id = ? AND state = 'COMMITTED'", (art["id"],)
                    )
                ]
                all_aliases = [a for names in by_version.values() for a in names]
                raise VersionNotFoundError(
                    f"artifact '{name}:{selector}' not found in project '{project}' "
                    f"({describe_versions(numbers, all_aliases)})"
                )
            info = self._version_info(
                row, project, name, art["type"], by_version.get(int(row["version"]), []), parse
            )
            return info, row["manifest"]

    # --- blobs ------------------------------------------------------------------------------------------

    def fetch_blob(
        self, sha256: str, size: int, writer: BlobWriter, progress: Progress | None = None
    ) -> None:
        with self.blobs.open(sha256) as f:
            # 1 MiB pieces: the writer hashes and writes each while it is still in this core's cache (8 MiB
            # pieces cost more CPU than the copy itself on the benchmark machine, see blobstore._copy_hashing).
            buf = buffer_for(size, COPY_PIECE)
            view = memoryview(buf)
            while n := f.readinto(buf):
                writer.write(view[:n])
                if progress:
                    progress(n)

    def fetch_range_into(self, sha256: str, start: int, length: int, writer: BlobWriter) -> int:
        return self.blobs.read_range_into(sha256, start, length, writer)

    def record_blobs(self, items: Sequence[tuple[str, int, str | None]]) -> None:
        """Record blobs (sha256, size, MD5 hex or None) as stored and checked (multipart uploads to S3)."""
        self._note_blobs(items)

    def draft_md5s(self, draft_id: str) -> dict[str, str]:
        """The MD5 each entry of a draft's manifest states for its blob (signed into object-store PUTs)."""
        return {entry.sha256: entry.md5 for entry in self._draft_manifest(draft_id)}

    def _note_blobs(self, items: Sequence[tuple[str, int, str | None]]) -> None:
        # In key order: concurrent writers inserting overlapping keys then wait for each other, never deadlock.
        items = sorted(items)
        with self.db.write() as conn:
            conn.executemany(
                "INSERT INTO blob_sizes (sha256, size) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(sha, n) for sha, n, _ in items],
            )
            conn.executemany(
                "INSERT INTO blob_md5 (sha256, md5) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(sha, md5) for sha, _, md5 in items if md5],
            )

    def _recorded_md5s(self, sha256s: Sequence[str]) -> dict[str, str]:
        with self.db.read() as conn:
            return {r[0]: r[1] for r in select_in(conn, "SELECT sha256, md5 FROM blob_md5 WHERE sha256 {in}", sha256s)}

    def stored_sizes(self, sha256s: Iterable[str]) -> dict[str, int]:
        """The size of each of ``sha256s`` that is stored (the others are left out).

        A directory store answers itself (a blob file exists only once checked); for object storage the
        answer is the registry's record of the blobs it checked (``blob_sizes``), never a bucket listing.
        """
        wanted = list(dict.fromkeys(sha256s))
        found: dict[str, int] = {}
        if self.blobs.lists_itself:
            for sha in wanted:
                try:
                    found[sha] = self.blobs.size(sha)
                except BlobNotFoundError:
                    continue
            return found
        with self.db.read() as conn:
            rows = select_in(conn, "SELECT sha256, size FROM blob_sizes WHERE sha256 {in}", wanted)
            found.update((r[0], int(r[1])) for r in rows)
        return found

    def _settle_uploads(self, manifest: Manifest) -> None:
        """Check and record the blobs clients uploaded straight to object storage since the draft was made.

        Nothing to do for a directory store (blobs are checked as they arrive). For object storage every
        blob of the manifest not yet recorded is checked where it lies (``S3BlobStore.verify_stored``: the
        store's checksum, or a read) and recorded with its MD5; a missing or wrong one stays unrecorded.
        """
        if self.blobs.lists_itself:
            return
        blobs = manifest.blobs()
        unknown = [sha for sha in blobs if sha not in self.stored_sizes(blobs)]
        if not unknown:
            return
        md5s = {entry.sha256: entry.md5 for entry in manifest}
        verify = self.blobs.verify_stored  # type: ignore[attr-defined]

        def check(sha: str) -> tuple[str, int, str | None] | None:
            md5 = verify(sha, blobs[sha], md5s.get(sha))
            return (sha, blobs[sha], md5) if md5 is not None else None

        with ThreadPoolExecutor(min(16, len(unknown))) as pool:
            checked = [item for item in pool.map(check, unknown) if item is not None]
        if checked:
            self._note_blobs(checked)

    def check_against_stored(self, manifest: Manifest, label: str) -> None:
        """Hold every entry whose blob is stored to what was stored: its size, and its MD5 where recorded
        (always, with ``verify_md5``: a blob stored before MD5s were recorded is hashed once, here).

        Raises:
            ManifestMismatchError: an entry states another size or MD5 than its stored blob has.
        """
        sizes = self.stored_sizes(manifest.blobs())
        md5s = self._recorded_md5s(list(sizes))
        if self.verify_md5:
            unknown = [(sha, size, self.blobs.md5_of(sha)) for sha, size in sizes.items() if sha not in md5s]
            if unknown:
                self._note_blobs(unknown)
                md5s.update((sha, md5) for sha, _, md5 in unknown)
        for entry in manifest:
            stored = sizes.get(entry.sha256)
            if stored is None:
                continue
            if entry.size != stored:
                raise ManifestMismatchError(
                    f"{label}: entry {entry.path!r} says {entry.size} bytes, but the stored blob "
                    f"{entry.sha256[:12]} has {stored}"
                )
            md5 = md5s.get(entry.sha256)
            if md5 is not None and entry.md5 != md5:
                raise ManifestMismatchError(
                    f"{label}: entry {entry.path!r} says MD5 {entry.md5}, but the stored blob "
                    f"{entry.sha256[:12]} has MD5 {md5}"
                )

    def known_sizes(self, sizes: Iterable[int]) -> set[int]:
        # A size SQLite cannot hold (negative, or 2**63 and more) is no stored blob's; it must not reach a query.
        wanted = sorted({int(s) for s in sizes if 0 <= int(s) <= MAX_SQLITE_INT})
        with self.db.read() as conn:
            return {int(r[0]) for r in select_in(conn, "SELECT DISTINCT size FROM blob_sizes WHERE size {in}", wanted)}

    def store_unhashed(self, path: str, size: int, progress: Progress | None = None) -> FileDigest:
        return self.blobs.put_unhashed(path, size, progress=progress)

    def prepare_fetch(self, sha256s: Iterable[str]) -> None:
        """Nothing to prepare: blobs are local files."""

    # --- writing ----------------------------------------------------------------------------------------

    def _check_type(self, conn: sqlite3.Connection, project: str, name: str, type_: str) -> None:
        row = conn.execute(
            "SELECT a.type, a.is_link FROM artifacts a JOIN projects p ON p.id = a.project_id "
            "WHERE p.name = ? AND a.name = ?",
            (project, name),
        ).fetchone()
        self._check_kind(row, project, name, type_)

    @staticmethod
    def _check_kind(row: sqlite3.Row | None, project: str, name: str, type_: str) -> None:
        """Raises if the artifact row ``row`` (None: no such artifact yet) cannot take a ``type_`` version."""
        if row is not None and row["is_link"]:
            raise ConflictError(
                f"'{project}/{name}' is a link collection: link versions into it instead of logging to it"
            )
        if row is not None and row["type"] != type_:
            raise ArtifactTypeMismatchError(
                f"artifact '{name}' in project '{project}' has type '{row['type']}'; "
                f"cannot log it with type '{type_}'"
            )

    def create_draft(self, spec: DraftSpec) -> Draft:
        validate_project(spec.project)
        validate_artifact_name(spec.name)
        validate_artifact_type(spec.type)
        if len(spec.manifest) == 0:
            raise EmptyArtifactError(f"artifact '{spec.name}' has no files: add files before logging it")
        if spec.manifest.size > MAX_FILE_SIZE:
            raise InvalidManifestError(
                f"artifact '{spec.name}': its files add up to {spec.manifest.size} bytes, more than {MAX_FILE_SIZE}"
            )
        metadata = json.dumps(dict(spec.metadata), sort_keys=True, default=str)
        draft_id = uuid.uuid4().hex
        self.remove_stale_drafts()
        with self.db.write() as conn:
            self._check_type(conn, spec.project, spec.name, spec.type)
            conn.execute(
                "INSERT INTO drafts (id, project, name, type, digest, manifest, description, metadata, run_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    draft_id,
                    spec.project,
                    spec.name,
                    spec.type,
                    spec.manifest.digest,
                    spec.manifest.to_json(),
                    spec.description,
                    metadata,
                    spec.run_id,
                    time.time(),
                ),
            )
        blobs = spec.manifest.blobs()
        stored = self.stored_sizes(blobs)
        missing = tuple(BlobTarget(sha, size) for sha, size in blobs.items() if sha not in stored)
        if missing and not self.verify_md5:
            self._draft_md5s[draft_id] = {entry.sha256: entry.md5 for entry in spec.manifest}
        return Draft(draft_id, spec.manifest.digest, missing)

    def draft_missing(self, draft_id: str) -> tuple[BlobTarget, ...]:
        """Blobs a draft still needs (for the server's refresh of upload URLs)."""
        blobs = self._draft_manifest(draft_id).blobs()
        stored = self.stored_sizes(blobs)
        return tuple(BlobTarget(sha, size) for sha, size in blobs.items() if sha not in stored)

    def _draft_manifest(self, draft_id: str) -> Manifest:
        with self.db.read() as conn:
            row = conn.execute("SELECT manifest FROM drafts WHERE id = ?", (draft_id,)).fetchone()
        if row is None:
            raise DraftNotFoundError(f"draft {draft_id!r} not found (finalized, aborted or expired)")
        return Manifest.from_json(row["manifest"])

    def draft_wants(self, draft_id: str, sha256: str) -> int | None:
        """Size of ``sha256`` if the draft's manifest holds it, else None."""
        return self._draft_manifest(draft_id).blobs().get(sha256)

    def upload_blob(self, draft: Draft, target: BlobTarget, path: str, progress: Progress | None = None) -> None:
        md5 = self._draft_md5s.get(draft.id, {}).get(target.sha256)
        self.blobs.put_file(target.sha256, target.size, path, md5)
        if progress:
            progress(target.size)

    def upload_bundle(
        self, draft: Draft, bundle: UploadBundle, paths: Mapping[str, str], progress: Progress | None = None
    ) -> None:
        for target in bundle.targets:
            self.upload_blob(draft, target, paths[target.sha256], progress)

    def finalize_draft(
        self,
        draft_id: str,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        ttl: float | None | ArtifactTTL = ArtifactTTL.INHERIT,
    ) -> FinalizeResult:
        aliases = list(dict.fromkeys(validate_alias(a) for a in aliases))
        tags = validate_tags(tags)
        ttl = finalize_ttl(ttl)
        # Outside the write transaction: checking may hash a blob stored before MD5s were recorded. Blobs
        # never change once stored, so what this finds still holds when the transaction runs.
        draft_manifest = self._draft_manifest(draft_id)
        self._settle_uploads(draft_manifest)
        self.check_against_stored(draft_manifest, f"draft {draft_id}")
        del draft_manifest
        with self.db.write() as conn:
            # Locked: a second finalize of this draft (another thread, another replica) waits here, then finds
            # it deleted; a draft is finalized at most once.
            draft = conn.execute("SELECT * FROM drafts WHERE id = ?" + self.db.for_update(), (draft_id,)).fetchone()
            if draft is None:
                raise DraftNotFoundError(f"draft {draft_id!r} not found (finalized, aborted or expired)")
            manifest = Manifest.from_json(draft["manifest"])
            # Checked inside the transaction, holding the blobs' records (garbage collection sweeps them under
            # the same locks, see registry/gc.py): a blob collected meanwhile is missing, never lost later.
            stored = self._stored_locked(conn, manifest.blobs())
            missing = [sha for sha in manifest.blobs() if sha not in stored]
            if missing:
                raise IncompleteDraftError(
                    f"cannot finalize '{draft['name']}': {len(missing)} blob(s) not uploaded yet", missing
                )
            project, name, type_ = draft["project"], draft["name"], draft["type"]
            self._check_type(conn, project, name, type_)
            project_id = self._project_id(conn, project, create=True)
            now = time.time()
            # Create the artifact unless it exists, then lock its row: finalizes of one artifact are serialized
            # from here to the commit (in any replica), so the number read below is still the last one when
            # the next is inserted. Its kind is checked again under the lock.
            conn.execute(
                "INSERT INTO artifacts (project_id, name, type, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project_id, name) DO NOTHING",
                (project_id, name, type_, now),
            )
            art = conn.execute(
                "SELECT id, last_version, type, is_link FROM artifacts WHERE project_id = ? AND name = ?"
                + self.db.for_update(),
                (project_id, name),
            ).fetchone()
            self._check_kind(art, project, name, type_)
            artifact_id = int(art["id"])
            newest = conn.execute(
                "SELECT * FROM versions WHERE artifact_id = ? AND state = 'COMMITTED' ORDER BY version DESC LIMIT 1",
                (artifact_id,),
            ).fetchone()
            created = newest is None or newest["digest"] != draft["digest"]
            if created:
                # A counter, not MAX()+1: numbers of deleted versions are never given out again.
                number = int(art["last_version"]) + 1
                conn.execute("UPDATE artifacts SET last_version = ? WHERE id = ?", (number, artifact_id))
                version_id = int(
                    conn.execute(
                        "INSERT INTO versions (artifact_id, version, digest, manifest, size, file_count, description, "
                        "metadata, created_at, run_id, uid, tags, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (
                            artifact_id,
                            number,
                            draft["digest"],
                            draft["manifest"],
                            manifest.size,
                            manifest.file_count,
                            draft["description"],
                            draft["metadata"],
                            now,
                            draft["run_id"],
                            uuid.uuid4().hex,
                            json.dumps(tags),
                            now,
                        ),
                    ).fetchone()["id"]
                )
            else:
                number, version_id = int(newest["version"]), int(newest["id"])
                add_tags(conn, version_id, tags, now)
            set_ttl_at_finalize(conn, artifact_id, version_id, created, ttl)
            self._apply_aliases(conn, artifact_id, version_id, number, ["latest", *aliases])
            conn.execute("DELETE FROM drafts WHERE id = ?", (draft_id,))
            self._draft_md5s.pop(draft_id, None)
            kill_point("finalize.commit")
            row = conn.execute(
                f"SELECT {VERSION_COLUMNS}, v.manifest FROM versions v WHERE v.id = ?", (version_id,)
            ).fetchone()
            names = self._aliases_by_version(conn, artifact_id).get(number, [])
            info = self._version_info(row, project, name, type_, names, True)
        logger.info("%s %s/%s:v%d", "logged" if created else "unchanged", project, name, number)
        return FinalizeResult(info, created)

    @staticmethod
    def _apply_aliases(
        conn: sqlite3.Connection, artifact_id: int, version_id: int, number: int, aliases: Sequence[str]
    ) -> None:
        for alias in aliases:
            as_version = parse_version(alias)
            if as_version is not None:
                if as_version != number:
                    raise AliasError(
                        f"alias '{alias}' looks like a version and cannot be applied to v{number}"
                    )
                continue
            if alias == "latest":
                newest = conn.execute(
                    "SELECT id FROM versions WHERE artifact_id = ? AND state = 'COMMITTED' "
                    "ORDER BY version DESC LIMIT 1",
                    (artifact_id,),
                ).fetchone()
                if int(newest["id"]) != version_id:
                    continue  # 'latest' always stays on the newest version
            conn.execute(
                "INSERT INTO aliases (artifact_id, alias, version_id) VALUES (?, ?, ?) "
                "ON CONFLICT(artifact_id, alias) DO UPDATE SET version_id = excluded.version_id",
                (artifact_id, alias, version_id),
            )

    def abort_draft(self, draft_id: str) -> None:
        self._draft_md5s.pop(draft_id, None)
        with self.db.write() as conn:
            conn.execute("DELETE FROM drafts WHERE id = ?", (draft_id,))

    def remove_stale_drafts(self, max_age: float | None = None) -> int:
        """Delete drafts (and temporary blob files) older than ``max_age`` seconds."""
        max_age = self.draft_max_age if max_age is None else max_age
        with self.db.write() as conn:
            removed = conn.execute(
                "DELETE FROM drafts WHERE created_at < ?", (time.time() - max_age,)
            ).rowcount
        self.blobs.remove_stale_tmp(max_age)
        if removed:
            logger.info("removed %d stale draft(s)", removed)
        return removed

    def sweep(self) -> int | None:
        """The server's background work (stale drafts, temporary files, abandoned multipart uploads), run by
        one replica at a time: None when another one holds it."""
        with self.db.exclusive("sweep") as mine:
            return self.remove_stale_drafts() if mine else None

    def set_alias(self, project: str, name: str, alias: str, version: int) -> None:
        validate_alias(alias)
        if alias == "latest":
            raise AliasError("'latest' moves by itself to the newest version; it cannot be set")
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            row = conn.execute(
                "SELECT id FROM versions WHERE artifact_id = ? AND version = ? AND state = 'COMMITTED'",
                (art["id"], version),
            ).fetchone()
            if row is None:
                raise VersionNotFoundError(f"artifact '{name}:v{version}' not found in project '{project}'")
            self._apply_aliases(conn, int(art["id"]), int(row["id"]), version, [alias])

    def delete_alias(self, project: str, name: str, alias: str) -> None:
        validate_alias(alias)
        if alias == "latest":
            raise AliasError("'latest' cannot be deleted")
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            cur = conn.execute("DELETE FROM aliases WHERE artifact_id = ? AND alias = ?", (art["id"], alias))
            if cur.rowcount == 0:
                raise VersionNotFoundError(f"artifact '{name}' in project '{project}' has no alias '{alias}'")

    # --- runs and lineage -------------------------------------------------------------------------------

    def create_run(self, spec: RunSpec) -> RunInfo:
        validate_project(spec.project)
        now = time.time()
        with self.db.write() as conn:
            project_id = self._project_id(conn, spec.project, create=True)
            # A run created again (resumed) is only marked running again.
            conn.execute(
                "INSERT INTO runs (id, project_id, name, state, config, summary, tags, notes, run_group, "
                "job_type, created_at) VALUES (?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = 'running', finished_at = NULL",
                (
                    spec.id,
                    project_id,
                    spec.name,
                    _dumps(spec.config),
                    json.dumps(list(spec.tags)),
                    spec.notes,
                    spec.group,
                    spec.job_type,
                    now,
                ),
            )
        return self.get_run(spec.id)

    def update_run(
        self,
        run_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        state: str | None = None,
    ) -> None:
        with self.db.write() as conn:
            # The run's row lock serializes the history's sequence numbers across concurrent updates.
            if conn.execute("SELECT 1 FROM runs WHERE id = ?" + self.db.for_update(), (run_id,)).fetchone() is None:
                raise RunNotFoundError(f"run {run_id!r} not found")
            if config is not None:
                conn.execute("UPDATE runs SET config = ? WHERE id = ?", (_dumps(config), run_id))
            if summary is not None:
                conn.execute("UPDATE runs SET summary = ? WHERE id = ?", (_dumps(summary), run_id))
            if history:
                start = conn.execute(
                    "SELECT COALESCE(MAX(seq), -1) + 1 FROM run_history WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
                conn.executemany(
                    "INSERT INTO run_history (run_id, seq, row) VALUES (?, ?, ?)",
                    [(run_id, start + i, _dumps(row)) for i, row in enumerate(history)],
                )
            if state is not None:
                finished = time.time() if state != "running" else None
                conn.execute(
                    "UPDATE runs SET state = ?, finished_at = ? WHERE id = ?", (state, finished, run_id)
                )

    def _run_from_row(self, row: sqlite3.Row) -> RunInfo:
        return RunInfo(
            id=row["id"],
            project=row["project"],
            name=row["name"],
            state=row["state"],
            created_at=float(row["created_at"]),
            finished_at=row["finished_at"],
            config=json.loads(row["config"]),
            summary=json.loads(row["summary"]),
            tags=tuple(json.loads(row["tags"])),
            notes=row["notes"],
            group=row["run_group"],
            job_type=row["job_type"],
        )

    _RUN_SELECT = "SELECT r.*, p.name AS project FROM runs r JOIN projects p ON p.id = r.project_id "

    def get_run(self, run_id: str) -> RunInfo:
        with self.db.read() as conn:
            row = conn.execute(self._RUN_SELECT + "WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"run {run_id!r} not found")
        return self._run_from_row(row)

    def run_history(self, run_id: str) -> list[dict[str, Any]]:
        self.get_run(run_id)
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT row FROM run_history WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        return [json.loads(r["row"]) for r in rows]

    def _version_id(
        self,
        conn: sqlite3.Connection,
        project: str,
        name: str,
        version: int,
        *,
        with_deleted: bool = False,
        lock: bool = False,
    ) -> int:
        """The row id of ``name:vN``; a deleted version (a tombstone) is found only ``with_deleted``;
        ``lock`` takes the artifact's row lock."""
        art = self._artifact_row(conn, project, name, with_deleted=with_deleted, lock=lock)
        row = conn.execute(
            "SELECT id FROM versions WHERE artifact_id = ? AND version = ?"
            + ("" if with_deleted else " AND state = 'COMMITTED'"),
            (art["id"], version),
        ).fetchone()
        if row is None:
            raise VersionNotFoundError(f"artifact '{name}:v{version}' not found in project '{project}'")
        return int(row["id"])

    def record_use(self, run_id: str, project: str, name: str, version: int) -> None:
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFoundError(f"run {run_id!r} not found")
            version_id = self._version_id(conn, project, name, version, lock=True)
            conn.execute(
                "INSERT INTO artifact_uses (run_id, version_id, used_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (run_id, version_id, time.time()),
            )

    def logged_by(self, project: str, name: str, version: int) -> RunInfo | None:
        with self.db.read() as conn:
            version_id = self._version_id(conn, project, name, version, with_deleted=True)
            row = conn.execute(
                self._RUN_SELECT + "JOIN versions v ON v.run_id = r.id WHERE v.id = ?", (version_id,)
            ).fetchone()
        return self._run_from_row(row) if row else None

    def used_by(self, project: str, name: str, version: int) -> list[RunInfo]:
        with self.db.read() as conn:
            version_id = self._version_id(conn, project, name, version, with_deleted=True)
            rows = conn.execute(
                self._RUN_SELECT + "JOIN artifact_uses u ON u.run_id = r.id WHERE u.version_id = ? "
                "ORDER BY u.used_at",
                (version_id,),
            ).fetchall()
        return [self._run_from_row(r) for r in rows]


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, default=str)


class _EncodedText:
    """A text read as its UTF-8 bytes (``read`` only; a read may return fewer bytes than asked for, as a raw
    stream's does), encoded a piece at a time."""

    PIECE = 1 << 20

    def __init__(self, text: str) -> None:
        self._text = text
        self._at = 0
        self._pending = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            out = self._pending[self._offset :] + self._text[self._at :].encode()
            self._pending, self._offset, self._at = b"", 0, len(self._text)
            return out
        if self._offset >= len(self._pending):
            if self._at >= len(self._text) or size == 0:
                return b""
            piece = self._text[self._at : self._at + self.PIECE]
            self._at += len(piece)
            self._pending, self._offset = piece.encode(), 0
        out = self._pending[self._offset : self._offset + size]
        self._offset += len(out)
        return out
