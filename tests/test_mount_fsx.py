"""fsx-style check of the mount: random ``pread``s, ``mmap`` slices and whole reads from several threads,
interleaved across files whose sizes sit on and around chunk boundaries, compared byte for byte with the
source, on a cold mount and again warm, over both registries (issue 10's fault suite).

A fixed seed and a fixed number of operations; ``WANLLMDB_LONG_TESTS=1`` runs ten times as many on larger files.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import threading
from dataclasses import dataclass

import pytest

from tests.support.mount import log_version

pytestmark = pytest.mark.fuse

logger = logging.getLogger(__name__)

LONG = os.environ.get("WANLLMDB_LONG_TESTS") == "1"
CHUNK = 64 * 1024
OPS = 20_000 if LONG else 1_500
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
        else:  # the whole file, sequentially
            with open(path, "rb") as f:
                got = f.read()
            want = data
        ops += 1
        compared += len(want)
        if got != want:
            bad += 1
            logger.error("mismatch in %s (%d bytes wanted, %d read)", name, len(want), len(got))
    with lock:
        tally.ops += ops
        tally.bytes_compared += compared
        tally.mismatches += bad


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
    logger.info(
        "fsx: cold %d ops / %d bytes, warm %d ops / %d bytes, %d mismatches",
        cold.ops, cold.bytes_compared, warm.ops, warm.bytes_compared, cold.mismatches + warm.mismatches,
    )  # fmt: skip
    assert cold.ops == warm.ops == (OPS // THREADS) * THREADS
    assert cold.bytes_compared > 0 and warm.bytes_compared > 0
    assert cold.mismatches == 0 and warm.mismatches == 0
    assert mnt.stats()["failures"] == 0
