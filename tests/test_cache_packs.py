"""Packs: small blobs the mount fetches together, written as one verified cache file (``cache/store.py``).

Real files and a real SQLite index; the kill tests crash a real child process at the pack's kill points.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading

import pytest

from wanllmdb.cache import BlobCache
from wanllmdb.cache.store import PACK_MEMBER_MAX
from wanllmdb.errors import ChecksumError
from wanllmdb.killpoints import ENV as KILL_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blobs(count: int, size: int = 300, seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i in range(count):
        data = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32) + bytes([i % 256])
        out[hashlib.sha256(data).hexdigest()] = data
    return out


def source(data: bytes):
    """A fetcher writing ``data`` (in two pieces, as a network read would)."""

    def fetch(writer) -> None:
        writer.write(data[: len(data) // 2])
        writer.write(data[len(data) // 2 :])

    return fetch


def packed_bytes(cache: BlobCache, sha: str) -> bytes:
    blob = cache.lookup_packed(sha)
    assert blob is not None
    with open(blob.path, "rb") as f:
        return os.pread(f.fileno(), blob.size, blob.offset)


def write_pack(cache: BlobCache, items: dict[str, bytes]) -> list[str]:
    pack = cache.pack_builder()
    for sha, data in items.items():
        pack.add(sha, len(data), source(data))
    return pack.commit()


@pytest.fixture
def cache(tmp_path):
    c = BlobCache(str(tmp_path / "cache"), 1 << 30)
    yield c
    c.close()


def pack_files(cache: BlobCache) -> list[str]:
    return sorted(os.listdir(os.path.join(cache.root, "packs")))


def test_a_pack_holds_each_blob_once_verified_and_counts_as_one_entry(cache):
    items = blobs(10)
    assert sorted(write_pack(cache, items)) == sorted(items)
    assert len(pack_files(cache)) == 1 and os.listdir(os.path.join(cache.root, "tmp")) == []
    for sha, data in items.items():
        assert cache.holds(sha) and not cache.contains(sha)  # no file of its own
        assert packed_bytes(cache, sha) == data
    entries = cache.entries()
    assert [e.kind for e in entries] == ["pack"]
    assert entries[0].size == cache.total_size() == sum(len(d) for d in items.values())
    (name,) = pack_files(cache)
    assert os.stat(os.path.join(cache.root, "packs", name)).st_mode & 0o777 == 0o444
    # another process (a fresh cache object) finds them through the index
    other = BlobCache(cache.root)
    try:
        assert other.holds_many(items) == set(items)
        assert all(packed_bytes(other, sha) == data for sha, data in items.items())
    finally:
        other.close()


def test_a_blob_with_wrong_bytes_is_refused_and_the_others_are_kept(cache):
    items = blobs(3)
    (a, b, c) = items
    pack = cache.pack_builder()
    pack.add(a, len(items[a]), source(items[a]))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        pack.add(b, len(items[b]), source(items[b][:-1] + b"\x00" if items[b][-1:] != b"\x00" else b"\x01"))
    with pytest.raises(ChecksumError, match="more than the expected"):
        pack.add(c, len(items[c]) - 1, source(items[c]))
    with pytest.raises(ChecksumError, match="expected .* bytes, received"):
        pack.add(c, len(items[c]) + 1, source(items[c]))
    with pytest.raises(ValueError, match="too large"):
        pack.add(c, PACK_MEMBER_MAX + 1, source(b""))
    assert pack.commit() == [a]
    assert cache.holds(a) and not cache.holds(b) and not cache.holds(c)
    assert cache.index.packed([b, c]) == {}


def test_an_empty_builder_writes_nothing(cache):
    assert cache.pack_builder().commit() == []
    assert pack_files(cache) == [] and cache.entries() == []


def test_packs_are_evicted_whole_under_the_limit_and_leave_no_row_behind(tmp_path):
    small = BlobCache(str(tmp_path / "c"), max_bytes=4000)
    try:
        first, second = blobs(8, seed=1), blobs(8, seed=2)  # 2,312 bytes each: both do not fit
        write_pack(small, first)
        write_pack(small, second)
        assert len(pack_files(small)) == 1
        assert not any(small.holds(sha) for sha in first)
        assert all(packed_bytes(small, sha) == data for sha, data in second.items())
        assert small.index.packed(first) == {}
        assert small.total_size() == sum(len(d) for d in second.values())
    finally:
        small.close()


def test_a_blob_in_two_packs_stays_readable_when_one_is_evicted(cache):
    items = blobs(4)
    write_pack(cache, items)
    write_pack(cache, dict(list(items.items())[:2]))
    first, second = (e.key for e in cache.entries())
    cache._evict([e for e in cache.entries() if e.key == first])
    for sha, data in list(items.items())[:2]:
        assert cache.holds(sha) and packed_bytes(cache, sha) == data
        assert cache.lookup_packed(sha).key == second
    assert not any(cache.holds(sha) for sha in list(items)[2:])


def test_ensure_copies_a_packed_blob_into_its_own_file_without_fetching(cache):
    items = blobs(3)
    write_pack(cache, items)
    sha, data = next(iter(items.items()))

    def never(writer):
        raise AssertionError("fetched a blob the cache holds in a pack")

    path = cache.ensure(sha, len(data), never)
    with open(path, "rb") as f:
        assert f.read() == data
    assert cache.contains(sha) and cache.lookup(sha) == path


def test_ensure_fetches_a_blob_whose_pack_was_damaged_and_drops_the_pack(cache):
    items = blobs(3)
    write_pack(cache, items)
    sha, data = next(iter(items.items()))
    blob = cache.lookup_packed(sha)
    os.chmod(blob.path, 0o644)
    with open(blob.path, "r+b") as f:
        f.seek(blob.offset)
        f.write(b"\xff" if data[:1] != b"\xff" else b"\x00")
    fetched = []

    def fetch(writer):
        fetched.append(sha)
        writer.write(data)

    path = cache.ensure(sha, len(data), fetch)
    with open(path, "rb") as f:
        assert f.read() == data
    assert fetched == [sha]
    assert pack_files(cache) == [] and cache.index.packed(items) == {}  # the damaged pack is gone whole


def test_check_packed_serves_a_touched_pack_and_refuses_a_changed_one(cache):
    items = blobs(2)
    write_pack(cache, items)
    (a, b) = items
    blob = cache.lookup_packed(a)
    with open(blob.path, "rb") as f:
        assert cache.check_packed(blob, f.fileno()) == blob.stamp
    os.utime(blob.path, (1, 1))  # the stamp moves, the bytes do not
    with open(blob.path, "rb") as f:
        assert cache.check_packed(blob, f.fileno()) != blob.stamp
    os.chmod(blob.path, 0o644)
    other = cache.lookup_packed(b)
    with open(blob.path, "r+b") as f:
        f.seek(other.offset)
        f.write(b"\xff" if items[b][:1] != b"\xff" else b"\x00")
    with open(blob.path, "rb") as f, pytest.raises(ChecksumError, match="changed after they were verified"):
        cache.check_packed(other, f.fileno())
    assert not cache.holds(a) and not cache.holds(b) and pack_files(cache) == []


def test_verify_checks_every_packed_blob_and_removes_a_damaged_pack(cache):
    good, bad = blobs(3, seed=1), blobs(3, seed=2)
    write_pack(cache, good)
    write_pack(cache, bad)
    blob = cache.lookup_packed(next(iter(bad)))
    os.chmod(blob.path, 0o644)
    with open(blob.path, "r+b") as f:
        f.seek(blob.offset + 5)
        f.write(b"\xaa\xbb")
    report = cache.verify()
    assert report.checked == 6
    assert list(report.corrupt) == [blob.key]
    assert all(cache.holds(sha) for sha in good) and not any(cache.holds(sha) for sha in bad)
    assert len(pack_files(cache)) == 1


def test_a_lookup_of_an_evicted_pack_is_forgotten_and_looked_up_again(cache):
    items = blobs(2)
    write_pack(cache, items)
    sha = next(iter(items))
    other = BlobCache(cache.root)  # another process evicts the pack
    try:
        other._evict(other.entries())
    finally:
        other.close()
    blob = cache.lookup_packed(sha)  # this process still remembers it
    with pytest.raises(FileNotFoundError):
        open(blob.path, "rb")
    cache.forget_pack(blob.key)
    assert cache.lookup_packed(sha) is None and not cache.holds(sha)


def test_threads_packing_the_same_blobs_at_once_all_read_right(cache):
    items = blobs(40)
    errors = []

    def run():
        try:
            write_pack(cache, items)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(pack_files(cache)) == 4
    assert all(packed_bytes(cache, sha) == data for sha, data in items.items())
    assert cache.total_size() == 4 * sum(len(d) for d in items.values())


CHILD = """
import sys
from wanllmdb.cache import BlobCache
from tests.test_cache_packs import blobs, write_pack
write_pack(BlobCache(sys.argv[1]), blobs(5))
"""


@pytest.mark.parametrize("step", ["cache.pack_written", "cache.pack_renamed"])
def test_a_writer_killed_while_writing_a_pack_leaves_nothing_the_next_writer_keeps(tmp_path, step):
    root = str(tmp_path / "cache")
    BlobCache(root).close()
    env = {**os.environ, KILL_ENV: f"{step}:1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", CHILD, root], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = os.listdir(os.path.join(root, "tmp")) + os.listdir(os.path.join(root, "packs"))
    assert len(left) == 1  # the killed writer's file: a temporary one, or a pack no entry names
    cache = BlobCache(root)
    try:
        assert os.listdir(os.path.join(root, "tmp")) == []  # a dead writer's temporary file: gone at open
        cache.pack_builder()  # the next writer of packs removes a pack no entry names
        assert os.listdir(os.path.join(root, "packs")) == []
        assert cache.entries() == [] and not any(cache.holds(sha) for sha in blobs(5))
        assert cache.verify().checked == 0
    finally:
        cache.close()
