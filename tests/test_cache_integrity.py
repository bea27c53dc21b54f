"""The shared cache never serves bytes that differ from the digest it files them under, and its size limit
holds across processes (issue 10, points 1 and 2)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.support.mount import log_version, run_cli, wait_until
from wanllmdb.cache import BlobCache
from wanllmdb.cache import store as cache_store

CHUNK = 64 * 1024


def _blob(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def _fetcher(data: bytes, calls: list | None = None):
    def fetch(writer):
        if calls is not None:
            calls.append(1)
        writer.write(data)

    return fetch


def _edit_in_place(path: str, offset: int, data: bytes, *, keep_mtime: bool = False) -> None:
    """What a user does to a downloaded file that is a hard link to a cached blob (as root, or after chmod)."""
    before = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.chmod(path, before.st_mode & 0o777)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_a_blob_edited_through_a_hard_link_is_never_served(tmp_path, keep_mtime):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(10_000)
    sha, size = _blob(data)
    path = cache.ensure(sha, size, _fetcher(data))
    download = tmp_path / "download.bin"
    os.link(path, download)
    cache.restamp([sha])
    flipped = bytes([data[100] ^ 0xFF])
    _edit_in_place(str(download), 100, flipped, keep_mtime=keep_mtime)
    assert os.stat(path).st_size == size  # same size: only the bytes (and the inode's times) tell
    # Another process (a fresh cache object has none of this one's memory) and this one both refuse it.
    other = BlobCache(str(tmp_path / "c"))
    assert other.lookup(sha) is None
    calls: list = []
    fresh = cache.ensure(sha, size, _fetcher(data, calls))
    assert calls == [1]
    assert open(fresh, "rb").read() == data
    # The user's edited file is theirs to keep; the cache now holds a new inode.
    assert download.read_bytes()[100:101] == flipped
    assert os.stat(fresh).st_ino != os.stat(download).st_ino


def test_an_intact_blob_whose_stamp_moved_is_hashed_once_and_kept(tmp_path, monkeypatch):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(10_000)
    sha, size = _blob(data)
    path = cache.ensure(sha, size, _fetcher(data))
    os.chmod(path, 0o444)  # a chmod moves the ctime and nothing else
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda p: hashed.append(p) or real(p))
    other = BlobCache(str(tmp_path / "c"))
    assert other.lookup(sha) == path
    assert other.lookup(sha) == path
    assert BlobCache(str(tmp_path / "c")).lookup(sha) == path
    assert hashed == [path]  # the new stamp is recorded for every process


def test_hard_links_made_by_downloads_cost_no_rehash(tmp_path, monkeypatch):
    import wanllmdb

    run = wanllmdb.init(project="integrity")
    files = {f"f{i}.bin": os.urandom(5000 + i) for i in range(5)}
    art = wanllmdb.Artifact("data", type="dataset")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        art.add_file(str(tmp_path / name), name=name)
    run.log_artifact(art)
    used = run.use_artifact("data:latest")
    used.download(str(tmp_path / "one"))
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda p: hashed.append(p) or real(p))
    used.download(str(tmp_path / "two"))
    fresh = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    assert len(fresh.lookup_many([_blob(d)[0] for d in files.values()])) == len(files)
    assert hashed == []
    wanllmdb.finish()



def test_a_download_of_more_blobs_than_a_process_remembers_still_costs_no_rehash_later(tmp_path, monkeypatch):
    """A download restamps, at its end, every blob it verified at its start: one of more blobs than
    MAX_KNOWN_STAMPS (the scale benchmark's 100,000 files) must not forget them midway, or the next lookup
    of every blob hashes it again."""
    import wanllmdb

    monkeypatch.setattr(cache_store, "MAX_KNOWN_STAMPS", 2)
    run = wanllmdb.init(project="integrity")
    files = {f"f{i}.bin": os.urandom(5000 + i) for i in range(7)}
    art = wanllmdb.Artifact("many", type="dataset")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        art.add_file(str(tmp_path / name), name=name)
    run.log_artifact(art)
    used = run.use_artifact("many:latest")
    used.download(str(tmp_path / "one"))
    used.download(str(tmp_path / "two"))
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda p: hashed.append(p) or real(p))
    fresh = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])  # another process: only the index's stamps
    assert len(fresh.lookup_many([_blob(d)[0] for d in files.values()])) == len(files)
    assert hashed == []
    for name, data in files.items():
        assert (tmp_path / "two" / name).read_bytes() == data
    wanllmdb.finish()

def _log_and_download(tmp_path, name: str, data: bytes):
    import wanllmdb

    run = wanllmdb.init(project="integrity")
    src = tmp_path / f"{name}.src"
    src.write_bytes(data)
    art = wanllmdb.Artifact(name, type="dataset")
    art.add_file(str(src), name="weights.bin")
    run.log_artifact(art)
    used = run.use_artifact(f"{name}:latest")
    return run, used, used.download(str(tmp_path / "first"))


def test_editing_a_downloaded_file_leaves_later_downloads_and_verify_right(tmp_path, caplog):
    data = os.urandom(3 * CHUNK + 17)
    run, used, first = _log_and_download(tmp_path, "model", data)
    local = os.path.join(first, "weights.bin")
    _edit_in_place(local, 5, b"POISON")
    second = used.download(str(tmp_path / "second"))
    assert open(os.path.join(second, "weights.bin"), "rb").read() == data
    with pytest.raises(ValueError, match="weights.bin"):  # W&B's shape: a mismatch raises
        used.verify(first)
    assert used.verify(second) is True
    # A new process sees the right bytes too.
    code = (
        "import sys, wanllmdb; a = wanllmdb.Api().artifact('integrity/model:v1');"
        "p = a.get_path('weights.bin').download(sys.argv[1]); sys.stdout.buffer.write(open(p, 'rb').read())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "third")], capture_output=True, check=True)
    assert out.stdout == data
    run.finish()


def test_cache_verify_names_a_blob_changed_through_a_hard_link(tmp_path):
    data = os.urandom(20_000)
    sha, size = _blob(data)
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    path = cache.ensure(sha, size, _fetcher(data))
    cache.close()
    _edit_in_place(path, 0, b"X")
    result = run_cli("cache", "verify")
    assert sha in result.stdout + result.stderr
    assert not os.path.exists(path)


@pytest.mark.fuse
def test_the_mount_serves_the_right_bytes_after_a_download_was_edited(local_registry, mounter, project, tmp_path):
    import wanllmdb

    data = os.urandom(2 * CHUNK + 5)
    log_version(local_registry, tmp_path, project, "m", {"w.bin": data}, chunk_size=CHUNK)
    root = wanllmdb.Api().artifact(f"{project}/m:v1").download(str(tmp_path / "dl"))
    _edit_in_place(os.path.join(root, "w.bin"), CHUNK + 3, b"EDITED")
    mnt = mounter()
    assert (mnt.path / project / "m" / "v1" / "w.bin").read_bytes() == data


# --- the size limit across processes ---------------------------------------------------------------------


def _fill(root: str, max_bytes: int, seed: int, count: int, size: int, barrier) -> None:
    cache = BlobCache(root, max_bytes)
    barrier.wait()
    for i in range(count):
        data = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32)
        sha, n = _blob(data)
        cache.ensure(sha, n, _fetcher(data))
    cache.close()


def _bytes_on_disk(root) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(os.path.join(root, "blobs")):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def test_the_size_limit_holds_across_concurrent_processes(tmp_path):
    root = str(tmp_path / "shared")
    limit = 20 * 1024 * 1024
    BlobCache(root, limit).close()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_fill, args=(root, limit, seed, 8, 2 * 1024 * 1024, barrier)) for seed in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # 96 MB were written by six processes at once into a 20 MB cache.
    assert _bytes_on_disk(root) <= limit
    cache = BlobCache(root, limit)
    assert cache.total_size() == _bytes_on_disk(root)


def test_a_later_write_brings_an_overshoot_back_under_the_limit(tmp_path):
    root = str(tmp_path / "c")
    big = BlobCache(root, 100 * 1024 * 1024)
    for i in range(10):
        data = bytes([i]) * (3 * 1024 * 1024)
        big.ensure(*_blob(data), _fetcher(data))
    big.close()
    assert _bytes_on_disk(root) == 30 * 1024 * 1024
    small = BlobCache(root, 10 * 1024 * 1024)  # the limit was lowered: 3x over
    data = b"new" * 100
    small.ensure(*_blob(data), _fetcher(data))
    wait_until(lambda: _bytes_on_disk(root) <= 10 * 1024 * 1024, 5, "the overshoot to be evicted")
    assert small.lookup(_blob(data)[0]) is not None


# --- a blob edited while the mount holds it open ---------------------------------------------------------


def _reader(cache, data: bytes, stop):
    from wanllmdb.fs.reader import ChunkReader

    def fetch_blob(sha256, size, writer):
        writer.write(data)

    def fetch_range_into(sha256, start, length, writer):
        writer.write(data[start : start + length])
        return length

    return ChunkReader(cache, fetch_range_into, fetch_blob, stop=stop)


@pytest.mark.parametrize("size", [10_000, 5 * CHUNK + 3], ids=["whole", "chunked"])
def test_an_open_mount_handle_never_serves_a_blob_edited_under_it(tmp_path, size):
    from concurrent.futures import Future

    from wanllmdb.errors import ChecksumError
    from wanllmdb.manifest import ManifestEntry, hash_bytes

    data = os.urandom(size)
    d = hash_bytes(data, CHUNK)
    entry = ManifestEntry("w.bin", d.size, d.md5, d.sha256, d.chunk_size, d.chunks if size > CHUNK else ())
    cache = BlobCache(str(tmp_path / "c"))
    stop: Future[None] = Future()
    reader = _reader(cache, data, stop)
    try:
        handle = reader.open(entry, "w.bin")
        assert reader.read(handle, size, 0) == data
        part = handle.partial
        wait_until(lambda: cache.contains(d.sha256) and (part is None or part.stamp), 10, "the blob to be cached")
        # A download links the blob (its ctime moves) and records it: reads go on.
        download = tmp_path / "download.bin"
        os.link(cache.blob_path(d.sha256), download)
        cache.restamp([d.sha256])
        assert reader.read(handle, size, 0) == data
        _edit_in_place(str(download), size - 10, b"EDITED")
        for _ in range(2):  # and every later read of that handle
            with pytest.raises(ChecksumError, match="changed while it was open"):
                reader.read(handle, size, 0)
        reader.release(handle)
        again = reader.open(entry, "w.bin")
        assert reader.read(again, size, 0) == data
        reader.release(again)
    finally:
        stop.set_result(None)
        reader.close()
