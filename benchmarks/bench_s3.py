"""Blobs in S3-compatible storage: ``wanllmdb server --blobs s3://<bucket>/bench`` on a SeaweedFS (``weed mini``)
started by this group, beside plain ``requests`` transfers straight to the same store.

- log_artifact of the big file (a single presigned PUT, below the multipart threshold) vs a plain ``requests``
  PUT of the same file to the same presigned URL with the same signed headers (taken from a draft, which is
  then aborted; the object is deleted again with boto3 so the SDK must upload it), vs hashing alone and vs
  min(PUT, hashing); the SDK hashes files first on S3 servers, so hashing + PUT is its sequential floor
- the same log on a second server with a low ``--multipart-threshold`` (multipart upload, parts of
  ``--part-size``), vs the same plain PUT
- download() cold of the big file vs a plain ``requests`` GET of the presigned store URL
  (``POST /api/v1/blob-urls``) and vs 8 MiB ``Range`` GETs of it in sequence (what the mount does)
- the mount's cold read (``cat``) of the big file through ``wanllmdb mount`` on the S3 server vs the plain GET
- for each: the server's CPU seconds per GB moved (bytes go straight between client and store, so it should
  be near zero; a multipart upload is the exception: the server reads the object back once to hash it) and
  SeaweedFS's CPU seconds per GB for context

Everything (store, servers, mounts) is started here under the work dir and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import requests

from wanllmdb.fs.process import mounts_under

from .bench_http import client
from .context import Context
from .data import make_file
from .harness import Result, children_cpu_seconds, cpu_floor, cpu_of, drop_page_cache, mbps, process_cpu_seconds, timed
from .mounts import WanllmdbMount
from .servers import BenchServer, start_server

GROUP = "s3"
PROJECT = "bench"
#: Repetitions of each transfer and its baselines, (full, quick); the best of each is reported, all are kept.
REPEATS = {False: 3, True: 1}
#: The Range requests of the ranged baseline (the mount's fetch size, wanllmdb.fs.reader.FETCH_BYTES).
RANGE_BYTES = 8 << 20
#: The multipart server's settings, (full, quick).
MULTIPART = {False: ("--multipart-threshold", "256MiB", "--part-size", "64MiB"),
             True: ("--multipart-threshold", "32MiB", "--part-size", "16MiB")}
#: "Near zero": the server's CPU per GB moved that counts as not touching the bytes.
NEAR_ZERO_CPU_PER_GB = 0.1


def _gb(nbytes: int) -> float:
    return nbytes / 1e9


class Store:
    """The SeaweedFS of this group and what the servers on it need."""

    def __init__(self, ctx: Context) -> None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tests.support.seaweed import start_seaweed

        self.ctx = ctx
        self.s3 = start_seaweed(ctx.path("s3", "seaweed", ""))
        self.client = self.s3.client()
        self.servers: list[BenchServer] = []

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.s3.process.pid)

    def server(self, name: str, *extra: str) -> BenchServer:
        """A server on a new bucket of its own (prefix ``bench``), with ``extra`` arguments."""
        bucket = self.s3.new_bucket("bench")
        server = start_server(self.ctx.path("s3", name, ""), extra_args=(
            "--blobs", f"s3://{bucket}/bench", "--s3-endpoint", self.s3.endpoint, *extra), extra_env=self.s3.env)
        server.bucket = bucket  # type: ignore[attr-defined]
        self.servers.append(server)
        return server

    def key(self, sha: str) -> str:
        return f"bench/blobs/sha256/{sha[:2]}/{sha}"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.s3.stop()


class Meter:
    """CPU seconds of the server, the store and this process over a block; ``per_gb`` divides by bytes moved."""

    def __init__(self, store: Store, server: BenchServer | None, nbytes: int) -> None:
        self.store, self.server, self.nbytes = store, server, nbytes

    def __enter__(self) -> Meter:
        self.t0 = (self.server.cpu_seconds() if self.server else 0.0, self.store.cpu_seconds(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_cpu_s = (self.server.cpu_seconds() if self.server else 0.0) - self.t0[0]
        self.store_cpu_s = self.store.cpu_seconds() - self.t0[1]
        self.this_cpu_s = time.process_time() - self.t0[2]

    def notes(self) -> dict[str, float]:
        gb = _gb(self.nbytes)
        return {"server_cpu_s": self.server_cpu_s, "server_cpu_s_per_gb": self.server_cpu_s / gb,
                "store_cpu_s": self.store_cpu_s, "store_cpu_s_per_gb": self.store_cpu_s / gb,
                "bench_process_cpu_s": self.this_cpu_s}


def plain_put(store: Store, server: BenchServer, path: str, digest) -> dict:
    """A plain ``requests`` PUT of the file straight to the store, to the URL and with the signed headers a draft
    answers; the draft is aborted first and the object deleted afterwards (the SDK must upload it again)."""
    from wanllmdb.manifest import Manifest, ManifestEntry
    from wanllmdb.registry import DraftSpec
    from wanllmdb.registry.http import HttpRegistry

    entry = ManifestEntry("baseline.bin", digest.size, digest.md5, digest.sha256, digest.chunk_size, digest.chunks)
    with HttpRegistry(server.url, api_key=server.api_key) as registry:
        draft = registry.create_draft(DraftSpec("bench-baseline", "baseline", "dataset",
                                                Manifest.from_entries([entry])))
        target = draft.missing[0]
        registry.abort_draft(draft.id)
    if target.url is None:
        raise RuntimeError(f"the draft answered no single PUT URL for {digest.size} bytes: {target}")
    headers = dict(target.headers)
    os.sync()
    with open(path, "rb") as f, Meter(store, server, digest.size) as meter:
        seconds, response = timed(lambda: requests.put(url=target.url, data=f, headers=headers, timeout=900))
    response.raise_for_status()
    head = store.client.head_object(Bucket=server.bucket, Key=store.key(digest.sha256))  # type: ignore[attr-defined]
    if head["ContentLength"] != digest.size:
        raise RuntimeError(f"the plain PUT stored {head['ContentLength']} bytes, not {digest.size}")
    store.client.delete_object(Bucket=server.bucket, Key=store.key(digest.sha256))  # type: ignore[attr-defined]
    return {"seconds": seconds, "signed_headers": sorted(headers), **meter.notes()}


def sdk_log(ctx: Context, store: Store, server: BenchServer, path: str, size: int, cache: str) -> dict:
    """log_artifact of the file in a client subprocess (bench_http's client), with server and store CPU."""
    with Meter(store, server, size) as meter:
        logged = client(ctx, server, cache, "log", "big", path)
    return {**logged, **meter.notes()}


def presigned_get_url(server: BenchServer, sha: str) -> str:
    answer = requests.post(f"{server.url}/api/v1/blob-urls", json={"sha256s": [sha]},
                           headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)
    answer.raise_for_status()
    return answer.json()["urls"][sha]["url"]


def plain_get(store: Store, server: BenchServer, sha: str, size: int, target: str, ranged: bool) -> dict:
    """A plain ``requests`` GET of the presigned store URL into a file: one request, or ``RANGE_BYTES`` Range
    requests in sequence on one connection."""
    url = presigned_get_url(server, sha)

    def whole() -> None:
        with requests.get(url, stream=True, timeout=600) as response, open(target, "wb") as out:
            response.raise_for_status()
            for block in response.iter_content(1 << 20):
                out.write(block)

    def in_ranges() -> None:
        with requests.Session() as session, open(target, "wb") as out:
            for start in range(0, size, RANGE_BYTES):
                end = min(size, start + RANGE_BYTES) - 1
                got = 0
                with session.get(url, headers={"Range": f"bytes={start}-{end}"}, stream=True,
                                 timeout=600) as response:
                    if response.status_code != 206:
                        raise RuntimeError(f"Range {start}-{end}: status {response.status_code}")
                    for block in response.iter_content(1 << 20):
                        out.write(block)
                        got += len(block)
                if got != end - start + 1:
                    raise RuntimeError(f"Range {start}-{end}: {got} bytes")

    os.sync()
    drop_page_cache()
    with Meter(store, server, size) as meter:
        seconds, _ = timed(in_ranges if ranged else whole)
    got = os.path.getsize(target)
    os.unlink(target)
    if got != size:
        raise RuntimeError(f"plain GET wrote {got} bytes, not {size}")
    return {"seconds": seconds, "requests": -(-size // RANGE_BYTES) if ranged else 1, **meter.notes()}


def sdk_download(ctx: Context, store: Store, server: BenchServer, size: int, rep: int) -> dict:
    cache, out = ctx.path("s3", f"cache-download-{rep}", ""), ctx.path("s3", "out-big", "")
    drop_page_cache()
    with Meter(store, server, size) as meter:
        got = client(ctx, server, cache, "download", "big", out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {**got, **meter.notes()}


def mount_read(ctx: Context, store: Store, server: BenchServer, size: int, rep: int) -> dict:
    """``cat`` of the big file through a fresh ``wanllmdb mount`` (empty cache, no page cache)."""
    cache = ctx.path("s3", f"cache-mount-{rep}", "")
    shutil.rmtree(cache, ignore_errors=True)
    with WanllmdbMount(server, ctx.path("s3", "mnt", ""), cache, ctx.path("s3", "logs", f"mount-{rep}.log"),
                       ctx.env("s3-mount")) as mnt:
        path = os.path.join(mnt.mountpoint, PROJECT, "big", "v1", "big.bin")
        os.stat(path)  # listing the version is not part of the read
        drop_page_cache()
        mark = server.log_offset()
        mount0, cat0 = process_cpu_seconds(mnt.pid), children_cpu_seconds()
        with Meter(store, server, size) as meter:
            t0 = time.perf_counter()
            proc = subprocess.run(["cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"cat {path} failed: {proc.stderr.decode(errors='replace')[-1000:]}")
        out = {"seconds": seconds, "mount_cpu_s": process_cpu_seconds(mnt.pid) - mount0,
               "cat_cpu_s": children_cpu_seconds() - cat0, "stats": mnt.stats(),
               "server_requests": server.requests_since(mark), "mount_start_s": mnt.start_seconds, **meter.notes()}
    shutil.rmtree(cache, ignore_errors=True)
    return out


def cpu_row(name: str, runs: list[dict], ctx: Context) -> Result:
    """The server's CPU seconds per GB moved (best run by time), SeaweedFS's beside it in the notes."""
    best = min(runs, key=lambda r: r.get("seconds", r.get("total", r.get("download", 0))))
    per_gb = best["server_cpu_s_per_gb"]
    return Result(GROUP, f"server CPU per GB: {name}", per_gb, "CPU-s/GB", higher_is_better=False,
                  target=f"< {NEAR_ZERO_CPU_PER_GB} CPU-s/GB (bytes bypass the server)",
                  met=per_gb < NEAR_ZERO_CPU_PER_GB,
                  notes={"store_cpu_s_per_gb": best["store_cpu_s_per_gb"],
                         "all_server_cpu_s_per_gb": [r["server_cpu_s_per_gb"] for r in runs],
                         "all_store_cpu_s_per_gb": [r["store_cpu_s_per_gb"] for r in runs]})


def run(ctx: Context) -> list[Result]:
    from wanllmdb.manifest import hash_file

    size = ctx.sizes.big
    big = make_file(ctx.path("inputs", "big.bin"), size)
    repeats = REPEATS[ctx.quick]
    results: list[Result] = []
    load_at_start = os.getloadavg()  # the machine may be shared: a busy one shows here
    store = Store(ctx)
    try:
        hash_cpu = cpu_of(lambda: hash_file(big))  # page cache warm: the digests' CPU alone
        hashing, digest = timed(lambda: hash_file(big))
        sha = digest.sha256

        def sha256_and_md5() -> None:  # what the server computes when it reads back a multipart object
            import hashlib

            h, m = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
            with open(big, "rb") as f:
                while piece := f.read(8 << 20):
                    h.update(piece)
                    m.update(piece)

        verify_cpu_per_gb = min(cpu_of(sha256_and_md5) for _ in range(2)) / _gb(size)

        # 1. log_artifact: single PUT (a fresh server each round: it must never have seen the blob), then
        #    multipart on a server with a low threshold, each beside a plain PUT of the same round.
        puts, logs, mp_logs = [], [], []
        server = None
        for rep in range(repeats):
            if server is not None:
                server.stop()
            server = store.server(f"server-{rep}")
            puts.append(plain_put(store, server, big, digest))
            logs.append(sdk_log(ctx, store, server, big, size, ctx.path("s3", f"cache-log-{rep}", "")))
            mp = store.server(f"server-mp-{rep}", *MULTIPART[ctx.quick])
            try:
                mp_logs.append(sdk_log(ctx, store, mp, big, size, ctx.path("s3", f"cache-log-mp-{rep}", "")))
            finally:
                mp.stop()
                store.client.delete_object(Bucket=mp.bucket, Key=store.key(sha))  # type: ignore[attr-defined]
        assert server is not None  # the server of the last round holds the logged big file
        put_s = min(r["seconds"] for r in puts)
        logged = min(logs, key=lambda r: r["total"])
        mp_logged = min(mp_logs, key=lambda r: r["total"])
        fastest_put = min(puts, key=lambda r: r["seconds"])
        # The least a log can cost here: the digests (the SDK hashes before it uploads to a store), plus what
        # the plain PUT costs this client, the server and the store (which checks SHA-256 and MD5 itself).
        floor = cpu_floor(max(put_s, hashing) / 0.7, {
            "md5+sha256+chunk sha256": hash_cpu, "PUT client": fastest_put["bench_process_cpu_s"],
            "PUT server": fastest_put["server_cpu_s"], "PUT store (SeaweedFS)": fastest_put["store_cpu_s"]})
        log_notes = {"hashing_s": hashing, "hash_cpu_s": hash_cpu, "plain_put_s": put_s,
                     "hashing_plus_put_s": hashing + put_s, "plain_puts": puts}
        results += [
            Result(GROUP, "log_artifact big file (single PUT)", mbps(size, logged["total"]), "MB/s",
                   "plain PUT to store", mbps(size, put_s), target=">= 0.7x min(PUT, hashing)",
                   met=logged["total"] <= max(put_s, hashing) / 0.7,
                   notes={"best": logged, "runs": logs, "cpu_floor": floor, **log_notes}),
            Result(GROUP, "  log_artifact vs hashing alone", mbps(size, logged["total"]), "MB/s", "hashing",
                   mbps(size, hashing)),
            Result(GROUP, "  log_artifact vs min(PUT, hashing)", mbps(size, logged["total"]), "MB/s",
                   "min(PUT, hashing)", mbps(size, max(put_s, hashing)),
                   notes={"hashing_plus_put_mbps": mbps(size, hashing + put_s)}),
            Result(GROUP, "log_artifact big file (multipart)", mbps(size, mp_logged["total"]), "MB/s",
                   "plain PUT to store", mbps(size, put_s),
                   notes={"server_args": list(MULTIPART[ctx.quick]), "best": mp_logged, "runs": mp_logs,
                          "sha256_md5_cpu_s_per_gb_here": verify_cpu_per_gb, **log_notes}),
        ]

        # 2. and 3. download() cold, the mount's cold read, a plain GET and a ranged GET, in interleaved rounds.
        gets, ranged, downloads, reads = [], [], [], []
        for rep in range(repeats):
            gets.append(plain_get(store, server, sha, size, ctx.path("s3", "plain-get.bin"), ranged=False))
            ranged.append(plain_get(store, server, sha, size, ctx.path("s3", "plain-get.bin"), ranged=True))
            downloads.append(sdk_download(ctx, store, server, size, rep))
            reads.append(mount_read(ctx, store, server, size, rep))
        get_s = min(r["seconds"] for r in gets)
        ranged_s = min(r["seconds"] for r in ranged)
        got = min(downloads, key=lambda r: r["download"])
        read = min(reads, key=lambda r: r["seconds"])
        results += [
            Result(GROUP, "download() big file cold", mbps(size, got["download"]), "MB/s", "plain GET from store",
                   mbps(size, get_s), target=">= 0.8x plain GET", met=got["download"] <= get_s / 0.8,
                   notes={"best": got, "runs": downloads, "plain_gets": gets}),
            Result(GROUP, "  download() vs ranged GET (8 MiB)", mbps(size, got["download"]), "MB/s",
                   "8 MiB Range GETs", mbps(size, ranged_s), notes={"ranged_gets": ranged}),
            Result(GROUP, "  ranged GET (8 MiB) vs plain GET", mbps(size, ranged_s), "MB/s", "plain GET from store",
                   mbps(size, get_s)),
            Result(GROUP, "mount cold read big file (cat)", mbps(size, read["seconds"]), "MB/s",
                   "plain GET from store", mbps(size, get_s), target=">= 0.7x plain GET",
                   met=read["seconds"] <= get_s / 0.7, notes={"best": read, "runs": reads}),
            Result(GROUP, "  mount cold read vs ranged GET (8 MiB)", mbps(size, read["seconds"]), "MB/s",
                   "8 MiB Range GETs", mbps(size, ranged_s)),
        ]

        # 4. The server's CPU per GB moved (bytes should bypass it), SeaweedFS's in the notes.
        mp_cpu = cpu_row("log_artifact (multipart)", mp_logs, ctx)
        # What reading the object back once costs: receiving it (the plain GET's client CPU) and SHA-256 + MD5.
        receive_per_gb = min(r["bench_process_cpu_s"] for r in gets) / _gb(size)
        read_back = verify_cpu_per_gb + receive_per_gb
        mp_cpu.notes.update(sha256_md5_cpu_s_per_gb_here=verify_cpu_per_gb, get_receive_cpu_s_per_gb=receive_per_gb)
        mp_cpu.target = f"<= 1.1x one read-back here (GET + sha256 + md5: {read_back:.2f} CPU-s/GB)"
        mp_cpu.met = mp_cpu.value <= read_back * 1.1
        results += [cpu_row("log_artifact (single PUT)", logs, ctx), mp_cpu,
                    cpu_row("download() cold", downloads, ctx),
                    cpu_row("mount cold read", reads, ctx),
                    cpu_row("plain PUT (baseline)", puts, ctx),
                    cpu_row("plain GET (baseline)", gets, ctx),
                    cpu_row("ranged GET (baseline)", ranged, ctx)]
        for result in results:
            result.notes["loadavg_start_end"] = [load_at_start, os.getloadavg()]
    finally:
        left = [entry.mountpoint for entry in mounts_under(os.path.realpath(ctx.workdir))]
        for point in left:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        store.stop()
        for name in os.listdir(ctx.path("s3", "")):
            if name.startswith(("cache-", "seaweed")):
                shutil.rmtree(ctx.path("s3", name), ignore_errors=True)
        if left:
            raise RuntimeError(f"mounts left behind (now detached): {left}")
    return results
