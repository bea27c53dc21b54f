"""Reading through ``wanllmdb mount`` (HTTP registry on loopback), each figure beside its baseline:

- big file: cold sequential read vs a plain ``requests`` GET and vs a passthrough FUSE mount of the cache
  file; warm first read (blob cached, page cache dropped, fresh mount) vs the passthrough and ``cat`` of the
  cache file; second read (page cache hot) vs page-cache ``cat``
- ``head -c 4096`` / ``head -c 100`` of cold big files: wall time and chunks fetched
- ``cat`` of many cold small files (files/s); ``ls -lR`` of a version of 100,000 files
- random 4 KB reads and 4 parallel readers on the cached big file vs the cache file itself
- fio jobs after mountpoint-s3's (sequential/random 256k, 4 threads, time to first byte) vs the passthrough
- ``numpy.load(mmap_mode="r")`` and ``safetensors.safe_open`` cold and warm vs local disk
- peak RSS of the mount process while streaming the memory_big file

"Cold" drops the whole page cache (the server's blob files too) and uses an empty mount cache; every mount
is a ``wanllmdb mount`` background process with its own ``--cache-dir``, always unmounted afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

import requests

from wanllmdb.fs.process import mounts_under, wait_for
from wanllmdb.manifest.chunkhash import chunk_hash

from .bench_http import REPEATS, plain_get
from .context import Context
from .data import make_file, make_small_files
from .fio_jobs import run_job
from .harness import (
    Result,
    RssSampler,
    children_cpu_seconds,
    chunk_check_cpu,
    cpu_floor,
    cpu_of,
    drop_page_cache,
    mbps,
    process_cpu_seconds,
    write_new_file,
)
from .mounts import PassthroughMount, WanllmdbMount
from .servers import BenchServer, start_server

GROUP = "mount"
#: The fio rows need fio; where it is missing (a lent machine with no package registry) they are left out.
HAVE_FIO = shutil.which("fio") is not None
PROJECT = "bench"

LOG_CLIENT = r"""
import json, os, sys
import wanllmdb
out = {}
with wanllmdb.init(project="bench") as run:
    for name, path in json.loads(sys.argv[1]):
        art = wanllmdb.Artifact(name, "dataset")
        (art.add_dir if os.path.isdir(path) else art.add_file)(path)
        run.log_artifact(art)
        out[name] = art.version
print(json.dumps(out))
"""

ARRAY_CLIENT = r"""
import json, sys, time
import numpy as np
from safetensors import safe_open
kind, path = sys.argv[1:3]
t0 = time.perf_counter()
if kind == "npy":
    array = np.load(path, mmap_mode="r")
    total, nbytes = float(array.sum(dtype=np.float64)), array.nbytes
