"""A stalled or unreachable server never makes what the mount already has slow (issue 10, point 4): after the
metadata TTL, a cached file opens and reads and a listing already seen lists within a second; an uncached
read fails with EIO within the timeout; listings refresh again once the server answers."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.support.mount import log_version, wait_until
from tests.support.server import start_server

pytestmark = [pytest.mark.fuse, pytest.mark.server]

CHUNK = 64 * 1024
BIG = os.urandom(6 * CHUNK)
TIMEOUT = 3.0
TTL = 0.5
#: A hang bound, not a performance figure: before the fix each of these took the whole timeout or more.
PROMPT = 1.5


def _timed(fn):
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


def _cat(path) -> subprocess.CompletedProcess:
    return subprocess.run(["cat", str(path)], capture_output=True, timeout=60)


def _ls_l(path) -> subprocess.CompletedProcess:
    return subprocess.run(["ls", "-l", str(path)], capture_output=True, timeout=60)


def _check_served_while_down(mnt, version, artifact_dir, cold_bound):
    time.sleep(TTL * 2)  # every listing on the way has expired
    for _ in range(3):  # and again: no lookup may wait on the server, the first nor the later ones
        out, took = _timed(lambda: _cat(version / "cached.txt"))
        assert out.returncode == 0 and out.stdout == b"cached" and took < PROMPT, took
        sha, took = _timed(lambda: os.getxattr(version / "cached.txt", "user.wanllmdb.sha256"))
        assert len(sha) == 64 and took < PROMPT, took
        for listed, name in ((version, b"cached.txt"), (artifact_dir, b"latest -> v1"), (artifact_dir.parent, b"a")):
            listing, took = _timed(lambda d=listed: _ls_l(d))
            assert listing.returncode == 0 and name in listing.stdout and took < PROMPT, (listed, took)
        names, took = _timed(lambda: sorted(os.listdir(mnt.path)))
        assert "down" in names and took < PROMPT, took
        time.sleep(TTL)
    for cold_file in ("other/cold.txt", "big/cold.bin"):  # never read: not in the cache
        cold, took = _timed(lambda f=cold_file: _cat(version / f))
        assert cold.returncode != 0 and b"Input/output error" in cold.stderr, cold_file
        assert took < cold_bound, (cold_file, took)


def _check_back(server, tmp_path, version, artifact_dir):
    """A version logged now shows up again, and the cold files read."""
    registry = server.registry()
    try:
        log_version(registry, tmp_path, "down", "a", {"cached.txt": b"second"})
    finally:
        registry.close()
    wait_until(lambda: "v2" in os.listdir(artifact_dir), 30, "v2 to show once the server answers again")
    assert (artifact_dir / "v2" / "cached.txt").read_bytes() == b"second"
    wait_until(lambda: _cat(version / "other" / "cold.txt").returncode == 0, 30, "the cold file to read")
    assert (version / "other" / "cold.txt").read_bytes() == b"never read"
    assert (version / "big" / "cold.bin").read_bytes() == BIG


@pytest.mark.parametrize("fault", ["stalled", "killed"])
def test_cached_files_and_seen_listings_stay_prompt_while_the_server_is_down(
    make_server, mounter, tmp_path, monkeypatch, fault
):
    server = make_server()
    registry = server.registry()
    try:
        files = {"cached.txt": b"cached", "other/cold.txt": b"never read", "big/cold.bin": BIG}
        log_version(registry, tmp_path, "down", "a", files, chunk_size=CHUNK)
    finally:
        registry.close()
    monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key or "")
    mnt = mounter("--base-url", server.url, "--timeout", str(TIMEOUT), "--metadata-ttl", str(TTL))
    artifact_dir = mnt.path / "down" / "a"
    version = artifact_dir / "v1"
    assert (version / "cached.txt").read_bytes() == b"cached"
    assert sorted(os.listdir(artifact_dir)) == ["latest", "v1"]
    assert sorted(os.listdir(version)) == ["big", "cached.txt", "other"]
    assert os.listdir(version / "other") == ["cold.txt"] and os.listdir(version / "big") == ["cold.bin"]
    pid = server.process.pid
    if fault == "stalled":
        os.kill(pid, signal.SIGSTOP)
        try:
            _check_served_while_down(mnt, version, artifact_dir, cold_bound=TIMEOUT + PROMPT)
        finally:
            os.kill(pid, signal.SIGCONT)
        _check_back(server, tmp_path, version, artifact_dir)
        return
    os.kill(pid, signal.SIGKILL)
    server.process.wait(10)
    # A refused connection is known at once: an uncached read fails without waiting out any timeout.
    _check_served_while_down(mnt, version, artifact_dir, cold_bound=PROMPT)
    # The same server started again where the killed one was (its root, port and key).
    port = int(server.url.rpartition(":")[2])
    again = start_server(os.path.dirname(server.root), api_key=server.api_key, port=port)
    try:
        _check_back(again, tmp_path, version, artifact_dir)
    finally:
        again.stop()
