"""The scriptable CLI: ``artifact info | diff``, ``--json`` everywhere, shell completion, exit codes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from tests.test_cli import cli
from wanllmdb.cli import common


@pytest.fixture
def two_versions(tmp_path, project):
    """``project/d`` v1 {a, sub/b, gone}, v2 {a, sub/b changed, new}; v2 is aliased ``best``."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    (src / "gone.txt").write_text("bye")
    cli("artifact", "put", str(src), "-p", project, "-n", "d", "-t", "dataset", "--description", "first")
    (src / "gone.txt").unlink()
    (src / "sub" / "b.txt").write_text("beta, longer")
    (src / "new.txt").write_text("hello!")
    cli(
        "artifact", "put", str(src), "-p", project, "-n", "d", "-t", "dataset", "-a", "best",
        "--metadata", '{"acc": 0.9}',
    )
    cli("artifact", "tag", f"{project}/d:v2", "nightly")
    return f"{project}/d"


def test_info_text_and_json(backend, two_versions):
    info = json.loads(cli("artifact", "info", f"{two_versions}:best", "--json").stdout)
    assert info["qualified_name"] == f"{two_versions}:v2" and info["version"] == 2
    assert info["file_count"] == 3 and info["size"] == len("alpha" "beta, longer" "hello!")
    assert sorted(info["aliases"]) == ["best", "latest"] and info["tags"] == ["nightly"]
    assert info["metadata"] == {"acc": 0.9} and info["state"] == "COMMITTED" and len(info["digest"]) == 64
    assert info["created"].endswith("+00:00") and info["updated"]
    assert info["logged_by_run"] is None and info["used_by"] == []
    assert "manifest" not in info

    text = cli("artifact", "info", "d:v1", "-p", two_versions.split("/")[0]).stdout
    assert text.splitlines()[0] == f"{two_versions}:v1"
    assert "files:       3, 12 B (12 bytes)" in text and "description: first" in text and "used by:     -" in text


def test_info_shows_lineage(backend, two_versions, tmp_path):
    from wanllmdb.sdk import init

    with init(project=two_versions.split("/")[0], job_type="train") as run:
        run.use_artifact(f"{two_versions.split('/')[1]}:v1")
        run_id = run.id
    info = json.loads(cli("artifact", "info", f"{two_versions}:v1", "--json").stdout)
    assert [r["id"] for r in info["used_by"]] == [run_id]
    assert f"run {run_id}" in cli("artifact", "info", f"{two_versions}:v1").stdout


def test_diff_text_and_json(backend, two_versions):
    data = json.loads(cli("artifact", "diff", f"{two_versions}:v1", f"{two_versions}:best", "--json").stdout)
    assert data["a"] == f"{two_versions}:v1" and data["b"] == f"{two_versions}:v2" and not data["identical"]
    assert data["added"] == [{"path": "new.txt", "size": 6}]
    assert data["removed"] == [{"path": "gone.txt", "size": 3}]
    assert [(c["path"], c["size_a"], c["size_b"]) for c in data["changed"]] == [("sub/b.txt", 4, 12)]
    assert data["changed"][0]["sha256_a"] != data["changed"][0]["sha256_b"]
    assert data["summary"]["unchanged"] == 1 and data["summary"]["added_bytes"] == 6

    proc = cli("artifact", "diff", "d:v1", "d:v2", "-p", two_versions.split("/")[0])
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0
    assert lines[:3] == ["+ new.txt  6 B", "- gone.txt  3 B", "~ sub/b.txt  4 B -> 12 B"]
    assert "1 added (6 B), 1 removed (3 B), 1 changed, 1 unchanged" in lines[-1]
    same = json.loads(cli("artifact", "diff", f"{two_versions}:v2", f"{two_versions}:latest", "--json").stdout)
    assert same["identical"] and not (same["added"] or same["removed"] or same["changed"])


