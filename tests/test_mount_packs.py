"""A directory of small files read through a real mount lands in packs, and a damaged pack serves no byte.

Real ``wanllmdb mount`` processes over both registries, read with ``cat``; the cache is the one the
mount shares with the SDK (``WANLLMDB_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

import wanllmdb
from tests.support.mount import log_version, run_cli, wait_until
from wanllmdb.cache import BlobCache

pytestmark = pytest.mark.fuse

COUNT = 60


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=60)


def cache() -> BlobCache:
    return BlobCache(os.environ["WANLLMDB_CACHE_DIR"])


def small_files() -> dict[str, bytes]:
    return {f"d/f{i:03d}.txt": os.urandom(200 + i) for i in range(COUNT)}


def read_all(top, files) -> bytes:
    return sh("cat", *(str(top / name) for name in files)).stdout


def test_a_cold_directory_lands_in_packs_and_the_next_mount_reads_only_them(registry, mounter, project, tmp_path):
    files = small_files()
    log_version(registry, tmp_path, project, "small", files)
    shas = [hashlib.sha256(data).hexdigest() for data in files.values()]
    first = mounter()
    assert read_all(first.path / project / "small" / "v1", files) == b"".join(files.values())
    c = cache()
    wait_until(lambda: c.holds_many(shas) == set(shas), 10, "every file to be cached")
    own = [sha for sha in shas if c.contains(sha)]
    assert len(own) <= 2, "the directory's files were cached one file each, not packed"
    assert os.listdir(os.path.join(c.root, "packs"))
    assert first.unmount().returncode == 0

    second = mounter()
    assert read_all(second.path / project / "small" / "v1", files) == b"".join(files.values())
    stats = second.stats()
    assert stats["cache_hits"] == COUNT and stats["blobs_fetched"] == 0, stats

    listing = json.loads(run_cli("cache", "ls", "--json").stdout)
    assert listing["packs"] >= 1 and listing["bytes"] >= sum(len(d) for d in files.values())
    assert "pack(s) of small files" in run_cli("cache", "ls").stdout
    verified = run_cli("cache", "verify")
    assert verified.returncode == 0 and ": 0 corrupt" in verified.stdout
    assert int(verified.stdout.split("checked ")[1].split()[0]) >= COUNT  # every packed blob hashed


def test_a_damaged_pack_serves_no_byte_of_it_and_the_files_are_fetched_again(registry, mounter, project, tmp_path):
    files = small_files()
    log_version(registry, tmp_path, project, "dmg", files)
    by_name = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    first = mounter()
    assert read_all(first.path / project / "dmg" / "v1", files) == b"".join(files.values())
    assert first.unmount().returncode == 0
    c = cache()
    victim = "d/f030.txt"
    blob = c.lookup_packed(by_name[victim])
    assert blob is not None
    os.chmod(blob.path, 0o644)
    with open(blob.path, "r+b") as f:  # one byte of one file, as a disk or a stray write would
        f.seek(blob.offset + 7)
        old = f.read(1)
        f.seek(blob.offset + 7)
        f.write(bytes([old[0] ^ 0xFF]))

    mnt = mounter()
    top = mnt.path / project / "dmg" / "v1"
    bad = sh("cat", str(top / victim))
    assert bad.returncode != 0 and bad.stdout == b"", "bytes of a damaged pack were served"
    assert not os.path.exists(blob.path)  # the pack was dropped whole
    assert (top / victim).read_bytes() == files[victim]  # fetched again, verified
    assert read_all(top, files) == b"".join(files.values())
    assert "changed after they were verified" in mnt.log()


def test_download_after_a_mount_copies_packed_files_out_verified(registry, mounter, project, tmp_path, backend):
    files = small_files()
    log_version(registry, tmp_path, project, "dl", files)
    mnt = mounter()
    assert read_all(mnt.path / project / "dl" / "v1", files) == b"".join(files.values())
    shas = [hashlib.sha256(data).hexdigest() for data in files.values()]
    c = cache()
    wait_until(lambda: c.holds_many(shas) == set(shas), 10, "every file to be cached")
    with wanllmdb.init(project=project) as run:
        root = run.use_artifact("dl:latest").download(str(tmp_path / "out"))
    for name, data in files.items():
        with open(os.path.join(root, name), "rb") as f:
            assert f.read() == data
    assert all(c.contains(sha) for sha in shas)  # each now a file of its own, which the download links
