"""A dead mount of ours (its process killed: every access gives ENOTCONN) is recovered by ``wanllmdb mount``
itself, while a live mount still refuses a second one (issue 10, point 9)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from tests.support.mount import log_version, run_cli, wait_until
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
