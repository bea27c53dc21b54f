"""The cache with packs against a model: random sequences keep its promises.

A hypothesis ``RuleBasedStateMachine`` writes packs and blob files into a small real cache (a few KiB, so
eviction runs all the time), copies packed blobs out (``ensure``), evicts, damages a pack on disk, reopens
the cache as another process would, and after every step checks the invariants the mount and the SDK rely
on: every blob the cache says it holds reads back as exactly the bytes its SHA-256 names (or is refused,
once damaged), the bytes on disk are what the index counts, the limit holds after every write, and no pack
file is left that no entry names.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.hypothesis_settings import run_in_folders, state_machine_settings
from wanllmdb.cache import BlobCache
from wanllmdb.errors import ChecksumError

SETTINGS = state_machine_settings(examples=12, steps=25, long_examples=150, long_steps=50)
LIMIT = 6000
POOL = [bytes([i]) * (150 + 97 * i) for i in range(24)]  # 150..2,381 bytes: a pack fills a few of them
SHAS = [hashlib.sha256(data).hexdigest() for data in POOL]
COUNTS: Counter[str] = Counter()


def read_packed(cache: BlobCache, sha: str) -> bytes | None:
    blob = cache.lookup_packed(sha)
    if blob is None:
        return None
    try:
        with open(blob.path, "rb") as f:
            cache.check_packed(blob, f.fileno())
            return os.pread(f.fileno(), blob.size, blob.offset)
    except FileNotFoundError:
        cache.forget_pack(blob.key)
        return read_packed(cache, sha)


class CacheWithPacks(RuleBasedStateMachine):
    root: str

    def __init__(self) -> None:
        super().__init__()
        self.cache = BlobCache(self.root, LIMIT)
        self.damaged: set[str] = set()  # pack keys written into behind the cache's back

    def teardown(self) -> None:
        self.cache.close()

    @rule(picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=6))
    def write_pack(self, picks):
        pack = self.cache.pack_builder()
        added = set()
        for i in picks:
            if pack.nbytes + len(POOL[i]) > LIMIT // 2:  # (a pack over the limit would leave at the next flush)
                break
            pack.add(SHAS[i], len(POOL[i]), lambda w, i=i: w.write(POOL[i]))
            added.add(SHAS[i])
        assert sorted(pack.commit()) == sorted(added)
        COUNTS["packs"] += bool(added)

    @rule(i=st.integers(0, len(POOL) - 1))
    def ensure(self, i):
        """A download of one blob: from its own file, copied out of a pack, or fetched."""
        path = self.cache.ensure(SHAS[i], len(POOL[i]), lambda w: w.write(POOL[i]))
        with open(path, "rb") as f:
            assert f.read() == POOL[i]

    @rule(data=st.data())
    def evict_oldest(self, data):
        entries = self.cache.entries()
        if entries:
            count = data.draw(st.integers(1, len(entries)))
            self.cache._evict(entries[:count])

    def _packs(self) -> list[str]:
        return [e.key for e in self.cache.entries() if e.kind == "pack"]

    @precondition(lambda self: self._packs())
    @rule(data=st.data())
    def damage_a_pack(self, data):
        packs = self._packs()
        key = data.draw(st.sampled_from(packs))
        path = self.cache.pack_path(key)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(data.draw(st.integers(0, os.path.getsize(path) - 1)))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x5A]))
        self.damaged.add(key)
        COUNTS["damaged"] += 1

    @rule()
    def reopen(self):
        """Another process's view: nothing remembered in memory, everything from the index and the disk."""
        self.cache.close()
        self.cache = BlobCache(self.root, LIMIT)

    @invariant()
    def what_it_holds_reads_right_or_is_refused(self):
        for sha, data in zip(SHAS, POOL, strict=True):
            path = self.cache.lookup(sha)
            if path is not None:
                with open(path, "rb") as f:
                    assert f.read() == data
            blob = self.cache.lookup_packed(sha)
            if blob is None:
                continue
            try:
                got = read_packed(self.cache, sha)
            except ChecksumError:
                assert blob.key in self.damaged  # refused only where bytes really changed
                COUNTS["refused"] += 1
                continue
            assert got is None or got == data
            COUNTS["packed_reads"] += got is not None

    @invariant()
    def the_disk_holds_what_the_index_counts(self):
        entries = self.cache.entries()
        packs = {e.key.partition(":")[2] for e in entries if e.kind == "pack"}
        on_disk = set(os.listdir(os.path.join(self.root, "packs")))
        assert on_disk == packs
        blob_files = {name for d in os.listdir(os.path.join(self.root, "blobs"))
                      for name in os.listdir(os.path.join(self.root, "blobs", d))}
        assert blob_files == {e.key for e in entries if e.kind == "blob"}
        sizes = sum(os.path.getsize(self.cache.pack_path(f"pack:{n}")) for n in on_disk)
        sizes += sum(len(POOL[SHAS.index(sha)]) for sha in blob_files)
        assert self.cache.total_size() == sizes == sum(e.size for e in entries)
        assert sizes <= LIMIT


def test_the_cache_with_packs_keeps_its_promises(tmp_path):
    COUNTS.clear()
    run_in_folders(CacheWithPacks, tmp_path, SETTINGS)
    # the sequences did reach what they attack: packs read back, and damaged ones refused
    assert COUNTS["packs"] > SETTINGS.max_examples and COUNTS["packed_reads"] > 0 and COUNTS["refused"] > 0, COUNTS
