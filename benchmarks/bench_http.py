"""Logging and downloading through ``wanllmdb server`` on loopback, beside plain ``requests`` PUT/GET.

- log_artifact of the big file vs hashing it alone and vs a plain ``requests`` PUT of the same bytes to the
  same server (through a presigned URL); 10,000 x 4 KB files (files/s, API requests); re-log unchanged
- download() cold of the big file vs a plain ``requests`` GET; the small files cold (files/s); the same
  fully cached (seconds; blob requests must be 0)

Clients run in subprocesses (fresh interpreters, their own cache), the server in another.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import requests

from wanllmdb.manifest.chunkhash import chunk_hash

from .context import Context
from .data import make_file, make_small_files
from .harness import OWN_PEAK_RSS, Result, chunk_check_cpu, cpu_floor, cpu_of, mbps, timed
from .servers import BenchServer, start_server

CLIENT = OWN_PEAK_RSS + r"""
import json, os, sys, time
import wanllmdb
action, name, path = sys.argv[1:4]
cpu0 = time.process_time()
if action == "log":  # timed from add_file to the finalized version; init() (run creation) is reported apart
    t_init = time.perf_counter()
    with wanllmdb.init(project="bench") as run:
        t0 = time.perf_counter()
        art = wanllmdb.Artifact(name, "dataset")
        (art.add_dir if os.path.isdir(path) else art.add_file)(path)
        t1 = time.perf_counter()
        run.log_artifact(art)
        t2 = time.perf_counter()
    out = {"init": t0 - t_init, "hash": t1 - t0, "upload": t2 - t1, "total": t2 - t0, "version": art.version,
           "files": art.file_count}
else:
    t0 = time.perf_counter()
    art = wanllmdb.Api().artifact(f"bench/{name}:latest")
    t1 = time.perf_counter()
    art.download(path)
    out = {"resolve": t1 - t0, "download": time.perf_counter() - t1, "files": art.file_count,
           "total": time.perf_counter() - t0}
