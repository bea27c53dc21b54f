"""Scale curves: how each cost grows with the work, every point measured in the same run.

For versions of n tiny distinct files (n = 10k, 100k, 1M; quick: 1k, 10k, 100k), each a blob of its own
(no dedupe: 32 bytes, the first 8 the file's number):

- ``log_artifact`` through ``wanllmdb server`` on loopback (a fresh client process: add_dir + log);
- ``ls -lR`` and ``find | wc -l`` of the version, each through a fresh ``wanllmdb mount`` (empty cache);
- the mount process's peak RSS over both;
- ``download()`` of the version once its blobs are cached (a second download into a new directory; the
  first, cold one, fills the cache and is reported in the notes).

Each measure gets one row per n and one row with its exponent k (time ∝ n^k, least squares on log-log
over the points), target k <= 1.05. The exponent of the two largest points is kept in the notes
(``k_top``): constant costs (process start, mount) flatten the small points, so k_top is the sharper test
of a superlinear cost. CPU seconds (client, server, mount) are fitted the same way, in the notes.

Concurrency: 1, 4 and 16 client processes, each with its own empty cache, ``download()`` the same large
file from one server at once: aggregate MB/s.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time

from wanllmdb.fs.process import mounts_under

from .context import Context
from .data import make_file, make_small_files
from .harness import OWN_PEAK_RSS, Result, RssSampler, children_cpu_seconds, mbps, process_cpu_seconds
from .mounts import PassthroughMount, WanllmdbMount
from .servers import BenchServer, start_server

GROUP = "scale"
PROJECT = "bench"
FILE_SIZE = 32
COUNTS = {False: (10_000, 100_000, 1_000_000), True: (1_000, 10_000, 100_000)}
#: Overrides the file counts, e.g. ``WANLLMDB_SCALE_COUNTS=10000,30000,100000`` (the 1M point of the full
#: run takes 17-20 minutes on 2 cores; the whole group 19 minutes in round 11).
COUNTS_ENV = "WANLLMDB_SCALE_COUNTS"
CLIENTS = (1, 4, 16)
CONCURRENT_FILE = {False: 128 << 20, True: 32 << 20}

CLIENT = OWN_PEAK_RSS + r"""
import json, os, sys, time
import wanllmdb
action, name, path = sys.argv[1:4]
cpu0 = time.process_time()
t0 = time.perf_counter()
if action == "log":
    with wanllmdb.init(project="bench") as run:
        t1 = time.perf_counter()
        art = wanllmdb.Artifact(name, "dataset")
        (art.add_dir if os.path.isdir(path) else art.add_file)(path)
        t2 = time.perf_counter()
        run.log_artifact(art)
    out = {"init": t1 - t0, "add_dir": t2 - t1, "upload": time.perf_counter() - t2, "files": art.file_count}
else:
    art = wanllmdb.Api().artifact(f"bench/{name}:latest")
    t1 = time.perf_counter()
    art.download(path)
    out = {"resolve": t1 - t0, "download": time.perf_counter() - t1, "files": art.file_count}
