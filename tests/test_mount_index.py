"""Versions larger than the mount's in-memory bound, read through a real mount from their on-disk index
(``fs/index.py``), over the embedded registry and over a server.

The claims attacked: every file of such a version lists, stats and reads as from a version held in memory
(nested folders, unicode names, a chunked file, the ``latest`` alias, xattrs); the index lives in the mount's
own folder under the cache and is gone after unmount; a folder left by a mount killed with -9 is removed by
the next mount; a broken or bad manifest gives EIO and no index, and the next lookup tries again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import log_version, wait_until

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024
BOUND = "50"


def version_files() -> dict[str, bytes]:
    files = {f"d{i % 4}/sub{i % 3}/f{i:03d}.txt": f"file {i}\n".encode() * (i % 7 + 1) for i in range(90)}
    files.update({f"top{i}.csv": os.urandom(100 + i) for i in range(5)})
    files["données/日本.txt"] = "unicode ✓\n".encode()
    files["models/big.bin"] = os.urandom(5 * CHUNK + 17)  # chunked: read in ranges
    files["empty.txt"] = b""
    return files


def index_folders(cache: Path) -> list[Path]:
    root = cache / "mount-index"
    return sorted(root.glob("mount-index-*")) if root.exists() else []


@pytest.fixture
def cache_dir(isolated_env) -> Path:
    return Path(os.environ["WANLLMDB_CACHE_DIR"])


def test_a_version_over_the_bound_reads_from_its_index_as_from_memory(
    registry, mounter, project, tmp_path, cache_dir
):
    files = version_files()
    log_version(registry, tmp_path, project, "big", files, chunk_size=CHUNK, aliases=["best"])
    log_version(registry, tmp_path, project, "small", {"a.txt": b"a", "b/c.txt": b"c"})
    mnt = mounter("--max-tree-entries", BOUND, project=project)
    top = mnt.path / "big" / "v1"

    found = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
    assert found == set(files)
    for rel, data in files.items():
        assert (top / rel).stat().st_size == len(data)
        assert (top / rel).read_bytes() == data, rel
    assert sorted(os.listdir(top / "d1")) == ["sub0", "sub1", "sub2"]
    assert os.stat(top / "d1").st_nlink == 2 + 3
    assert os.stat(top).st_nlink == 2 + 6  # d0-d3, données, models
    big = files["models/big.bin"]
    assert os.getxattr(top / "models" / "big.bin", "user.wanllmdb.sha256").decode() == hashlib.sha256(big).hexdigest()
    with open(top / "models" / "big.bin", "rb") as f:  # a range in the middle, across a chunk boundary
        f.seek(3 * CHUNK - 10)
        assert f.read(20) == big[3 * CHUNK - 10 : 3 * CHUNK + 10]
    assert (mnt.path / "big" / "best" / "top3.csv").read_bytes() == files["top3.csv"]
    assert os.readlink(mnt.path / "big" / "latest") == "v1"
    assert not (top / "d1" / "nope.txt").exists()
    with pytest.raises(NotADirectoryError):
        os.listdir(top / "top1.csv")
    # The same tools over a version held in memory, for contrast.
    assert (mnt.path / "small" / "v1" / "b" / "c.txt").read_bytes() == b"c"

    (folder,) = index_folders(cache_dir)
    assert [p.name for p in folder.glob("*.sqlite")] == ["v-1.sqlite"]  # one index: the large version only
    # find and ls -lR through it, as a user would
    listed = subprocess.run(["ls", "-lR", str(top)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "f089.txt" in listed and "日本.txt" in listed
    count = subprocess.run(["find", str(top), "-type", "f"], capture_output=True, text=True, timeout=60, check=True)
    assert len(count.stdout.splitlines()) == len(files)

    assert mnt.unmount().returncode == 0
    assert index_folders(cache_dir) == []


def kept_indexes(cache: Path) -> list[Path]:
    return sorted((cache / "mount-index" / "kept").glob("*.sqlite"))


def test_the_next_mount_reads_the_index_an_earlier_mount_kept_and_rebuilds_a_damaged_one(
    registry, backend, mounter, project, tmp_path, cache_dir
):
    # How the first index came: built by the mount from the manifest, or built by the server and fetched.
    made = "indexed " if backend == "local" else "the server's index"
    files = version_files()
    log_version(registry, tmp_path, project, "big", files, chunk_size=CHUNK)
    expected = {rel for rel in files}

    def listed(mnt) -> set[str]:
        top = mnt.path / "big" / "v1"
        return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}

    first = mounter("--max-tree-entries", BOUND, project=project)
    assert listed(first) == expected
    assert first.unmount().returncode == 0
    (kept,) = kept_indexes(cache_dir)
    assert made in first.log()

    second = mounter("--max-tree-entries", BOUND, project=project)
    assert listed(second) == expected
    assert (second.path / "big" / "v1" / "top2.csv").read_bytes() == files["top2.csv"]
    assert "the index a previous mount kept" in second.log(), second.log()[-2000:]
    assert made not in second.log(), "no manifest fetched and parsed again, no index fetched again"
    assert second.unmount().returncode == 0

    kept.write_bytes(b"not an index at all " * 100)  # damaged on disk
    third = mounter("--max-tree-entries", BOUND, project=project)
    assert listed(third) == expected
    assert "unreadable" in third.log() and made in third.log()
    assert third.unmount().returncode == 0
    (rebuilt,) = kept_indexes(cache_dir)
    assert rebuilt.read_bytes()[:16] == b"SQLite format 3\x00"


def test_a_kept_index_of_another_size_than_listed_is_not_served(local_registry, mounter, project, tmp_path, cache_dir):
    files = version_files()
    other = {f"o/{i}.txt": b"o" for i in range(70)}
    log_version(local_registry, tmp_path, project, "big", files, chunk_size=CHUNK)
    log_version(local_registry, tmp_path, project, "other", other)
    first = mounter("--max-tree-entries", BOUND, project=project)
    assert len(list((first.path / "big" / "v1").rglob("*.txt"))) > 50
    assert len(list((first.path / "other" / "v1").rglob("*.txt"))) == 70
    assert first.unmount().returncode == 0
    ids = {name: local_registry.resolve(project, name, "v1").id for name in ("big", "other")}
    kept = {name: cache_dir / "mount-index" / "kept" / f"{ids[name]}.s1.sqlite" for name in ids}
    kept["big"].unlink()
    os.link(kept["other"], kept["big"])  # a valid index, of another version

    second = mounter("--max-tree-entries", BOUND, project=project)
    top = second.path / "big" / "v1"
    assert {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()} == set(files)
    assert f"holds 70 files, not {len(files)}" in second.log(), second.log()[-2000:]


def test_an_index_folder_left_by_a_killed_mount_goes_with_the_next_mount(
    local_registry, mounter, project, tmp_path, cache_dir
):
    log_version(local_registry, tmp_path, project, "big", version_files(), chunk_size=CHUNK)
    first = mounter("--max-tree-entries", BOUND, project=project)
    assert len(list((first.path / "big" / "v1").rglob("*.txt"))) > 50
    (left,) = index_folders(cache_dir)
    pid = first.pid()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: first.pid() is None, 15, "the killed mount's process to go")
    subprocess.run(["fusermount3", "-u", "-z", str(first.path)], capture_output=True, timeout=30)
    assert left.exists()

    second = mounter("--max-tree-entries", BOUND, project=project)
    assert not left.exists()
    assert len(list((second.path / "big" / "v1").rglob("*.txt"))) > 50
    assert len(index_folders(cache_dir)) == 1


def test_a_manifest_that_breaks_off_gives_eio_and_no_index_and_the_next_lookup_tries_again(
    live_server, mounter, project, tmp_path, cache_dir, monkeypatch
):
    from tests.support.faultproxy import Fault, FaultProxy

    registry = live_server.registry()
    try:
        files = version_files()
        log_version(registry, tmp_path, project, "big", files, chunk_size=CHUNK)
    finally:
        registry.close()
    with FaultProxy(int(live_server.url.rsplit(":", 1)[1])) as proxy:
        monkeypatch.setenv("WANLLMDB_BASE_URL", proxy.url)
        monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
        mnt = mounter("--max-tree-entries", BOUND, project=project)
        # the answers of the server-built index and of the manifest end (cleanly) after 300 bytes
        proxy.set_fault(Fault("truncate", after=300, method="GET", path="/big/versions/v1/"))
        with pytest.raises(OSError) as failed:
            os.listdir(mnt.path / "big" / "v1")
        assert failed.value.errno == 5  # EIO
        assert proxy.hits >= 1
        (folder,) = index_folders(cache_dir)
        assert list(folder.glob("*.sqlite*")) == []  # nothing half-built is kept
        proxy.set_fault(None)
        expected = sum(1 for f in files if f.endswith(".txt"))
        assert len(list((mnt.path / "big" / "v1").rglob("*.txt"))) == expected
        assert len(list(folder.glob("*.sqlite"))) == 1
