"""Partial files (the mount's files being filled chunk by chunk) count against the cache's size limit and are
never evicted from under the live process that fills them (issue 10, point 10)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import Future

import pytest

from tests.support.mount import wait_until
from wanllmdb.cache import BlobCache
from wanllmdb.fs.reader import ChunkReader
from wanllmdb.manifest import ManifestEntry, hash_bytes

CHUNK = 64 * 1024
LIMIT = 1024 * 1024


def _entry(data: bytes, name: str) -> ManifestEntry:
    d = hash_bytes(data, CHUNK)
    return ManifestEntry(name, d.size, d.md5, d.sha256, d.chunk_size, d.chunks)


class _Remote:
    def __init__(self, *blobs: bytes) -> None:
        self.blobs = {hash_bytes(b).sha256: b for b in blobs}

    def fetch_range_into(self, sha256: str, start: int, length: int, writer) -> int:
        writer.write(self.blobs[sha256][start : start + length])
        return length

    def fetch_blob(self, sha256: str, size: int, writer) -> None:
        writer.write(self.blobs[sha256])


@pytest.fixture
def stop():
    future: Future[None] = Future()
    yield future
    if not future.done():
        future.set_result(None)


def _deleted_files_held_open(root: str) -> list[str]:
    """Cache files this process holds open although they were unlinked: disk space the index no longer sees."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root) and target.endswith(" (deleted)"):
            held.append(target)
    return held


def _bytes_in_cache_files(cache: BlobCache, reader: ChunkReader) -> int:
    """Blob sizes plus the verified bytes of this reader's partial files: what the cache holds on disk."""
    total = 0
    for dirpath, _dirs, files in os.walk(os.path.join(cache.root, "blobs")):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    with reader._lock:
        parts = list(reader._partials.values()) + list(reader._idle.values())
    return total + sum(p.count * CHUNK for p in parts if not p.done)


def _settle(reader: ChunkReader) -> None:
    wait_until(lambda: reader.pending_fetches() == 0, 10, "the reader's fetches to end")


def test_partials_read_at_once_are_counted_and_never_unlinked_while_open(tmp_path, stop):
    cache = BlobCache(str(tmp_path / "c"), LIMIT)
    files = [os.urandom(2 * LIMIT) for _ in range(3)]
    remote = _Remote(*files)
    reader = ChunkReader(cache, remote.fetch_range_into, remote.fetch_blob, stop=stop, readahead_bytes=0)
    entries = [_entry(data, f"f{i}.bin") for i, data in enumerate(files)]
    handles = [reader.open(e, e.path) for e in entries]
    try:
        # Three files read at once, half of each: 3 MiB of partials against a 1 MiB limit.
        for offset in range(0, LIMIT, CHUNK):
            for handle, data in zip(handles, files, strict=True):
                assert reader.read(handle, CHUNK, offset) == data[offset : offset + CHUNK]
        _settle(reader)
        assert _deleted_files_held_open(cache.root) == []
        # Each fetch records its chunks just after it ends.
        wait_until(lambda: cache.total_size() == _bytes_in_cache_files(cache, reader), 10, "the partials' count")
        assert cache.total_size() >= 3 * LIMIT
        # Every byte already served still reads right.
        for handle, data in zip(handles, files, strict=True):
            assert reader.read(handle, LIMIT, 0) == data[:LIMIT]
    finally:
        for handle in handles:
            reader.release(handle)
    # Closed while the cache is over its limit: the idle partials go, and the disk is back under it.
    assert _deleted_files_held_open(cache.root) == []
    assert os.listdir(os.path.join(cache.root, "partial")) == []
    assert cache.total_size() <= LIMIT
    reader.close()


