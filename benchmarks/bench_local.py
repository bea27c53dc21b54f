"""Hashing and the embedded registry: what a single machine with no server pays.

- hashing: wanllmdb's one-pass MD5 + SHA-256 + chunk SHA-256 vs ``md5sum`` and ``sha256sum`` of the same file
- log_artifact of the big file into the embedded registry vs ``cp`` of it
- re-log of the unchanged big file: seconds and bytes stored (must be 0)
- download() of 1,000 small files that are all cached
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time

from .context import Context
from .data import make_file, make_small_files
from .harness import Result, cpu_floor, mbps, timed

LOG_SCRIPT = r"""
import json, os, sys, time
import wanllmdb
path, name, mode = sys.argv[1:4]
def du(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
data = os.path.join(os.environ["WANLLMDB_DIR"], "blobs")
before = du(data) if os.path.isdir(data) else 0
t0 = time.perf_counter()
with wanllmdb.init(project="bench") as run:
    art = wanllmdb.Artifact(name, "dataset")
    (art.add_dir if os.path.isdir(path) else art.add_file)(path)
    t1 = time.perf_counter()
    run.log_artifact(art)
t2 = time.perf_counter()
if mode == "download-cached":
    with wanllmdb.init(project="bench") as run:
        used = run.use_artifact(f"{name}:latest")
        used.download(sys.argv[4])
        t3 = time.perf_counter()
        used.download(sys.argv[4] + "-2")
        t4 = time.perf_counter()
else:
    t3 = t4 = t2
cpu_s = time.process_time()
print(json.dumps({"hash": t1 - t0, "upload": t2 - t1, "total": t2 - t0, "stored": du(data) - before, "cpu_s": cpu_s,
                  "first_download": t3 - t2, "cached_download": t4 - t3, "version": art.version}))
"""


#: Turns of copy and log, (full, quick).
REPEATS = {False: 3, True: 1}
#: Seconds to wait after writeback before a timed copy or log. Guests with free page reporting (virtio-balloon,
#: as on the machines these runs were made on) hand memory freed by the previous turn back to the host about
#: 2 s later, and a write into new page cache then pays the host's faults: 0.5-3 system CPU-s per GiB here,
#: from one turn to the next. Waiting past that, and timing copy and log in turns, gives neither a better state.
SETTLE_SECONDS = 3.0


def _settle(big: str) -> None:
    """Dirty pages written back, freed memory returned to the host, the input file in the page cache."""
    os.sync()
    time.sleep(SETTLE_SECONDS)
    with open(big, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def _log(ctx: Context, env_name: str, path: str, name: str, mode: str = "log", *extra: str) -> dict:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT, path, name, mode, *extra],
        env=ctx.env(env_name), capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hash_one_thread(path: str, chunk_size: int = 8 << 20) -> str:
    """The same three digests computed on one thread: the baseline for the two-thread design."""
    import hashlib

    md5, sha, chunks = hashlib.md5(usedforsecurity=False), hashlib.sha256(), []
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        while n := f.readinto(buf):
            md5.update(view[:n])
            sha.update(view[:n])
            chunks.append(hashlib.sha256(view[:n]).hexdigest())
    return sha.hexdigest()


def run(ctx: Context) -> list[Result]:
    from wanllmdb.manifest import hash_file

    big = make_file(ctx.path("inputs", "big.bin"), ctx.sizes.big)
    size = ctx.sizes.big
    results = []

    with open(big, "rb") as f:  # warm the page cache so every hasher reads from memory
        while f.read(1 << 24):
            pass
    cpu0 = time.process_time()
    ours, _ = timed(lambda: hash_file(big))
    hash_cpu = time.process_time() - cpu0  # every thread: the MD5 worker too
    one_thread, _ = timed(lambda: _hash_one_thread(big))
    md5sum, _ = timed(lambda: subprocess.run(["md5sum", big], check=True, capture_output=True))
    sha256sum, _ = timed(lambda: subprocess.run(["sha256sum", big], check=True, capture_output=True))
    results.append(Result("hashing", "md5+sha256+chunks (one pass)", mbps(size, ours), "MB/s",
                          "md5sum", mbps(size, md5sum)))
    results.append(Result("hashing", "md5 on a worker thread vs all on one thread", mbps(size, ours), "MB/s",
                          "one thread", mbps(size, one_thread)))
    results.append(Result("hashing", "md5+sha256+chunks (one pass) vs sha256sum", mbps(size, ours), "MB/s",
                          "sha256sum", mbps(size, sha256sum)))

    # The copy and the log are timed in turns, each from the same state (see _settle), best of each reported.
    target = ctx.path("inputs", "copy.bin")
    copies, logs = [], []
    for _ in range(REPEATS[ctx.quick]):
        _settle(big)
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cp, _ = timed(lambda: subprocess.run(["cp", big, target], check=True))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        copies.append({"seconds": cp, "cpu_s": (children.ru_utime - children0.ru_utime)
                       + (children.ru_stime - children0.ru_stime)})
        os.unlink(target)
        shutil.rmtree(ctx.path("local-log", ""), ignore_errors=True)  # the previous log's blob: a new file again
        _settle(big)
        logs.append(_log(ctx, "local-log", big, "big"))
    first, cp = min(logs, key=lambda r: r["total"]), min(c["seconds"] for c in copies)
    results.append(Result("embedded", "log_artifact big file", first["total"], "s", "cp", cp,
                          higher_is_better=False, notes={**first, "runs_s": [r["total"] for r in logs],
                                                         "cp_runs": copies}))
    results.append(Result("embedded", "  log_artifact big file vs hashing alone", first["total"], "s",
                          "hashing alone", ours, higher_is_better=False, target="<= hashing alone + 0.3 s",
                          met=first["total"] <= ours + 0.3, notes={
                              "above_hashing_s": first["total"] - ours, "log_process_cpu_s": first["cpu_s"],
                              # Any store of a new file pays its digests and one copy of its bytes into new
                              # page cache: what ``cp`` paid, the least of its turns (on this VM 0.5-3 CPU-s per
                              # GiB from one turn to the next, as the host takes memory back or not).
                              "cpu_floor": cpu_floor(ours + 0.3, {"md5+sha256+chunk digests": hash_cpu,
                                                                  "copy (cp)": min(c["cpu_s"] for c in copies)})}))
    again = _log(ctx, "local-log", big, "big")
    results.append(Result("embedded", "re-log unchanged big file", again["total"], "s", "hashing alone", ours,
                          higher_is_better=False, target="< 1.5x hashing, 0 bytes stored",
                          met=again["total"] < 1.5 * ours and again["stored"] == 0,
                          notes={"bytes_stored": again["stored"], "version": again["version"]}))

    small = make_small_files(ctx.path("inputs", "small1000", ""), 1000, seed=1)
    out = ctx.path("outputs", "small1000")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + "-2", ignore_errors=True)
    timings = _log(ctx, "local-small", small, "small", "download-cached", out)
    results.append(Result("embedded", "download() 1,000 cached small files", timings["cached_download"], "s",
                          notes={"files_per_s": 1000 / timings["cached_download"],
                                 "first_download_s": timings["first_download"]}))
    return results