else:
    total, nbytes = 0.0, 0
    with safe_open(path, framework="numpy") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            total += float(tensor.sum(dtype=np.float64))
            nbytes += tensor.nbytes
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": nbytes, "sum": total}))
"""


# --- inputs ---------------------------------------------------------------------------------------------


def make_arrays(root: str, npy_bytes: int, st_bytes: int) -> str:
    """``model.npy`` (float32, 1024 columns) and ``model.safetensors`` (8 float32 tensors) under ``root``."""
    import numpy as np

    npy, st = os.path.join(root, "model.npy"), os.path.join(root, "model.safetensors")
    marker = f"{root.rstrip(os.sep)}.complete-{npy_bytes}-{st_bytes}"
    if os.path.exists(marker):
        return root
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(5)
    rows = npy_bytes // 4096
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, 1024))
    step = 4096
    for start in range(0, rows, step):
        array[start : start + step] = rng.random((min(step, rows - start), 1024), dtype=np.float32)
    array.flush()
    del array
    from safetensors.numpy import save_file

    per = st_bytes // 8 // 4 // 1024
    save_file({f"layer{i}.weight": rng.random((per, 1024), dtype=np.float32) for i in range(8)}, st)
    open(marker, "w").close()
    return root


def log_artifacts(ctx: Context, server: BenchServer, pairs: list[tuple[str, str]]) -> dict:
    env = ctx.env("mount-client", WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key)
    proc = subprocess.run([sys.executable, "-c", LOG_CLIENT, json.dumps(pairs)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"logging {pairs} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def log_listing(server: BenchServer, count: int, blob_path: str) -> None:
    """A version of ``count`` tiny files (one shared blob), made straight from a manifest: quick to log."""
    from wanllmdb.manifest import Manifest, ManifestEntry, hash_bytes
    from wanllmdb.registry import DraftSpec
    from wanllmdb.sdk.client import Client
    from wanllmdb.sdk.transfer import upload_version
    from wanllmdb.settings import load_settings

    data = b"wanllmdb listing benchmark\n"
    with open(blob_path, "wb") as f:
        f.write(data)
    digest = hash_bytes(data)
    entries = [ManifestEntry(f"d{i // 1000:03d}/f{i:06d}.txt", digest.size, digest.md5, digest.sha256)
               for i in range(count)]
    client = Client(load_settings(base_url=server.url, api_key=server.api_key))
    try:
        spec = DraftSpec(PROJECT, "listing", "dataset", Manifest.from_entries(entries))
        upload_version(client, spec, {digest.sha256: blob_path}, ())
    finally:
        client.close()


def listing_tree(root: str, count: int) -> str:
    """The listing version's paths as empty files on local disk (made once, kept with the inputs)."""
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(root, ignore_errors=True)
        for i in range(count):
            directory = os.path.join(root, f"d{i // 1000:03d}")
            if i % 1000 == 0:
                os.makedirs(directory)
            open(os.path.join(directory, f"f{i:06d}.txt"), "wb").close()
        open(done, "wb").close()
    return root


# --- measuring ------------------------------------------------------------------------------------------


