"""ArtifactFS — the mount's logic without FUSE — over both registries: layout, errors, TTLs, failures."""

from __future__ import annotations

import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.mount import log_version
from wanllmdb.cache import BlobCache
from wanllmdb.errors import (
    ChecksumError,
    FetchError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    ServerUnreachableError,
)
from wanllmdb.fs.core import AttributeMissingError, AttributeUnsupportedError, open_filesystem

CHUNK = 64 * 1024


@pytest.fixture
def cache(tmp_path):
    c = BlobCache(str(tmp_path / "fs-cache"), 1 << 30)
    yield c
    c.close()


@pytest.fixture
def make_fs(cache):
    made = []

    def make(registry, **options):
        options.setdefault("timeout", 5.0)
        fs = open_filesystem(registry, cache, **options)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.close()


def read_file(fs, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while chunk := fs.read(fh, 1 << 20, len(out)):
            out += chunk
        return bytes(out)
    finally:
        fs.release(fh)


class Switchable:
    """A registry proxy that can be made unreachable or stalled, for failure tests."""

    def __init__(self, registry) -> None:
        self._registry = registry
        self.down = False
        self.stall = threading.Event()
        self.stall.set()

    def __getattr__(self, name):
        attr = getattr(self._registry, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.stall.wait(30)
            if self.down:
                raise ServerUnreachableError("registry switched off by the test")
            return attr(*args, **kwargs)

        return call


def test_layout_listings_and_attributes(registry, make_fs, project, tmp_path):
    first = log_version(registry, tmp_path, project, "mnist", {"train.csv": b"a,b\n1,2\n"})
    second = log_version(
        registry, tmp_path, project, "mnist",
        {"train.csv": b"a,b\n3,4\n", "img/0.png": b"png", "big.bin": os.urandom(3 * CHUNK + 5)},
        chunk_size=CHUNK, aliases=["best"],
    )
    fs = make_fs(registry)
    root = dict(fs.readdir("/"))
    assert project in root and root["."].is_dir
    listing = dict(fs.readdir(f"/{project}"))
    assert listing["mnist"].nlink == 2 + 2
    versions = dict(fs.readdir(f"/{project}/mnist"))
    assert {"v1", "v2", "latest", "best"} <= set(versions)
    assert fs.readlink(f"/{project}/mnist/latest") == "v2"
    assert fs.readlink(f"/{project}/mnist/best") == "v2"
    assert stat.S_ISLNK(fs.getattr(f"/{project}/mnist/latest").mode)
    v2 = dict(fs.readdir(f"/{project}/mnist/v2"))
    assert v2["big.bin"].size == 3 * CHUNK + 5
    assert v2["big.bin"].mode == stat.S_IFREG | 0o444
    assert v2["big.bin"].mtime == second.version.created_at
    assert v2["img"].mode == stat.S_IFDIR | 0o555
    assert fs.getattr(f"/{project}/mnist/v2").nlink == 3
    assert fs.getattr(f"/{project}/mnist/v1/train.csv").mtime == first.version.created_at
    assert fs.stats()["chunks_fetched"] == 0 and fs.stats()["blobs_fetched"] == 0  # listings fetch no bytes
    entry = second.version.manifest.get("big.bin")
    assert fs.getxattr(f"/{project}/mnist/v2/big.bin", "user.wanllmdb.sha256") == entry.sha256.encode()
    assert fs.getxattr(f"/{project}/mnist/v2/big.bin", "user.wanllmdb.md5") == entry.md5.encode()
    assert fs.listxattr(f"/{project}/mnist/v2/big.bin") == ["user.wanllmdb.sha256", "user.wanllmdb.md5"]


def test_reads_go_through_the_shared_cache(registry, make_fs, cache, project, tmp_path):
    big = os.urandom(5 * CHUNK + 1)
    result = log_version(registry, tmp_path, project, "a", {"s.txt": b"small", "big.bin": big}, chunk_size=CHUNK)
    fs = make_fs(registry)
    assert read_file(fs, f"/{project}/a/v1/s.txt") == b"small"
    assert read_file(fs, f"/{project}/a/v1/big.bin") == big
    manifest = result.version.manifest
    deadline = time.monotonic() + 5
    while cache.lookup(manifest.get("big.bin").sha256) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for name in ("s.txt", "big.bin"):
        assert cache.lookup(manifest.get(name).sha256) is not None, f"{name} is not a complete cached blob"


def test_errors_are_typed(registry, make_fs, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"d/f.txt": b"x"})
    fs = make_fs(registry)
    for missing in (f"/{project}/a/v9", f"/{project}/a/v1/nope", f"/{project}/zzz", "/no-project", f"/{project}/a/nope",
                    f"/{project}/bad name", f"/{project}/a/v0"):
        with pytest.raises(NotFoundError):
            fs.getattr(missing)
    with pytest.raises(ReadOnlyError):
        fs.open(f"/{project}/a/v1/d/f.txt", os.O_WRONLY)
    with pytest.raises(ReadOnlyError):
        fs.open(f"/{project}/a/v1/d/f.txt", os.O_RDONLY | os.O_TRUNC)
    with pytest.raises(ReadOnlyError):
        fs.refuse_write("mkdir", f"/{project}/a/v1/new")
    with pytest.raises(IsDirectoryError):
        fs.open(f"/{project}/a/v1/d", os.O_RDONLY)
    with pytest.raises(NotDirectoryError):
        fs.readdir(f"/{project}/a/v1/d/f.txt")
    with pytest.raises(AttributeUnsupportedError):
        fs.getxattr(f"/{project}/a/v1/d/f.txt", "security.selinux")
    with pytest.raises(AttributeMissingError):
        fs.getxattr(f"/{project}/a/v1/d/f.txt", "user.other")


def test_project_mode_puts_the_project_at_the_root(registry, make_fs, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"x"})
    fs = make_fs(registry, project=project)
    assert {"a"} <= set(dict(fs.readdir("/")))
    assert read_file(fs, "/a/latest/f.txt".replace("latest", "v1")) == b"x"
    empty = make_fs(registry, project=project + "-none")
    assert [name for name, _ in empty.readdir("/")] == [".", ".."]
    assert empty.getattr("/").is_dir