out["cpu_s"] = time.process_time() - cpu0  # all threads of the client
out["peak_rss"] = own_peak_rss()
print(json.dumps(out))
"""


def client(ctx: Context, server: BenchServer, cache: str, *args: str) -> dict:
    os.sync()  # no measurement pays for the previous one's dirty pages
    env = ctx.env("http-client", WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key,
                  WANLLMDB_CACHE_DIR=cache)
    proc = subprocess.run([sys.executable, "-c", CLIENT, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"client {args} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _blob_file(server: BenchServer, sha: str) -> str:
    return os.path.join(server.root, "blobs", sha[:2], sha)


def plain_put(server: BenchServer, path: str, digest) -> tuple[float, dict[str, float]]:
    """A plain ``requests`` PUT of the file to a presigned URL of the same server (blob removed first)."""
    from wanllmdb.manifest import Manifest, ManifestEntry
    from wanllmdb.registry import DraftSpec
    from wanllmdb.registry.http import HttpRegistry

    blob = _blob_file(server, digest.sha256)
    if os.path.exists(blob):
        os.unlink(blob)
    registry = HttpRegistry(server.url, api_key=server.api_key)
    entry = ManifestEntry("baseline.bin", digest.size, digest.md5, digest.sha256, digest.chunk_size, digest.chunks)
    draft = registry.create_draft(DraftSpec("bench-baseline", "baseline", "dataset", Manifest.from_entries([entry])))
    url = draft.missing[0].url
    registry.abort_draft(draft.id)
    registry.close()
    os.sync()
    with open(path, "rb") as f:
        cpu0, server0 = time.process_time(), server.cpu_seconds()
        seconds, response = timed(lambda: requests.put(url, data=f, timeout=600))
        cpu = {"client_cpu_s": time.process_time() - cpu0, "server_cpu_s": server.cpu_seconds() - server0}
    response.raise_for_status()
    return seconds, cpu


def plain_get(server: BenchServer, sha: str, target: str, cpu: dict | None = None) -> float:
    """Seconds for a plain ``requests`` GET of a blob into a file; ``cpu`` receives client and server CPU seconds."""
    urls = requests.post(f"{server.url}/api/v1/blob-urls", json={"sha256s": [sha]},
                         headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60).json()
    url = urls["urls"][sha]["url"]

    def get() -> None:
        with requests.get(url, stream=True, timeout=600) as response, open(target, "wb") as out:
            response.raise_for_status()
            for block in response.iter_content(1 << 20):
                out.write(block)

    os.sync()
    cpu0, server0 = time.process_time(), server.cpu_seconds()
    seconds, _ = timed(get)
    if cpu is not None:
        cpu.update(client_cpu_s=time.process_time() - cpu0, server_cpu_s=server.cpu_seconds() - server0)
    os.unlink(target)
    return seconds


#: Repetitions of the big-file transfers and their baselines, (full, quick); the best of each is reported,
#: all of them are kept in the notes (this machine's disk writeback makes single runs noisy).
REPEATS = {False: 3, True: 1}


def _log_big_on_a_fresh_server(ctx: Context, big: str, digest, rep: int) -> dict:
    """A plain PUT of the big file to one fresh server, then log_artifact of it to another that has never seen
    it: not even its size, which would make the SDK hash the file before uploading it instead of uploading it
    in the read that hashes it (a new checkpoint's size is almost never one the registry holds)."""
    root = ctx.path("http", f"server-put-{rep}", "")
    server = start_server(root)
    try:
        put_seconds, put_cpu = plain_put(server, big, digest)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    root = ctx.path("http", f"server-log-{rep}", "")
    server = start_server(root)
    try:
        mark, server0 = server.log_offset(), server.cpu_seconds()
        logged = client(ctx, server, ctx.path("http", f"cache-log-{rep}", ""), "log", "big", big)
        logged["server_cpu_s"] = server.cpu_seconds() - server0
        return {**logged, "requests": server.requests_since(mark), "put_s": put_seconds, "plain_put": put_cpu}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(ctx: Context) -> list[Result]:
    from wanllmdb.manifest import hash_file

    big = make_file(ctx.path("inputs", "big.bin"), ctx.sizes.big)
    count = ctx.sizes.small_count
    small = make_small_files(ctx.path("inputs", f"small{count}", ""), count, seed=2)
    server = start_server(ctx.path("http", "server", ""))
    results: list[Result] = []
    try:
        hash_cpu = cpu_of(lambda: hash_file(big))  # page cache warm: the digests' CPU alone
        hashing, digest = timed(lambda: hash_file(big))
        runs = [_log_big_on_a_fresh_server(ctx, big, digest, rep) for rep in range(REPEATS[ctx.quick])]
        put = min(runs, key=lambda r: r["put_s"])
        put_seconds = put["put_s"]
        logged = min(runs, key=lambda r: r["total"])
        # The least any log can cost: what the plain PUT costs client and server (the server's SHA-256 and MD5
        # of what it receives included), plus the chunk digests twice: the client's (the manifest needs them)
        # and the server's of what arrived, which the client compares with its own instead of computing MD5
        # and SHA-256 again. Hashing on threads of their own overlaps these parts; it removes none of them.
        chunk_cpu = chunk_check_cpu(big)
        floor = cpu_floor(max(put_seconds, hashing) / 0.9, {
            f"chunk digests ({chunk_hash().name}), client": chunk_cpu,
            f"chunk digests ({chunk_hash().name}), server": chunk_cpu,
            "PUT client": put["plain_put"]["client_cpu_s"], "PUT server": put["plain_put"]["server_cpu_s"]})
        # The same least CPU at the rate the plain PUT itself kept this machine's cores busy (CPU-s per second):
        # what the log would take if it used the cores exactly as well as its baseline does. The CPU floor
        # above assumes every core busy all the time, which no upload here (the baseline included) comes near.
        put_cpu = put["plain_put"]["client_cpu_s"] + put["plain_put"]["server_cpu_s"]
        floor["put_cores_busy"] = put_cpu / put_seconds
        floor["log_cores_busy"] = (logged["cpu_s"] + logged["server_cpu_s"]) / logged["total"]
        floor["at_put_rate_s"] = floor["total_cpu_s"] / floor["put_cores_busy"]
        floor["out_of_reach_at_put_rate"] = floor["at_put_rate_s"] > floor["needed_s"]
        results.append(Result("http log", "log_artifact big file", mbps(ctx.sizes.big, logged["total"]), "MB/s",
                              "plain requests PUT", mbps(ctx.sizes.big, put_seconds),
                              target=">= 0.9x min(PUT, hashing)",
                              met=logged["total"] <= max(put_seconds, hashing) / 0.9,
                              notes={"best": logged, "hashing_s": hashing, "hashing_cpu_s": hash_cpu,
                                     "cpu_floor": floor,
                                     "runs": [{k: r[k] for k in ("total", "put_s", "cpu_s", "server_cpu_s")}
                                              for r in runs]}))
        results.append(Result("http log", "log_artifact big file vs hashing alone",
                              mbps(ctx.sizes.big, logged["total"]), "MB/s", "hashing", mbps(ctx.sizes.big, hashing)))
        client(ctx, server, ctx.path("http", "cache-log", ""), "log", "big", big)  # what the re-logs repeat
        mark = server.log_offset()
        relog = client(ctx, server, ctx.path("http", "cache-log", ""), "log", "big", big)
        sent = server.requests_since(mark)
        results.append(Result("http log", "re-log unchanged big file", relog["total"], "s", "hashing", hashing,
                              higher_is_better=False, target="< 1.5x hashing, 0 bytes uploaded",
                              met=relog["total"] < 1.5 * hashing and sent["blob_put"] == 0,
                              notes={**relog, "requests": sent}))

        mark = server.log_offset()  # the same, from a machine that never saw the file (no remembered digests)
        relog = client(ctx, server, ctx.path("http", "cache-relog-cold", ""), "log", "big", big)
        sent = server.requests_since(mark)
        results.append(Result("http log", "re-log unchanged big file, digest cache cold", relog["total"], "s",
                              "hashing", hashing, higher_is_better=False, target="< 1.5x hashing, 0 bytes uploaded",
                              met=relog["total"] < 1.5 * hashing and sent["blob_put"] == 0,
                              notes={**relog, "requests": sent}))

        mark = server.log_offset()
        small_log = client(ctx, server, ctx.path("http", "cache-log", ""), "log", "small", small)
        sent = server.requests_since(mark)
        results.append(Result("http log", f"log_artifact {count:,} x 4 KB files", count / small_log["total"],
                              "files/s", target=">= 1,000 files/s", met=count / small_log["total"] >= 1000,
                              notes={**small_log, "requests": sent}))

        gets, downloads, get_cpus = [], [], []
        for rep in range(REPEATS[ctx.quick]):
            get_cpus.append({})
            gets.append(plain_get(server, digest.sha256, ctx.path("http", "plain-get.bin"), get_cpus[-1]))
            cache, out = ctx.path("http", f"cache-cold-{rep}", ""), ctx.path("http", "out-big", "")
            server0 = server.cpu_seconds()
            downloads.append(client(ctx, server, cache, "download", "big", out))
            downloads[-1]["server_cpu_s"] = server.cpu_seconds() - server0
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
        get_seconds, got = min(gets), min(downloads, key=lambda r: r["download"])
        get_cpu = get_cpus[gets.index(get_seconds)]
        # The least a verified download can cost: the plain GET, plus one pass of the chunk digests over the
        # bytes (a chunked blob's spans are checked chunk by chunk, with no whole-file pass).
        floor = cpu_floor(get_seconds / 0.8, {"GET client": get_cpu["client_cpu_s"],
                                              "GET server": get_cpu["server_cpu_s"],
                                              f"chunk digests ({chunk_hash().name})": chunk_check_cpu(big)})
        results.append(Result("http download", "download() big file cold", mbps(ctx.sizes.big, got["download"]),
                              "MB/s", "plain requests GET", mbps(ctx.sizes.big, get_seconds),
                              target=">= 0.8x plain GET", met=got["download"] <= get_seconds / 0.8,
                              notes={"best": got, "get_s": gets, "download_s": [r["download"] for r in downloads],
                                     "plain_get_cpu": get_cpus, "cpu_floor": floor}))
        cold_cache = ctx.path("http", "cache-cold", "")

        mark = server.log_offset()
        got = client(ctx, server, cold_cache, "download", "small", ctx.path("http", "out-small", ""))
        sent = server.requests_since(mark)
        rate = count / got["download"]
        results.append(Result("http download", f"download() {count:,} small files cold", rate, "files/s",
                              target=">= 1,000 files/s", met=rate >= 1000, notes={**got, "requests": sent}))
        mark = server.log_offset()
        again = client(ctx, server, cold_cache, "download", "small", ctx.path("http", "out-small-2", ""))
        sent = server.requests_since(mark)
        results.append(Result("http download", f"download() {count:,} small files fully cached", again["download"],
                              "s", target="< 2 s, 0 blob requests",
                              met=again["download"] < 2 and sent["blob_get"] + sent["bundle"] == 0,
                              notes={**again, "requests": sent}))

        # Memory: logging the memory_big (4 GB) file must not hold it in memory (single-pass upload).
        huge = make_file(ctx.path("inputs", "memory.bin"), ctx.sizes.memory_big, seed=7)
        mark = server.log_offset()
        logged = client(ctx, server, ctx.path("http", "cache-memory", ""), "log", "memory", huge)
        sent = server.requests_since(mark)
        rss_mb = logged["peak_rss"] / 1e6
        results.append(Result("memory", f"log_artifact of a {ctx.sizes.memory_big >> 20} MiB file: peak RSS",
                              rss_mb, "MB", higher_is_better=False, target="< 200 MB", met=rss_mb < 200,
                              notes={**logged, "requests": sent,
                                     "mb_per_s": mbps(ctx.sizes.memory_big, logged["total"])}))
    finally:
        server.stop()
    return results