def test_a_write_evicts_blobs_not_a_partial_being_filled(tmp_path, stop):
    cache = BlobCache(str(tmp_path / "c"), LIMIT)
    data = os.urandom(LIMIT // 2)
    remote = _Remote(data)
    reader = ChunkReader(cache, remote.fetch_range_into, remote.fetch_blob, stop=stop, readahead_bytes=0)
    entry = _entry(data, "half.bin")
    handle = reader.open(entry, entry.path)
    try:
        assert reader.read(handle, CHUNK * 6, 0) == data[: CHUNK * 6]
        _settle(reader)
        other = BlobCache(cache.root, LIMIT)  # another process writing into the same cache
        blobs = [os.urandom(LIMIT // 4) for _ in range(4)]
        for blob in blobs:
            other.ensure(hash_bytes(blob).sha256, len(blob), lambda w, b=blob: w.write(b))
        assert _deleted_files_held_open(cache.root) == []
        assert other.total_size() <= LIMIT
        assert reader.read(handle, len(data), 0) == data
        _settle(reader)
    finally:
        reader.release(handle)
    wait_until(lambda: cache.lookup(entry.sha256) is not None, 10, "the complete file to be promoted")
    assert cache.total_size() <= LIMIT
    reader.close()


def test_a_partial_left_by_a_dead_process_is_reclaimed_by_the_next_cache_user(tmp_path):
    root = str(tmp_path / "c")
    code = (
        "import os, sys; from wanllmdb.cache import BlobCache\n"
        "c = BlobCache(sys.argv[1], int(sys.argv[2])); p = c.new_partial('ab' * 32, 3 * 2**19)\n"
        "f = open(p, 'r+b'); f.write(b'x' * 2**19); f.flush(); c.account_partial(p, 2**19)\n"
        "os._exit(0)\n"  # killed: no cleanup
    )
    subprocess.run([sys.executable, "-c", code, root, str(LIMIT)], check=True, timeout=60)
    assert len(os.listdir(os.path.join(root, "partial"))) == 1
    cache = BlobCache(root, LIMIT)  # the next process to open the cache reclaims it, file and count
    assert os.listdir(os.path.join(root, "partial")) == []
    assert cache.total_size() == 0
    blob = os.urandom(LIMIT - 1000)
    cache.ensure(hash_bytes(blob).sha256, len(blob), lambda w: w.write(blob))
    assert cache.total_size() == len(blob)


# --- through the mount -----------------------------------------------------------------------------------

_SIZES = {
    "small": (3, 24 * 1024 * 1024, 8 * 1024 * 1024),
    # The case: 239 MiB were held against a 64 MiB limit, uncounted.
    "issue": (3, 100 * 1000 * 1000, 64 * 1024 * 1024),
}


def _held_by(pid: int, root: str) -> tuple[int, int, int]:
    """Bytes allocated by cache files on disk, by unlinked cache files ``pid`` still holds open, and by those of
    them that are partial files unlinked before they were complete (what eviction used to do to them)."""
    inodes: dict[int, int] = {}  # a partial being promoted has two names for a moment
    for dirpath, _dirs, files in os.walk(root):
        if "views" in dirpath:
            continue
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            inodes[st.st_ino] = st.st_blocks * 512
    on_disk = sum(inodes.values())
    deleted: dict[int, int] = {}
    unfinished: dict[int, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root) and st.st_nlink == 0 and st.st_ino not in inodes:  # (unlinked during the walk)
            deleted[st.st_ino] = st.st_blocks * 512
            if "/partial/" in target and st.st_blocks * 512 < st.st_size:
                unfinished[st.st_ino] = st.st_blocks * 512
    return on_disk, sum(deleted.values()), sum(unfinished.values())


@pytest.mark.fuse
@pytest.mark.parametrize("case", ["small", "issue"])
def test_files_read_at_once_through_the_mount_hold_no_uncounted_space(
    case, local_registry, mounter, project, tmp_path, monkeypatch
):
    import threading

    from tests.support.mount import log_version

    if case == "issue" and os.environ.get("WANLLMDB_LONG_TESTS") != "1":
        pytest.skip("long variant: WANLLMDB_LONG_TESTS=1")
    count, size, limit = _SIZES[case]
    monkeypatch.setenv("WANLLMDB_CACHE_SIZE", str(limit))
    files = {f"f{i}.bin": os.urandom(size) for i in range(count)}
    log_version(local_registry, tmp_path, project, "big", files, chunk_size=1024 * 1024)
    mnt = mounter()
    pid = mnt.pid()
    root = os.path.realpath(os.environ["WANLLMDB_CACHE_DIR"])
    results: dict[str, bool] = {}

    def read(name: str) -> None:
        with open(mnt.path / project / "big" / "v1" / name, "rb") as f:
            results[name] = f.read() == files[name]

    readers = [threading.Thread(target=read, args=(name,)) for name in files]
    for thread in readers:
        thread.start()
    peak_disk = peak_deleted = peak = peak_unfinished = 0
    while any(thread.is_alive() for thread in readers):
        on_disk, deleted, unfinished = _held_by(pid, root)
        peak_disk, peak_deleted = max(peak_disk, on_disk), max(peak_deleted, deleted)
        peak_unfinished = max(peak_unfinished, unfinished)
        peak = max(peak, on_disk + deleted)
        readers[0].join(0.05)
    for thread in readers:
        thread.join(120)
    logging.getLogger(__name__).info(
        "%d x %d bytes read at once, limit %d: peak %d bytes held (%d in cache files, %d unlinked but open)",
        count, size, limit, peak, peak_disk, peak_deleted,
    )
    assert results == {name: True for name in files}
    assert peak_unfinished == 0  # no partial file was evicted (and so stopped counting) while being filled
    # The documented bound: the limit, plus the files being read at that moment.
    assert peak <= limit + count * size
