"""Unit tests of the content-addressed cache: fetch once, verify, bound, evict, survive restarts, share."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time

import pytest

from wanllmdb.cache import ArtifactCache, BlobCache, Placer
from wanllmdb.cache.store import blob_stamp
from wanllmdb.errors import CacheError, ChecksumError, InvalidNameError, InvalidPathError
from wanllmdb.manifest.chunkhash import chunk_hash


def _blob(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def _fetcher(data: bytes, calls: list | None = None):
    def fetch(writer):
        if calls is not None:
            calls.append(1)
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])

    return fetch


def test_ensure_fetches_once_and_serves_verified_bytes(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(5000)
    sha, size = _blob(data)
    calls: list = []
    path = cache.ensure(sha, size, _fetcher(data, calls))
    assert open(path, "rb").read() == data
    assert cache.ensure(sha, size, _fetcher(data, calls)) == path
    assert len(calls) == 1
    assert oct(os.stat(path).st_mode & 0o777) == "0o444"
    assert cache.total_size() == size


@pytest.mark.parametrize("corrupt", ["flip", "short", "long"])
def test_mismatched_bytes_raise_and_leave_nothing_behind(tmp_path, corrupt):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(3000)
    sha, size = _blob(data)
    bad = {"flip": bytes([data[0] ^ 0xFF]) + data[1:], "short": data[:-1], "long": data + b"!"}[corrupt]
    with pytest.raises(ChecksumError) as info:
        cache.ensure(sha, size, _fetcher(bad), label="proj/art:v1/train.csv")
    assert isinstance(info.value, ValueError)
    assert "train.csv" in str(info.value)
    assert cache.lookup(sha) is None
    assert os.listdir(tmp_path / "c" / "tmp") == []
    assert cache.total_size() == 0


def test_a_failing_fetch_leaves_no_partial_blob(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(3000)
    sha, size = _blob(data)

    def broken(writer):
        writer.write(data[:1000])
        raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        cache.ensure(sha, size, broken)
    assert cache.lookup(sha) is None and os.listdir(tmp_path / "c" / "tmp") == []


def test_size_limit_holds_at_every_write_evicting_least_recently_used(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), max_bytes=10_000)
    blobs = [os.urandom(3000) for _ in range(5)]
    shas = []
    for i, data in enumerate(blobs):
        sha, size = _blob(data)
        shas.append(sha)
        cache.ensure(sha, size, _fetcher(data))
        assert cache.total_size() <= 10_000
        if i == 2:
            cache.flush()
            cache._touched.clear()
            cache.index.touch_blobs({shas[0]: 3000}, now=time.time() + 100)  # blob 0 used most recently
    present = [sha for sha in shas if cache.contains(sha)]
    assert shas[0] in present, "the recently used blob survives"
    assert shas[4] in present, "the blob just written survives"
    assert shas[1] not in present
    assert len(present) == 3


def test_cleanup_plan_then_execute_and_dry_run_removes_nothing(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    old, new = os.urandom(100), os.urandom(200)
    for data in (old, new):
        cache.ensure(*_blob(data), _fetcher(data))
    cache.flush()
    cache.index.touch_blobs({_blob(old)[0]: 100}, now=time.time() - 10 * 86400)
    plan = cache.plan_cleanup(max_age=7 * 86400)
    assert [e.key for e in plan.entries] == [_blob(old)[0]] and plan.freed_bytes == 100
    assert cache.contains(_blob(old)[0]), "planning removes nothing"
    assert plan.execute() == 100
    assert not cache.contains(_blob(old)[0]) and cache.contains(_blob(new)[0])
    assert cache.plan_cleanup(max_bytes=0).freed_bytes == 200


def _cached_by_another_process(root: str, size: int = 1234) -> tuple[str, int]:
    """A blob of ``size`` random bytes cached (and indexed) by a cache that is then closed."""
    data = os.urandom(size)
    sha, size = _blob(data)
    first = BlobCache(root)
    first.ensure(sha, size, _fetcher(data))
    first.close()
    return sha, size


def test_index_survives_restart_and_heals_unindexed_blobs(tmp_path):
    root = str(tmp_path / "c")
    sha, size = _cached_by_another_process(root)
    reopened = BlobCache(root)
    assert reopened.total_size() == size and reopened.lookup(sha)
    reopened.index.remove([sha])  # as if a process died between rename and indexing
    third = BlobCache(root)
    assert third.lookup(sha) is not None
    assert third.index.get(sha) is not None and third.total_size() == size


def test_deferred_touches_reach_the_index_at_the_next_flush_and_heal_unindexed_blobs(tmp_path):
    root = str(tmp_path / "c")
    sha, size = _cached_by_another_process(root)
    BlobCache(root).index.touch_blobs({sha: size}, now=(old := time.time() - 3600))
    mount = BlobCache(root)  # a fresh process that owns a flush timer, as the mount's reader
    mount.defer_touches()
    assert mount.lookup(sha) is not None
    assert mount.has_pending(), "the hit's touch waits for the flush"
    assert mount.index.get(sha).last_access == pytest.approx(old), "not written inside the hit"
    mount.flush()
    assert not mount.has_pending()
    assert mount.index.get(sha).last_access > old + 3000
    # healing: a blob present on disk but missing from the index is indexed again by the deferred touch
    mount.index.remove([sha])
    mount._touched.clear()
    assert mount.lookup(sha) is not None
    mount.flush()
    assert mount.index.get(sha) is not None and mount.total_size() == size


def test_a_deferred_touch_of_a_blob_evicted_meanwhile_does_not_index_it_again(tmp_path):
    root = str(tmp_path / "c")
    sha, size = _cached_by_another_process(root, 2000)
    mount = BlobCache(root)
    mount.defer_touches()
    mount.flush()
    assert mount.lookup(sha) is not None and mount.has_pending()
    other = BlobCache(root)  # another process evicts it before the mount's flush
    assert other.plan_cleanup(max_bytes=0).execute() == size
    mount.flush()
    assert mount.index.get(sha) is None, "no ghost entry counted against the limit"
    assert mount.total_size() == 0


def test_preloaded_stamps_still_catch_a_blob_changed_through_a_hard_link(tmp_path):
    root = str(tmp_path / "c")
    blobs = [os.urandom(3000) for _ in range(3)]
    first = BlobCache(root)
    for data in blobs:
        first.ensure(*_blob(data), _fetcher(data))
    first.close()
    shas = [_blob(data)[0] for data in blobs]
    changed = first.blob_path(shas[1])
    os.chmod(changed, 0o644)
    with open(changed, "r+b") as f:  # what a write through a download's hard link does
        f.write(bytes([blobs[1][0] ^ 0xFF]))
    fresh = BlobCache(root)
    fresh.preload_stamps(shas)
    assert fresh.lookup(shas[0]) is not None and fresh.lookup(shas[2]) is not None
    assert fresh.lookup(shas[1]) is None, "a changed blob is not served on a preloaded stamp"
    assert not os.path.exists(changed), "and it was evicted, to be fetched again"


def test_blobs_are_created_read_only_and_stamped_as_renamed(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(4096)
    sha, size = _blob(data)
    path = cache.ensure(sha, size, _fetcher(data))
    assert oct(os.stat(path).st_mode & 0o777) == "0o444"
    cache.flush()
    fresh = BlobCache(str(tmp_path / "c"))
    assert fresh.index.stamps([sha]) == {sha: blob_stamp(os.stat(path))}, "the stamp is the renamed file's"


def test_evicting_a_blob_does_not_break_an_open_reader(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(10_000)
    sha, size = _blob(data)
    path = cache.ensure(sha, size, _fetcher(data))
    with open(path, "rb") as reader:
        assert cache.plan_cleanup(max_bytes=0).execute() == size
        assert not os.path.exists(path)
        assert reader.read() == data


def test_verify_removes_corrupt_blobs(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    good, bad = os.urandom(100), os.urandom(100)
    for data in (good, bad):
        cache.ensure(*_blob(data), _fetcher(data))
    bad_path = cache.blob_path(_blob(bad)[0])
    os.chmod(bad_path, 0o644)
    with open(bad_path, "r+b") as f:
        f.write(b"corrupt")
    report = cache.verify()
    assert report.checked == 2 and report.corrupt == (_blob(bad)[0],)
    assert not cache.contains(_blob(bad)[0]) and cache.contains(_blob(good)[0])


def _slow_fetch_in_process(root: str, data: bytes, counter: str, out: str) -> None:
    cache = BlobCache(root)
    sha, size = _blob(data)

    def fetch(writer):
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        writer.write(data)

    path = cache.ensure(sha, size, fetch)
    with open(out, "wb") as f:
        f.write(open(path, "rb").read())


def test_two_processes_fetching_one_blob_fetch_it_once_and_both_read_it(tmp_path):
    root = str(tmp_path / "c")
    BlobCache(root).close()
    data = os.urandom(50_000)
    counter = str(tmp_path / "count")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_slow_fetch_in_process, args=(root, data, counter, str(tmp_path / f"out{i}")))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert open(counter).read() == "x"
    for i in range(2):
        assert (tmp_path / f"out{i}").read_bytes() == data


def test_lock_wait_has_a_deadline(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(10)
    sha, size = _blob(data)
    with cache._blob_lock(sha, None):
        with pytest.raises(CacheError, match="timed out"):
            BlobCache(str(tmp_path / "c")).ensure(sha, size, _fetcher(data), lock_timeout=0.2)


def test_partial_file_promoted_after_whole_check(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(20_000)
    sha, size = _blob(data)
    partial = cache.new_partial(sha, size)
    with open(partial, "r+b") as f:
        f.write(data)
    cache.account_partial(partial, size)
    assert cache.promote_partial(partial, sha, size) == cache.blob_path(sha)
    assert open(cache.blob_path(sha), "rb").read() == data
    assert not os.path.exists(partial) and cache.total_size() == size
    wrong = cache.new_partial("b" * 64, 5)
    with pytest.raises(ChecksumError):
        cache.promote_partial(wrong, "b" * 64, 5)
    assert not os.path.exists(wrong) and not cache.contains("b" * 64)


def test_placer_refuses_paths_escaping_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    src = tmp_path / "src"
    src.write_bytes(b"data")
    placer = Placer(str(root))
    with pytest.raises(InvalidPathError):
        placer.place("../escape", str(src))
    with pytest.raises(InvalidPathError, match="outside"):
        placer.place("link/evil", str(src))
    assert list(outside.iterdir()) == []
    target = placer.place("ok/file.txt", str(src))
    assert os.path.samefile(target, src), "placed as a hard link"


def test_seed_artifact_cache_api(tmp_path):
    folder = tmp_path / "art"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    cache = ArtifactCache(root=str(tmp_path / "c"), max_size_gb=1.0)
    assert cache.get("proj/data", "v1") is None
    cache.put("proj/data", "v1", str(folder))
    view = cache.get("proj/data", "v1")
    assert open(os.path.join(view, "sub", "b.txt")).read() == "beta"
    listed = cache.list()
    assert listed[0]["artifact_id"] == "proj/data" and listed[0]["file_count"] == 2 and listed[0]["complete"]
    result = cache.cleanup(max_size_gb=0, max_age_days=30)
    assert result["freed_bytes"] == 9
    assert cache.get("proj/data", "v1") is None
    assert cache.list()[0]["complete"] is False
    with pytest.raises(InvalidNameError):
        cache.put("../../etc", "v1", str(folder))


def test_seed_artifact_cache_import_paths():
    import wanllmdb
    from wanllmdb.artifact_cache import ArtifactCache as FromModule

    assert wanllmdb.ArtifactCache is FromModule is ArtifactCache


def _chunked(data: bytes, chunk: int, algorithm: str = "blake3") -> list[str]:
    return [chunk_hash(algorithm).of(data[i : i + chunk]) for i in range(0, len(data), chunk)]


def _range_fetcher(data: bytes, corrupt: str | None = None, calls: list | None = None):
    def fetch_range(start, length, writer):
        piece = bytearray(data[start : start + length])
        if corrupt == "flip" and start == 2 * 64:
            piece[5] ^= 1
        if corrupt == "short" and start + length == len(data):
            piece = piece[:-1]
        if calls is not None:
            calls.append(start)
        for i in range(0, len(piece), 50):
            writer.write(bytes(piece[i : i + 50]))
        return len(piece)

    return fetch_range


def test_ensure_spans_fetches_verified_chunks_in_parallel_and_admits_without_a_whole_rehash(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(1000)
    sha, size = _blob(data)
    calls: list = []
    path = cache.ensure_spans(sha, size, 64, _chunked(data, 64), _range_fetcher(data, calls=calls), span=128, threads=3)
    assert open(path, "rb").read() == data
    assert sorted(calls) == list(range(0, 1000, 128))
    assert oct(os.stat(path).st_mode & 0o777) == "0o444"
    assert cache.total_size() == size
    assert os.listdir(os.path.join(cache.root, "partial")) == []
    assert cache.ensure_spans(sha, size, 64, _chunked(data, 64), _range_fetcher(data, calls=calls), span=128,
                              threads=3) == path
    assert len(calls) == 8  # the second call found it cached


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
@pytest.mark.parametrize("corrupt", ["flip", "short", "wrong-chunks"])
def test_ensure_spans_with_a_bad_chunk_or_span_raises_and_leaves_nothing_behind(tmp_path, corrupt, algorithm):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(1000)
    sha, size = _blob(data)
    chunks = _chunked(data, 64, algorithm)
    if corrupt == "wrong-chunks":
        chunks[-1] = chunk_hash(algorithm).prefix + "0" * 64
    fetch = _range_fetcher(data, corrupt if corrupt != "wrong-chunks" else None)
    with pytest.raises(ChecksumError):
        cache.ensure_spans(sha, size, 64, chunks, fetch, span=128, threads=2)
    assert cache.lookup(sha) is None
    assert os.listdir(os.path.join(cache.root, "partial")) == []
    assert cache.total_size() == 0
    assert [name for _d, _s, names in os.walk(os.path.join(cache.root, "blobs")) for name in names] == []


def test_ensure_spans_refuses_chunk_digests_that_do_not_cover_the_blob(tmp_path):
    cache = BlobCache(str(tmp_path / "c"))
    data = os.urandom(1000)
    sha, size = _blob(data)
    with pytest.raises(ValueError):
        cache.ensure_spans(sha, size, 64, _chunked(data, 64)[:-1], _range_fetcher(data), span=128, threads=2)


@pytest.mark.parametrize("size", [16 << 20, (40 << 20) + 5, 128 << 20, 1 << 30, (3 << 20) + 321])
@pytest.mark.parametrize("chunk", [1 << 20, 3 << 20])
def test_download_spans_are_whole_chunks_within_bounds(size, chunk):
    from wanllmdb.sdk.transfer import SPAN_BYTES, span_for

    span = span_for(size, chunk, 4)
    assert span % chunk == 0 and chunk <= span <= max(chunk, SPAN_BYTES)
