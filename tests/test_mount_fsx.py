"""fsx-style check of the mount: random ``pread``s, ``mmap`` slices and sequential reads from several threads,
interleaved across files whose sizes sit on and around chunk boundaries, compared byte for byte with the
source, over both registries (issue 10's fault suite). Three rounds: cold (an empty cache: chunks fetched
as the reads need them), warm (the same mount: the kernel's page cache and the mount's partials), and
warm from disk (a new mount over the filled cache: every byte from cached blobs, nothing fetched).

A fixed seed and a fixed number of operations; ``WANLLMDB_LONG_TESTS=1`` runs five times as many on larger files.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import threading
from dataclasses import dataclass

import pytest

from tests.support.mount import log_version, wait_until
from wanllmdb.cache.store import BlobCache
from wanllmdb.manifest import hash_bytes

pytestmark = pytest.mark.fuse

logger = logging.getLogger(__name__)

LONG = os.environ.get("WANLLMDB_LONG_TESTS") == "1"
CHUNK = 64 * 1024
OPS = 20_000 if LONG else 4_000
THREADS = 4
SEED = 20261128


def _sizes() -> dict[str, int]:
    sizes = {
        "empty.bin": 0,
        "one.bin": 1,
        "below-chunk.bin": CHUNK - 1,
        "one-chunk.bin": CHUNK,
        "above-chunk.bin": CHUNK + 1,
        "odd.bin": 5 * CHUNK + 7,
        "dir/large.bin": 48 * CHUNK + 13,
    }
    if LONG:
        sizes["dir/huge.bin"] = 1024 * CHUNK + 3
    return sizes


@dataclass
class Tally:
    ops: int = 0
    bytes_compared: int = 0
    mismatches: int = 0


def _worker(root, files: dict[str, bytes], seed: int, count: int, tally: Tally, lock: threading.Lock) -> None:
    rnd = random.Random(seed)
    names = sorted(files)
    ops = compared = bad = 0
    for _ in range(count):
        name = rnd.choice(names)
        data = files[name]
        path = os.path.join(root, name)
        kind = rnd.random()
        if kind < 0.7 or not data:  # pread at a random place, sometimes across or past the end
            offset = rnd.randrange(0, len(data) + CHUNK)
            length = rnd.choice((1, 7, 4096, CHUNK - 1, CHUNK, CHUNK + 1, rnd.randrange(1, 4 * CHUNK)))
            fd = os.open(path, os.O_RDONLY)
            try:
                got = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            want = data[offset : offset + length]
        elif kind < 0.95:  # a slice of an mmap of the whole file
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                start = rnd.randrange(0, len(data))
                end = min(len(data), start + rnd.randrange(1, 3 * CHUNK))
                got = mapped[start:end]
            want = data[start:end]
        else:  # sequentially from a random place, in blocks of one size, up to 16 blocks or the end
            start, block = rnd.randrange(0, len(data)), rnd.choice((4096, CHUNK // 3, CHUNK, 128 * 1024))
            got = _read_sequentially(path, start, block, 16)
            want = data[start : start + 16 * block]
        ops += 1
        compared += len(want)
        if got != want:
            bad += 1
            logger.error("mismatch in %s (%d bytes wanted, %d read)", name, len(want), len(got))
    with lock:
        tally.ops += ops
        tally.bytes_compared += compared
        tally.mismatches += bad


def _read_sequentially(path, start: int, block: int, blocks: int | None = None) -> bytes:
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while (blocks is None or len(out) < blocks * block) and (piece := f.read(block)):
            out += piece
    return bytes(out)


def _round(root, files, seed: int) -> Tally:
    tally, lock = Tally(), threading.Lock()
    threads = [
        threading.Thread(target=_worker, args=(root, files, seed + i, OPS // THREADS, tally, lock))
        for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a reader hung"
    return tally


def test_random_reads_and_mmaps_match_the_source_cold_and_warm(registry, mounter, project, tmp_path):
    rnd = random.Random(SEED)
    files = {name: rnd.randbytes(size) for name, size in _sizes().items()}
    log_version(registry, tmp_path, project, "fsx", files, chunk_size=CHUNK)
    mnt = mounter()
    root = mnt.path / project / "fsx" / "v1"
    cold = _round(root, files, SEED)
    warm = _round(root, files, SEED + 100)
    for name, data in files.items():  # every byte once, so that the cache holds every blob whole
        assert _read_sequentially(root / name, 0, CHUNK) == data, name
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    shas = [hash_bytes(data).sha256 for data in files.values() if data]
    wait_until(lambda: all(cache.holds(sha) for sha in shas), 30, "every blob to be in the cache")
    assert mnt.stats()["failures"] == 0
    mnt.unmount()
    again = mounter()
    disk = _round(again.path / project / "fsx" / "v1", files, SEED + 200)
    stats = again.stats()
    rounds = {"cold": cold, "warm": warm, "warm from disk": disk}
    logger.info(
        "fsx (%s): %s; %d mismatches",
        registry.__class__.__name__,
        ", ".join(f"{name} {t.ops} ops / {t.bytes_compared} bytes" for name, t in rounds.items()),
        sum(t.mismatches for t in rounds.values()),
    )
    for name, tally in rounds.items():
        assert tally.ops == (OPS // THREADS) * THREADS and tally.bytes_compared > 0, name
        assert tally.mismatches == 0, name
    assert stats["failures"] == 0
    assert stats["chunks_fetched"] == stats["blobs_fetched"] == 0, stats  # the third round read only the cache
