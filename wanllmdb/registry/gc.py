"""Garbage collection of blobs that no version needs: mark, grace, sweep.

A blob is garbage when no live version (``state = 'COMMITTED'``: tombstones and deleted versions do not
count; link rows carry copies of their sources' manifests and do) and no draft names it. Collection runs in
three steps, each safe against writers running at the same time in other processes or on other replicas:

1. **Mark** (read, then one short write): list the blob store (files, or the bucket's objects) and the
   registry's record of stored blobs; parse every draft's and every live version's manifest; blobs in
   neither are written to ``gc_candidates`` with the time they were first found unreferenced. A candidate
   found referenced again is unmarked. Parsing runs on a read snapshot, not under the write lock.
2. **Grace**: a candidate is only swept once it has stayed unreferenced for ``grace`` seconds, longer than
   a presigned URL lives plus a draft's lifetime (a blob uploaded before its draft exists, for instance a
   file hashed on the way, or by a client whose URL is still valid, gets its draft in time).
3. **Sweep**, in batches, each one write transaction: the batch's ``blob_sizes`` rows are locked
   (``FOR UPDATE`` on PostgreSQL; SQLite's write lock serializes everything anyway), so a finalize that
   holds them (``FOR SHARE``, see ``LocalRegistry.finalize_draft``) commits first; then the drafts and
   the live versions created since the batch was marked are parsed again, **drafts first** (a finalize
   deletes its draft and inserts its version in one transaction; under READ COMMITTED, reading drafts
   before versions never misses both); what is still unreferenced is deleted from the store and then
   from the record, before the transaction commits. A finalize that comes later finds the rows gone and
   answers ``IncompleteDraftError``; the SDK then uploads those blobs again and finalizes once more.

A GC killed at any point leaves nothing referenced missing: it only deletes, inside a transaction, blobs it
has just found unreferenced; a kill between the store deletion and the commit leaves rows whose blobs are
gone, which no version references (the next run drops them). Objects or files whose rows were already
dropped are found by the next run's listing and collected after their grace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..killpoints import kill_point
from .db import execute_in, select_in

logger = logging.getLogger(__name__)

#: Blobs deleted per sweep transaction.
SWEEP_BATCH = 500
#: Versions and drafts created this long before a batch was marked are parsed again at its sweep (a
#: transaction that began before the mark and committed after it; clocks of replicas that disagree).
RECHECK_MARGIN = 600.0


@dataclass
class GCReport:
    """What a collection found and did (``dry_run``: what it would do now)."""

    blobs: int = 0
    referenced: int = 0
    marked: int = 0
    unmarked: int = 0
    pending: int = 0
    pending_bytes: int = 0
    swept: int = 0
    swept_bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    #: Versions retention deleted just before (``LocalRegistry.maintain``).
    expired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would reclaim" if self.dry_run else "reclaimed"
        timed = self.swept and self.seconds > 0 and not self.dry_run
        rate = f", {self.swept / self.seconds:,.0f} blobs/s" if timed else ""
        expired = f"{'would delete' if self.dry_run else 'deleted'} {self.expired} expired version(s); "
        return (
            f"{expired}{verb} {self.swept} blob(s), {self.swept_bytes:,} bytes; {self.blobs} stored, "
            f"{self.referenced} referenced, {self.pending} waiting out the grace period "
            f"({self.pending_bytes:,} bytes); {self.seconds:.2f}s{rate}"
        )


def manifest_blobs(text: str) -> Iterable[str]:
    """The blob digests a stored manifest (JSON) names; references (``ref``) name no blob."""
    for entry in json.loads(text)["entries"]:
        if not entry.get("ref"):
            yield entry["sha256"]


def referenced_blobs(conn: Any, *, since: float | None = None) -> set[str]:
    """Blobs named by drafts and then by live versions (created at ``since`` or later, if given).

    Drafts are read first: see the module docstring.
    """
    out: set[str] = set()
    where, args = ("", ()) if since is None else (" WHERE created_at >= ?", (since,))
    for row in conn.execute("SELECT manifest FROM drafts" + where, args):
        out.update(manifest_blobs(row[0]))
    where = " AND created_at >= ?" if since is not None else ""
    for row in conn.execute("SELECT manifest FROM versions WHERE state = 'COMMITTED'" + where, args):
        out.update(manifest_blobs(row[0]))
    return out


def collect_garbage(registry: Any, *, grace: float, now: float | None = None, dry_run: bool = False) -> GCReport:
    """Mark unreferenced blobs, and sweep those marked at least ``grace`` seconds ago (see the module docstring).

    Args:
        registry: a ``LocalRegistry`` (its ``db`` and ``blobs``), embedded or a server's.
        grace: seconds a blob must stay unreferenced before it is deleted.
        now: the time to judge by (tests inject it); default the clock.
        dry_run: change nothing; report what would be marked and reclaimed now.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    db, store = registry.db, registry.blobs
    report = GCReport(dry_run=dry_run)

    listed = {sha: size for sha, size, _mtime in store.list_blobs()}
    with db.read() as conn:
        recorded = {row[0]: int(row[1]) for row in conn.execute("SELECT sha256, size FROM blob_sizes")}
        referenced = referenced_blobs(conn)
        marks = {row[0]: (int(row[1]), float(row[2])) for row in conn.execute("SELECT * FROM gc_candidates")}
    universe = {**recorded, **listed}
    report.blobs, report.referenced = len(universe), len(referenced & universe.keys())
    unreferenced = {sha: size for sha, size in universe.items() if sha not in referenced}
    new_marks = [(sha, size, now) for sha, size in sorted(unreferenced.items()) if sha not in marks]
    unmark = sorted(sha for sha in marks if sha not in unreferenced)
    report.marked, report.unmarked = len(new_marks), len(unmark)
    marks = {sha: mark for sha, mark in marks.items() if sha in unreferenced}
    marks.update((sha, (size, at)) for sha, size, at in new_marks)
    due = sorted(sha for sha, (_size, at) in marks.items() if at <= now - grace)
    report.pending = len(marks) - len(due)
    report.pending_bytes = sum(size for sha, (size, at) in marks.items() if at > now - grace)
    if dry_run:
        report.swept = len(due)
        report.swept_bytes = sum(marks[sha][0] for sha in due)
        report.seconds = time.monotonic() - started
        return report

    adopt = sorted((sha, size) for sha, size in listed.items() if sha not in recorded and store.lists_itself)
    with db.write() as conn:
        # A directory store's blobs all get a record, so that sweeps and finalizes can lock it.
        _insert(conn, "INSERT INTO blob_sizes (sha256, size) VALUES (?, ?) ON CONFLICT DO NOTHING", adopt)
        _insert(
            conn,
            "INSERT INTO gc_candidates (sha256, size, marked_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            new_marks,
        )
        _delete(conn, "gc_candidates", unmark)
    kill_point("gc.mark")

    for i in range(0, len(due), SWEEP_BATCH):
        batch = due[i : i + SWEEP_BATCH]
        swept, swept_bytes = _sweep(registry, batch, {sha: marks[sha] for sha in batch})
        report.swept += swept
        report.swept_bytes += swept_bytes
    report.seconds = time.monotonic() - started
    if report.swept or report.marked:
        logger.info("garbage collection: %s", report.summary())
    return report