def wall(cmd: list[str] | str) -> float:
    """Wall time of a command whose output goes to /dev/null."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, shell=isinstance(cmd, str))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-1000:]}")
    return seconds


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    """Wait until the mount has admitted a blob to its cache (it hashes the whole file first)."""
    if not wait_for(lambda: os.path.exists(path), timeout):
        raise RuntimeError(f"{path} never appeared in the cache")


def cold(fn, *args):
    drop_page_cache()
    return fn(*args)


def random_reads(path: str, offsets: list[int]) -> float:
    """4 KB ``os.pread`` at each offset; returns reads per second."""
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for offset in offsets:
            os.pread(fd, 4096, offset)
        return len(offsets) / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def parallel_readers(path: str, size: int, readers: int = 4) -> float:
    """``readers`` ``dd`` processes each reading its own part of the file at once; aggregate MB/s."""
    blocks = size // (1 << 20)
    part = blocks // readers
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["dd", f"if={path}", "of=/dev/null", "bs=1M", f"skip={i * part}", f"count={part}",
                               "status=none"]) for i in range(readers)]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"dd readers of {path} failed: {codes}")
    return mbps(part * readers << 20, seconds)


def array_load(ctx: Context, kind: str, path: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", ARRAY_CLIENT, kind, path], capture_output=True, text=True,
                          env=ctx.env("mount-arrays"))
    if proc.returncode != 0:
        raise RuntimeError(f"loading {path} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], int)}


def row(name: str, value: float, unit: str, baseline_name: str | None = None, baseline: float | None = None, *,
        higher: bool = True, target: str | None = None, met: bool | None = None, **notes) -> Result:
    return Result(GROUP, name, value, unit, baseline_name, baseline, higher_is_better=higher, target=target,
                  met=met, notes=notes)


# --- the workloads --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, ctx: Context, server: BenchServer) -> None:
        self.ctx = ctx
        self.server = server
        self.results: list[Result] = []
        self.mounts = 0

    def mount(self, cache: str, fresh: bool) -> WanllmdbMount:
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        self.mounts += 1
        return WanllmdbMount(self.server, self.ctx.path("mount", "mnt", ""), cache,
                             self.ctx.path("mount", "logs", f"mount-{self.mounts}.log"), self.ctx.env("mount"))

    def file(self, mnt: WanllmdbMount, artifact: str, rel: str) -> str:
        return os.path.join(mnt.mountpoint, PROJECT, artifact, "v1", rel)

    def big_file(self) -> None:
        ctx, size = self.ctx, self.ctx.sizes.big
        cache = ctx.path("mount", "cache-big", "")
        # Cold reads and their two baselines run in interleaved rounds (mount, passthrough, GET, mount, ...),
        # so that each side sees the same state of the host; the best of each is reported, all are kept.
        mount_runs, pt_runs, get_runs, write_cpus = [], [], [], []
        for _ in range(REPEATS[ctx.quick]):
            with self.mount(cache, fresh=True) as mnt:
                path = self.file(mnt, "big", "big.bin")
                sha = os.getxattr(path, "user.wanllmdb.sha256").decode()
                mark = self.server.log_offset()
                drop_page_cache()
                cpu0 = (process_cpu_seconds(mnt.pid), self.server.cpu_seconds(), children_cpu_seconds())
                seconds = wall(["cat", path])
                cpu = {"mount_cpu_s": process_cpu_seconds(mnt.pid) - cpu0[0],
                       "server_cpu_s": self.server.cpu_seconds() - cpu0[1],
                       "cat_cpu_s": children_cpu_seconds() - cpu0[2]}
                time.sleep(0.2)
                mount_runs.append({"seconds": seconds, "cpu": cpu, "stats": mnt.stats(),
                                   "requests": self.server.requests_since(mark)})
                blob_dir = os.path.join(cache, "blobs", sha[:2])
                blob = os.path.join(blob_dir, sha)
                wait_for_file(blob)  # the mount hashes the whole file before admitting it: not part of a read
                t_second = min(wall(["cat", path]) for _ in range(3))
            with PassthroughMount(blob_dir, ctx.path("mount", "pt", "")) as pt:
                pt_path = os.path.join(pt.mountpoint, sha)
                drop_page_cache()
                cpu0 = (process_cpu_seconds(pt.pid), children_cpu_seconds())
                seconds = wall(["cat", pt_path])
                pt_runs.append({"seconds": seconds, "cpu": {"passthrough_cpu_s": process_cpu_seconds(pt.pid) - cpu0[0],
                                                           "cat_cpu_s": children_cpu_seconds() - cpu0[1]}})
                t_pt_second = min(wall(["cat", pt_path]) for _ in range(3))
            get_cpu: dict = {}
            get_runs.append({"seconds": cold(plain_get, self.server, sha, ctx.path("mount", "plain-get.bin"),
                                             get_cpu), "cpu": get_cpu})
            drop_page_cache()
            write_cpus.append(cpu_of(lambda: write_new_file(cache, size)))
        t_cold, t_pt_cold, t_get = (min(r["seconds"] for r in runs) for runs in (mount_runs, pt_runs, get_runs))
        best = min(mount_runs, key=lambda r: r["seconds"])
        base = max(t_get, t_pt_cold)  # the slower of the two baselines: 0.9 x min(GET MB/s, passthrough MB/s)
        # The least a verified, cached read through FUSE can cost, each part the cheapest measured in this run:
        # receiving the bytes and the server sending them (the plain GET), one pass of the chunk digests
        # (each chunk is checked; no whole-file pass), writing them into the cache, serving them through FUSE
        # (the passthrough mount) and the reader itself.
        fastest_pt = min(pt_runs, key=lambda r: r["seconds"])["cpu"]
        fastest_get = min(get_runs, key=lambda r: r["seconds"])["cpu"]
        floor = cpu_floor(base / 0.9, {  # (until round 6: base / 0.7, issue 5's target, beside this 0.9x one)
            "GET client (receive)": fastest_get["client_cpu_s"], "GET server": fastest_get["server_cpu_s"],
            f"chunk digests ({chunk_hash().name})": chunk_check_cpu(blob),
            "write into the cache": min(write_cpus), "FUSE (passthrough mount)": fastest_pt["passthrough_cpu_s"],
            "cat": fastest_pt["cat_cpu_s"]})
        t_cat_cold = cold(wall, ["cat", blob])
        t_cat_hot = min(wall(["cat", blob]) for _ in range(3))

        self.results += [
            row("cold read big file (cat)", mbps(size, t_cold), "MB/s", "min(GET, passthrough)", mbps(size, base),
                target=">= 0.9x min(GET, passthrough)", met=t_cold <= base / 0.9, seconds=t_cold,
                get_mbps=mbps(size, t_get), passthrough_cold_mbps=mbps(size, t_pt_cold), stats=best["stats"],
                requests=best["requests"], cpu=best["cpu"], runs=mount_runs, passthrough_runs=pt_runs,
                get_runs=get_runs, cpu_floor=floor),
            row("  cold read vs plain requests GET", mbps(size, t_cold), "MB/s", "plain GET", mbps(size, t_get)),
            row("  cold read vs passthrough (disk)", mbps(size, t_cold), "MB/s", "passthrough cold",
                mbps(size, t_pt_cold)),
            row("second read big file (page cache)", mbps(size, t_second), "MB/s", "page-cache cat",
                mbps(size, t_cat_hot), target=">= 0.8x page-cache cat", met=t_second <= t_cat_hot / 0.8,
                seconds=t_second),
            row("  passthrough second read", mbps(size, t_pt_second), "MB/s", "page-cache cat",
                mbps(size, t_cat_hot), seconds=t_pt_second),
        ]

        # Warm: the blob is cached, the page cache dropped, a fresh mount.
        rng = random.Random(7)
        offsets = [rng.randrange(size // 4096) * 4096 for _ in range(500 if ctx.quick else 2000)]
        with self.mount(cache, fresh=False) as mnt:
            path = self.file(mnt, "big", "big.bin")
            os.stat(path)
            before = mnt.stats()
            t_warm = cold(wall, ["cat", path])
            warm_stats = delta(mnt.stats(), before)
            rand_mnt = cold(random_reads, path, offsets)
            par_mnt = cold(parallel_readers, path, size)
            fio_mnt = self.fio_set(path, size)
        rand_blob = cold(random_reads, blob, offsets)
        par_blob = cold(parallel_readers, blob, size)
        with PassthroughMount(blob_dir, ctx.path("mount", "pt", "")) as pt:
            fio_pt = self.fio_set(os.path.join(pt.mountpoint, sha), size)
            # The same random reads through FUSE with nothing but a Python passthrough behind it: what every
            # read that crosses FUSE costs on this libfuse (no FUSE passthrough before libfuse 3.16).
            rand_pt = cold(random_reads, os.path.join(pt.mountpoint, sha), offsets)
            ttfb_pt = cold(run_job, "ttfb", os.path.join(pt.mountpoint, sha), size, 0) if HAVE_FIO else None
        self.results += [
            row("warm first read big file", mbps(size, t_warm), "MB/s", "passthrough cold", mbps(size, t_pt_cold),
                target=">= 0.8x passthrough", met=t_warm <= t_pt_cold / 0.8, seconds=t_warm, stats=warm_stats),
            row("  warm first read vs cat of cache file", mbps(size, t_warm), "MB/s", "cat cold",
                mbps(size, t_cat_cold), target=">= 0.8x cat of the cache file", met=t_warm <= t_cat_cold / 0.8),
            row(f"random 4 KB reads, cached big file ({len(offsets)})", rand_mnt, "reads/s", "cache file",
                rand_blob, target=">= 0.8x the cache file", met=rand_mnt >= 0.8 * rand_blob),
            row("  random 4 KB reads via the passthrough mount", rand_pt, "reads/s", "cache file", rand_blob),
            row("  random 4 KB reads vs the passthrough mount", rand_mnt, "reads/s", "passthrough mount", rand_pt),
            row("4 parallel readers, cached big file", par_mnt, "MB/s", "cache file", par_blob),
        ]
        self.warm_floor(cache, blob, blob_dir, sha, size, offsets)
        for name, label in (("seq_read", "fio seq read 256k"), ("rand_read", "fio rand read 256k"),
                            ("seq_read_4t", "fio seq read 256k x4 threads")):
            if name not in fio_mnt:
                continue
            self.results.append(row(label + " (cached)", fio_mnt[name]["mbps"], "MB/s", "passthrough",
                                    fio_pt[name]["mbps"], mount=fio_mnt[name], passthrough=fio_pt[name]))
        self.ttfb_pt = ttfb_pt

    def warm_floor(self, cache: str, blob: str, blob_dir: str, sha: str, size: int, offsets: list[int]) -> None:
        """The cached reads beside their floor: the same file through a passthrough mount that answers reads as
        the mount does (the file's descriptor, spliced into /dev/fuse: ``passthrough.py --splice``), which is
        as fast as FUSE with the kernel's page cache serves a local file on this libfuse. Rounds interleave
        the mount, that passthrough and ``cat`` of the cache file (best of each), the page cache dropped before
        every read; a target the spliced passthrough misses too is out of reach through FUSE here."""
        rounds = 1 if self.ctx.quick else 3
        got: dict[str, list[float]] = {"mount": [], "splice": [], "cat": [], "rand_mount": [], "rand_splice": [],
                                       "rand_file": []}
        with self.mount(cache, fresh=False) as mnt, \
                PassthroughMount(blob_dir, self.ctx.path("mount", "pt-splice", ""), splice=True) as sp:
            ours, theirs = self.file(mnt, "big", "big.bin"), os.path.join(sp.mountpoint, sha)
            os.stat(ours)
            for _ in range(rounds):
                got["mount"].append(cold(wall, ["cat", ours]))
                got["splice"].append(cold(wall, ["cat", theirs]))
                got["cat"].append(cold(wall, ["cat", blob]))
                got["rand_mount"].append(cold(random_reads, ours, offsets))
                got["rand_splice"].append(cold(random_reads, theirs, offsets))
                got["rand_file"].append(cold(random_reads, blob, offsets))
        t_mount, t_splice, t_cat = min(got["mount"]), min(got["splice"]), min(got["cat"])
        r_mount, r_splice, r_file = max(got["rand_mount"]), max(got["rand_splice"]), max(got["rand_file"])
        runs = {name: [round(v, 3) for v in values] for name, values in got.items()}
        self.results += [
            row("warm first read big file, interleaved", mbps(size, t_mount), "MB/s", "cat of the cache file",
                mbps(size, t_cat), target=">= 0.8x cat of the cache file", met=t_mount <= t_cat / 0.8,
                floor={"spliced_passthrough_mbps": mbps(size, t_splice), "spliced_passthrough_vs_cat": t_cat / t_splice,
                       "out_of_reach": t_splice > t_cat / 0.8}, runs_s=runs),
            row("  warm first read vs the spliced passthrough (the floor)", mbps(size, t_mount), "MB/s",
                "spliced passthrough", mbps(size, t_splice)),
            row("random 4 KB reads, cached, interleaved", r_mount, "reads/s", "cache file", r_file,
                target=">= 0.8x the cache file", met=r_mount >= 0.8 * r_file,
                floor={"spliced_passthrough_reads_s": r_splice, "spliced_passthrough_vs_file": r_splice / r_file,
                       "out_of_reach": r_splice < 0.8 * r_file}),
            row("  random 4 KB reads vs the spliced passthrough (the floor)", r_mount, "reads/s",
                "spliced passthrough", r_splice),
        ]

    def fio_set(self, path: str, size: int) -> dict:
        """The fio jobs' figures; none where fio is not installed (their rows are left out)."""
        if not HAVE_FIO:
            return {}
        runtime = 2 if self.ctx.quick else 8
        return {name: cold(run_job, name, path, size, runtime) for name in ("seq_read", "rand_read", "seq_read_4t")}

    def first_bytes(self) -> None:
        """``head`` of the big file, cold each time: a fresh mount with an empty cache and no page cache."""
        cache = self.ctx.path("mount", "cache-ttfb", "")
        found: dict[int, list] = {4096: [], 100: []}
        for count in (4096, 4096, 4096, 100, 100, 100):
            with self.mount(cache, fresh=True) as mnt:
                path = self.file(mnt, "big", "big.bin")
                os.stat(path)  # the listing is not what is measured: the first bytes are
                drop_page_cache()
                before, mark = mnt.stats(), self.server.log_offset()
                seconds = wall(["head", "-c", str(count), path])
                time.sleep(0.5)  # let read-ahead land before counting
                got = delta(mnt.stats(), before)
                found[count].append((seconds, got["chunks_fetched"], self.server.requests_since(mark)))
        # Through the alias on a mount started just before: every lookup (project, artifact, alias, version,
        # file) and the manifest are part of what is measured, as a user's first ``head`` sees it.
        via_latest = []
        for _ in range(3):
            with self.mount(cache, fresh=True) as mnt:
                path = os.path.join(mnt.mountpoint, PROJECT, "big", "latest", "big.bin")
                drop_page_cache()
                before, mark = mnt.stats(), self.server.log_offset()
                seconds = wall(["head", "-c", "4096", path])
                time.sleep(0.5)
                got = delta(mnt.stats(), before)
                via_latest.append((seconds, got["chunks_fetched"], self.server.requests_since(mark)))
        ttfb = None
        if HAVE_FIO:
            with self.mount(cache, fresh=True) as mnt:
                path = self.file(mnt, "big", "big.bin")
                os.stat(path)
                drop_page_cache()
                ttfb = run_job("ttfb", path, 0, 0)
        for count, runs in found.items():
            ms = statistics.median(r[0] for r in runs) * 1000
            chunks = max(r[1] for r in runs)
            checked = count == 4096  # issue 5's target; head -c 100 is reported beside it
            self.results.append(row(f"head -c {count} cold big file", ms, "ms", higher=False,
                                    target="< 30 ms, <= 2 chunks" if checked else None,
                                    met=(ms < 30 and chunks <= 2) if checked else None, max_chunks=chunks,
                                    runs_ms=[round(r[0] * 1000, 1) for r in runs], chunks=[r[1] for r in runs],
                                    requests=[r[2] for r in runs]))
        ms = statistics.median(r[0] for r in via_latest) * 1000
        floor = self.first_bytes_floor()
        self.results.append(row("head -c 4096 cold big file as latest/big.bin, fresh mount (all lookups)", ms, "ms",
                                "floor", floor["floor_ms"], higher=False, target="<= 10 ms", met=ms <= 10,
                                runs_ms=[round(r[0] * 1000, 1) for r in via_latest],
                                chunks=[r[1] for r in via_latest], requests=[r[2] for r in via_latest],
                                floor=floor))
        if ttfb is not None:
            self.results.append(row("fio ttfb 1-byte read, first (cold) of 10", ttfb["lat_max_ms"], "ms",
                                    "passthrough (disk)", self.ttfb_pt["lat_max_ms"], higher=False, mount=ttfb,
                                    passthrough=self.ttfb_pt))

    def first_bytes_floor(self) -> dict:
        """What the first 4 KB of ``latest/big.bin`` on a fresh mount costs whatever the mount does, each part the
        median of 3, the page cache dropped before each: ``head -c 4096`` of the same bytes on local disk (the
        process start and one disk read), the one version request the mount must make (on a new connection, as
        a fresh mount's first), the ranged GET of the first 1 MiB chunk from the URL it carries, and that chunk's
        digest. The parts run one after the other in any design that checks the chunk before serving a byte."""
        big = self.ctx.path("inputs", "big.bin")
        api = f"{self.server.url}/api/v1/projects/{PROJECT}/artifacts/big/versions/latest?urls=large"
        auth = {"Authorization": f"Bearer {self.server.api_key}"}
        parts: dict[str, list[float]] = {"local_head": [], "version_request": [], "chunk_get": [], "chunk_digest": []}
        for _ in range(3):
            drop_page_cache()
            parts["local_head"].append(wall(["head", "-c", "4096", big]))
            drop_page_cache()
            with requests.Session() as session:
                t0 = time.perf_counter()
                answer = session.get(api, headers=auth, timeout=30)
                answer.raise_for_status()
                urls = answer.json()["blob_urls"]
                parts["version_request"].append(time.perf_counter() - t0)
                url = next(iter(urls.values()))["url"]
            with requests.Session() as session:
                t0 = time.perf_counter()
                got = session.get(url, headers={"Range": f"bytes=0-{(1 << 20) - 1}"}, timeout=30)
                got.raise_for_status()
                parts["chunk_get"].append(time.perf_counter() - t0)
            hasher = chunk_hash()
            t0 = time.perf_counter()
            hasher.of(got.content)
            parts["chunk_digest"].append(time.perf_counter() - t0)
        medians = {name: round(statistics.median(values) * 1000, 2) for name, values in parts.items()}
        return {"floor_ms": round(sum(medians.values()), 2), "parts_ms": medians,
                "runs_ms": {name: [round(v * 1000, 2) for v in values] for name, values in parts.items()}}

    def small_and_listing(self) -> None:
        n, listing = self.ctx.sizes.mount_small, self.ctx.sizes.listing_files
        runs = []
        for _ in range(1 if self.ctx.quick else 2):  # best of 2, each on a fresh mount with an empty cache
            with self.mount(self.ctx.path("mount", "cache-small", ""), fresh=True) as mnt:
                top = os.path.join(mnt.mountpoint, PROJECT, "small", "v1")
                before, mark = mnt.stats(), self.server.log_offset()
                drop_page_cache()
                cpu0 = process_cpu_seconds(mnt.pid)
                seconds = wall(f"find {top} -type f -print0 | xargs -0 cat > /dev/null")
                runs.append({"seconds": seconds, "mount_cpu_s": process_cpu_seconds(mnt.pid) - cpu0,
                             "requests": self.server.requests_since(mark), "stats": delta(mnt.stats(), before)})
        best = min(runs, key=lambda r: r["seconds"])
        # The same files read through FUSE from a Python passthrough of their source directory: the per-file
        # requests (lookup, open, read, flush, release) with no fetch, no check and no cache behind them.
        source = self.ctx.path("inputs", f"mount-small{n}", "")
        with PassthroughMount(source, self.ctx.path("mount", "pt-small", "")) as pt:
            drop_page_cache()
            cpu0 = process_cpu_seconds(pt.pid)
            pt_seconds = wall(f"find {pt.mountpoint} -type f -print0 | xargs -0 cat > /dev/null")
            pt_cpu = process_cpu_seconds(pt.pid) - cpu0
        # The floor: the passthrough pays every per-file request and nothing else, so where it reads fewer than
        # 2,000 files/s no mount through this FUSE binding on this machine can read more.
        self.results.append(row(f"cat {n:,} cold small files", n / best["seconds"], "files/s",
                                "passthrough mount", n / pt_seconds,
                                target=">= 2,000 files/s", met=n / best["seconds"] >= 2000, best=best,
                                files_per_s=[round(n / r["seconds"]) for r in runs],
                                passthrough={"seconds": pt_seconds, "cpu_s": pt_cpu},
                                floor={"passthrough_files_per_s": n / pt_seconds,
                                       "out_of_reach": n / pt_seconds < 2000}))
        # The same files once cached, through a fresh mount (a second epoch after a remount, another job on
        # the machine): no fetch, only the per-file requests and the cache's checks of each blob.
        warm = []
        for _ in range(1 if self.ctx.quick else 2):
            with self.mount(self.ctx.path("mount", "cache-small", ""), fresh=False) as mnt:
                top = os.path.join(mnt.mountpoint, PROJECT, "small", "v1")
                drop_page_cache()
                cpu0 = process_cpu_seconds(mnt.pid)
                seconds = wall(f"find {top} -type f -print0 | xargs -0 cat > /dev/null")
                warm.append({"seconds": seconds, "mount_cpu_s": process_cpu_seconds(mnt.pid) - cpu0,
                             "stats": delta(mnt.stats(), {})})
        best_warm = min(warm, key=lambda r: r["seconds"])
        self.results.append(row(f"cat {n:,} cached small files, fresh mount", n / best_warm["seconds"], "files/s",
                                "passthrough mount", n / pt_seconds, best=best_warm,
                                files_per_s=[round(n / r["seconds"]) for r in warm]))
        with self.mount(self.ctx.path("mount", "cache-small", ""), fresh=False) as mnt:
            top = os.path.join(mnt.mountpoint, PROJECT, "listing", "v1")
            seconds = wall(["ls", "-lR", top])
        # Again through the next fresh mount, which finds the index the first one kept (``fs/index.py``).
        with self.mount(self.ctx.path("mount", "cache-small", ""), fresh=False) as mnt:
            top = os.path.join(mnt.mountpoint, PROJECT, "listing", "v1")
            again = wall(["ls", "-lR", top])
        # ``ls -lR`` itself (sorting, formatting, a stat per file) over the same names on local disk: the part
        # of the listing no filesystem can save.
        local = listing_tree(self.ctx.path("inputs", f"listing{listing}", ""), listing)
        drop_page_cache()
        local_seconds = wall(["ls", "-lR", local])
        self.results.append(row(f"ls -lR of a {listing:,}-file version (cold)", seconds, "s",
                                "ls -lR of the same tree on local disk", local_seconds, higher=False,
                                target="<= 3 s", met=seconds <= 3))
        self.results.append(row(f"  ls -lR of the {listing:,}-file version, next fresh mount (kept index)", again,
                                "s", "ls -lR of the same tree on local disk", local_seconds, higher=False))

    def arrays(self, local_root: str) -> None:
        ctx = self.ctx
        local = {kind: cold(array_load, ctx, kind, os.path.join(local_root, f"model.{ext}"))
                 for kind, ext in (("npy", "npy"), ("safetensors", "safetensors"))}
        cache = ctx.path("mount", "cache-arrays", "")
        measured = {}
        for state, fresh in (("cold", True), ("warm", False)):
            with self.mount(cache, fresh=fresh) as mnt:
                for kind in ("npy", "safetensors"):
                    path = self.file(mnt, "arrays", f"model.{kind}")
                    os.stat(path)
                    measured[state, kind] = cold(array_load, ctx, kind, path)
                    if state == "cold":
                        sha = os.getxattr(path, "user.wanllmdb.sha256").decode()
                        wait_for_file(os.path.join(cache, "blobs", sha[:2], sha))
        for kind, label in (("npy", "numpy.load(mmap) + sum"), ("safetensors", "safetensors all tensors")):
            base = local[kind]["seconds"]
            for state in ("cold", "warm"):
                got = measured[state, kind]
                self.results.append(row(f"{label}, {state} mount ({got['bytes'] >> 20} MiB)", got["seconds"], "s",
                                        "local disk cold", base, higher=False))

    def memory(self) -> None:
        size = self.ctx.sizes.memory_big
        with self.mount(self.ctx.path("mount", "cache-mem", ""), fresh=True) as mnt:
            path = self.file(mnt, "mem", "memory.bin")
            os.stat(path)
            idle = RssSampler(mnt.pid)
            idle.peak = idle._read("VmRSS:")
            drop_page_cache()
            with RssSampler(mnt.pid) as sampler:
                seconds = wall(["cat", path])
        peak = sampler.peak / 1e6
        self.results.append(row(f"mount peak RSS streaming {size >> 20} MiB", peak, "MB", higher=False,
                                target="< 100 MB", met=peak < 100, idle_mb=idle.peak / 1e6,
                                mbps=mbps(size, seconds)))


def run(ctx: Context) -> list[Result]:
    sizes = ctx.sizes
    big = make_file(ctx.path("inputs", "big.bin"), sizes.big)
    mem = make_file(ctx.path("inputs", "memory.bin"), sizes.memory_big, seed=7)  # the same file bench_http logs
    small = make_small_files(ctx.path("inputs", f"mount-small{sizes.mount_small}", ""), sizes.mount_small, seed=3)
    arrays = make_arrays(ctx.path("inputs", "arrays", ""), sizes.big, sizes.big // 2)
    server = start_server(ctx.path("mount", "server", ""))
    bench = Bench(ctx, server)
    try:
        log_artifacts(ctx, server, [("big", big), ("mem", mem), ("small", small),
                                    ("arrays", arrays)])
        log_listing(server, sizes.listing_files, ctx.path("mount", "listing-blob.txt"))
        for step in (bench.big_file, bench.first_bytes, bench.small_and_listing, lambda: bench.arrays(arrays),
                     bench.memory):
            t0 = time.time()
            step()
            sys.stderr.write(f"  [mount] {getattr(step, '__name__', 'arrays')} {time.time() - t0:.0f}s\n")
    finally:
        server.stop()
        left = [entry.mountpoint for entry in mounts_under(os.path.realpath(ctx.workdir))]
        for point in left:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        for name in os.listdir(ctx.path("mount", "")):
            if name.startswith("cache-"):
                shutil.rmtree(ctx.path("mount", name), ignore_errors=True)
        if left:
            raise RuntimeError(f"mounts left behind (now detached): {left}")
    return bench.results
