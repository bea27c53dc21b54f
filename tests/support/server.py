"""Real ``wanllmdb server`` processes for tests (a pytest plugin, listed in conftest ``pytest_plugins``).

Fixtures:

- ``live_server`` (session): one server with an API key and its own temporary root, shared by every test
  that needs a server without special options (the registry contract suite through ``backend="http"``).
  Tests sharing it use unique project names (the ``project`` fixture).
- ``make_server`` (function): a factory ``make_server(**options) -> ServerProcess`` for tests needing a
  server of their own (short URL lifetime, no key, short draft age...); all are stopped after the test.

Servers run ``python -m wanllmdb.cli.main server`` on 127.0.0.1 with ``--port 0`` and report their port
through ``--port-file``; the fixture waits for ``/api/v1/health`` with a deadline and stops the process
with SIGTERM (then SIGKILL) at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class ServerProcess:
    """A running server: ``url``, ``api_key`` (None without keys), ``root``, and its process and log."""

    url: str
    api_key: str | None
    root: str
    process: subprocess.Popen = field(repr=False)
    log_path: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def registry(self, **kwargs):
        """An ``HttpRegistry`` for this server (close it after use)."""
        from wanllmdb.registry.http import HttpRegistry

        return HttpRegistry(self.url, api_key=self.api_key, **kwargs)

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode


def _server_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANLLMDB_")}
    env["HOME"] = home
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(
    root: str | os.PathLike[str],
    *,
    api_key: str | None | bool = True,
    url_ttl: str | None = None,
    draft_max_age: str | None = None,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
    quiet: bool = False,
    extra_env: dict[str, str] | None = None,
    port: int = 0,
) -> ServerProcess:
    """Start a server on a free port under ``root`` and wait until it answers its health check.

    Args:
        api_key: True for a random key, a string for that key, None/False for no key.
        port: a given port instead of a free one (to start a server again where a killed one was).
        extra_env: variables added to the server's environment (which otherwise has no ``WANLLMDB_*``).
    """
    root = str(root)
    os.makedirs(root, exist_ok=True)
    key = f"test-{secrets.token_hex(8)}" if api_key is True else (api_key or None)
    port_file = os.path.join(root, f"port.{secrets.token_hex(4)}")
    log_path = os.path.join(root, "server.log")
    cmd = [
        sys.executable, "-m", "wanllmdb.cli.main", "server",
        "--host", host, "--port", str(port), "--root", os.path.join(root, "registry"), "--port-file", port_file,
    ]  # fmt: skip
    if key:
        cmd += ["--api-key", key]
    if url_ttl is not None:
        cmd += ["--url-ttl", url_ttl]
    if draft_max_age is not None:
        cmd += ["--draft-max-age", draft_max_age]
    if quiet:
        cmd.append("--quiet")
    cmd += list(extra_args)
    env = {**_server_env(root), **(extra_env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root
        )
    server = ServerProcess("", key, os.path.join(root, "registry"), process, log_path)
    try:
        server.url = _wait_until_healthy(process, port_file, host, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_healthy(process: subprocess.Popen, port_file: str, host: str, log_path: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    delay = 0.01
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"wanllmdb server exited with {process.returncode}:\n{Path(log_path).read_text()}")
        if url is None and os.path.exists(port_file):
            url = f"http://{host}:{int(Path(port_file).read_text())}"
        if url is not None:
            try:
                if requests.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    return url
            except requests.RequestException:
                pass
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise RuntimeError(f"wanllmdb server not healthy after {START_TIMEOUT}s:\n{Path(log_path).read_text()}")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One real server (with an API key) for the whole session."""
    server = start_server(tmp_path_factory.mktemp("live-server"))
    yield server
    status = server.stop()
    assert status is not None


@pytest.fixture
def make_server(tmp_path_factory):
    """Factory for servers of one test's own; every one is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def make(**options) -> ServerProcess:
        server = start_server(tmp_path_factory.mktemp("server"), **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# --- helpers for tests that log versions over HTTP -------------------------------------------------------


def write_files(root: str | os.PathLike[str], count: int, size: int = 100, prefix: str = "f") -> dict[str, str]:
    """``count`` files of random content under ``root``: artifact path -> local path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        path = root / f"{prefix}{i:05d}.bin"
        path.write_bytes(os.urandom(size))
        files[f"{prefix}/{i:05d}.bin"] = str(path)
    return files


def manifest_of(files: dict[str, str]):
    """(Manifest, sha256 -> local path) of artifact path -> local path."""
    from wanllmdb.manifest import Manifest, ManifestEntry, hash_file

    entries, by_sha = [], {}
    for rel, local in files.items():
        digest = hash_file(local)
        entries.append(ManifestEntry(rel, digest.size, digest.md5, digest.sha256, digest.chunk_size, digest.chunks))
        by_sha[digest.sha256] = local
    return Manifest.from_entries(entries), by_sha


def log_version(registry, project: str, name: str, files: dict[str, str], aliases=(), threads: int = 8):
    """Draft, parallel uploads of the missing blobs, finalize: the writer workflow of the SDK."""
    from concurrent.futures import ThreadPoolExecutor

    from wanllmdb.registry.base import DraftSpec

    manifest, by_sha = manifest_of(files)
    draft = registry.create_draft(DraftSpec(project, name, "dataset", manifest))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda t: registry.upload_blob(draft, t, by_sha[t.sha256]), draft.missing))
    return registry.finalize_draft(draft.id, list(aliases))


class RequestLog:
    """Counts the requests an ``HttpRegistry`` sends (final answers, after the session's own retries)."""

    def __init__(self, registry) -> None:
        self.calls: list[tuple[str, str]] = []
        registry.transport.session.hooks["response"].append(self._record)

    def _record(self, response, *args, **kwargs):
        from urllib.parse import urlsplit

        self.calls.append((response.request.method, urlsplit(response.request.url).path))

    def count(self, method: str | None = None, path_part: str = "") -> int:
        return sum(1 for m, p in self.calls if (method is None or m == method) and path_part in p)

    def clear(self) -> None:
        self.calls.clear()