def test_new_versions_and_moved_aliases_show_after_the_ttl(registry, make_fs, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"1"}, aliases=["best"])
    fs = make_fs(registry, metadata_ttl=0.3)
    assert fs.readlink(f"/{project}/a/latest") == "v1"
    with pytest.raises(NotFoundError):
        fs.getattr(f"/{project}/a/v2")
    log_version(registry, tmp_path, project, "a", {"f.txt": b"2"})
    registry.set_alias(project, "a", "best", 2)
    time.sleep(0.35)  # exactly one TTL: the point of this test is that it is enough
    assert fs.readlink(f"/{project}/a/latest") == "v2"
    assert fs.readlink(f"/{project}/a/best") == "v2"
    assert "v2" in dict(fs.readdir(f"/{project}/a"))
    assert read_file(fs, f"/{project}/a/v2/f.txt") == b"2"


def test_listings_and_cached_files_survive_the_registry_going_down(registry, make_fs, project, tmp_path):
    files = {"f.txt": b"cached", "g.txt": b"never read", "big.bin": os.urandom(3 * CHUNK)}
    log_version(registry, tmp_path, project, "a", files, chunk_size=CHUNK)
    switch = Switchable(registry)
    fs = make_fs(switch, metadata_ttl=0.05, timeout=2)
    assert read_file(fs, f"/{project}/a/v1/f.txt") == b"cached"
    assert project in dict(fs.readdir("/")) and "v1" in dict(fs.readdir(f"/{project}/a"))
    switch.down = True
    time.sleep(0.1)  # past the TTL: the listings now have to be refreshed, and cannot be
    assert project in dict(fs.readdir("/"))
    assert "v1" in dict(fs.readdir(f"/{project}/a"))
    assert fs.readlink(f"/{project}/a/latest") == "v1"
    assert read_file(fs, f"/{project}/a/v1/f.txt") == b"cached"
    # The failed refresh marked the registry down: an uncached file fails at once instead of trying again.
    started = time.monotonic()
    with pytest.raises(FetchError, match="not answering"):
        read_file(fs, f"/{project}/a/v1/g.txt")
    assert time.monotonic() - started < 1
    # So do the chunks of a large file, even from a registry that would stall rather than refuse.
    switch.stall.clear()
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match="not answering"):
            read_file(fs, f"/{project}/a/v1/big.bin")
        assert time.monotonic() - started < 1
    finally:
        switch.stall.set()


def test_a_stalled_registry_fails_lookups_after_the_timeout(registry, make_fs, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"x"})
    switch = Switchable(registry)
    fs = make_fs(switch, timeout=0.5)
    switch.stall.clear()
    started = time.monotonic()
    with pytest.raises(FetchError, match="timeout"):
        fs.readdir("/")
    assert time.monotonic() - started < 3
    switch.stall.set()


