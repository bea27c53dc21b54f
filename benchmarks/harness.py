"""Shared machinery for the benchmarks: results with baselines and targets, timing, tables, JSON.

Every figure is measured in the same process run as its baseline, and reported as a ratio when it has one.
Targets are checked and printed, never asserted: this is measurement, not a test.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """One figure: ``value`` in ``unit``, optionally beside a baseline and checked against a target.

    ``higher_is_better`` decides how the ratio is read: for throughputs ratio = value / baseline, for times
    ratio = baseline / value, so a ratio >= 1 always means "as good as the baseline or better".
    """

    group: str
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    higher_is_better: bool = True
    target: str | None = None
    met: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.value in (None, 0):
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def sh(cmd: list[str] | str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command, failing loudly (benchmarks must not quietly measure an error)."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True, shell=isinstance(cmd, str), **kwargs)


def drop_page_cache(path: str | None = None) -> None:
    """Evict a file (or everything, as root) from the page cache, so "cold" means cold."""
    if path is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        pass


class RssSampler:
    """Samples a process's resident set size in a thread; ``peak`` in bytes (VmHWM when readable)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, key: str) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read("VmRSS:"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read("VmHWM:"))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of all waited-for children so far."""
    t = os.times()
    return t.children_user + t.children_system


#: Source of ``own_peak_rss()`` for client programs run with ``python -c``: the peak RSS of the program itself.
#: VmHWM starts afresh at ``exec``; ``ru_maxrss`` keeps the peak of the process before it (the benchmark's,
#: of which the forked child was a copy: 88 MB for a client that used 40).
OWN_PEAK_RSS = r"""
def own_peak_rss():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) * 1024
"""


def cpu_floor(needed_s: float, parts: dict[str, float]) -> dict[str, Any]:
    """The least wall time the CPU seconds ``parts`` (each the cheapest measured in this run) allow on this
    machine's cores, beside the time a target needs: a target whose floor is above it is out of reach here,
    whatever the implementation."""
    total = sum(parts.values())
    floor = total / (os.cpu_count() or 1)
    return {"parts_cpu_s": {k: round(v, 3) for k, v in parts.items()}, "total_cpu_s": round(total, 3),
            "cores": os.cpu_count(), "floor_s": floor, "needed_s": needed_s, "out_of_reach": floor > needed_s}


def chunk_check_cpu(path: str, repeats: int = 2) -> float:
    """CPU seconds of one pass of the writers' chunk digests (BLAKE3 by default) over ``path``, in 1 MiB
    chunks: what checking every chunk of a blob costs, the least a verified read can spend on it."""
    from wanllmdb.manifest.chunkhash import chunk_hash

    hasher = chunk_hash()

    def one_pass() -> None:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                hasher.of(view[:n])

    return min(cpu_of(one_pass) for _ in range(repeats))


def cpu_of(fn: Callable[[], Any]) -> float:
    """CPU seconds (every thread of this process) ``fn`` takes."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def write_new_file(directory: str, size: int) -> None:
    """Write ``size`` bytes into a new file and remove it (what storing bytes into a cache costs here)."""
    path = os.path.join(directory, f"write-probe.{os.getpid()}")
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block[: min(len(block), size - offset)], offset)
    finally:
        os.close(fd)
        os.unlink(path)


def print_table(results: list[Result], out=sys.stdout) -> None:
    rows = [("group", "measure", "value", "baseline", "ratio", "target", "")]
    for r in results:
        base = f"{r.baseline:.4g} ({r.baseline_name})" if r.baseline is not None else (r.baseline_name or "")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        mark = "" if r.met is None else ("ok" if r.met else "MISSED")
        floor = r.notes.get("cpu_floor")
        if floor and not r.met:
            mark += f" (CPU floor {floor['floor_s']:.2f} s {'>' if floor['out_of_reach'] else '<='} " \
                    f"{floor['needed_s']:.2f} s needed)"
        if (r.notes.get("floor") or {}).get("out_of_reach") and not r.met:
            mark += " (out of reach: its floor misses too)"
        rows.append((r.group, r.name, f"{r.value:.4g} {r.unit}", base, ratio, r.target or "", mark))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        out.write("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    return info


def write_json(path: str, results: list[Result], meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {
        "meta": meta,
        "results": [{**asdict(r), "ratio": r.ratio} for r in results],
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
