"""Starting, failing, stopping and surviving: the mount process under signals, stalls and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mount import (
    CLI,
    force_cleanup,
    is_mounted,
    log_version,
    require_fuse,
    run_cli,
    wait_until,
)
from wanllmdb.cache import BlobCache
from wanllmdb.fs.process import find_mount_process

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024
REPO = Path(__file__).resolve().parents[1]


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def test_bad_mountpoints_fail_with_one_line_and_no_process(tmp_path):
    require_fuse()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target, message in ((tmp_path / "missing", "does not exist"), (full, "not empty"), (a_file, "not a directory")):
        result = run_cli("mount", str(target))
        assert result.returncode != 0
        assert message in one_line(result.stderr)
        assert not is_mounted(target) and find_mount_process(str(target)) is None


def test_a_wrong_api_key_fails_with_one_line_and_no_process(tmp_path, live_server, monkeypatch):
    require_fuse()
    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", "not-the-key")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_cli("mount", str(mountpoint))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "key" in line.lower() or "unauthorized" in line.lower() or "401" in line
    assert not is_mounted(mountpoint) and find_mount_process(str(mountpoint)) is None


def test_unmount_ends_the_mount_and_its_process(registry, mounter, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"x"})
    mnt = mounter()
    pid = mnt.pid()
    assert pid is not None and (mnt.path / project / "a" / "v1" / "f.txt").read_bytes() == b"x"
    assert str(mnt.log_file) and "mounted" in mnt.log()
    result = mnt.unmount()
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt.path)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5, "the mount process to end")
    again = run_cli("unmount", str(mnt.path))
    assert again.returncode != 0 and "not mounted" in one_line(again.stderr)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_sigterm_unmounts_within_seconds_with_a_file_held_open(local_registry, mounter, project, tmp_path):
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"held open"})
    mnt = mounter()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); f.read(); print('open', flush=True); "
         "sys.stdin.read()", str(mnt.path / project / "a" / "v1" / "f.txt")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"open"
        pid = mnt.pid()
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not is_mounted(mnt.path) and _zombie(pid), 10, "SIGTERM to unmount")
        assert time.monotonic() - started < 6
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_on_a_foreground_mount_unmounts_cleanly(local_registry, project, tmp_path):
    require_fuse()
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"x"})
    mountpoint = tmp_path / "fg"
    mountpoint.mkdir()
    proc = subprocess.Popen([*CLI, "mount", str(mountpoint), "--foreground"], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: is_mounted(mountpoint) or proc.poll() is not None, 20, "the foreground mount")
        assert (mountpoint / project / "a" / "v1" / "f.txt").read_bytes() == b"x"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert not is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_cleanup(str(mountpoint))


def test_a_stalled_server_fails_reads_with_eio_while_the_rest_answers(make_server, mounter, tmp_path, monkeypatch):
    server = make_server()
    registry = server.registry()
    try:
        log_version(
            registry, tmp_path, "stall", "a",
            {"cached.txt": b"cached", "cold.bin": os.urandom(8 * CHUNK), "cold2.bin": os.urandom(8 * CHUNK)},
            chunk_size=CHUNK,
        )
    finally:
        registry.close()
    monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key or "")
    mnt = mounter("--base-url", server.url, "--timeout", "2", "--metadata-ttl", "1")
    version = mnt.path / "stall" / "a" / "v1"
    assert (version / "cached.txt").read_bytes() == b"cached"
    assert sorted(os.listdir(mnt.path / "stall" / "a")) == ["latest", "v1"]
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        cold = subprocess.Popen(["cat", str(version / "cold.bin")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.monotonic()
        time.sleep(1.2)  # past the metadata TTL: listings must now be refreshed from a server that is stalled
        assert (version / "cached.txt").read_bytes() == b"cached"
        assert "latest" in os.listdir(mnt.path / "stall" / "a")
        assert sorted(os.listdir(version)) == ["cached.txt", "cold.bin", "cold2.bin"]
        _, err = cold.communicate(timeout=30)
        assert cold.returncode != 0 and b"Input/output error" in err
        assert time.monotonic() - started < 15
        assert "cold.bin" in mnt.log()  # the log names the file
        in_flight = subprocess.Popen(["cat", str(version / "cold2.bin")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        pid = mnt.pid()
        started = time.monotonic()
        result = mnt.unmount()
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 8
        assert not is_mounted(mnt.path)
        wait_until(lambda: _zombie(pid), 5, "the mount process to end")
        in_flight.wait(10)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_cached_file_evicted_while_open_keeps_reading(local_registry, mounter, project, tmp_path):
    big, small = os.urandom(16 * CHUNK), b"small file"
    log_version(local_registry, tmp_path, project, "a", {"big.bin": big, "small.txt": small}, chunk_size=CHUNK)
    mnt = mounter()
    version = mnt.path / project / "a" / "v1"
    assert (version / "big.bin").read_bytes() == big
    assert (version / "small.txt").read_bytes() == small
    shas = {os.getxattr(version / name, "user.wanllmdb.sha256").decode() for name in ("big.bin", "small.txt")}
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    wait_until(lambda: shas <= {e.key for e in cache.entries()}, 10, "both blobs to be cached and indexed")
    with open(version / "big.bin", "rb", buffering=0) as f, open(version / "small.txt", "rb", buffering=0) as g:
        head = f.read(CHUNK)
        assert cache.plan_cleanup(max_bytes=0).execute() > 0
        assert all(cache.lookup(sha) is None for sha in shas)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # make the kernel ask the mount again
        assert head + f.read() == big
        assert g.read() == small


def test_the_mount_helper_works_as_mount8_runs_it(local_registry, project, tmp_path):
    require_fuse()
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"via fstab"})
    helper = str(REPO / "mount" / "mount.wanllmdb")
    mountpoint = tmp_path / "fstab"
    mountpoint.mkdir()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    options = (
        f"rw,noauto,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,project={project},"
        f"cache_dir={os.environ['WANLLMDB_CACHE_DIR']},cache_size=2G,metadata_ttl=2,timeout=20,"
        f"log_file={tmp_path / 'fstab.log'}"
    )
    source = os.environ["WANLLMDB_DIR"]
    fake = subprocess.run([helper, source, str(mountpoint), "-f", "-o", options], env=env, capture_output=True)
    assert fake.returncode == 0 and not is_mounted(mountpoint)
    bad = subprocess.run([helper, source, str(mountpoint), "-o", "bogus=1"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown option 'bogus=1'" in bad.stderr
    try:
        result = subprocess.run(
            [helper, source, str(mountpoint), "-n", "-o", options], env=env, capture_output=True, text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert is_mounted(mountpoint)
        assert (mountpoint / "a" / "latest" / "f.txt").read_bytes() == b"via fstab"
        cmdline = Path(f"/proc/{find_mount_process(str(mountpoint))}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[cmdline.index("--metadata-ttl") + 1] == "2.0"
        assert cmdline[cmdline.index("--project") + 1] == project
        assert run_cli("unmount", str(mountpoint)).returncode == 0
        assert not is_mounted(mountpoint)
    finally:
        force_cleanup(str(mountpoint))