out["total"] = time.perf_counter() - t0
out["cpu_s"] = time.process_time() - cpu0
out["peak_rss"] = own_peak_rss()
print(json.dumps(out))
"""


def fit_exponent(ns: list[int], values: list[float]) -> float:
    """k of value ∝ n^k: the least-squares slope of log(value) on log(n)."""
    xs, ys = [math.log(n) for n in ns], [math.log(max(v, 1e-9)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


class Scale:
    def __init__(self, ctx: Context, server: BenchServer) -> None:
        self.ctx = ctx
        self.server = server
        self.mounts = 0

    def env(self, cache: str) -> dict[str, str]:
        return self.ctx.env("scale-client", WANLLMDB_BASE_URL=self.server.url,
                            WANLLMDB_API_KEY=self.server.api_key, WANLLMDB_CACHE_DIR=cache)

    def client(self, cache: str, *args: str) -> dict:
        """One client process; its figures plus the server's CPU and requests over it."""
        os.sync()
        mark, server0 = self.server.log_offset(), self.server.cpu_seconds()
        proc = subprocess.run([sys.executable, "-c", CLIENT, *args], env=self.env(cache), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"client {args} failed: {proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["server_cpu_s"] = self.server.cpu_seconds() - server0
        out["requests"] = self.server.requests_since(mark)
        return out

    def through_mount(self, command: str) -> dict:
        """``command`` (``{}`` = the version's folder) through a fresh mount with an empty cache."""
        self.mounts += 1
        cache = self.ctx.path("scale", "cache-mount", "")
        shutil.rmtree(cache, ignore_errors=True)
        with WanllmdbMount(self.server, self.ctx.path("scale", "mnt", ""), cache,
                           self.ctx.path("scale", "logs", f"mount-{self.mounts}.log"), self.ctx.env("scale")) as mnt:
            top = os.path.join(mnt.mountpoint, PROJECT, self.name, "v1")
            mark, server0 = self.server.log_offset(), self.server.cpu_seconds()
            cpu0, child0 = process_cpu_seconds(mnt.pid), children_cpu_seconds()
            with RssSampler(mnt.pid) as rss:
                t0 = time.perf_counter()
                proc = subprocess.run(command.format(top), shell=True, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{command} failed: {proc.stderr[-1000:]}")
            return {"seconds": seconds, "mount_cpu_s": process_cpu_seconds(mnt.pid) - cpu0,
                    "tool_cpu_s": children_cpu_seconds() - child0, "server_cpu_s": self.server.cpu_seconds() - server0,
                    "peak_rss": rss.peak, "mount_start_s": mnt.start_seconds,
                    "requests": self.server.requests_since(mark), "stdout_tail": proc.stdout[-40:].strip()}

    def passthrough_ls(self, root: str) -> dict:
        """``ls -lR`` of the input tree through the passthrough mount (FUSE with nothing behind it): its RSS
        grows with what the kernel caches, libfuse's table of the nodes it was given (~190 B each), which any
        filesystem on libfuse's path API pays, the mount included."""
        with PassthroughMount(root, self.ctx.path("scale", "mnt-passthrough", "")) as mnt:
            assert mnt.pid is not None
            start = RssSampler(mnt.pid)._read("VmRSS:")
            with RssSampler(mnt.pid) as rss:
                t0 = time.perf_counter()
                subprocess.run(f"ls -lR {mnt.mountpoint} | wc -l", shell=True, capture_output=True, check=True)
                seconds = time.perf_counter() - t0
        return {"seconds": seconds, "peak_rss": rss.peak, "start_rss": start}

    def point(self, n: int) -> dict:
        t0 = time.time()
        root = make_small_files(self.ctx.path("inputs", f"scale{n}", ""), n, size=FILE_SIZE, seed=11)
        made = time.time() - t0
        self.name = f"scale{n}"
        cache = self.ctx.path("scale", f"cache-{n}", "")
        log = self.client(self.ctx.path("scale", f"cache-log-{n}", ""), "log", self.name, root)
        ls = self.through_mount("ls -lR {} | wc -l")
        find = self.through_mount("find {} | wc -l")
        passthrough = self.passthrough_ls(root)
        if int(find["stdout_tail"]) != 1 + -(-n // 1000) + n:  # the folder, its subfolders of 1,000, the files
            raise RuntimeError(f"find listed {find['stdout_tail']} entries for {n} files")
        cold = self.client(cache, "download", self.name, self.ctx.path("scale", "out-cold", ""))
        cached = self.client(cache, "download", self.name, self.ctx.path("scale", "out-cached", ""))
        if cached["requests"]["blob_get"] + cached["requests"]["bundle"]:
            raise RuntimeError(f"download() of the cached version fetched blobs: {cached['requests']}")
        for name in ("out-cold", "out-cached", f"cache-{n}", f"cache-log-{n}", "cache-mount"):
            shutil.rmtree(self.ctx.path("scale", name, ""), ignore_errors=True)
        point = {"n": n, "log": log, "ls": ls, "find": find, "passthrough_ls": passthrough,
                 "download_cold": cold, "download_cached": cached,
                 "inputs_s": made, "point_s": time.time() - t0}
        sys.stderr.write(f"  [scale] n={n:,}: log {log['total']:.1f}s ls -lR {ls['seconds']:.1f}s "
                         f"find {find['seconds']:.1f}s download cold {cold['download']:.1f}s cached "
                         f"{cached['download']:.1f}s (point {point['point_s']:.0f}s)\n")
        return point

    def concurrent(self, clients: int, name: str) -> dict:
        """``clients`` processes each download() the big file into its own empty cache at once."""
        caches = [self.ctx.path("scale", f"cache-conc-{i}", "") for i in range(clients)]
        outs = [self.ctx.path("scale", f"out-conc-{i}", "") for i in range(clients)]
        for path in caches + outs:
            shutil.rmtree(path, ignore_errors=True)
        os.sync()
        mark, server0, child0 = self.server.log_offset(), self.server.cpu_seconds(), children_cpu_seconds()
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", CLIENT, "download", name, out], env=self.env(cache),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cache, out in zip(caches, outs, strict=True)]
        done = [p.communicate() for p in procs]
        seconds = time.perf_counter() - t0
        for p, (_stdout, stderr) in zip(procs, done, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"concurrent client failed: {stderr[-2000:]}")
        each = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in done]
        for path in caches + outs:
            shutil.rmtree(path, ignore_errors=True)
        return {"seconds": seconds, "server_cpu_s": self.server.cpu_seconds() - server0,
                "clients_cpu_s": children_cpu_seconds() - child0, "requests": self.server.requests_since(mark),
                "download_s": [round(e["download"], 3) for e in each]}


def _curve(results: list[Result], ns: list[int], points: list[dict], label: str, unit: str,
           value, cpu=None, target: str | None = "k <= 1.05", bounded: bool = False) -> None:
    """One row per point and one for the exponent k; ``bounded``: the target is a flat curve (``k_top`` <= 0.1,
    under 26% more for 10x the files, between the two largest points) instead of k <= 1.05; ``target`` None:
    shown, not judged."""
    values = [value(p) for p in points]
    for n, v, p in zip(ns, values, points, strict=True):
        results.append(Result(GROUP, f"{label}, {n:,} files", v, unit, higher_is_better=False,
                              notes={"cpu_s": round(cpu(p), 3)} if cpu else {}))
    k = fit_exponent(ns, values)
    notes = {"values": values, "ns": ns, "k_top": fit_exponent(ns[-2:], values[-2:]),
             "per_file_top": (values[-1] - values[-2]) / (ns[-1] - ns[-2])}  # the marginal cost of a file
    if cpu:
        cpus = [cpu(p) for p in points]
        notes.update(cpu_s=cpus, k_cpu=fit_exponent(ns, cpus), k_cpu_top=fit_exponent(ns[-2:], cpus[-2:]))
    met = None if target is None else notes["k_top"] <= 0.1 if bounded else k <= 1.05
    results.append(Result(GROUP, f"{label}: exponent k", k, "", higher_is_better=False, target=target,
                          met=met, notes=notes))


def run(ctx: Context) -> list[Result]:
    override = os.environ.get(COUNTS_ENV)
    ns = [int(n) for n in override.split(",")] if override else list(COUNTS[ctx.quick])
    big = make_file(ctx.path("inputs", "scale-concurrent.bin"), CONCURRENT_FILE[ctx.quick], seed=13)
    server = start_server(ctx.path("scale", "server", ""))
    bench = Scale(ctx, server)
    results: list[Result] = []
    try:
        points = [bench.point(n) for n in ns]
        _curve(results, ns, points, "log_artifact (HTTP)", "s", lambda p: p["log"]["total"],
               lambda p: p["log"]["cpu_s"] + p["log"]["server_cpu_s"])
        _curve(results, ns, points, "ls -lR, fresh mount", "s", lambda p: p["ls"]["seconds"],
               lambda p: p["ls"]["mount_cpu_s"] + p["ls"]["server_cpu_s"])
        _curve(results, ns, points, "find | wc -l, fresh mount", "s", lambda p: p["find"]["seconds"],
               lambda p: p["find"]["mount_cpu_s"] + p["find"]["server_cpu_s"])
        _curve(results, ns, points, "mount peak RSS (ls -lR, find)", "MB",
               lambda p: max(p["ls"]["peak_rss"], p["find"]["peak_rss"]) / 1e6, target=None)
        _curve(results, ns, points, "passthrough mount peak RSS (ls -lR)", "MB",
               lambda p: p["passthrough_ls"]["peak_rss"] / 1e6, target=None)
        # The mount's own memory: its peak less what the passthrough grew by over the same tree (libfuse's
        # node table, as large for any filesystem on libfuse's path API).
        _curve(results, ns, points, "mount peak RSS less the passthrough's growth", "MB",
               lambda p: (max(p["ls"]["peak_rss"], p["find"]["peak_rss"])
                          - (p["passthrough_ls"]["peak_rss"] - p["passthrough_ls"]["start_rss"])) / 1e6,
               target="bounded: k_top <= 0.1", bounded=True)
        _curve(results, ns, points, "download() cached version", "s", lambda p: p["download_cached"]["download"],
               lambda p: p["download_cached"]["cpu_s"])
        _curve(results, ns, points, "download() cold (fills the cache)", "s",
               lambda p: p["download_cold"]["download"],
               lambda p: p["download_cold"]["cpu_s"] + p["download_cold"]["server_cpu_s"])
        # The client's own memory: what a log or download of n files costs in RAM (shown, not judged).
        for label, key in (("log_artifact (HTTP)", "log"), ("download() cached version", "download_cached"),
                           ("download() cold", "download_cold")):
            _curve(results, ns, points, f"{label}: client peak RSS", "MB", lambda p, key=key: p[key]["peak_rss"] / 1e6,
                   target=None)
        results[-1].notes["points"] = points

        bench.client(ctx.path("scale", "cache-log-big", ""), "log", "concurrent", big)
        shutil.rmtree(ctx.path("scale", "cache-log-big", ""), ignore_errors=True)
        size = os.path.getsize(big)
        runs = {}
        for clients in CLIENTS:
            runs[clients] = got = bench.concurrent(clients, "concurrent")
            sys.stderr.write(f"  [scale] {clients} concurrent download(): {got['seconds']:.1f}s\n")
            results.append(Result(GROUP, f"download() {size >> 20} MiB cold, {clients} concurrent clients",
                                  mbps(clients * size, got["seconds"]), "MB/s aggregate", notes=got))
        totals = [runs[c]["seconds"] for c in CLIENTS]
        k = fit_exponent(list(CLIENTS), totals)
        results.append(Result(GROUP, "concurrent download(): exponent k of wall time in clients", k, "",
                              higher_is_better=False, target="k <= 1.05", met=k <= 1.05,
                              notes={"seconds": totals, "cores": os.cpu_count()}))
    finally:
        server.stop()
        left = [entry.mountpoint for entry in mounts_under(os.path.realpath(ctx.workdir))]
        for point in left:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        if left:
            raise RuntimeError(f"mounts left behind (now detached): {left}")
    return results
