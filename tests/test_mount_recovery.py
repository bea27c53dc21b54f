"""A dead mount of ours (its process killed: every access gives ENOTCONN) is recovered by ``wanllmdb mount``
itself, while a live mount still refuses a second one (issue 10, point 9)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess

import pytest

from tests.support.mount import CLI, is_mounted, log_version, run_cli, wait_until
from wanllmdb.fs.process import pid_alive

pytestmark = pytest.mark.fuse


def test_mount_on_the_mountpoint_of_a_killed_mount_recovers_it(local_registry, mounter, project, tmp_path):
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"first"})
    mnt = mounter()
    pid = mnt.pid()
    assert pid is not None and (mnt.path / project / "a" / "v1" / "f.txt").read_bytes() == b"first"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the mount process to die")
    with pytest.raises(OSError) as info:
        os.stat(mnt.path / "never-looked-up")
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # the kernel says either
    again = run_cli("mount", str(mnt.path), "--log-file", str(tmp_path / "again.log"))
    assert again.returncode == 0, again.stderr
    wait_until(lambda: os.path.ismount(mnt.path), 30, "the new mount")
    assert (mnt.path / project / "a" / "v1" / "f.txt").read_bytes() == b"first"
    assert mnt.pid() not in (None, pid)


def test_a_live_mount_still_refuses_a_second_one(local_registry, mounter, project, tmp_path):
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"x"})
    mnt = mounter()
    second = run_cli("mount", str(mnt.path), "--log-file", str(tmp_path / "second.log"))
    assert second.returncode != 0 and "already a mount point" in second.stderr
    assert (mnt.path / project / "a" / "v1" / "f.txt").read_bytes() == b"x"


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_mount_whose_process_is_out_of_sight_is_not_taken_for_dead(local_registry, mounter, project, tmp_path):
    """``wanllmdb mount`` from another PID namespace finds no mount process, yet the mount is alive: it must
    refuse, not abort the live mount's connection."""
    if not _unshare_works():
        pytest.skip("needs unshare --pid --mount-proc (root or user namespaces)")
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"alive"})
    mnt = mounter()
    elsewhere = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", *CLI, "mount", str(mnt.path),
         "--log-file", str(tmp_path / "elsewhere.log")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert elsewhere.returncode != 0 and "already a mount point" in elsewhere.stderr, elsewhere.stderr
    assert (mnt.path / project / "a" / "v1" / "f.txt").read_bytes() == b"alive"


def test_a_foreground_mount_recovers_a_killed_one(local_registry, mounter, project, tmp_path):
    """What the systemd unit runs after a crash: ``mount --foreground`` on the dead mountpoint serves again."""
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"again"})
    mnt = mounter()
    pid = mnt.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the mount process to die")
    log = open(tmp_path / "foreground.log", "wb")
    served = subprocess.Popen([*CLI, "mount", "--foreground", str(mnt.path)], stdout=log, stderr=subprocess.STDOUT)
    try:

        def served_again() -> bytes | bool:
            try:
                return (mnt.path / project / "a" / "v1" / "f.txt").read_bytes()
            except OSError:  # ENOTCONN until the new mount replaces the dead one
                return served.poll() is not None

        got = wait_until(served_again, 30, "the foreground mount")
        assert got == b"again", (tmp_path / "foreground.log").read_text()
        assert served.poll() is None
    finally:
        served.terminate()
        served.wait(30)
        log.close()
    assert not is_mounted(mnt.path)
