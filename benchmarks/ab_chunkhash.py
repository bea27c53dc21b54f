"""A/B of the chunk digests' algorithm (SHA-256, before, against BLAKE3): interleaved rounds, CPU seconds.

    python benchmarks/ab_chunkhash.py [--size-mb 512] [--rounds 4] [--out results/ab.json]

Two versions of the same size are logged to one loopback server, one with SHA-256 chunk digests
(``WANLLMDB_CHUNK_HASH=sha256``) and one with BLAKE3. Each round, in alternating order, for each:
- a cold ``cat`` through a fresh mount (page cache dropped): the mount process's and the server's CPU;
- a cold ``download()`` in a new process with an empty cache: its CPU (start-up included) and the server's;
- the log's digest pass (``Digester``: MD5 + SHA-256 + chunk digests) of the file, in this process.
Every figure of every round is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_mount import PROJECT, log_artifacts, wall  # noqa: E402
from benchmarks.context import FULL, Context  # noqa: E402
from benchmarks.data import make_file  # noqa: E402
from benchmarks.harness import drop_page_cache, process_cpu_seconds  # noqa: E402
from benchmarks.mounts import WanllmdbMount  # noqa: E402
from benchmarks.servers import start_server  # noqa: E402

ALGORITHMS = ("sha256", "blake3")
DOWNLOAD = (
    "import resource, sys, time, wanllmdb\n"
    "art = wanllmdb.Api().artifact(sys.argv[1])\n"
    "t = time.time(); art.download(sys.argv[2])\n"
    "r = resource.getrusage(resource.RUSAGE_SELF); print(time.time() - t, r.ru_utime + r.ru_stime)\n"
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _digest_pass(path: str, algorithm: str) -> dict:
    from wanllmdb.manifest.chunkhash import chunk_hash
    from wanllmdb.manifest.digest import Digester

    digester = Digester(1 << 20, chunk_hash(algorithm))
    buffers = [bytearray(1 << 20), bytearray(1 << 20)]  # two in turn: MD5 of one may still run
    c0, t0, i = _cpu(), time.time(), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffers[i % 2]):
            digester.update(memoryview(buffers[i % 2])[:n])
            i += 1
    digester.result()
    return {"s": round(time.time() - t0, 3), "cpu": round(_cpu() - c0, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    size = args.size_mb << 20
    ctx = Context(workdir=tempfile.mkdtemp(prefix="wanllmdb-ab-", dir="/var/tmp"), sizes=FULL, quick=False)
    src = {a: make_file(ctx.path("inputs", f"{a}.bin"), size, seed=11 + i) for i, a in enumerate(ALGORITHMS)}
    server = start_server(ctx.path("srv", ""))
    out: dict = {k: {a: [] for a in ALGORITHMS} for k in ("mount", "download", "digest")}
    try:
        for algorithm in ALGORITHMS:
            os.environ["WANLLMDB_CHUNK_HASH"] = algorithm
            log_artifacts(ctx, server, [(f"a-{algorithm}", src[algorithm])])
        os.environ.pop("WANLLMDB_CHUNK_HASH", None)
        for r in range(args.rounds):
            for algorithm in ALGORITHMS if r % 2 == 0 else ALGORITHMS[::-1]:
                cache = ctx.path(f"cache-{algorithm}", "")
                shutil.rmtree(cache, ignore_errors=True)
                log = ctx.path("logs", f"mount-{r}-{algorithm}.log")
                with WanllmdbMount(server, ctx.path("mnt", ""), cache, log, ctx.env("mount")) as mnt:
                    path = os.path.join(mnt.mountpoint, PROJECT, f"a-{algorithm}", "v1", f"{algorithm}.bin")
                    os.stat(path)
                    drop_page_cache()
                    c0, s0 = process_cpu_seconds(mnt.pid), server.cpu_seconds()
                    seconds = wall(["cat", path])
                    out["mount"][algorithm].append({"s": round(seconds, 3),
                                                    "mount_cpu": round(process_cpu_seconds(mnt.pid) - c0, 3),
                                                    "server_cpu": round(server.cpu_seconds() - s0, 3)})
                target = ctx.path(f"dl-{algorithm}", "")
                shutil.rmtree(target, ignore_errors=True)
                env = ctx.env(f"dl-{algorithm}", WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key)
                drop_page_cache()
                s0 = server.cpu_seconds()
                proc = subprocess.run([sys.executable, "-c", DOWNLOAD, f"{PROJECT}/a-{algorithm}:v1",
                                       os.path.join(target, "out")], env=env, capture_output=True, text=True,
                                      check=True)
                seconds, client = map(float, proc.stdout.split()[-2:])
                out["download"][algorithm].append({"s": round(seconds, 3), "client_cpu": round(client, 3),
                                                   "server_cpu": round(server.cpu_seconds() - s0, 3)})
                out["digest"][algorithm].append(_digest_pass(src[algorithm], algorithm))
            print(json.dumps({k: {a: v[-1] for a, v in d.items()} for k, d in out.items()}), flush=True)
    finally:
        server.stop()
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    out["meta"] = {"size_mb": args.size_mb, "rounds": args.rounds, "loadavg": os.getloadavg()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
