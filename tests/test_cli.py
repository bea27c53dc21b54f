"""The ``wanllmdb`` command, run as users run it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "wanllmdb", *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data-src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    return root


def test_version_and_help_everywhere():
    assert cli("--version").stdout.startswith("wanllmdb ")
    for args in (
        [],
        ["artifact"],
        ["artifact", "put"],
        ["artifact", "get"],
        ["artifact", "ls"],
        ["cache"],
        ["cache", "ls"],
        ["cache", "cleanup"],
        ["cache", "verify"],
        ["artifact", "info"],
        ["artifact", "diff"],
        ["prefetch"],
        ["completion"],
    ):
        proc = cli(*args, "--help")
        assert "usage:" in proc.stdout


def test_put_get_ls_round_trip(backend, project, data_dir, tmp_path):
    out = cli(
        "artifact",
        "put",
        str(data_dir),
        "--project",
        project,
        "--name",
        "d",
        "--type",
        "dataset",
        "--alias",
        "best",
    ).stdout
    assert f"{project}/d:v1" in out and "best" in out
    (data_dir / "a.txt").write_text("alpha 2")
    assert (
        f"{project}/d:v2"
        in cli("artifact", "put", str(data_dir), "-p", project, "-n", "d", "-t", "dataset").stdout
    )
    root = cli(
        "artifact", "get", "d:v1", "--project", project, "--root", str(tmp_path / "got")
    ).stdout.strip()
    assert open(os.path.join(root, "a.txt")).read() == "alpha"
    assert open(os.path.join(root, "sub", "b.txt")).read() == "beta"
    assert project in cli("artifact", "ls").stdout.split()
    listing = json.loads(cli("artifact", "ls", project, "--json").stdout)
    assert listing[0]["name"] == "d" and listing[0]["latest_version"] == 2
    versions = cli("artifact", "ls", f"{project}/d").stdout.splitlines()
    assert versions[0].startswith("v1") and "best" in versions[0] and "latest" in versions[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["artifact", "get", "d:v9", "--project", "P"], "not found"),
        (["artifact", "get", "d:v0", "--project", "P"], "v0"),
        (["artifact", "get", "d"], "--project"),
        (["artifact", "put", "/nonexistent/path", "-p", "P", "-n", "x", "-t", "dataset"], "does not exist"),
        (["artifact", "put", ".", "-p", "P", "-n", "bad/name", "-t", "dataset"], "artifact name"),
        (["cache", "cleanup", "--max-size", "lots"], "not a size"),
    ],
)
def test_errors_are_one_line_without_traceback(args, expected, project):
    args = [project if a == "P" else a for a in args]
    proc = cli(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wanllmdb: error:") and expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_verbose_flag_shows_the_traceback(project):
    proc = cli("-v", "artifact", "get", "d:v9", "--project", project, check=False)
    assert proc.returncode == 3 and "Traceback" in proc.stderr  # 3: not found
    proc = cli("artifact", "get", "d:v9", "--project", project, "-v", check=False)
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_cache_ls_cleanup_dry_run_and_verify(project, data_dir, tmp_path):
    cli("artifact", "put", str(data_dir), "-p", project, "-n", "d", "-t", "dataset")
    cli("artifact", "get", f"{project}/d", "--root", str(tmp_path / "got"))
    listing = cli("cache", "ls").stdout
    assert f"{project}/d:v1" in listing and "2 blob(s)" in listing
    dry = cli("cache", "cleanup", "--max-size", "0", "--dry-run").stdout
    assert "would free 9 B" in dry
    assert "2 blob(s)" in cli("cache", "ls").stdout
    assert "checked 2 blob(s): 0 corrupt" in cli("cache", "verify").stdout
    assert "freed 9 B" in cli("cache", "cleanup", "--max-size", "0").stdout
    assert "0 blob(s)" in cli("cache", "ls").stdout


def test_cache_ls_and_cleanup_show_and_remove_the_mounts_kept_indexes(project, data_dir, tmp_path):
    from wanllmdb.fs.index import IndexedTree, IndexFolder
    from wanllmdb.manifest import ManifestEntry

    folder = IndexFolder(os.path.join(os.environ["WANLLMDB_CACHE_DIR"], "mount-index"))
    for version_id, age in (("a" * 32, 0), ("b" * 32, 90 * 86400)):
        tree = IndexedTree.build(folder.new_file(), [ManifestEntry("x.bin", 1, "0" * 32, "1" * 64)], 0.0)
        folder.keep(tree.path, version_id)
        tree.close()
        kept = os.path.join(folder.kept_dir, f"{version_id}.s1.sqlite")
        os.utime(kept, (time.time() - age, time.time() - age))
    folder.close()
    assert "2 version index(es) kept for the mount" in cli("cache", "ls").stdout
    listed = json.loads(cli("cache", "ls", "--json").stdout)["mount_indexes"]
    assert listed["count"] == 2 and listed["bytes"] > 0
    dry = cli("cache", "cleanup", "--max-age", "30d", "--dry-run").stdout
    assert "mount-index:" + "b" * 8 in dry and "mount-index:" + "a" * 8 not in dry, dry
    assert len(os.listdir(folder.kept_dir)) == 2, "a dry run removes nothing"
    cli("cache", "cleanup", "--max-age", "30d")
    assert os.listdir(folder.kept_dir) == ["a" * 32 + ".s1.sqlite"], "the one unused for 90 days went"
    freed = json.loads(cli("cache", "cleanup", "--max-size", "0", "--json").stdout)
    assert [e["key"] for e in freed["entries"]] == ["mount-index:" + "a" * 32 + ".s1.sqlite"]
    assert os.listdir(folder.kept_dir) == [] and "version index" not in cli("cache", "ls").stdout


def test_cache_verify_fails_on_a_corrupt_blob(project, data_dir, tmp_path):
    cli("artifact", "put", str(data_dir), "-p", project, "-n", "d", "-t", "dataset")
    cli("artifact", "get", f"{project}/d", "--root", str(tmp_path / "got"))
    target = tmp_path / "got" / "a.txt"
    os.chmod(target, 0o644)
    target.write_bytes(b"ALPHA")  # in place: the hard link shares the cached blob
    proc = cli("cache", "verify", check=False)
    assert proc.returncode == 1 and "1 corrupt" in proc.stdout