def test_json_is_one_document_on_every_listing(two_versions, tmp_path):
    project = two_versions.split("/")[0]
    cli("artifact", "get", f"{two_versions}:v1", "--root", str(tmp_path / "got"))
    for args in (
        ["artifact", "ls", "--json"],
        ["artifact", "ls", project, "--json"],
        ["artifact", "ls", two_versions, "--json"],
        ["artifact", "info", f"{two_versions}:v1", "--json"],
        ["artifact", "diff", f"{two_versions}:v1", f"{two_versions}:v2", "--json"],
        ["cache", "ls", "--json"],
        ["cache", "cleanup", "--dry-run", "--json"],
        ["cache", "verify", "--json"],
        ["prefetch", two_versions, "--dry-run", "--json"],
        ["gc", "--dry-run", "--json"],
    ):
        json.loads(cli(*args).stdout)  # exactly one document
    listing = json.loads(cli("cache", "ls", "--json").stdout)
    assert listing["blobs"] == 3 and listing["bytes"] == 12
    assert [(v["artifact_id"], v["version"], v["complete"]) for v in listing["versions"]] == [
        (two_versions, "v1", True)
    ]
    assert json.loads(cli("cache", "verify", "--json").stdout) == {"checked": 3, "corrupt": []}


def test_completion_scripts():
    bash = cli("completion", "bash").stdout
    for word in ("artifact", "prefetch", "cache", "mount", "completion", "diff", "--dry-run"):
        assert word in bash
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n"], input=bash, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr
    zsh = cli("completion", "zsh").stdout
    assert zsh.startswith("#compdef wanllmdb") and "prefetch" in zsh
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=zsh, text=True).returncode == 0
    assert cli("completion", "fish", check=False).returncode == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exit_codes(two_versions, monkeypatch, request):
    project = two_versions.split("/")[0]

    def code(*args: str) -> int:
        proc = cli(*args, check=False)
        # the error is the last line (an unreachable server is also warned about while it is retried)
        assert proc.stderr.strip().splitlines()[-1].startswith("wanllmdb: error:"), proc.stderr
        return proc.returncode

    # 2: bad input and usage
    assert code("artifact", "get", "d") == common.EXIT_USAGE == 2  # no project
    assert code("artifact", "info", "p/d:v1:v2") == 2
    assert cli("artifact", "frobnicate", check=False).returncode == 2  # argparse
    # 3: not found (project, artifact, version, file in a version)
    assert code("artifact", "info", f"{project}/d:v9") == common.EXIT_NOT_FOUND == 3
    assert code("artifact", "diff", f"{project}/d:v1", f"{project}-none/d:v1") == 3
    assert code("prefetch", f"{two_versions}:v1/nothing-here") == 3
    # 1: anything else, e.g. a conflict (a custom alias protects the version)
    assert code("artifact", "rm", f"{two_versions}:best", "--yes") == common.EXIT_ERROR == 1
    # 4: the registry cannot be reached
    monkeypatch.setenv("WANLLMDB_BASE_URL", f"http://127.0.0.1:{_free_port()}")
    assert code("artifact", "ls") == common.EXIT_UNAVAILABLE == 4
    # 5: the server refuses the key
    server = request.getfixturevalue("live_server")
    monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", "wrong-key")
    assert code("artifact", "ls") == common.EXIT_AUTH == 5


def test_exit_code_mapping():
    from wanllmdb import errors

    assert common.exit_code_for(errors.VersionNotFoundError("x")) == 3
    assert common.exit_code_for(errors.LocalFileNotFoundError("x")) == 3
    assert common.exit_code_for(errors.ConfigError("x")) == 2
    assert common.exit_code_for(errors.InvalidRefError("x")) == 2
    assert common.exit_code_for(errors.ServerUnreachableError("x")) == 4
    assert common.exit_code_for(errors.StorageUnavailableError("x")) == 4
    assert common.exit_code_for(errors.DatabaseUnavailableError("x")) == 4
    assert common.exit_code_for(errors.FetchError("x")) == 4
    assert common.exit_code_for(errors.TransportError("x", status=502)) == 4
    assert common.exit_code_for(errors.AuthenticationError("x", status=401)) == 5
    assert common.exit_code_for(errors.ChecksumError("x")) == 1
    assert common.exit_code_for(errors.AliasProtectedError("x")) == 1
    assert common.exit_code_for(errors.DatabaseError("x")) == 1
    assert common.exit_code_for(OSError("x")) == 1
