"""The mount's chunk reader against a fake, fault-injecting registry: no FUSE, no server."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from wanllmdb.cache import BlobCache, store
from wanllmdb.errors import ChecksumError, FetchError, TransportError
from wanllmdb.fs.reader import ChunkReader
from wanllmdb.manifest import ManifestEntry, hash_bytes

CHUNK = 64 * 1024
STREAM_PIECE = 5000  # not a divisor of CHUNK: the last piece of a chunk is short


def make_entry(data: bytes, path: str = "f.bin", chunk_size: int = CHUNK) -> ManifestEntry:
    d = hash_bytes(data, chunk_size)
    return ManifestEntry(path, d.size, d.md5, d.sha256, d.chunk_size, d.chunks)


class FakeRemote:
    """Blobs by SHA-256, with injectable delays, stalls, failures and corruption."""

    def __init__(self, *blobs: bytes) -> None:
        self.blobs = {hash_bytes(b).sha256: b for b in blobs}
        self.lock = threading.Lock()
        self.ranges: list[tuple[str, int, int]] = []
        self.whole: list[str] = []
        self.stall: dict[str, threading.Event] = {}  # sha -> released when set
        self.fail_next: list[Exception] = []
        self.corrupt: set[tuple[str, int]] = set()  # (sha, start) ranges returned with a flipped byte
        self.short: set[tuple[str, int]] = set()

    def fetch_range(self, sha256: str, start: int, length: int) -> bytes:
        with self.lock:
            self.ranges.append((sha256, start, length))
            failure = self.fail_next.pop(0) if self.fail_next else None
        gate = self.stall.get(sha256)
        if gate is not None:
            gate.wait(10)
        if failure is not None:
            raise failure
        data = self.blobs[sha256][start : start + length]
        if (sha256, start) in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if (sha256, start) in self.short:
            data = data[:-1]
        return data

    def fetch_range_into(self, sha256: str, start: int, length: int, writer) -> int:
        """What the reader calls: the same bytes (and faults) as ``fetch_range``, handed over in small pieces."""
        data = self.fetch_range(sha256, start, length)
        for pos in range(0, len(data), STREAM_PIECE):
            writer.write(data[pos : pos + STREAM_PIECE])
        return len(data)

    def fetch_blob(self, sha256: str, size: int, writer) -> None:
        with self.lock:
            self.whole.append(sha256)
        gate = self.stall.get(sha256)
        if gate is not None:
            gate.wait(10)
        writer.write(self.blobs[sha256])

    def chunk_fetches(self, sha256: str) -> list[int]:
        """Every chunk each request covered, in order (a chunk fetched twice appears twice)."""
        with self.lock:
            return [
                index
                for sha, start, length in self.ranges
                if sha == sha256
                for index in range(start // CHUNK, -(-(start + length) // CHUNK))
            ]

    def chunks_fetched(self, sha256: str) -> list[int]:
        return sorted(set(self.chunk_fetches(sha256)))


@pytest.fixture
def stop():
    future: Future[None] = Future()
    yield future
    if not future.done():
        future.set_result(None)


@pytest.fixture
def cache(tmp_path):
    c = BlobCache(str(tmp_path / "cache"), 1 << 30)
    yield c
    c.close()


def make_reader(cache, remote, stop, **options) -> ChunkReader:
    options.setdefault("timeout", 5.0)
    return ChunkReader(cache, remote.fetch_range_into, remote.fetch_blob, stop=stop, **options)


def read_all(reader, handle, size: int, piece: int = 128 * 1024) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = reader.read(handle, piece, len(out))
        assert data, "unexpected EOF"
        out += data
    return bytes(out)


def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def settle(reader: ChunkReader, timeout: float = 5.0) -> None:
    """Wait until no fetch is queued or running."""
    deadline = time.monotonic() + timeout
    def busy() -> bool:
        with reader._lock:
            parts = list(reader._partials.values()) + list(reader._idle.values())
        # a partial whose last chunk landed is hashed and promoted on the worker after its flight ends
        return bool(reader.pending_fetches()) or any(p.count == p.nchunks and not p.done for p in parts)

    while busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not busy(), "fetches still running"


def test_small_file_is_fetched_whole_once_then_served_from_the_cache(cache, stop):
    data = os.urandom(5000)
    remote = FakeRemote(data)
    entry = make_entry(data, chunk_size=CHUNK)
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/small")
    assert reader.read(handle, 10_000, 0) == data
    assert reader.read(handle, 100, 4990) == data[4990:]
    assert cache.lookup(entry.sha256) is not None
    reader.release(handle)
    again = reader.open(entry, "p/a:v1/small")
    assert reader.read(again, 10, 0) == data[:10]
    assert remote.whole == [entry.sha256]
    assert reader.stats.cache_hits == 1


def test_head_of_a_cold_large_file_fetches_at_most_two_chunks(cache, stop):
    data = os.urandom(100 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/big")
    assert reader.read(handle, 100, 0) == data[:100]
    settle(reader)
    assert remote.chunks_fetched(entry.sha256) in ([0], [0, 1])
    assert remote.whole == []


def test_sequential_reads_grow_the_read_ahead_window_and_complete_into_the_cache(cache, stop):
    data = os.urandom(40 * CHUNK + 123)
    remote = FakeRemote(data)
    entry = make_entry(data)
    reader = make_reader(cache, remote, stop, fetch_bytes=4 * CHUNK, readahead_bytes=16 * CHUNK)
    handle = reader.open(entry, "p/a:v1/seq")
    assert reader.read(handle, 1000, 0) == data[:1000]
    settle(reader)
    assert remote.chunks_fetched(entry.sha256) == [0, 1]
    assert reader.read(handle, CHUNK, CHUNK) == data[CHUNK : 2 * CHUNK]  # enters chunk 1: window 2
    settle(reader)
    assert remote.chunks_fetched(entry.sha256) == [0, 1, 2, 3]
    assert remote.ranges[-1][1:] == (2 * CHUNK, 2 * CHUNK)  # the window's two chunks in one request
    assert read_all(reader, handle, len(data), piece=CHUNK // 2) == data
    settle(reader)
    eventually(lambda: reader.stats.promoted == 1)
    assert reader.stats.readahead_chunks > 0
    assert sorted(remote.chunk_fetches(entry.sha256)) == list(range(41))  # every chunk fetched once
    assert len(remote.ranges) < 20  # in requests of several chunks
    assert max(length for _, _, length in remote.ranges) <= 4 * CHUNK  # none larger than fetch_bytes
    assert reader.stats.chunks_fetched == 41
    blob = cache.lookup(entry.sha256)
    assert blob is not None and open(blob, "rb").read() == data
    assert reader.read(handle, 50, len(data) - 50) == data[-50:]  # the open handle keeps working
    reader.release(handle)


def test_a_chunk_is_served_as_soon_as_it_is_verified_not_when_its_request_ends(cache, stop):
    data = os.urandom(8 * CHUNK)
    entry = make_entry(data)
    arrived = threading.Event()
    release = threading.Event()

    class Trickle(FakeRemote):
        def fetch_range_into(self, sha256, start, length, writer):
            with self.lock:
                self.ranges.append((sha256, start, length))
            body = self.blobs[sha256][start : start + length]
            writer.write(body[:CHUNK])  # the first chunk of the request, whole
            arrived.set()
            release.wait(10)  # the rest of the body is slow
            writer.write(body[CHUNK:])
            return length

    remote = Trickle(data)
    reader = make_reader(cache, remote, stop, fetch_bytes=8 * CHUNK)
    handle = reader.open(entry, "p/a:v1/trickle.bin")
    assert reader.read(handle, 10, 0) == data[:10]  # demand: chunk 0 alone
    assert reader.read(handle, CHUNK, 10) == data[10 : CHUNK + 10]  # enters chunk 1 (read-ahead: 2, 3)
    release.set()
    settle(reader)
    arrived.clear()
    release.clear()
    handle.window = 8  # a reader well into its stream: the next read-ahead asks for chunks 4-7 at once
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(reader.read, handle, CHUNK, 3 * CHUNK)
        assert ahead.result(5) == data[3 * CHUNK : 4 * CHUNK]
        assert arrived.wait(5)
        started = time.monotonic()
        # chunk 4 is verified while the request for 4-7 is still running: its reader does not wait for 5-7
        assert reader.read(handle, 100, 4 * CHUNK) == data[4 * CHUNK : 4 * CHUNK + 100]
        assert time.monotonic() - started < 2
        assert not release.is_set()
    release.set()
    settle(reader)
    assert remote.ranges[-1][1:] == (4 * CHUNK, 4 * CHUNK)
    assert reader.read(handle, 100, 7 * CHUNK) == data[7 * CHUNK : 7 * CHUNK + 100]


def test_random_reads_fetch_only_the_chunks_they_touch(cache, stop):
    data = os.urandom(64 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/random")
    touched = [50, 7, 33, 12, 60]
    for index in touched:
        offset = index * CHUNK + 17
        assert reader.read(handle, 4096, offset) == data[offset : offset + 4096]
    settle(reader)
    assert remote.chunks_fetched(entry.sha256) == sorted(touched)
    assert reader.stats.readahead_chunks == 0


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])  # SHA-256: chunk digests of manifests before BLAKE3
def test_wrong_bytes_fail_the_read_and_are_never_served(cache, stop, caplog, monkeypatch, algorithm):
    monkeypatch.setenv("WANLLMDB_CHUNK_HASH", algorithm)
    data = os.urandom(8 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    assert entry.chunks[0].startswith("blake3:") == (algorithm == "blake3")
    monkeypatch.delenv("WANLLMDB_CHUNK_HASH")  # what a reader checks with comes from the entry alone
    remote.corrupt.add((entry.sha256, 3 * CHUNK))
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/corrupt.bin")
    with pytest.raises(ChecksumError, match="chunk 3"):
        reader.read(handle, 100, 3 * CHUNK + 5)
    title = {"blake3": "BLAKE3", "sha256": "SHA-256"}[algorithm]
    assert "p/a:v1/corrupt.bin" in caplog.text and f"{title} mismatch" in caplog.text
    assert reader.read(handle, 100, 5 * CHUNK) == data[5 * CHUNK : 5 * CHUNK + 100]  # other chunks are fine
    with pytest.raises(ChecksumError):
        reader.read(handle, 100, 3 * CHUNK + 5)  # still refused: the bad chunk was not kept
    remote.corrupt.clear()
    assert reader.read(handle, 100, 3 * CHUNK + 5) == data[3 * CHUNK + 5 : 3 * CHUNK + 105]


def test_a_bad_chunk_inside_a_request_keeps_the_good_ones_before_it(cache, stop):
    data = os.urandom(6 * CHUNK)
    entry = make_entry(data)

    class FlipInChunk2(FakeRemote):
        def fetch_range(self, sha256, start, length):
            body = bytearray(super().fetch_range(sha256, start, length))
            if start <= 2 * CHUNK + 7 < start + length:
                body[2 * CHUNK + 7 - start] ^= 0xFF
            return bytes(body)

    remote = FlipInChunk2(data)
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/mixed.bin")
    with pytest.raises(ChecksumError, match="chunk 2"):
        reader.read(handle, 4 * CHUNK, 0)  # one request for chunks 0-3
    assert remote.ranges == [(entry.sha256, 0, 4 * CHUNK)]
    assert reader.read(handle, 2 * CHUNK, 0) == data[: 2 * CHUNK]  # verified before the bad one: kept
    settle(reader)
    assert all(start >= 2 * CHUNK for _, start, _ in remote.ranges[1:])  # (read-ahead asks for chunk 2 again)
    with pytest.raises(ChecksumError, match="chunk 2"):
        reader.read(handle, 10, 2 * CHUNK)  # never served, fetched again, refused again
    assert reader.read(handle, 10, 3 * CHUNK) == data[3 * CHUNK : 3 * CHUNK + 10]


def test_a_reader_of_a_good_chunk_behind_a_bad_one_in_the_same_request_gets_its_bytes(cache, stop):
    data = os.urandom(4 * CHUNK)
    entry = make_entry(data)
    gate, asked = threading.Event(), threading.Event()

    class BadChunk1(FakeRemote):
        def fetch_range(self, sha256, start, length):
            if start == 0:
                asked.set()
                gate.wait(10)  # the request for chunks 0-3 waits until both readers are on it
            body = bytearray(super().fetch_range(sha256, start, length))
            if start <= CHUNK + 3 < start + length:
                body[CHUNK + 3 - start] ^= 0xFF
            return bytes(body)

    remote = BadChunk1(data)
    reader = make_reader(cache, remote, stop)
    first, second = reader.open(entry, "p/a:v1/bad1.bin"), reader.open(entry, "p/a:v1/bad1.bin")
    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(reader.read, first, 4 * CHUNK, 0)  # one request for chunks 0-3
        assert asked.wait(5)
        tail = pool.submit(reader.read, second, 100, 3 * CHUNK)  # joins that request for chunk 3
        time.sleep(0.2)
        assert not tail.done() and len(remote.ranges) == 0  # waiting on the request in flight
        gate.set()
        with pytest.raises(ChecksumError, match="chunk 1"):
            whole.result(5)
        assert tail.result(5) == data[3 * CHUNK : 3 * CHUNK + 100]  # asked again on its own, not failed
    assert remote.ranges[0][1:] == (0, 4 * CHUNK)
    assert any(start >= 2 * CHUNK for _, start, _ in remote.ranges[1:])


def test_a_short_range_fails_the_read(cache, stop):
    data = os.urandom(4 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    remote.short.add((entry.sha256, 0))
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/short.bin")
    with pytest.raises(ChecksumError, match="expected 65536 bytes"):
        reader.read(handle, 10, 0)


def test_a_failed_fetch_fails_the_read_and_the_next_read_retries(cache, stop):
    data = os.urandom(4 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    remote.fail_next.append(TransportError("connection reset"))
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/flaky.bin")
    with pytest.raises(TransportError):
        reader.read(handle, 10, 3 * CHUNK)
    assert reader.read(handle, 10, 3 * CHUNK) == data[3 * CHUNK : 3 * CHUNK + 10]
    assert reader.stats.failures == 1


def test_a_stalled_fetch_times_out_while_other_files_keep_reading(cache, stop):
    slow, fast = os.urandom(4 * CHUNK), os.urandom(4 * CHUNK + 1)
    remote = FakeRemote(slow, fast)
    slow_entry, fast_entry = make_entry(slow, "slow.bin"), make_entry(fast, "fast.bin")
    gate = remote.stall[slow_entry.sha256] = threading.Event()
    reader = make_reader(cache, remote, stop, timeout=0.5)
    slow_handle = reader.open(slow_entry, "p/a:v1/slow.bin")
    fast_handle = reader.open(fast_entry, "p/a:v1/fast.bin")
    outcome: dict[str, object] = {}

    def read_slow():
        started = time.monotonic()
        try:
            reader.read(slow_handle, 10, 0)
        except FetchError as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=read_slow)
    thread.start()
    assert read_all(reader, fast_handle, len(fast)) == fast  # not blocked by the stalled file
    thread.join(5)
    assert "timeout" in str(outcome["error"])
    assert outcome["elapsed"] < 3
    gate.set()
    settle(reader)
    assert reader.read(slow_handle, 10, 0) == slow[:10]  # the late chunk landed and is served


def test_shutdown_makes_waiting_reads_give_up_at_once(cache, stop):
    data = os.urandom(4 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    gate = remote.stall[entry.sha256] = threading.Event()
    reader = make_reader(cache, remote, stop, timeout=60)
    handle = reader.open(entry, "p/a:v1/stuck.bin")
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(reader.read, handle, 10, 0) for _ in range(4)]
        time.sleep(0.2)
        assert not any(f.done() for f in waiting)
        started = time.monotonic()
        stop.set_result(None)
        for future in waiting:
            with pytest.raises(FetchError, match="shutting down"):
                future.result(timeout=2)
        assert time.monotonic() - started < 1
    gate.set()


def test_concurrent_readers_of_one_chunk_fetch_it_once(cache, stop):
    data = os.urandom(40 * CHUNK)
    remote = FakeRemote(data)
    entry = make_entry(data)
    gate = remote.stall[entry.sha256] = threading.Event()
    reader = make_reader(cache, remote, stop)
    handles = [reader.open(entry, "p/a:v1/shared.bin") for _ in range(8)]
    offset = 30 * CHUNK + 100  # a seek: beyond the slack of a sequential read
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(reader.read, h, 1000, offset) for h in handles]
        time.sleep(0.2)
        gate.set()
        assert all(f.result(5) == data[offset : offset + 1000] for f in futures)
    assert remote.chunks_fetched(entry.sha256) == [30]
    assert len(remote.ranges) == 1


def test_a_cached_file_evicted_while_open_keeps_reading(cache, stop):
    small, big = os.urandom(3000), os.urandom(6 * CHUNK)
    remote = FakeRemote(small, big)
    small_entry, big_entry = make_entry(small, "s"), make_entry(big, "b")
    reader = make_reader(cache, remote, stop)
    big_handle = reader.open(big_entry, "p/a:v1/b")
    read_all(reader, big_handle, len(big))
    settle(reader)
    reader.release(big_handle)
    small_handle = reader.open(small_entry, "p/a:v1/s")
    big_handle = reader.open(big_entry, "p/a:v1/b")
    freed = cache.plan_cleanup(max_bytes=0).execute()
    assert freed > 0 and cache.lookup(small_entry.sha256) is None and cache.lookup(big_entry.sha256) is None
    assert reader.read(small_handle, 5000, 0) == small
    assert read_all(reader, big_handle, len(big)) == big


def test_a_file_whose_whole_digest_contradicts_its_chunks_is_refused(cache, stop, caplog):
    data = os.urandom(4 * CHUNK)
    remote = FakeRemote(data)
    good = make_entry(data)
    lying = ManifestEntry("f.bin", good.size, good.md5, "b" * 64, good.chunk_size, good.chunks)
    remote.blobs["b" * 64] = data
    reader = make_reader(cache, remote, stop)
    handle = reader.open(lying, "p/a:v1/lying.bin")
    with contextlib.suppress(ChecksumError):  # refused as soon as the whole file is checked, maybe mid-way
        read_all(reader, handle, len(data))
    settle(reader)
    eventually(lambda: "does not match its digest" in caplog.text)
    with pytest.raises(ChecksumError):
        reader.read(handle, 10, 0)
    assert cache.lookup("b" * 64) is None
    assert "does not match its digest" in caplog.text


def test_an_empty_file_reads_as_empty(cache, stop):
    remote = FakeRemote(b"")
    reader = make_reader(cache, remote, stop)
    handle = reader.open(make_entry(b"", "empty"), "p/a:v1/empty")
    assert reader.read(handle, 100, 0) == b""
    assert remote.whole == [] and remote.ranges == []


def test_reads_past_the_end_return_nothing(cache, stop):
    data = os.urandom(3 * CHUNK + 7)
    remote = FakeRemote(data)
    entry = make_entry(data)
    reader = make_reader(cache, remote, stop)
    handle = reader.open(entry, "p/a:v1/end.bin")
    assert reader.read(handle, 100, len(data) - 3) == data[-3:]
    assert reader.read(handle, 100, len(data)) == b""
    assert reader.read(handle, 100, len(data) + 10_000) == b""


def test_with_trusted_chunk_digests_a_corrupt_chunk_is_never_served_nor_admitted(cache, stop, caplog, monkeypatch):
    """The mount's mode (``trust_chunk_digests``): no whole-file hash on completion, so the chunk checks alone must
    keep wrong bytes out of reads and out of the shared cache."""
    data = os.urandom(6 * CHUNK + 11)
    remote = FakeRemote(data)
    entry = make_entry(data)
    remote.corrupt.add((entry.sha256, 2 * CHUNK))
    reader = make_reader(cache, remote, stop, trust_chunk_digests=True, readahead_bytes=0)
    handle = reader.open(entry, "p/a:v1/trusted.bin")
    for index in range(7):
        if index == 2:
            with pytest.raises(ChecksumError, match="chunk 2"):
                reader.read(handle, CHUNK, 2 * CHUNK)
        else:
            assert reader.read(handle, CHUNK, index * CHUNK) == data[index * CHUNK : (index + 1) * CHUNK]
    settle(reader)
    assert cache.lookup(entry.sha256) is None  # every chunk but the bad one is in: nothing admitted
    hashed: list[str] = []
    real = store.sha256_file
    monkeypatch.setattr(store, "sha256_file", lambda path: hashed.append(path) or real(path))
    remote.corrupt.clear()
    assert reader.read(handle, CHUNK, 2 * CHUNK) == data[2 * CHUNK : 3 * CHUNK]
    settle(reader)
    eventually(lambda: cache.lookup(entry.sha256) is not None)
    assert hashed == []  # admitted on the strength of its verified chunks: no second pass over the file
    with open(cache.lookup(entry.sha256), "rb") as f:
        assert f.read() == data
