"""Changing, deleting and linking logged versions of the embedded registry (mixed into ``LocalRegistry``).

- **Update**: description, metadata and tags are rewritten, aliases added or removed with ``set_alias``'s
  rules; contents (the manifest) never change. ``latest`` belongs to the registry: it cannot be removed or
  put on another version by hand.
- **Delete** keeps the row as a tombstone (``state = 'DELETED'``): every read but lineage skips it, and
  ``logged_by`` / ``used_by`` / ``logged_artifacts`` / ``used_artifacts`` still answer for it. Its aliases
  go, ``latest`` moves to the highest remaining version, and the per-artifact counter (``last_version``)
  means its number is never given out again. Link versions that point at a deleted version go with it.
- **Links**: a link collection (``artifacts.is_link``) holds versions whose ``link_version_id`` names a
  version of another artifact; the row carries a copy of that version's (immutable) manifest, so resolving
  a link costs what resolving any version costs. A link always points at an original, never at a link.
- **Retention**: a version's ``ttl`` (given at finalize, inherited from ``artifacts.ttl``, or changed by
  ``update_version``) and an artifact's keep policy (``set_retention``) say what ``expire_versions`` deletes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    AliasError,
    AliasProtectedError,
    ArtifactTypeMismatchError,
    ConflictError,
    DatabaseBusyError,
    InvalidInputError,
    RunNotFoundError,
    VersionNotFoundError,
)
from ..manifest import validate_alias, validate_artifact_name, validate_project
from .base import ArtifactTTL, RetentionPolicy, VersionInfo, VersionUpdate, validate_tags, validate_ttl

if TYPE_CHECKING:
    from .db import Database

logger = logging.getLogger(__name__)

#: The columns ``LocalRegistry._version_info`` reads (add the manifest, or ``'' AS manifest``).
VERSION_COLUMNS = (
    "v.id, v.version, v.digest, v.size, v.file_count, v.description, v.metadata, v.created_at, v.run_id, "
    "v.uid, v.tags, v.updated_at, v.state, v.link_version_id, v.ttl, "
    "(SELECT sp.name || '/' || sa.name || ':v' || s.version FROM versions s "
    "JOIN artifacts sa ON sa.id = s.artifact_id JOIN projects sp ON sp.id = sa.project_id "
    "WHERE s.id = v.link_version_id) AS link_source"
)

#: SQL condition on an ``artifacts a`` row: it has a version that is not deleted.
HAS_LIVE_VERSION = "EXISTS (SELECT 1 FROM versions lv WHERE lv.artifact_id = a.id AND lv.state = 'COMMITTED')"


def add_tags(conn: sqlite3.Connection, version_id: int, tags: Sequence[str], now: float) -> None:
    """Add ``tags`` to a version's tag set (finalize of content identical to the newest version)."""
    if not tags:
        return
    row = conn.execute("SELECT tags FROM versions WHERE id = ?", (version_id,)).fetchone()
    merged = list(dict.fromkeys([*json.loads(row["tags"]), *tags]))
    conn.execute("UPDATE versions SET tags = ?, updated_at = ? WHERE id = ?", (json.dumps(merged), now, version_id))


def finalize_ttl(ttl: float | None | ArtifactTTL) -> float | None | ArtifactTTL:
    """A TTL given to ``finalize_draft`` checked: ``INHERIT``, None, or positive seconds."""
    return ttl if isinstance(ttl, ArtifactTTL) else validate_ttl(ttl)


def retention_of(conn: sqlite3.Connection, artifact_id: int) -> RetentionPolicy:
    row = conn.execute(
        "SELECT ttl, keep_last, keep_aliased, older_than FROM artifacts WHERE id = ?", (artifact_id,)
    ).fetchone()
    return RetentionPolicy(
        ttl=row["ttl"],
        keep_last=int(row["keep_last"]) if row["keep_last"] is not None else None,
        keep_aliased=bool(row["keep_aliased"]),
        older_than=row["older_than"],
    )


