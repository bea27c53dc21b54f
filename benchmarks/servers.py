"""A real ``wanllmdb server`` on loopback for the benchmarks, with its access log for request counting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import requests

from .harness import process_cpu_seconds


@dataclass
class BenchServer:
    url: str
    api_key: str
    root: str
    process: subprocess.Popen
    log_path: str

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        return process_cpu_seconds(self.process.pid)

    def log_offset(self) -> int:
        return os.path.getsize(self.log_path)

    def requests_since(self, offset: int) -> dict[str, int]:
        """Requests logged since ``offset``: counts by kind (api, blob GET, blob PUT, bundle)."""
        counts = {"api": 0, "blob_get": 0, "blob_put": 0, "bundle": 0, "bytes_out": 0}
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            for line in f:
                if "wanllmdb.server.access" not in line:
                    continue
                parts = line.split("wanllmdb.server.access:", 1)[1].split()
                if len(parts) < 6:
                    continue
                _client, method, path, _status, nbytes = parts[:5]
                counts["bytes_out"] += int(nbytes)
                if path.startswith("/api/v1/blobs/bundle"):
                    counts["bundle"] += 1
                elif path.startswith("/api/v1/blobs/"):
                    counts["blob_put" if method == "PUT" else "blob_get"] += 1
                else:
                    counts["api"] += 1
        return counts

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(root: str, api_key: str = "bench-key", extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> BenchServer:
    """``wanllmdb server`` on a free loopback port; ``extra_args`` go on its command line (e.g. ``--blobs
    s3://bucket/prefix``), ``extra_env`` into its environment (e.g. the S3 credentials)."""
    os.makedirs(root, exist_ok=True)
    port_file = os.path.join(root, "port")
    log_path = os.path.join(root, "server.log")
    if os.path.exists(port_file):
        os.unlink(port_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANLLMDB_")}
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wanllmdb", "-v", "server", "--port", "0", "--port-file", port_file,
             "--root", root, "--api-key", api_key, *extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        if os.path.exists(port_file) and open(port_file).read().strip():
            url = f"http://127.0.0.1:{int(open(port_file).read())}"
            try:
                if requests.get(url + "/api/v1/health", timeout=1).ok:
                    return BenchServer(url, api_key, root, process, log_path)
            except requests.ConnectionError:
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start within 30 s")
