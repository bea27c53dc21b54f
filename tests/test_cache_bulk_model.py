"""Downloads of many cached blobs against a model: random sequences keep the cache's promises.

A hypothesis ``RuleBasedStateMachine`` drives a small real cache the way downloads do, with the bulk paths
always on (``SCAN_MIN_KEYS`` 2: every stamp query of more than one key reads the whole index, and the writes
go by the rowids it returned): it fetches blobs, downloads subsets (lookup without touching, hard links or
copies, one restamp-and-touch pass at the end), deletes downloads (a blob's ctime moves), edits a blob
through a download's hard link with its mtime put back, evicts, lets another process drop index rows and
index them again (so rowids this process remembers now name other rows or none), and reopens the cache.

After every step: a blob any process finds reads back as exactly the bytes its SHA-256 names; the disk holds
what the index counts; and right after a download, a fresh process finds every blob it placed without
hashing one (the restamp recorded what the links moved).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.support.hypothesis_settings import run_in_folders, state_machine_settings
from wanllmdb.cache import BlobCache, Placer
from wanllmdb.cache import index as cache_index
from wanllmdb.cache import store as cache_store

SETTINGS = state_machine_settings(examples=30, steps=30, long_examples=300, long_steps=60)
POOL = [bytes([i]) * (60 + 13 * i) + hashlib.sha512(bytes([i])).digest() for i in range(10)]  # fixed: reproducible
SHAS = [hashlib.sha256(data).hexdigest() for data in POOL]
BY_SHA = dict(zip(SHAS, POOL, strict=True))
COUNTS: Counter[str] = Counter()
HASHED: list[str] = []


def _fetcher(data: bytes):
    def fetch(writer):
        writer.write(data)

    return fetch


class BulkDownloads(RuleBasedStateMachine):
    root: str

    def __init__(self) -> None:
        super().__init__()
        self.cache = BlobCache(f"{self.root}/cache")
        self.downloads: list[str] = []
        self.made = 0

    def teardown(self) -> None:
        self.cache.close()

    @initialize()
    def fetch_all(self):
        self.fetch(range(len(POOL)))

    @rule(picks=st.sets(st.integers(0, len(POOL) - 1), min_size=1, max_size=6))
    def fetch(self, picks):
        for i in picks:
            path = self.cache.ensure(SHAS[i], len(POOL[i]), _fetcher(POOL[i]))
            assert open(path, "rb").read() == POOL[i]
        self.cache.flush()

    @rule(picks=st.sets(st.integers(0, len(POOL) - 1), min_size=2, max_size=10), copy=st.booleans(),
          edit=st.integers(-1, 9))
    def download(self, picks, copy, edit):
        shas = [SHAS[i] for i in sorted(picks)]
        target = f"{self.root}/download-{self.made}"
        self.made += 1
        placer = Placer(target, link=not copy)
        with self.cache.hold_stamps():
            present = self.cache.lookup_many(shas, touch=False)
            for sha, path in present.items():
                placer.place(sha, path)
            self.cache.restamp(shas, touch=True)
        for sha in present:
            with open(os.path.join(target, sha), "rb") as f:
                assert f.read() == BY_SHA[sha], "a download placed bytes that differ from the digest"
        self.downloads.append(target)
        COUNTS["placed"] += len(present)
        # Another process finds what was just placed without hashing a blob: the new stamps are recorded.
        HASHED.clear()
        other = BlobCache(f"{self.root}/cache")
        assert set(other.lookup_many(present)) == set(present)
        other.close()
        assert HASHED == [], "a blob placed by the last download was hashed again"
        placed = sorted(os.listdir(target))
        if placed and edit >= 0:  # and then, at once, the user edits one of its files
            self._edit(os.path.join(target, placed[edit % len(placed)]))

    @precondition(lambda self: self.downloads)
    @rule(data=st.data())
    def delete_a_download(self, data):
        target = self.downloads.pop(data.draw(st.integers(0, len(self.downloads) - 1)))
        shutil.rmtree(target)
        COUNTS["deleted"] += 1

    @precondition(lambda self: self.downloads)
    @rule(data=st.data())
    def edit_through_a_link(self, data):
        """Edit a downloaded file in place, its mtime put back: one still linked to a cached blob if any is."""
        files = sorted(os.path.join(target, name) for target in self.downloads for name in os.listdir(target))
        if not files:
            return
        linked = [path for path in files if os.stat(path).st_nlink > 1]
        self._edit(data.draw(st.sampled_from(linked or files)))

    @staticmethod
    def _edit(path: str) -> None:
        before = os.stat(path)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(before.st_size - 1)
            last = f.read(1)
            f.seek(before.st_size - 1)
            f.write(bytes([last[0] ^ 0xFF]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # only the ctime tells
        COUNTS["edited_links" if before.st_nlink > 1 else "edited_copies"] += 1

    @rule(keep=st.integers(0, 1500))
    def evict(self, keep):
        self.cache.plan_cleanup(max_bytes=keep).execute()

    @rule(count=st.integers(2, 4), data=st.data())
    def another_process_reindexes(self, count, data):
        """Another process drops the newest rows and indexes their blobs again, in any order: each takes the
        largest rowid free at that moment, so a rowid this process remembers may now hold another blob's row."""
        other = BlobCache(f"{self.root}/cache")
        newest = [row[0] for row in other.index._query("SELECT key FROM entries ORDER BY rowid DESC LIMIT ?",
                                                          (count,))]
        other.index.remove(newest)
        for sha in data.draw(st.permutations(newest)):
            other.lookup(sha)  # a blob still on disk is hashed and indexed again, in a new row
        other.close()
        COUNTS["reindexed"] += 1

    @rule(picks=st.sets(st.integers(0, len(POOL) - 1), min_size=2, max_size=10), count=st.integers(2, 4),
          data=st.data())
    def reindexed_between_two_downloads(self, picks, count, data):
        """A fresh process learns the rows' rowids in one download; another process reindexes the newest rows;
        the next download finds the blobs by their stamps in memory and writes through the rowids it knows."""
        self.reopen()
        self.download(picks, False, -1)
        self.another_process_reindexes(count, data)
        self.download(picks, False, -1)

    @rule()
    def reopen(self):
        self.cache.close()
        self.cache = BlobCache(f"{self.root}/cache")

    @invariant()
    def what_any_process_finds_reads_right(self):
        other = BlobCache(f"{self.root}/cache")
        for sha, path in other.lookup_many(SHAS).items():
            with open(path, "rb") as f:
                assert f.read() == BY_SHA[sha], "the cache served a blob whose bytes changed"
        entries = other.entries()
        on_disk = {
            name: os.path.getsize(os.path.join(dirpath, name))
            for dirpath, _dirs, names in os.walk(f"{self.root}/cache/blobs")
            for name in names
        }
        assert {e.key: e.size for e in entries if e.kind == "blob"} == on_disk
        assert other.total_size() == sum(e.size for e in entries)
        other.close()


def test_bulk_downloads_keep_the_cache_s_promises(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_index, "SCAN_MIN_KEYS", 2)
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda path: HASHED.append(path) or real(path))
    COUNTS.clear()
    run_in_folders(BulkDownloads, tmp_path, SETTINGS)
    # the sequences reached what they attack
    assert COUNTS["placed"] > 0 and COUNTS["edited_links"] >= 10 and COUNTS["deleted"] > 0, COUNTS
    assert COUNTS["reindexed"] > 0 and COUNTS["placed"] > SETTINGS.max_examples, COUNTS
