"""Version indexes built by the server for the mounts (``server/indexes.py``, ``GET …/versions/vN/index``).

The claims attacked: a mount over a server opens the index the server built instead of fetching and parsing
the manifest, and lists and reads every file as from its own index; the server builds each version's index
once (right after finalize for a large version, else on the first request) and keeps it; an index that is
damaged on the server's disk, damaged on the way, or another version's is never opened: the mount builds
its own from the manifest and answers correctly; a request naming another schema or no version number gets
a clear error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.faultproxy import Fault, FaultProxy
from tests.support.mount import log_many_files, log_version, wait_until
from tests.support.server import start_server
from wanllmdb import tmpfiles
from wanllmdb.fs.index import INDEX_MIN, INDEX_SCHEMA, check_index
from wanllmdb.registry.base import INDEX_DIGEST_HEADER

pytestmark = [pytest.mark.fuse, pytest.mark.server]

BOUND = "50"


def _files() -> dict[str, bytes]:
    files = {f"d{i % 5}/f{i:03d}.txt": f"file {i}\n".encode() * (i % 5 + 1) for i in range(120)}
    files["deep/er/still.bin"] = os.urandom(70_000)
    return files


def _index_url(server, project: str, name: str, selector: str = "v1", schema: str = INDEX_SCHEMA) -> str:
    return f"{server.url}/api/v1/projects/{project}/artifacts/{name}/versions/{selector}/index?schema={schema}"


def _built(server, version_id: str) -> Path:
    return Path(server.root) / "version-index" / f"{version_id}.{INDEX_SCHEMA}.sqlite"


def _listed(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def _requests_to(server, marker: str) -> int:
    return sum(1 for line in server.log().splitlines() if "wanllmdb.server.access" in line and marker in line)


@pytest.fixture
def server_env(live_server, monkeypatch, isolated_env):
    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
    return live_server


def test_a_mount_opens_the_index_the_server_built_once(server_env, mounter, project, tmp_path):
    server = server_env
    registry = server.registry()
    try:
        files = _files()
        info = log_version(registry, tmp_path, project, "big", files).version
    finally:
        registry.close()
    mnt = mounter("--max-tree-entries", BOUND, project=project)
    assert _listed(mnt.path / "big" / "v1") == files
    assert "the server's index" in mnt.log(), mnt.log()[-2000:]
    manifest_marker = f"/projects/{project}/artifacts/big/versions/v1/manifest"
    assert _requests_to(server, manifest_marker) == 0, "the manifest was fetched although the index came"
    built = _built(server, info.id)
    assert check_index(str(built)) == len(files)
    inode = built.stat().st_ino

    # Another machine's mount: the same file, not built again.
    assert mnt.unmount().returncode == 0
    shutil.rmtree(os.environ["WANLLMDB_CACHE_DIR"])  # no kept index: this mount asks the server again
    again = mounter("--max-tree-entries", BOUND, project=project)
    assert _listed(again.path / "big" / "v1") == files
    assert built.stat().st_ino == inode
    assert server.log().count(f"built the index of {project}/big:v1 ") == 1
    assert _requests_to(server, f"/projects/{project}/artifacts/big/versions/v1/index") == 2


def test_a_large_version_has_its_index_built_at_finalize(server_env, project, tmp_path):
    server = server_env
    registry = server.registry()
    try:
        info = log_many_files(registry, tmp_path, project, "wide", INDEX_MIN).version
    finally:
        registry.close()
    built = _built(server, info.id)
    wait_until(built.exists, 60, "the index built after finalize")
    assert check_index(str(built)) == INDEX_MIN
    assert _requests_to(server, f"/projects/{project}/artifacts/wide/versions/v1/index") == 0
    answer = requests.get(_index_url(server, project, "wide"), headers=server.headers, timeout=60)
    assert answer.status_code == 200 and answer.content == built.read_bytes()
    assert answer.headers["x-wanllmdb-files"] == str(INDEX_MIN)
    assert re.fullmatch("[0-9a-f]{64}", answer.headers[INDEX_DIGEST_HEADER])


@pytest.mark.parametrize("damage", ["flipped-on-disk", "another-version", "flipped-on-the-way"])
def test_a_damaged_server_index_is_never_opened(server_env, mounter, project, tmp_path, monkeypatch, damage):
    server = server_env
    registry = server.registry()
    try:
        files = _files()
        info = log_version(registry, tmp_path, project, "big", files).version
        other = log_version(registry, tmp_path, project, "other", {f"o/{i}.txt": b"o" for i in range(70)}).version
    finally:
        registry.close()
    for version in (info, other):  # have the server build both
        name = version.name
        assert requests.get(_index_url(server, project, name), headers=server.headers, timeout=60).status_code == 200
    built = _built(server, info.id)
    if damage == "flipped-on-disk":  # its recorded digest no longer matches
        data = bytearray(built.read_bytes())
        data[len(data) // 2] ^= 0xFF
        built.write_bytes(bytes(data))
    elif damage == "another-version":  # a sound index, and its digest: of 70 files, not 121
        shutil.copyfile(_built(server, other.id), built)
        shutil.copyfile(f"{_built(server, other.id)}.sha256", f"{built}.sha256")
    proxy = None
    if damage == "flipped-on-the-way":
        proxy = FaultProxy(int(server.url.rsplit(":", 1)[1]))
        proxy.__enter__()
        monkeypatch.setenv("WANLLMDB_BASE_URL", proxy.url)
        proxy.set_fault(Fault("flip", after=5000, method="GET", path="/big/versions/v1/index"))
    try:
        mnt = mounter("--max-tree-entries", BOUND, project=project)
        assert _listed(mnt.path / "big" / "v1") == files
        if proxy is not None:
            assert proxy.hits >= 1
    finally:
        if proxy is not None:
            proxy.__exit__(None, None, None)
    log = mnt.log()
    assert "the server's index of" in log and "unusable" in log, log[-2000:]
    expected = "holds 70 files, not 121" if damage == "another-version" else "the bytes received hash to"
    assert expected in log, log[-2000:]
    assert "indexed " in log  # built from the manifest instead


def test_bad_index_requests_get_clear_errors(server_env, project, tmp_path):
    server = server_env
    registry = server.registry()
    try:
        log_version(registry, tmp_path, project, "small", {"a.txt": b"a"}, aliases=["best"])
    finally:
        registry.close()
    cases = {
        ("v1", "s0"): (404, f"schema {INDEX_SCHEMA}, not 's0'"),
        ("best", INDEX_SCHEMA): (400, "expected a version such as v3"),
        ("v9", INDEX_SCHEMA): (404, "v9"),
    }
    for (selector, schema), (status, message) in cases.items():
        url = _index_url(server, project, "small", selector, schema)
        answer = requests.get(url, headers=server.headers, timeout=30)
        assert answer.status_code == status, (selector, schema, answer.text)
        assert message in answer.json()["error"]["message"], (selector, schema, answer.text)
    unauthorized = requests.get(_index_url(server, project, "small"), timeout=30)
    assert unauthorized.status_code == 401


def test_a_server_told_to_build_no_indexes_leaves_them_to_the_mounts(make_server, mounter, project, tmp_path,
                                                                    monkeypatch, isolated_env):
    server = make_server(extra_args=("--index-cache", "0"))
    registry = server.registry()
    try:
        files = _files()
        log_version(registry, tmp_path, project, "big", files)
        info = log_many_files(registry, tmp_path, project, "wide", INDEX_MIN).version
    finally:
        registry.close()
    answer = requests.get(_index_url(server, project, "big"), headers=server.headers, timeout=30)
    assert answer.status_code == 404 and "--index-cache 0" in answer.json()["error"]["message"]
    monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key)
    mnt = mounter("--max-tree-entries", BOUND, project=project)
    assert _listed(mnt.path / "big" / "v1") == files
    assert "no server-built index" in mnt.log() and "indexed " in mnt.log(), mnt.log()[-2000:]
    assert not _built(server, info.id).exists(), "an index was built at finalize although none may be"
    assert list((Path(server.root) / "version-index").iterdir()) == []


def test_a_build_left_by_a_killed_server_is_removed_at_the_next_start(tmp_path):
    """A build's temporary file outlives a server killed with -9; the next start removes it, named as it is by
    its writer (``tmpfiles``), and leaves the build of a writer still running (another replica's)."""
    root = tmp_path / "root"
    folder = root / "registry" / "version-index"  # the registry root start_server gives the server
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])  # a writer that has ended
    dead.wait()
    ns = tmpfiles._NAMESPACE
    old = folder / f"0123abcd.{dead.pid}-{ns}.5f5f5f.tmp"
    young = folder / f"4567cdef.{os.getpid()}-{ns}.6e6e6e.tmp"
    for path in (old, young):
        path.write_bytes(b"half an index")
    server = start_server(root)
    try:
        assert not old.exists() and young.exists()
    finally:
        server.stop()
