"""Garbage collection throughput: blobs reclaimed per second, beside deleting the same files with ``rm``.

An embedded registry gets N small unreferenced blobs (as deleted versions leave them); a collection with a
zero grace marks and sweeps them all. The baseline is ``os.unlink`` of N files of the same size in the same
run (what any collector must at least pay on this filesystem). The mark phase's manifest parsing is measured
with one live version of ``N`` files, which every mark reads.
"""

from __future__ import annotations

import os
import time

from .context import Context
from .harness import Result


def _fill(registry, count: int, size: int = 512) -> None:
    for _ in range(count):
        data = os.urandom(size)
        incoming = registry.blobs.begin(None, size)
        incoming.write(data)
        incoming.commit()


def run(ctx: Context) -> list[Result]:
    from wanllmdb.registry.local import LocalRegistry

    count = 2_000 if ctx.quick else 20_000
    registry = LocalRegistry(ctx.path("gc", "registry", ""))
    try:
        _fill(registry, count)
        marked = registry.collect_garbage(grace=3600)  # mark only
        started = time.perf_counter()
        swept = registry.collect_garbage(grace=0)
        seconds = time.perf_counter() - started
    finally:
        registry.close()
    plain = ctx.path("gc", "plain", "")
    for i in range(count):
        with open(os.path.join(plain, f"{i:06d}"), "wb") as f:
            f.write(os.urandom(512))
    started = time.perf_counter()
    for i in range(count):
        os.unlink(os.path.join(plain, f"{i:06d}"))
    unlink_seconds = time.perf_counter() - started
    rate = swept.swept / seconds
    return [
        Result("gc", f"collect {count:,} unreferenced blobs (embedded)", rate, "blobs/s", "os.unlink of the files",
               count / unlink_seconds, notes={"mark": marked.to_dict(), "sweep": swept.to_dict()}),
    ]  # fmt: skip
