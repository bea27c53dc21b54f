"""Real mounts through ``wanllmdb mount``, read with ordinary tools, over both registries."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.mount import log_many_files, log_version, wait_until
from wanllmdb.cache import BlobCache

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024


def sh(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def cache() -> BlobCache:
    return BlobCache(os.environ["WANLLMDB_CACHE_DIR"])


def test_tree_attributes_and_reads_with_plain_tools(registry, mounter, project, tmp_path):
    big = os.urandom(40 * CHUNK + 11)
    array = np.arange(50_000, dtype=np.float32).reshape(500, 100)
    v1 = log_version(registry, tmp_path, project, "data", {"train.csv": b"a,b\n1,2\n", "img/0.png": b"\x89PNG"})
    v2 = log_version(
        registry, tmp_path, project, "data",
        {"train.csv": b"a,b\n1,2\n3,4\n", "img/0.png": b"\x89PNG", "big.bin": big, "arr.npy": npy_bytes(array)},
        chunk_size=CHUNK,
    )
    registry.set_alias(project, "data", "best", 1)
    mnt = mounter().path
    art = mnt / project / "data"

    listing = sh("ls", "-lR", str(mnt)).stdout.decode()
    assert "big.bin" in listing and "latest -> v2" in listing and "best -> v1" in listing
    found = set(sh("find", str(art), "-type", "f").stdout.decode().split())
    assert found == {str(art / v / p) for v, p in [
        ("v1", "train.csv"), ("v1", "img/0.png"),
        ("v2", "train.csv"), ("v2", "img/0.png"), ("v2", "big.bin"), ("v2", "arr.npy"),
    ]}  # fmt: skip
    st = os.stat(art / "v2" / "big.bin")
    assert st.st_size == len(big)
    assert stat.S_IMODE(st.st_mode) == 0o444 and stat.S_ISREG(st.st_mode)
    assert st.st_nlink == 1 and st.st_blksize >= 1 << 20
    assert abs(st.st_mtime - v2.version.created_at) < 1e-3
    assert abs(os.stat(art / "v1" / "train.csv").st_mtime - v1.version.created_at) < 1e-3
    dst = os.stat(art / "v2")
    assert stat.S_IMODE(dst.st_mode) == 0o555 and dst.st_nlink == 3  # ., .., img
    assert os.readlink(art / "latest") == "v2" and os.readlink(art / "best") == "v1"
    sha = v2.version.manifest.get("big.bin").sha256
    got = sh("getfattr", "-n", "user.wanllmdb.sha256", "--only-values", str(art / "v2" / "big.bin")).stdout
    assert got.decode() == sha
    dump = sh("getfattr", "-d", str(art / "v2" / "big.bin")).stdout.decode()
    assert "user.wanllmdb.md5=" in dump
    stats = json.loads(os.getxattr(mnt, "user.wanllmdb.stats"))
    assert stats["chunks_fetched"] == 0 and stats["blobs_fetched"] == 0, "listing fetched file bytes"

    assert sh("cat", str(art / "latest" / "train.csv")).stdout == b"a,b\n1,2\n3,4\n"
    local = tmp_path / "big.bin"
    local.write_bytes(big)
    assert sh("cmp", str(art / "v2" / "big.bin"), str(local)).returncode == 0
    sha_out = sh("sha256sum", str(art / "v2" / "big.bin")).stdout.decode().split()[0]
    assert sha_out == sha
    np.testing.assert_array_equal(np.load(art / "v2" / "arr.npy"), array)
    import pandas as pd

    frame = pd.read_csv(art / "v2" / "train.csv")
    assert frame["b"].tolist() == [2, 4]
    # Read through the mount = complete blobs in the shared cache, so the SDK's download() is a cache hit.
    # Files read whole by chunks (big.bin, arr.npy) are promoted by a worker after the read: wait for each.
    for name in ("train.csv", "arr.npy", "big.bin"):
        blob = v2.version.manifest.get(name).sha256
        wait_until(lambda blob=blob: cache().lookup(blob), 10, f"{name} to be in the shared cache")


def test_sdk_downloads_are_cache_hits_for_the_mount(registry, mounter, project, tmp_path):
    import wanllmdb

    payload = os.urandom(3 * CHUNK)
    log_version(registry, tmp_path, project, "m", {"w.bin": payload, "cfg.json": b"{}"}, chunk_size=CHUNK)
    wanllmdb.Api().artifact(f"{project}/m:v1").download(str(tmp_path / "dl"))
    mnt = mounter()
    assert (mnt.path / project / "m" / "v1" / "w.bin").read_bytes() == payload
    assert (mnt.path / project / "m" / "v1" / "cfg.json").read_bytes() == b"{}"
    stats = mnt.stats()
    assert stats["cache_hits"] == 2 and stats["chunks_fetched"] == 0 and stats["blobs_fetched"] == 0


def test_cached_reads_through_a_fresh_mount_refresh_the_cache_lru_while_it_runs(registry, mounter, project, tmp_path):
    files = {f"d/f{i:03d}.bin": os.urandom(100 + i) for i in range(40)}
    log_version(registry, tmp_path, project, "lru", files)
    first = mounter()
    top = first.path / project / "lru" / "v1"
    assert sh("cat", *(str(top / name) for name in files)).stdout == b"".join(files.values())
    assert first.unmount().returncode == 0
    shas = [hashlib.sha256(data).hexdigest() for data in files.values()]
    # the LRU entries holding them: the blobs' own, or the packs the mount's fill wrote them into
    index = cache().index
    packed = index.packed(shas)
    keys = {packed[sha].pack if sha in packed else sha for sha in shas}
    assert all(index.get(key) is not None for key in keys)
    old = time.time() - 3600
    index.touch(keys, now=old)
    mnt = mounter()  # a fresh process: it knows none of the blobs' stamps, and queues its touches
    top = mnt.path / project / "lru" / "v1"
    assert sh("cat", *(str(top / name) for name in files)).stdout == b"".join(files.values())
    stats = mnt.stats()
    assert stats["cache_hits"] == len(files) and stats["blobs_fetched"] == 0
    # written by the mount's flush a moment later, while it still runs: eviction by other processes sees them
    wait_until(lambda: all(cache().index.get(key).last_access > old + 3000 for key in keys), 10,
               "the mount's reads to reach the cache index")


def test_head_of_a_cold_large_file_fetches_at_most_two_chunks(registry, mounter, project, tmp_path):
    big = os.urandom(40 * CHUNK)
    log_version(registry, tmp_path, project, "m", {"big.bin": big}, chunk_size=CHUNK)
    mnt = mounter()
    path = mnt.path / project / "m" / "v1" / "big.bin"
    started = time.monotonic()
    out = sh("head", "-c", "100", str(path)).stdout
    elapsed = time.monotonic() - started
    assert out == big[:100]
    time.sleep(0.3)  # let a read-ahead in flight land before counting
    assert mnt.stats()["chunks_fetched"] <= 2
    assert elapsed < 2
    assert sh("cat", str(path)).stdout == big
    stats = wait_until(lambda: (s := mnt.stats())["promoted"] == 1 and s, 10, "the file to be promoted")
    assert stats["readahead_chunks"] > 0
    assert stats["chunks_fetched"] == 40  # every chunk exactly once


def test_versions_with_sha256_and_blake3_chunk_digests_both_read(registry, mounter, project, tmp_path, monkeypatch):
    old, new = os.urandom(6 * CHUNK + 7), os.urandom(6 * CHUNK + 9)
    monkeypatch.setenv("WANLLMDB_CHUNK_HASH", "sha256")  # a version written before BLAKE3
    log_version(registry, tmp_path, project, "algo", {"w.bin": old}, chunk_size=CHUNK)
    monkeypatch.delenv("WANLLMDB_CHUNK_HASH")
    log_version(registry, tmp_path, project, "algo", {"w.bin": new}, chunk_size=CHUNK)
    chunks = [registry.resolve(project, "algo", v).manifest.get("w.bin").chunks for v in ("v1", "v2")]
    assert not chunks[0][0].startswith("blake3:") and chunks[1][0].startswith("blake3:")
    mnt = mounter()
    versions = mnt.path / project / "algo"
    assert sh("cat", str(versions / "v1" / "w.bin")).stdout == old
    assert sh("cat", str(versions / "v2" / "w.bin")).stdout == new
    assert mnt.stats()["chunks_fetched"] == 14  # both read chunk by chunk, each chunk checked


def test_posix_errors(mounter, local_registry, project, tmp_path):
    log_version(local_registry, tmp_path, project, "a", {"f.txt": b"x", "d/g.txt": b"y"})
    mnt = mounter().path
    v1 = mnt / project / "a" / "v1"
    for cmd in (
        ["touch", str(v1 / "new")], ["mkdir", str(v1 / "dir")], ["rm", "-f", str(v1 / "f.txt")],
        ["mv", str(v1 / "f.txt"), str(v1 / "g")], ["chmod", "777", str(v1 / "f.txt")],
        ["truncate", "-s", "0", str(v1 / "f.txt")], ["setfattr", "-n", "user.x", "-v", "1", str(v1 / "f.txt")],
        ["ln", "-s", "f.txt", str(v1 / "link")],
    ):
        result = sh(*cmd)
        assert result.returncode != 0 and b"Read-only file system" in result.stderr, (cmd, result.stderr)
    with pytest.raises(OSError) as info:
        open(v1 / "f.txt", "w")
    assert info.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        open(v1 / "missing.txt", "rb")
    assert b"No such file" in sh("cat", str(mnt / project / "a" / "v7" / "f.txt")).stderr
    assert b"Is a directory" in sh("cat", str(v1 / "d")).stderr
    assert (v1 / "f.txt").read_bytes() == b"x"


def test_new_versions_and_moved_aliases_appear_within_the_ttl(registry, mounter, project, tmp_path):
    log_version(registry, tmp_path, project, "a", {"f.txt": b"1"}, aliases=["best"])
    mnt = mounter("--metadata-ttl", "1").path
    art = mnt / project / "a"
    assert os.readlink(art / "latest") == "v1" and sorted(os.listdir(art)) == ["best", "latest", "v1"]
    log_version(registry, tmp_path, project, "a", {"f.txt": b"2"})
    log_version(registry, tmp_path, project, "b", {"g.txt": b"3"})
    registry.set_alias(project, "a", "best", 2)
    changed = time.monotonic()

    def updated() -> bool:
        return (
            os.readlink(art / "latest") == "v2"
            and os.readlink(art / "best") == "v2"
            and "v2" in os.listdir(art)
            and "b" in os.listdir(mnt / project)
        )

    wait_until(updated, 5, "the new version, artifact and alias to show")
    assert time.monotonic() - changed < 1 + 0.5
    assert (art / "latest" / "f.txt").read_bytes() == b"2"
    assert (art / "best" / "f.txt").read_bytes() == b"2"


MMAP_READER = r"""
import hashlib, json, random, sys
import numpy as np
from safetensors import safe_open
npy, st, expected_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
expected = json.load(open(expected_path))
rng = random.Random(seed)
arr = np.load(npy, mmap_mode="r")
for _ in range(200):
    row = rng.randrange(arr.shape[0])
    assert hashlib.sha256(arr[row].tobytes()).hexdigest() == expected["rows"][row], row
