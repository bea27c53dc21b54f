"""``wanllmdb artifact tag | untag | alias | rm`` run as users run them (embedded registry: the HTTP side of
the same calls is in the registry contract suite, and each CLI call costs a process start)."""

from __future__ import annotations

import json

from tests.test_cli import cli


def _versions(project: str, name: str) -> dict:
    info = json.loads(cli("artifact", "ls", f"{project}/{name}", "--json").stdout)
    return {v["version"]: v for v in info["versions"]}


def _put(path, project: str, alias: str | None = None) -> None:
    extra = ["--alias", alias] if alias else []
    cli("artifact", "put", str(path), "-p", project, "-n", "m", "-t", "model", *extra)


def test_tag_untag_and_alias_change_a_logged_version(project, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    _put(f, project)
    f.write_bytes(b"two")
    _put(f, project)
    shown = cli("artifact", "tag", f"{project}/m:v1", "gold", "needs review").stdout
    assert "tags: gold, needs review" in shown
    cli("artifact", "untag", "m:v1", "needs review", "-p", project)
    cli("artifact", "alias", f"{project}/m:v1", "production", "candidate")
    cli("artifact", "alias", f"{project}/m:production", "candidate", "--remove")
    versions = _versions(project, "m")
    assert versions[1]["tags"] == ["gold"]
    assert versions[1]["aliases"] == ["production"] and versions[2]["aliases"] == ["latest"]
    bad = cli("artifact", "untag", f"{project}/m:v1", "silver", check=False)
    assert bad.returncode != 0 and "silver" in bad.stderr
    latest = cli("artifact", "alias", f"{project}/m:v1", "latest", check=False)
    assert latest.returncode != 0 and "latest" in latest.stderr
    assert _versions(project, "m")[2]["aliases"] == ["latest"]


def test_rm_lists_first_refuses_aliased_versions_and_deletes_with_yes(project, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    _put(f, project, alias="production")
    f.write_bytes(b"two")
    _put(f, project)
    dry = cli("artifact", "rm", f"{project}/m:v1").stdout
    assert f"would delete {project}/m:v1" in dry and "nothing deleted" in dry and "--delete-aliases" in dry
    assert sorted(_versions(project, "m")) == [1, 2]
    refused = cli("artifact", "rm", f"{project}/m:production", "--yes", check=False)
    assert refused.returncode != 0 and "production" in refused.stderr
    cli("artifact", "rm", f"{project}/m:production", "--yes", "--delete-aliases")
    assert sorted(_versions(project, "m")) == [2]
    no_selector = cli("artifact", "rm", f"{project}/m", "--yes", check=False)
    assert no_selector.returncode != 0 and "--all" in no_selector.stderr
    assert f"would delete {project}/m:v2" in cli("artifact", "rm", f"{project}/m", "--all").stdout
    assert f"deleted {project}/m:v2" in cli("artifact", "rm", f"{project}/m", "--all", "--yes").stdout
    assert json.loads(cli("artifact", "ls", project, "--json").stdout) == []
