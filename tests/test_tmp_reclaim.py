"""Temporary files of killed writers are reclaimed by the next writer (issue 10, point 6); a live writer's are
left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from wanllmdb import tmpfiles

BIG = 64 * 1024 * 1024

LOGGER = textwrap.dedent(
    """
    import sys, wanllmdb
    run = wanllmdb.init(project="killed")
    art = wanllmdb.Artifact("big", type="model")
    art.add_file(sys.argv[1], name="weights.bin")
    run.log_artifact(art)
    """
)


def _tmp_bytes(directory: str, pid: int | None = None) -> int:
    if not os.path.isdir(directory):
        return 0
    names = [f for f in os.listdir(directory) if pid is None or f".{pid}-" in f]
    return sum(os.path.getsize(os.path.join(directory, f)) for f in names)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_temporary_files_of_killed_embedded_loggers_are_reclaimed_by_the_next_writer(tmp_path, monkeypatch):
    import wanllmdb

    tmp_dir = os.path.join(os.environ["WANLLMDB_DIR"], "tmp")
    killed = 0
    for i in range(3):
        src = tmp_path / f"big{i}.bin"
        with open(src, "wb") as f:
            f.write(os.urandom(1024 * 1024) * (BIG // (1024 * 1024)))
        # The logger kills itself while its blob is half written (wanllmdb.killpoints).
        env = {**os.environ, "WANLLMDB_TEST_KILL_AT": f"blob.write:{2 + i}"}
        proc = subprocess.run([sys.executable, "-c", LOGGER, str(src)], env=env, capture_output=True, timeout=120)
        killed += proc.returncode == -signal.SIGKILL
    assert killed == 3 and _tmp_bytes(tmp_dir) > 0
    # A live writer's temporary file is not touched.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_file = os.path.join(tmp_dir, f"unaddressed.{live.pid}-{tmpfiles._NAMESPACE}.feedbeef")
        with open(live_file, "wb") as f:
            f.write(b"in progress")
        run = wanllmdb.init(project="next")
        small = tmp_path / "small.txt"
        small.write_text("next writer")
        art = wanllmdb.Artifact("small", type="dataset")
        art.add_file(str(small))
        run.log_artifact(art)
        run.finish()
        assert os.listdir(tmp_dir) == [os.path.basename(live_file)]
    finally:
        live.kill()
        live.wait()


def test_the_cache_reclaims_temporary_and_partial_files_of_dead_processes(tmp_path):
    from wanllmdb.cache import BlobCache

    root = tmp_path / "cache"
    dead = f"{_dead_pid()}-{tmpfiles._NAMESPACE}"
    first = BlobCache(str(root))
    first.index.upsert(f"partial:{'b' * 64}.{dead}.0123abcd", "partial", 7000)
    first.close()
    leftovers = {
        root / "tmp" / f"{'a' * 64}.{dead}.0123abcd.incomplete": b"x" * 5000,
        root / "partial" / f"{'b' * 64}.{dead}.0123abcd": b"y" * 7000,
        root / "tmp" / f"{'c' * 64}.{tmpfiles.writer_tag()}.0123abcd.incomplete": b"mine",
    }
    for path, data in leftovers.items():
        path.write_bytes(data)
    cache = BlobCache(str(root))
    assert sorted(os.listdir(root / "tmp")) == [f"{'c' * 64}.{tmpfiles.writer_tag()}.0123abcd.incomplete"]
    assert os.listdir(root / "partial") == []
    assert cache.total_size() == 0


def test_files_whose_writer_cannot_be_checked_here_wait_until_they_are_old(tmp_path):
    dead = _dead_pid()
    local = f"x.{dead}-{tmpfiles._NAMESPACE}.abc"
    foreign = f"x.{dead}-{tmpfiles._NAMESPACE + 1}.abc"  # another PID namespace: its PIDs mean nothing here
    old_style = f"x.{dead}.abc"
    for name in (local, foreign, old_style):
        (tmp_path / name).write_bytes(b"1")
    assert tmpfiles.reclaim_dead(str(tmp_path))[0] == [local]
    assert sorted(tmpfiles.reclaim_dead(str(tmp_path), foreign_min_age=0)[0]) == sorted([foreign, old_style])


def test_a_prefix_keeps_the_other_files_of_a_shared_directory(tmp_path):
    dead = f"{_dead_pid()}-{tmpfiles._NAMESPACE}"
    ours, other = f"ours.{dead}.abc.tmp", f"other.{dead}.abc"
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in (ours, other):
        (shared / name).write_bytes(b"1")
    assert tmpfiles.reclaim_dead(str(shared), prefix="ours.")[0] == [ours]
    assert os.listdir(shared) == [other]