def _sweep(registry: Any, batch: Sequence[str], marks: dict[str, tuple[int, float]]) -> tuple[int, int]:
    """Delete the blobs of ``batch`` that are still unreferenced, in one transaction; returns (count, bytes)."""
    db, store = registry.db, registry.blobs
    lock = db.for_update()
    since = min(at for _size, at in marks.values()) - RECHECK_MARGIN
    with db.write() as conn:
        # Lock the records in one order, so that a finalize holding some of them cannot deadlock with us.
        for _row in select_in(conn, "SELECT sha256 FROM blob_sizes WHERE sha256 {in} ORDER BY sha256" + lock, batch):
            pass
        current = {row[0] for row in conn.execute("SELECT sha256 FROM gc_candidates")}
        again = referenced_blobs(conn, since=since)
        doomed = [sha for sha in batch if sha not in again and sha in current]
        _delete(conn, "gc_candidates", [sha for sha in batch if sha in again])
        if doomed:
            store.delete_blobs(doomed)
            kill_point("gc.sweep")
            for table in ("blob_sizes", "blob_md5", "gc_candidates"):
                _delete(conn, table, doomed)
    return len(doomed), sum(marks[sha][0] for sha in doomed)


def _insert(conn: Any, sql: str, rows: Sequence[tuple]) -> None:
    if rows:
        conn.executemany(sql, rows)


def _delete(conn: Any, table: str, sha256s: Sequence[str]) -> None:
    execute_in(conn, f"DELETE FROM {table} WHERE sha256 {{in}}", sha256s)