def test_version_trees_in_memory_stay_within_their_bound(registry, make_fs, project, tmp_path):
    for i in range(4):
        log_version(registry, tmp_path, project, "a", {f"f{j}.txt": bytes([i, j]) for j in range(30)})
    fs = make_fs(registry, max_tree_entries=70)
    for version in range(1, 5):
        assert len(fs.readdir(f"/{project}/a/v{version}")) == 32
        assert fs.catalog.tree_entries() <= 70


def test_listings_warmed_at_mount_time_answer_the_first_lookups_without_the_registry(
    registry, make_fs, project, tmp_path
):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"x"})
    log_version(registry, tmp_path, project, "b", {"g.txt": b"y"})
    switch = Switchable(registry)
    fs = make_fs(switch, metadata_ttl=60.0, timeout=2)
    fs.catalog.warm()
    # A registry shared with other tests holds more projects than a warm-up without --project loads.
    fs.catalog.warm(project)
    deadline = time.monotonic() + 10
    while fs.catalog._flights._inflight and time.monotonic() < deadline:  # the warm-up runs on the pool
        time.sleep(0.01)
    switch.down = True  # everything below is answered from what the warm-up loaded
    assert project in dict(fs.readdir("/"))
    assert {"a", "b"} <= set(dict(fs.readdir(f"/{project}")))
    assert fs.readlink(f"/{project}/a/latest") == "v1" and fs.readlink(f"/{project}/b/latest") == "v1"
    assert "v1" in dict(fs.readdir(f"/{project}/b"))
    # Nothing but answers was stored: a manifest never loaded still needs the registry.
    with pytest.raises((FetchError, ServerUnreachableError)):
        fs.getattr(f"/{project}/a/v1/f.txt")


def test_warming_a_registry_that_fails_marks_nothing_down(registry, make_fs, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"x"})
    switch = Switchable(registry)
    fs = make_fs(switch, timeout=2)
    switch.down = True
    fs.catalog.warm()
    deadline = time.monotonic() + 10
    while fs.catalog._flights._inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    switch.down = False
    assert not fs.catalog.registry_down()
    assert fs.readlink(f"/{project}/a/latest") == "v1"


class Corrupting(Switchable):
    """Serves wrong bytes for the blobs in ``bad`` (a flipped first byte, the right length)."""

    def __init__(self, registry, bad: set[str]) -> None:
        super().__init__(registry)
        self.bad = bad

    def fetch_blob(self, sha256, size, writer, progress=None):
        if sha256 not in self.bad:
            return self._registry.fetch_blob(sha256, size, writer, progress)
        sink = bytearray()

        class _Collect:
            def write(self, data) -> int:
                sink.extend(data)
                return len(data)

        self._registry.fetch_blob(sha256, size, _Collect(), progress)
        sink[0] ^= 0xFF
        writer.write(bytes(sink))


def cached_bytes(cache, sha256: str) -> bytes:
    """The bytes the cache holds for a blob, from its own file or from a pack."""
    path = cache.lookup(sha256)
    if path is not None:
        with open(path, "rb") as f:
            return f.read()
    packed = cache.lookup_packed(sha256)
    assert packed is not None, f"the cache holds no {sha256[:12]}"
    with open(packed.path, "rb") as f:
        f.seek(packed.offset)
        return f.read(packed.size)


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("index_min", [None, 1], ids=["in-memory", "indexed"])
def test_opening_a_small_file_fills_the_cache_with_its_siblings_verified(
    registry, make_fs, cache, project, tmp_path, index_min
):
    files = {f"d/f{i:02d}.txt": os.urandom(100 + i) for i in range(20)}
    files["d/sub/deeper.txt"] = b"not a sibling"
    log_version(registry, tmp_path, project, "many", files)
    version = registry.resolve(project, "many", "v1")
    fs = make_fs(Switchable(registry), index_min=index_min)
    if index_min:  # (the version is indexed on disk: its directory is read from the index)
        fs.readdir(f"/{project}/many/v1/d")
        assert type(fs.catalog.cached_tree(project, "many", 1)).__name__ == "IndexedTree"
    assert read_file(fs, f"/{project}/many/v1/d/f00.txt") == files["d/f00.txt"]
    siblings = [e for e in version.manifest if e.path.count("/") == 1]
    assert _wait_until(lambda: all(cache.holds(e.sha256) for e in siblings))
    assert not cache.holds(version.manifest.get("d/sub/deeper.txt").sha256)
    for entry in siblings:
        assert cached_bytes(cache, entry.sha256) == files[entry.path]
    before = fs.stats()["blobs_fetched"]
    assert read_file(fs, f"/{project}/many/v1/d/f19.txt") == files["d/f19.txt"]
    assert fs.stats()["blobs_fetched"] == before  # already cached: no fetch of its own


