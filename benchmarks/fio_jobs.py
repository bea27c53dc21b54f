"""fio jobs after the ones mountpoint-s3 publishes figures from (mountpoint-s3/scripts/fio/read/ and
read_latency/), with short runtimes and a given file instead of a 100 GB object:

- ``seq_read``     bs=256k, rw=read, ioengine=sync, time_based      (read/seq_read.fio)
- ``rand_read``    bs=256k, rw=randread, ioengine=sync, time_based  (read/rand_read.fio)
- ``seq_read_4t``  as seq_read with numjobs=4, group_reporting      (read/seq_read_4t.fio)
- ``ttfb``         bs=1B size=1B rw=read direct=1 loops=10          (read_latency/ttfb.fio)

:func:`run_job` writes the job file, runs ``fio --output-format=json`` and returns the figures that matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

JOBS = {
    "seq_read": {"bs": "256k", "rw": "read", "time_based": True},
    "rand_read": {"bs": "256k", "rw": "randread", "time_based": True},
    "seq_read_4t": {"bs": "256k", "rw": "read", "time_based": True, "numjobs": 4},
    "ttfb": {"bs": "1", "rw": "read", "direct": 1, "loops": 10, "size": "1"},
}


def job_text(name: str, filename: str, size: int, runtime: float) -> str:
    spec = dict(JOBS[name])
    lines = ["[global]", "name=fs_bench", f"bs={spec.pop('bs')}", "group_reporting"]
    if spec.pop("time_based", False):
        lines += [f"runtime={runtime:g}s", "time_based"]
    lines += ["", f"[{name}]", f"filename={filename}", f"size={spec.pop('size', size)}",
              f"rw={spec.pop('rw')}", "ioengine=sync", "fallocate=none", "invalidate=1"]
    lines += [f"{key}={value}" for key, value in spec.items()]
    return "\n".join(lines) + "\n"


def run_job(name: str, filename: str, size: int, runtime: float) -> dict[str, float]:
    """Run one job on ``filename``; returns MB/s, IOPS and latencies (ms) of its reads.

    Raises:
        RuntimeError: fio failed.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as f:
        f.write(job_text(name, filename, size, runtime))
        path = f.name
    try:
        proc = subprocess.run(["fio", "--readonly", "--output-format=json", path], capture_output=True, text=True,
                              timeout=runtime * 4 + 120)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"fio {name} on {filename} failed: {proc.stderr.strip()[-1000:]}")
    text = proc.stdout[proc.stdout.index("{"):]  # fio may print notes before the JSON
    job = json.loads(text)["jobs"][0]["read"]
    lat = job.get("lat_ns") or {}
    clat = job.get("clat_ns") or {}
    pct = clat.get("percentile") or {}
    return {
        "mbps": job["bw_bytes"] / 1e6,
        "iops": job["iops"],
        "lat_mean_ms": lat.get("mean", 0) / 1e6,
        "lat_max_ms": lat.get("max", 0) / 1e6,
        "clat_p50_ms": pct.get("50.000000", 0) / 1e6,
        "clat_p99_ms": pct.get("99.000000", 0) / 1e6,
        "ios": job.get("total_ios", 0),
    }
