"""Reading without a mount: ``wanllmdb://`` (fsspec) beside the mount and ``download()``, in one run.

The same server, the same big file (``ctx.sizes.big``) and the same ``ctx.sizes.mount_small`` small files:

- big file: fsspec ``open().read()`` in 8 MiB reads; ``cat`` through a ``wanllmdb mount``; ``download()``;
- small files: fsspec ``open().read()`` of each; reading each through the mount; ``download()`` of the version;

each cold (a fresh cache directory) and warm (the same cache, read again by a new process). Readers run in
subprocesses with their own cache, like users' programs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from .context import Context
from .data import make_file, make_small_files
from .harness import Result, mbps
from .mounts import WanllmdbMount
from .servers import BenchServer, start_server

READER = r"""
import json, os, sys, time
action, target = sys.argv[1:3]
t0 = time.perf_counter()
count = nbytes = 0
if action == "fsspec-big":
    import fsspec
    with fsspec.open(target, "rb") as f:
        while block := f.read(8 << 20):
            nbytes += len(block)
    count = 1
elif action == "fsspec-small":
    import fsspec
    fs = fsspec.filesystem("wanllmdb")
    for path in sorted(fs.find(target)):
        with fs.open(path, "rb") as f:
            nbytes += len(f.read())
        count += 1
elif action == "files":  # every file under a directory (the mount)
    for root, _dirs, names in os.walk(target):
        for name in sorted(names):
            with open(os.path.join(root, name), "rb") as f:
                nbytes += len(f.read())
            count += 1
elif action == "download":
    import wanllmdb
    art = wanllmdb.Api().artifact(target)
    art.download(sys.argv[3])
    count, nbytes = art.file_count, art.size
print(json.dumps({"seconds": time.perf_counter() - t0, "files": count, "bytes": nbytes}))
"""


def _read(ctx: Context, server: BenchServer, cache: str, *args: str) -> dict:
    os.sync()
    env = ctx.env("fsspec-reader", WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key,
                  WANLLMDB_CACHE_DIR=cache)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", READER, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reader {args} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _log(ctx: Context, server: BenchServer, name: str, path: str) -> None:
    from .bench_http import client

    client(ctx, server, ctx.path("fsspec", "cache-log", ""), "log", name, path)


def run(ctx: Context) -> list[Result]:
    big = make_file(ctx.path("inputs", "big.bin"), ctx.sizes.big)
    n = ctx.sizes.mount_small
    small = make_small_files(ctx.path("inputs", f"fsspec-small{n}", ""), n, seed=5)
    server = start_server(ctx.path("fsspec", "server", ""))
    results: list[Result] = []
    figures: dict[str, dict[str, float]] = {}
    try:
        _log(ctx, server, "big", big)
        _log(ctx, server, "small", small)
        for method in ("fsspec", "mount", "download"):
            for what in ("big", "small"):
                cache = ctx.path("fsspec", f"cache-{method}-{what}", "")
                shutil.rmtree(cache, ignore_errors=True)
                runs = [_one(ctx, server, method, what, cache, round_) for round_ in ("cold", "warm")]
                figures[f"{method} {what}"] = {"cold": runs[0]["seconds"], "warm": runs[1]["seconds"]}
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        server.stop()
    for round_ in ("cold", "warm"):
        big_mount, small_mount = figures["mount big"][round_], figures["mount small"][round_]
        for method in ("fsspec", "download"):
            results.append(Result("fsspec", f"{method} 1 file of {ctx.sizes.big >> 20} MiB, {round_}",
                                  mbps(ctx.sizes.big, figures[f"{method} big"][round_]), "MB/s", "mount (cat)",
                                  mbps(ctx.sizes.big, big_mount)))  # fmt: skip
            results.append(Result("fsspec", f"{method} {n:,} small files, {round_}",
                                  n / figures[f"{method} small"][round_], "files/s", "mount (read each)",
                                  n / small_mount))  # fmt: skip
    results[0].notes = {"seconds": figures}
    return results


def _one(ctx: Context, server: BenchServer, method: str, what: str, cache: str, round_: str) -> dict:
    ref = f"bench/{what}:latest"
    if method == "fsspec":
        target = f"wanllmdb://bench/big:latest/{os.path.basename(ctx.path('inputs', 'big.bin'))}"
        return _read(ctx, server, cache, "fsspec-big" if what == "big" else "fsspec-small",
                     target if what == "big" else f"wanllmdb://{ref}")  # fmt: skip
    if method == "download":
        out = ctx.path("fsspec", f"out-{what}-{round_}", "")
        try:
            return _read(ctx, server, cache, "download", ref, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    mountpoint = ctx.path("fsspec", f"mnt-{what}-{round_}", "")
    env = ctx.env("fsspec-mount")
    with WanllmdbMount(server, mountpoint, cache, ctx.path("fsspec", f"mount-{what}-{round_}.log"), env):
        started = time.perf_counter()
        result = _read(ctx, server, cache, "files", os.path.join(mountpoint, "bench", what, "latest"))
        result["wall"] = time.perf_counter() - started
        return result