def set_ttl_at_finalize(
    conn: sqlite3.Connection, artifact_id: int, version_id: int, created: bool, ttl: float | None | ArtifactTTL
) -> None:
    """Inside finalize's transaction: a new version gets ``ttl`` or (``INHERIT``) the artifact's default; an
    identical existing version gets ``ttl`` only when one was given explicitly."""
    if isinstance(ttl, ArtifactTTL):
        if not created:
            return
        ttl = conn.execute("SELECT ttl FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()["ttl"]
    conn.execute("UPDATE versions SET ttl = ? WHERE id = ?", (ttl, version_id))


class LifecycleOps:
    """Update, delete, link and per-run listings over ``LocalRegistry``'s database."""

    db: Database
    description: str

    # Provided by LocalRegistry.
    _artifact_row: Any
    _aliases_by_version: Any
    _version_info: Any
    _apply_aliases: Any
    _project_id: Any

    # --- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _live_version(conn: sqlite3.Connection, art: sqlite3.Row, project: str, version: int) -> sqlite3.Row:
        row = conn.execute(
            "SELECT * FROM versions WHERE artifact_id = ? AND version = ? AND state = 'COMMITTED'",
            (art["id"], version),
        ).fetchone()
        if row is None:
            raise VersionNotFoundError(f"artifact '{art['name']}:v{version}' not found in project '{project}'")
        return row

    def _versions_where(self, conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> list[VersionInfo]:
        """Versions (without manifests, tombstones included) matching ``where`` over ``versions v``."""
        rows = conn.execute(
            f"SELECT {VERSION_COLUMNS}, '' AS manifest, a.name AS artifact, a.type AS artifact_type, "
            "p.name AS project FROM versions v JOIN artifacts a ON a.id = v.artifact_id "
            f"JOIN projects p ON p.id = a.project_id {where}",
            tuple(args),
        ).fetchall()
        out = []
        for row in rows:
            aliases = [r[0] for r in conn.execute("SELECT alias FROM aliases WHERE version_id = ?", (row["id"],))]
            out.append(self._version_info(row, row["project"], row["artifact"], row["artifact_type"], aliases, False))
        return out

    def _tombstone(self, conn: sqlite3.Connection, version_ids: Sequence[int], now: float) -> None:
        """Mark versions deleted, drop their aliases, and move ``latest`` of every artifact touched."""
        marks = ",".join("?" * len(version_ids))
        artifact_ids = [
            int(r[0])
            for r in conn.execute(f"SELECT DISTINCT artifact_id FROM versions WHERE id IN ({marks})", version_ids)
        ]
        # Lock every artifact touched (links live in other artifacts), in id order: no deadlock between two
        # deletions. The caller already holds the first one's lock.
        lock = self.db.for_update()
        if lock:
            conn.execute(
                f"SELECT id FROM artifacts WHERE id IN ({','.join('?' * len(artifact_ids))}) ORDER BY id{lock}",
                artifact_ids,
            ).fetchall()
        conn.execute(f"DELETE FROM aliases WHERE version_id IN ({marks})", version_ids)
        conn.execute(
            f"UPDATE versions SET state = 'DELETED', updated_at = ? WHERE id IN ({marks})", (now, *version_ids)
        )
        for artifact_id in artifact_ids:
            newest = conn.execute(
                "SELECT id FROM versions WHERE artifact_id = ? AND state = 'COMMITTED' ORDER BY version DESC LIMIT 1",
                (artifact_id,),
            ).fetchone()
            if newest is not None:
                conn.execute(
                    "INSERT INTO aliases (artifact_id, alias, version_id) VALUES (?, 'latest', ?) "
                    "ON CONFLICT(artifact_id, alias) DO UPDATE SET version_id = excluded.version_id",
                    (artifact_id, newest["id"]),
                )

    @staticmethod
    def _with_links(conn: sqlite3.Connection, version_ids: Sequence[int]) -> list[int]:
        """``version_ids`` and the live link versions that point at them."""
        marks = ",".join("?" * len(version_ids))
        links = [
            int(r[0])
            for r in conn.execute(
                f"SELECT id FROM versions WHERE link_version_id IN ({marks}) AND state = 'COMMITTED'", version_ids
            )
        ]
        return [*version_ids, *links]

    # --- update -----------------------------------------------------------------------------------------

    def update_version(self, project: str, name: str, version: int, update: VersionUpdate) -> VersionInfo:
        tags = validate_tags(update.tags) if update.tags is not None else None
        add = list(dict.fromkeys(validate_alias(a) for a in update.add_aliases))
        remove = list(dict.fromkeys(validate_alias(a) for a in update.remove_aliases))
        if "latest" in remove:
            raise AliasError("'latest' moves by itself to the newest version; it cannot be removed")
        ttl = update.checked_ttl()
        now = time.time()
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            row = self._live_version(conn, art, project, version)
            sets, args = ["updated_at = ?"], [now]
            if update.changes_ttl:
                if row["link_version_id"] is not None:
                    raise InvalidInputError(
                        f"cannot set the TTL of link version '{project}/{name}:v{version}': "
                        f"set it on the version it points at"
                    )
                if update.inherit_ttl:
                    ttl = retention_of(conn, int(art["id"])).ttl
                sets.append("ttl = ?")
                args.append(ttl)
            if update.description is not None:
                sets.append("description = ?")
                args.append(update.description)
            if update.metadata is not None:
                sets.append("metadata = ?")
                args.append(json.dumps(dict(update.metadata), sort_keys=True, default=str))
            if tags is not None:
                sets.append("tags = ?")
                args.append(json.dumps(tags))
            conn.execute(f"UPDATE versions SET {', '.join(sets)} WHERE id = ?", (*args, row["id"]))
            for alias in remove:
                cur = conn.execute(
                    "DELETE FROM aliases WHERE artifact_id = ? AND alias = ? AND version_id = ?",
                    (art["id"], alias, row["id"]),
                )
                if cur.rowcount == 0:
                    raise VersionNotFoundError(
                        f"alias '{alias}' does not point at '{name}:v{version}' in project '{project}'"
                    )
            if "latest" in add:
                current = self._aliases_by_version(conn, art["id"]).get(version, [])
                if "latest" not in current:
                    raise AliasError(
                        f"'latest' moves by itself to the newest version; it cannot be put on '{name}:v{version}'"
                    )
            self._apply_aliases(conn, int(art["id"]), int(row["id"]), version, [a for a in add if a != "latest"])
            (info,) = self._versions_where(conn, "WHERE v.id = ?", (row["id"],))
        return info

    # --- delete -----------------------------------------------------------------------------------------

    def delete_version(self, project: str, name: str, version: int, *, delete_aliases: bool = False) -> None:
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            row = self._live_version(conn, art, project, version)
            targets = self._with_links(conn, [int(row["id"])])
            marks = ",".join("?" * len(targets))
            protected = conn.execute(
                "SELECT p.name AS project, a.name AS artifact, v.version, al.alias FROM aliases al "
                "JOIN versions v ON v.id = al.version_id JOIN artifacts a ON a.id = v.artifact_id "
                f"JOIN projects p ON p.id = a.project_id WHERE al.version_id IN ({marks}) AND al.alias != 'latest' "
                "ORDER BY p.name, a.name, al.alias",
                targets,
            ).fetchall()
            if protected and not delete_aliases:
                held = ", ".join(f"'{r['alias']}' ({r['project']}/{r['artifact']}:v{r['version']})" for r in protected)
                raise AliasProtectedError(
                    f"cannot delete '{project}/{name}:v{version}': aliases point at it: {held}; "
                    "delete them with it (delete_aliases=True, CLI --delete-aliases) or move them first"
                )
            self._tombstone(conn, targets, time.time())

    def delete_artifact(self, project: str, name: str) -> int:
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            own = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM versions WHERE artifact_id = ? AND state = 'COMMITTED'", (art["id"],)
                )
            ]
            self._tombstone(conn, self._with_links(conn, own), time.time())
        return len(own)

    # --- retention --------------------------------------------------------------------------------------

    def set_retention(self, project: str, name: str, policy: RetentionPolicy) -> RetentionPolicy:
        policy = policy.validated()
        with self.db.write() as conn:
            art = self._artifact_row(conn, project, name, lock=True)
            if art["is_link"] and policy.ttl is not None:
                raise InvalidInputError(
                    f"'{project}/{name}' is a link collection: its versions live as long as what they point at, "
                    "so it takes no ttl (keep_last, older_than and keep_aliased apply)"
                )
            conn.execute(
                "UPDATE artifacts SET ttl = ?, keep_last = ?, keep_aliased = ?, older_than = ? WHERE id = ?",
                (policy.ttl, policy.keep_last, int(policy.keep_aliased), policy.older_than, art["id"]),
            )
        return policy

    def expire_versions(self, now: float | None = None, *, dry_run: bool = False) -> list[VersionInfo]:
        """Delete every version that retention says must go; returns them (oldest artifact id first, then by
        version), link versions deleted with them included.

        A live version goes when either

        - its own TTL has passed: ``created_at + ttl <= now`` (links have none; they go with their source), or
        - its artifact's keep policy (:class:`RetentionPolicy`, set with :meth:`set_retention`) selects it:
          not among the newest ``keep_last`` versions (when set) and logged at ``now - older_than`` or
          before (when set), sparing versions that a custom alias points at (on the version or on a link to
          it) when ``keep_aliased``. The newest version (``latest``) is never selected by a policy; only its
          own TTL deletes it.

        Deleting follows :meth:`delete_version` with ``delete_aliases=True``: tombstones (lineage still
        answers), aliases dropped, ``latest`` moved to the highest remaining version, numbers never given
        out again, link versions pointing at a deleted version deleted too. Each artifact is one write
        transaction holding its row lock (``_artifact_row(lock=True)``), so this is safe beside concurrent
        writes and on several replicas sharing PostgreSQL; an artifact whose transaction fails with
        ``DatabaseBusyError`` (a deadlock) is skipped and logged, and is retried by the next call. Blobs are
        not touched: garbage collection reclaims those no live version needs.

        Args:
            now: the time to judge by (seconds since the epoch); default ``time.time()``. Tests inject it.
            dry_run: only report what would be deleted.

        Meant to be called periodically (the server's background sweep, ``wanllmdb gc``).
        """
        now = time.time() if now is None else float(now)
        with self.db.read() as conn:
            artifact_ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT a.id FROM artifacts a WHERE (a.keep_last IS NOT NULL OR a.older_than IS NOT NULL) "
                    f"AND {HAS_LIVE_VERSION} UNION SELECT v.artifact_id FROM versions v WHERE "
                    "v.state = 'COMMITTED' AND v.link_version_id IS NULL AND v.ttl IS NOT NULL "
                    "AND v.created_at + v.ttl <= ? ORDER BY 1",
                    (now,),
                )
            ]
        expired: list[VersionInfo] = []
        for artifact_id in artifact_ids:
            try:
                expired += self._expire_artifact(artifact_id, now, dry_run)
            except DatabaseBusyError as exc:
                logger.warning("retention: artifact id %d skipped this time: %s", artifact_id, exc)
        if expired and not dry_run:
            logger.info("retention: deleted %d version(s)", len(expired))
        return expired

    def _expire_artifact(self, artifact_id: int, now: float, dry_run: bool) -> list[VersionInfo]:
        with self.db.read() if dry_run else self.db.write() as conn:
            # The artifact's row lock, as every write to its versions takes (the policy is read under it).
            conn.execute(
                "SELECT id FROM artifacts WHERE id = ?" + ("" if dry_run else self.db.for_update()), (artifact_id,)
            ).fetchone()
            policy = retention_of(conn, artifact_id)
            live = conn.execute(
                "SELECT v.id, v.created_at, v.ttl, v.link_version_id, EXISTS (SELECT 1 FROM aliases al "
                "WHERE al.alias != 'latest' AND (al.version_id = v.id OR al.version_id IN (SELECT l.id FROM "
                "versions l WHERE l.link_version_id = v.id AND l.state = 'COMMITTED'))) AS aliased "
                "FROM versions v WHERE v.artifact_id = ? AND v.state = 'COMMITTED' ORDER BY v.version DESC",
                (artifact_id,),
            ).fetchall()
            doomed = []
            for rank, row in enumerate(live):
                own_ttl = row["link_version_id"] is None and row["ttl"] is not None
                if own_ttl and float(row["created_at"]) + float(row["ttl"]) <= now:
                    doomed.append(int(row["id"]))
                elif (
                    policy.deletes
                    and rank > 0
                    and (policy.keep_last is None or rank >= policy.keep_last)
                    and (policy.older_than is None or float(row["created_at"]) <= now - policy.older_than)
                    and not (policy.keep_aliased and row["aliased"])
                ):
                    doomed.append(int(row["id"]))
            if not doomed:
                return []
            targets = self._with_links(conn, doomed)
            marks = ",".join("?" * len(targets))
            infos = self._versions_where(
                conn, f"WHERE v.id IN ({marks}) ORDER BY v.artifact_id = ? DESC, v.artifact_id, v.version",
                (*targets, artifact_id),
            )
            if dry_run:
                return infos
            self._tombstone(conn, targets, time.time())
        return [dataclasses.replace(info, state="DELETED") for info in infos]

    # --- links ------------------------------------------------------------------------------------------

    def link_version(
        self,
        project: str,
        name: str,
        version: int,
        target_project: str,
        target_name: str,
        aliases: Sequence[str] = (),
    ) -> VersionInfo:
        validate_project(target_project)
        validate_artifact_name(target_name)
        aliases = list(dict.fromkeys(validate_alias(a) for a in aliases))
        now = time.time()
        with self.db.write() as conn:
            # The source's lock keeps its version from being deleted meanwhile; the collection's (below)
            # serializes the numbers given out in it.
            art = self._artifact_row(conn, project, name, lock=True)
            row = self._live_version(conn, art, project, version)
            source_id = int(row["link_version_id"] or row["id"])
            source = conn.execute("SELECT * FROM versions WHERE id = ?", (source_id,)).fetchone()
            project_id = self._project_id(conn, target_project, create=True)
            conn.execute(
                "INSERT INTO artifacts (project_id, name, type, created_at, is_link) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (project_id, name) DO NOTHING",
                (project_id, target_name, art["type"], now),
            )
            target = conn.execute(
                "SELECT id, type, is_link, last_version FROM artifacts WHERE project_id = ? AND name = ?"
                + self.db.for_update(),
                (project_id, target_name),
            ).fetchone()
            if not target["is_link"]:
                raise ConflictError(
                    f"cannot link into '{target_project}/{target_name}': it is an artifact, not a link collection"
                )
            elif target["type"] != art["type"]:
                raise ArtifactTypeMismatchError(
                    f"link collection '{target_project}/{target_name}' has type '{target['type']}'; "
                    f"cannot link '{project}/{name}:v{version}' of type '{art['type']}' into it"
                )
            else:
                target_id, last = int(target["id"]), int(target["last_version"])
            existing = conn.execute(
                "SELECT id, version FROM versions "
                "WHERE artifact_id = ? AND link_version_id = ? AND state = 'COMMITTED'",
                (target_id, source_id),
            ).fetchone()
            if existing is not None:
                version_id, number = int(existing["id"]), int(existing["version"])
            else:
                number = last + 1
                conn.execute("UPDATE artifacts SET last_version = ? WHERE id = ?", (number, target_id))
                version_id = int(
                    conn.execute(
                        "INSERT INTO versions (artifact_id, version, digest, manifest, size, file_count, description, "
                        "metadata, created_at, run_id, uid, tags, updated_at, link_version_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, '[]', ?, ?) RETURNING id",
                        (
                            target_id,
                            number,
                            source["digest"],
                            source["manifest"],
                            source["size"],
                            source["file_count"],
                            source["description"],
                            source["metadata"],
                            now,
                            uuid.uuid4().hex,
                            now,
                            source_id,
                        ),
                    ).fetchone()["id"]
                )
            self._apply_aliases(conn, target_id, version_id, number, ["latest", *aliases])
            (info,) = self._versions_where(conn, "WHERE v.id = ?", (version_id,))
        return info

    # --- per-run listings -------------------------------------------------------------------------------

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunNotFoundError(f"run {run_id!r} not found in the {self.description}")

    def logged_artifacts(self, run_id: str) -> list[VersionInfo]:
        with self.db.read() as conn:
            self._require_run(conn, run_id)
            return self._versions_where(conn, "WHERE v.run_id = ? ORDER BY v.id", (run_id,))

    def used_artifacts(self, run_id: str) -> list[VersionInfo]:
        with self.db.read() as conn:
            self._require_run(conn, run_id)
            return self._versions_where(
                conn,
                "JOIN artifact_uses u ON u.version_id = v.id WHERE u.run_id = ? ORDER BY u.used_at, v.id",
                (run_id,),
            )