with safe_open(st, framework="numpy") as f:
    names = list(f.keys())
    for _ in range(30):
        name = rng.choice(names)
        assert hashlib.sha256(f.get_tensor(name).tobytes()).hexdigest() == expected["tensors"][name], name
print("ok")
"""


def test_mmap_reads_from_four_processes(registry, mounter, project, tmp_path):
    from safetensors.numpy import save

    rng = np.random.default_rng(7)
    array = rng.standard_normal((2000, 256)).astype(np.float32)  # 2 MB, 32 chunks
    tensors = {f"layer{i}.weight": rng.standard_normal((64, 257)).astype(np.float32) for i in range(24)}
    log_version(
        registry, tmp_path, project, "model",
        {"arr.npy": npy_bytes(array), "model.safetensors": save(tensors)}, chunk_size=CHUNK,
    )
    expected = {
        "rows": [hashlib.sha256(row.tobytes()).hexdigest() for row in array],
        "tensors": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors.items()},
    }
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    (tmp_path / "reader.py").write_text(MMAP_READER)
    mnt = mounter().path
    v1 = mnt / project / "model" / "v1"
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "reader.py"), str(v1 / "arr.npy"), str(v1 / "model.safetensors"),
             str(tmp_path / "expected.json"), str(seed)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for seed in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == b"ok", err.decode()


def test_a_version_of_100k_files_lists_without_fetching_a_blob(registry, mounter, project, tmp_path):
    # The listing's speed is measured by benchmarks/bench_scale.py; the timeout here only bounds a hang.
    log_many_files(registry, tmp_path, project, "many", 100_000)
    mnt = mounter()
    version = mnt.path / project / "many" / "v1"
    result = subprocess.run(["ls", "-lR", str(version)], capture_output=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.count(b"\n-r--r--r-- ") == 100_000
    assert mnt.stats()["blobs_fetched"] == 0
