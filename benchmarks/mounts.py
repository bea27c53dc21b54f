"""Mounts for the benchmarks: ``wanllmdb mount`` as users run it, and the passthrough baseline; both always
taken down again (context managers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from wanllmdb.fs.process import find_mount_process, mount_entry, pid_alive, wait_for

from .servers import BenchServer

PASSTHROUGH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "passthrough.py")


def _mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


class WanllmdbMount:
    """``wanllmdb mount MOUNTPOINT --base-url URL --cache-dir CACHE`` (background, as users run it).

    Attributes after ``__enter__``: ``pid`` of the mount process, ``start_seconds`` the command's wall time.
    """

    def __init__(self, server: BenchServer, mountpoint: str, cache_dir: str, log_file: str,
                 env: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        self.server = server
        self.mountpoint = os.path.realpath(mountpoint)
        self.cache_dir = cache_dir
        self.log_file = log_file
        self.env = {**env, "WANLLMDB_API_KEY": server.api_key}
        self.env.pop("WANLLMDB_BASE_URL", None)
        self.extra = extra
        self.pid: int | None = None
        self.start_seconds = 0.0

    def __enter__(self) -> WanllmdbMount:
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "wanllmdb", "mount", self.mountpoint, "--base-url", self.server.url,
               "--cache-dir", self.cache_dir, "--log-file", self.log_file, *self.extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        self.start_seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            self._force_down()
            raise RuntimeError(f"wanllmdb mount failed: {proc.stderr.strip()[-2000:]}")
        self.pid = find_mount_process(self.mountpoint)
        return self

    def stats(self) -> dict[str, int]:
        """The mount's read counters (``user.wanllmdb.stats`` on its root)."""
        return json.loads(os.getxattr(self.mountpoint, "user.wanllmdb.stats"))

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not _mounted(self.mountpoint) and (self.pid is None or not pid_alive(self.pid)):
            return
        subprocess.run([sys.executable, "-m", "wanllmdb", "unmount", self.mountpoint], env=self.env,
                       capture_output=True, text=True, timeout=60)
        self._force_down()

    def _force_down(self) -> None:
        if _mounted(self.mountpoint):
            tool = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
            subprocess.run([tool, "-u", "-z", self.mountpoint], capture_output=True, timeout=30)
        if self.pid is not None and pid_alive(self.pid):
            os.kill(self.pid, 9)
            wait_for(lambda: not pid_alive(self.pid), 5)
        if _mounted(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is still mounted")


class PassthroughMount:
    """``benchmarks/passthrough.py SOURCE MOUNTPOINT`` as a subprocess, for as long as the ``with`` lasts."""

    def __init__(self, source: str, mountpoint: str, *, splice: bool = False) -> None:
        self.source = source
        self.splice = splice
        self.mountpoint = os.path.realpath(mountpoint)
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> PassthroughMount:
        os.makedirs(self.mountpoint, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, PASSTHROUGH, *(["--splice"] if self.splice else []),
                                         self.source, self.mountpoint],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for(lambda: _mounted(self.mountpoint) or self.process.poll() is not None, 30) or \
                self.process.poll() is not None:
            err = self.process.stderr.read().decode(errors="replace") if self.process.poll() is not None else ""
            self.__exit__()
            raise RuntimeError(f"passthrough mount failed: {err[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        tool = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
        if _mounted(self.mountpoint):
            subprocess.run([tool, "-u", self.mountpoint], capture_output=True, timeout=30)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
        if _mounted(self.mountpoint):
            subprocess.run([tool, "-u", "-z", self.mountpoint], capture_output=True, timeout=30)

