"""Digests of local files remembered by identity and change stamps, so an unchanged file is hashed once.

A file is known by (device, inode, size, mtime_ns, ctime_ns): any write changes mtime and ctime, a rename
or a copy changes the inode, so a hit means the very bytes that were hashed (as git's index trusts its stat
data). Re-logging an unchanged 1 GB checkpoint then costs a ``stat`` instead of a full read.
The table lives next to the blob cache and is bounded: past ``max_entries`` the oldest entries go.
Remembered chunk digests of another algorithm than the writers' (:mod:`..manifest.chunkhash`: SHA-256
ones from before BLAKE3, or with ``WANLLMDB_CHUNK_HASH`` changed) count as not remembered.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from ..manifest.chunkhash import algorithm_of, writer_algorithm
from ..manifest.digest import FileDigest
from ..sqlitedb import SQLiteDB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    md5 TEXT NOT NULL, sha256 TEXT NOT NULL, chunks TEXT NOT NULL, used REAL NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE INDEX IF NOT EXISTS digests_used ON digests(used);
"""


class FileStamp(NamedTuple):
    """What a file's identity and change stamp need of its ``stat`` (the fields ``os.stat_result`` names them
    by): a third of the memory of a whole ``stat_result``, for callers that keep one per file of a large tree."""

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @classmethod
    def of(cls, st: StatLike) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: A file's ``stat``, whole or as a :class:`FileStamp`.
StatLike = os.stat_result | FileStamp

#: A file's identity and change stamp, (device, inode, size, mtime_ns, ctime_ns): equal for the same file unchanged.
stamp = FileStamp.of


class DigestCache:
    """Remembered digests of local files (thread-safe; shared by processes through SQLite)."""

    def __init__(self, root: str, max_entries: int = 1_000_000) -> None:
        os.makedirs(root, exist_ok=True)
        self.max_entries = max_entries
        self._db = SQLiteDB(os.path.join(root, "digests.sqlite"), _SCHEMA)
        self._writes = 0

    def close(self) -> None:
        self._db.close()

    def get(self, st: StatLike, chunk_size: int) -> FileDigest | None:
        dev, ino, size, mtime_ns, ctime_ns = stamp(st)
        rows = self._db.query(
            "SELECT md5, sha256, chunks FROM digests WHERE dev = ? AND ino = ? AND size = ? AND mtime_ns = ? "
            "AND ctime_ns = ? AND chunk_size = ?",
            (dev, ino, size, mtime_ns, ctime_ns, chunk_size),
        )
        if not rows:
            return None
        row = rows[0]
        chunks = tuple(row[2].split(",")) if row[2] else ()
        if chunks and algorithm_of(chunks[0]) != writer_algorithm():
            return None
        return FileDigest(size, row[0], row[1], chunk_size if chunks else 0, chunks)

    def get_many(self, stats: list[StatLike], chunk_size: int) -> list[FileDigest | None]:
        """``get`` of many files in a few queries (one per 500 inodes): the digests, in the order of ``stats``."""
        wanted = {stamp(st): None for st in stats}
        by_dev: dict[int, set[int]] = {}
        for st in stats:
            by_dev.setdefault(st.st_dev, set()).add(st.st_ino)
        found: dict[tuple[int, int, int, int, int], FileDigest] = {}
        algorithm = writer_algorithm()
        for dev, ino_set in by_dev.items():  # (dev, ino) is the primary key: each query is index lookups
            inodes = sorted(ino_set)
            for i in range(0, len(inodes), 500):
                part = inodes[i : i + 500]
                rows = self._db.query(
                    "SELECT ino, size, mtime_ns, ctime_ns, md5, sha256, chunks FROM digests WHERE dev = ? "
                    f"AND ino IN ({','.join('?' * len(part))}) AND chunk_size = ?",
                    (dev, *part, chunk_size),
                )
                for ino, size, mtime_ns, ctime_ns, md5, sha256, chunks_text in rows:
                    key = (dev, ino, size, mtime_ns, ctime_ns)
                    if key in wanted:
                        chunks = tuple(chunks_text.split(",")) if chunks_text else ()
                        if chunks and algorithm_of(chunks[0]) != algorithm:
                            continue
                        found[key] = FileDigest(size, md5, sha256, chunk_size if chunks else 0, chunks)
        return [found.get(stamp(st)) for st in stats]

    def put(self, st: StatLike, chunk_size: int, digest: FileDigest) -> None:
        """Remember ``digest`` for the file ``st`` describes (taken before the file was read)."""
        self.put_many([(st, digest)], chunk_size)

    def put_many(self, items: list[tuple[StatLike, FileDigest]], chunk_size: int) -> None:
        """``put`` of many files in one transaction (one per file made logging 100,000 files pay 100,000
        commits)."""
        if not items:
            return
        now = time.time()
        with self._db.write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((*stamp(st), chunk_size, digest.md5, digest.sha256, ",".join(digest.chunks), now)
                 for st, digest in items),
            )
            before, self._writes = self._writes, self._writes + len(items)
            if self._writes // 1000 != before // 1000:  # bound the table every 1,000 writes, as before
                conn.execute(
                    "DELETE FROM digests WHERE rowid IN (SELECT rowid FROM digests ORDER BY used DESC LIMIT -1 "
                    "OFFSET ?)",
                    (self.max_entries,),
                )
