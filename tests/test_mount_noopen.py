"""No-open mode (``fs/fuse_ops.py``, ``fs/pathhandles.py``): the kernel opens files itself, reads find them by path.

Attacked here through real mounts: that no file is opened through OPEN (the mount's counters), that a corrupt
blob still fails its first read and nothing of it is served or cached, that more files than the path LRU
holds, read from many threads at once, always come back with their own bytes (a descriptor closed or
reused under a read would show as wrong bytes), and that the switch back to OPEN/RELEASE still works.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading

import pytest

from tests.support.mount import log_version
from wanllmdb.cache import BlobCache
from wanllmdb.fs.pathhandles import PATH_HANDLES, PathHandles

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def _no_open_on(monkeypatch):
    """No-open mode is off by default (readers of one file would share one read-ahead): on for these mounts."""
    monkeypatch.setenv("WANLLMDB_MOUNT_NO_OPEN", "1")


def cat(path: os.PathLike[str] | str) -> subprocess.CompletedProcess:
    return subprocess.run(["cat", str(path)], capture_output=True, timeout=60)


def test_files_are_read_without_an_open_request(registry, mounter, project, tmp_path):
    files = {f"d/f{i:02d}.txt": os.urandom(100 + i) for i in range(30)}
    files["big.bin"] = os.urandom(5 * CHUNK + 7)
    log_version(registry, tmp_path, project, "a", files, chunk_size=CHUNK)
    mnt = mounter()
    v1 = mnt.path / project / "a" / "v1"
    for rel, data in files.items():
        assert cat(v1 / rel).stdout == data
    assert cat(v1 / "d/f00.txt").stdout == files["d/f00.txt"]  # read again: its handle is still kept
    stats = mnt.stats()
    assert stats["file_opens"] == 0  # the kernel sent one OPEN, answered ENOSYS, and none after it
    assert stats["path_opens"] == len(files)  # each file opened once, by its first read
    assert 0 < stats["open_files"] <= len(files)


def test_open_and_release_still_serve_when_no_open_is_off(registry, mounter, project, tmp_path, monkeypatch):
    monkeypatch.delenv("WANLLMDB_MOUNT_NO_OPEN")  # the default
    files = {f"f{i}.txt": os.urandom(50 + i) for i in range(5)}
    log_version(registry, tmp_path, project, "a", files)
    mnt = mounter()
    for rel, data in files.items():
        assert cat(mnt.path / project / "a" / "v1" / rel).stdout == data
    stats = mnt.stats()
    assert (stats["file_opens"], stats["path_opens"]) == (len(files), 0)
    assert stats["open_files"] == 0  # every RELEASE arrived


def test_a_corrupt_blob_fails_its_first_read_and_nothing_of_it_is_served(local_registry, mounter, project, tmp_path):
    files = {"good.txt": os.urandom(300), "bad.txt": os.urandom(400), "big.bin": os.urandom(4 * CHUNK)}
    log_version(local_registry, tmp_path, project, "a", files, chunk_size=CHUNK)
    by_path = {e.path: e for e in local_registry.resolve(project, "a", "v1").manifest}
    for rel, offset in (("bad.txt", 10), ("big.bin", 2 * CHUNK + 5)):  # big.bin: its third chunk
        stored = local_registry.blobs.path(by_path[rel].sha256)
        os.chmod(stored, 0o644)
        with open(stored, "r+b") as f:
            f.seek(offset)
            f.write(bytes([files[rel][offset] ^ 0xFF]))
    mnt = mounter()
    v1 = mnt.path / project / "a" / "v1"
    for _ in range(2):  # a failed first read leaves no handle behind: the second read checks again
        result = cat(v1 / "bad.txt")
        assert result.returncode != 0 and b"Input/output error" in result.stderr and result.stdout == b""
    result = cat(v1 / "big.bin")
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert files["big.bin"].startswith(result.stdout) and len(result.stdout) <= 2 * CHUNK  # verified chunks only
    assert cat(v1 / "good.txt").stdout == files["good.txt"]
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    assert not cache.holds(by_path["bad.txt"].sha256) and not cache.holds(by_path["big.bin"].sha256)
    assert mnt.stats()["file_opens"] == 0


def test_reads_from_many_threads_past_the_path_lru_get_their_own_bytes(registry, mounter, project, tmp_path):
    count = PATH_HANDLES * 2 + 40
    files = {f"d{i % 3}/f{i:04d}.bin": os.urandom(200 + (i * 37) % 5000) for i in range(count)}
    files["big.bin"] = os.urandom(6 * CHUNK + 1)
    log_version(registry, tmp_path, project, "many", files, chunk_size=CHUNK)
    mnt = mounter()
    v1 = mnt.path / project / "many" / "v1"
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    names = sorted(files)
    wrong: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for rel in rng.choices(names, k=250) + ["big.bin"]:
            with open(v1 / rel, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != digests[rel]:
                wrong.append(rel)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []
    stats = mnt.stats()
    assert stats["file_opens"] == 0 and stats["path_opens"] > PATH_HANDLES  # the LRU did evict
    assert stats["open_files"] <= PATH_HANDLES + 64  # the bound, plus at most one retired handle per worker


class _Released:
    def __init__(self) -> None:
        self.released: list[object] = []

    def __call__(self, handle: object) -> None:
        self.released.append(handle)


class _H:
    label = "h"
    partial = None


class _Filling:
    done = False


class _P(_H):
    partial = _Filling()


def test_an_evicted_handle_is_released_only_after_the_thread_serving_it_moved_on():
    released = _Released()
    paths = PathHandles(released, size=2)
    served = threading.Event()
    go_on = threading.Event()
    first = _H()

    def serve() -> None:  # a worker thread: answers a read from "a", then (later) starts its next request
        assert paths.put("a", first) is first
        served.set()
        go_on.wait(10)
        paths.idle()

    worker = threading.Thread(target=serve)
    worker.start()
    assert served.wait(10)
    for name in "bcd":  # this thread pushes "a" out of the LRU
        paths.put(name, _H())
        paths.idle()
    assert paths.take("a") is None
    assert first not in released.released  # libfuse may still be splicing from its descriptor
    go_on.set()
    worker.join(10)
    assert first in released.released
    loser = _H()
    assert paths.put("d", loser) is not loser  # a second open of a kept path is released at once
    assert loser in released.released
    paths.close()
    assert len(paths) == 0 and len(released.released) == 5


def test_handles_of_files_still_being_filled_are_bounded_apart():
    released = _Released()
    paths = PathHandles(released, size=100, partials=2)
    small = [paths.put(f"s{i}", _H()) for i in range(5)]
    large = [paths.put(f"l{i}", _P()) for i in range(4)]
    paths.idle()
    paths.put("s5", _H())  # (frees what the retired handles' last server no longer holds)
    assert released.released == large[:2]  # the oldest partial holders went; the small files' handles stay
    assert all(paths.take(f"s{i}") is handle for i, handle in enumerate(small))
    assert paths.take("l3") is large[3] and paths.take("l0") is None