def test_a_few_small_siblings_are_not_filled_into_the_cache(registry, make_fs, cache, project, tmp_path):
    files = {f"d/f{i:02d}.txt": os.urandom(100 + i) for i in range(3)}
    log_version(registry, tmp_path, project, "few", files)
    version = registry.resolve(project, "few", "v1")
    fs = make_fs(Switchable(registry))
    assert read_file(fs, f"/{project}/few/v1/d/f00.txt") == files["d/f00.txt"]
    time.sleep(0.3)
    assert [cache.holds(e.sha256) for e in version.manifest] == [True, False, False]


def test_the_sibling_fill_keeps_no_corrupt_blob_and_the_read_still_fails(registry, make_fs, cache, project, tmp_path):
    files = {f"d/f{i:02d}.txt": os.urandom(100 + i) for i in range(20)}
    log_version(registry, tmp_path, project, "bad", files)
    version = registry.resolve(project, "bad", "v1")
    by_path = {e.path: e for e in version.manifest}
    bad = by_path["d/f05.txt"].sha256
    fs = make_fs(Corrupting(registry, {bad}))
    assert read_file(fs, f"/{project}/bad/v1/d/f00.txt") == files["d/f00.txt"]
    assert _wait_until(lambda: cache.holds(by_path["d/f04.txt"].sha256))
    time.sleep(0.2)
    assert not cache.holds(bad)  # the fill stopped at it: nothing unverified was kept
    with pytest.raises(ChecksumError):
        read_file(fs, f"/{project}/bad/v1/d/f05.txt")
    assert not cache.holds(bad)
    assert read_file(fs, f"/{project}/bad/v1/d/f19.txt") == files["d/f19.txt"]  # the others read as usual


class CountingFetches:
    """A registry proxy counting whole-blob fetches."""

    def __init__(self, registry) -> None:
        self._registry = registry
        self.fetches = 0

    def __getattr__(self, name):
        return getattr(self._registry, name)

    def fetch_blob(self, *args, **kwargs):
        self.fetches += 1
        return self._registry.fetch_blob(*args, **kwargs)


def _one_file_counting(registry, make_fs, project, tmp_path, name: str, size: int, **fs_options):
    """A version ``name`` of one file ``f.txt`` of ``size`` random bytes, and a filesystem over a registry that
    counts its whole-blob fetches: (data, sha256, counting registry, fs)."""
    data = os.urandom(size)
    log_version(registry, tmp_path, project, name, {"f.txt": data})
    sha = registry.resolve(project, name, "v1").manifest.get("f.txt").sha256
    counting = CountingFetches(registry)
    return data, sha, counting, make_fs(counting, **fs_options)


def test_a_read_waits_for_the_blob_another_thread_is_writing_instead_of_fetching_it(
    registry, make_fs, cache, project, tmp_path
):
    data, sha, counting, fs = _one_file_counting(registry, make_fs, project, tmp_path, "w", 700)
    held = cache.locks.acquire(sha)  # another thread of the mount (the cache fill) is writing this blob
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_file, fs, f"/{project}/w/v1/f.txt")
        time.sleep(0.1)  # (within the reader's LOCAL_WRITER_WAIT)
        # waiting for the writer: no fetch, and no fetch of its own queued behind the writer's lock either
        assert not reading.done() and counting.fetches == 0 and fs.reader.pending_fetches() == 0
        cache._fetch_into_cache(sha, len(data), lambda w: registry.fetch_blob(sha, len(data), w), "fill")
        held.release()
        assert reading.result(10) == data
    assert counting.fetches == 0  # the reader took the blob the writer admitted


def test_a_writer_that_holds_the_blob_past_the_timeout_fails_the_read_and_the_blob_is_fetched_once(
    registry, make_fs, cache, project, tmp_path
):
    data, sha, counting, fs = _one_file_counting(registry, make_fs, project, tmp_path, "s", 500, timeout=0.5)
    held = cache.locks.acquire(sha)  # a stalled writer
    try:
        with pytest.raises(FetchError, match="timeout"):
            read_file(fs, f"/{project}/s/v1/f.txt")
        assert counting.fetches == 0 and not cache.contains(sha)
    finally:
        held.release()
    assert _wait_until(lambda: fs.reader.pending_fetches() == 0)  # the timed-out read's fetch goes on, then ends
    assert read_file(fs, f"/{project}/s/v1/f.txt") == data
    assert counting.fetches == 1
