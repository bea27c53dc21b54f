"""Several processes at once, and processes killed mid-log: versions stay whole, numbered and unique.

These run against both registries (``backend``): the SDK in child processes talks to the embedded
registry or to the live server, exactly as users' scripts would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from wanllmdb.registry import open_registry
from wanllmdb.settings import load_settings

CHILD = r"""
import os, sys, time
import wanllmdb
project, name, src, start_file = sys.argv[1:5]
import wanllmdb.sdk.run  # noqa: F401  (imports done before the barrier)
if start_file != "-":
    open(f"{start_file}.ready.{os.getpid()}", "w").close()
while start_file != "-" and not os.path.exists(start_file):
    time.sleep(0.001)
with wanllmdb.init(project=project, name="child") as run:
    art = wanllmdb.Artifact(name, "dataset")
    art.add_dir(src)
    run.log_artifact(art)
    print(art.version, flush=True)
"""


def _spawn(project, name, src, start_file="-"):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, project, name, str(src), str(start_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _make_tree(root, seed: int, small: int = 20, big_mb: int = 0):
    root.mkdir(parents=True)
    rnd = __import__("random").Random(seed)
    for i in range(small):
        (root / f"f{i:04d}.bin").write_bytes(rnd.randbytes(4096 + i))
    if big_mb:
        (root / "big.bin").write_bytes(rnd.randbytes(big_mb * 1024 * 1024))
    return root


def _blob_dir(backend, request) -> str:
    if backend == "http":
        return os.path.join(str(request.getfixturevalue("live_server").root), "blobs")
    return os.path.join(load_settings().data_dir, "blobs")


def _blob_inodes(blob_dir: str) -> dict[str, int]:
    found = {}
    for dirpath, _dirs, files in os.walk(blob_dir):
        for name in files:
            found[name] = os.stat(os.path.join(dirpath, name)).st_ino
    return found


def test_concurrent_logs_from_several_processes_get_distinct_consecutive_versions(backend, project, tmp_path):
    start = tmp_path / "go"
    children = [
        _spawn(project, "shared", _make_tree(tmp_path / f"src{i}", seed=i, small=5), start) for i in range(4)
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.ready.*"))) < len(children):
        assert time.monotonic() < deadline, "children did not reach the barrier"
        time.sleep(0.01)
    start.write_text("go")
    versions = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        versions.append(out.strip())
    assert sorted(versions) == ["v1", "v2", "v3", "v4"]
    registry = open_registry(load_settings())
    assert [v.version for v in registry.get_artifact(project, "shared").versions] == [1, 2, 3, 4]


@pytest.mark.slow
def test_killing_the_logger_at_any_point_leaves_no_or_a_complete_version(backend, project, tmp_path, request):
    src = _make_tree(tmp_path / "src", seed=7, small=150, big_mb=24)
    started = time.monotonic()
    reference = _spawn(project, "reference", src)
    assert reference.communicate(timeout=120)[0].strip() == "v1"
    full = time.monotonic() - started
    registry = open_registry(load_settings())
    blob_dir = _blob_dir(backend, request)

    for fraction in (0.15, 0.3, 0.45, 0.6, 0.75, 0.9):
        # The same content is stored under another name, so stored blobs make every later kill point
        # land further into the upload; use a fresh name that has content of its own as well.
        victim_src = _make_tree(
            tmp_path / f"victim{fraction}", seed=int(fraction * 100), small=100, big_mb=16
        )
        child = _spawn(project, "victim", victim_src)
        time.sleep(full * fraction)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        try:
            info = registry.get_artifact(project, "victim")
        except LookupError:
            continue
        for version in info.versions:
            resolved = registry.resolve(project, "victim", version.label)
            for entry in resolved.manifest:
                path = os.path.join(blob_dir, entry.sha256[:2], entry.sha256)
                assert os.path.getsize(path) == entry.size, f"v{version.version} lacks {entry.path}"
        assert [v.version for v in info.versions] == list(range(1, len(info.versions) + 1))

    # The next identical log completes and rewrites none of the blobs already stored.
    final_src = tmp_path / "victim0.9"
    before = _blob_inodes(blob_dir)
    child = _spawn(project, "victim", final_src)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    after = _blob_inodes(blob_dir)
    assert all(after[sha] == ino for sha, ino in before.items()), "a stored blob was written again"
    latest = registry.resolve(project, "victim")
    assert latest.file_count == 101
