"""Retention (issue 13): a TTL per version, a default TTL and a keep policy per artifact, and
``LocalRegistry.expire_versions`` deleting what they say.

Every test runs against the embedded registry, a ``wanllmdb server`` on SQLite and one on PostgreSQL. The
registry is driven through the ``registry`` fixture (the client); ``expire_versions`` and the history's
shape (``created_at``) are server-side, so ``store`` opens a ``LocalRegistry`` on the same metadata. Time is
injected (``now``), never slept.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest
import requests

import wanllmdb
from tests.conftest import WITH_POSTGRES, select_backend
from tests.support.data import log_files
from wanllmdb.errors import (
    ArtifactNotFoundError,
    ArtifactNotLoggedError,
    InvalidInputError,
    VersionNotFoundError,
)
from wanllmdb.registry import ArtifactTTL, RetentionPolicy, VersionUpdate
from wanllmdb.registry.local import LocalRegistry
from wanllmdb.registry.metadata import open_metadata

DAY = 86400.0


@pytest.fixture(params=WITH_POSTGRES)
def backend(request, monkeypatch) -> str:
    return select_backend(request, monkeypatch)


@pytest.fixture
def store(backend, request, tmp_path):
    """A ``LocalRegistry`` on the metadata the ``registry`` fixture talks to (the server's, for a server)."""
    if backend == "local":
        from wanllmdb.settings import load_settings

        reg = LocalRegistry(load_settings().data_dir)
    elif backend == "http":
        reg = LocalRegistry(request.getfixturevalue("live_server").root)
    else:
        root = str(tmp_path / "server-side")
        reg = LocalRegistry(root, database=open_metadata(request.getfixturevalue("pg_server").db_url, root))
    yield reg
    reg.close()


def _log(registry, tmp_path, project, name, content: bytes, **kwargs):
    # Contents of this module's own: the servers' blob stores are shared with other modules' tests, which may
    # count on a blob not being stored yet.
    content = b"test_retention:" + content
    return log_files(registry, str(tmp_path), project, name, {"f.bin": content}, **kwargs).version


def _history(registry, tmp_path, project, name, count: int, **kwargs) -> list:
    return [_log(registry, tmp_path, project, name, f"{name}-{i}".encode(), **kwargs) for i in range(count)]


def _set_created(store, project: str, name: str, created: dict[int, float]) -> None:
    """Shape the history: ``created[version] = time it was logged``."""
    with store.db.write() as conn:
        for version, at in created.items():
            conn.execute(
                "UPDATE versions SET created_at = ? WHERE version = ? AND artifact_id = (SELECT a.id FROM artifacts a "
                "JOIN projects p ON p.id = a.project_id WHERE p.name = ? AND a.name = ?)",
                (at, version, project, name),
            )


def _expire(store, project: str, now: float | None = None, **kwargs) -> list[tuple[str, int]]:
    """What ``expire_versions`` deleted in ``project`` (the servers are shared by other tests' projects)."""
    return [(v.name, v.version) for v in store.expire_versions(now, **kwargs) if v.project == project]


def _live(registry, project: str, name: str) -> list[int]:
    return [v.version for v in registry.get_artifact(project, name).versions]


# --- keep policies ---------------------------------------------------------------------------------------


def test_keep_last_deletes_the_older_versions_and_numbers_are_never_reused(registry, store, project, tmp_path):
    _history(registry, tmp_path, project, "m", 6)
    policy = registry.set_retention(project, "m", RetentionPolicy(keep_last=3))
    assert policy == RetentionPolicy(keep_last=3)
    assert registry.get_artifact(project, "m").retention == policy
    assert _expire(store, project) == [("m", 1), ("m", 2), ("m", 3)]
    assert _live(registry, project, "m") == [4, 5, 6]
    assert registry.resolve(project, "m", "latest").version == 6
    assert _expire(store, project) == []
    assert _log(registry, tmp_path, project, "m", b"new").version == 7
    assert _expire(store, project) == [("m", 4)]
    assert registry.get_artifact(project, "m").aliases == {"latest": 7}
    with pytest.raises(VersionNotFoundError):
        registry.resolve(project, "m", "v1")


def test_older_than_deletes_by_age_and_combines_with_keep_last(registry, store, project, tmp_path):
    now = time.time()
    _history(registry, tmp_path, project, "m", 6)
    _set_created(store, project, "m", {1: now - 5 * DAY, 2: now - 4 * DAY, 3: now - 3 * DAY, 4: now - 2 * DAY,
                                       5: now - 1 * DAY, 6: now})
    registry.set_retention(project, "m", RetentionPolicy(older_than=2.5 * DAY, keep_last=5))
    assert _expire(store, project, now, dry_run=True) == [("m", 1)]
    assert _live(registry, project, "m") == [1, 2, 3, 4, 5, 6]
    registry.set_retention(project, "m", RetentionPolicy(older_than=2.5 * DAY))
    assert _expire(store, project, now) == [("m", 1), ("m", 2), ("m", 3)]
    assert _live(registry, project, "m") == [4, 5, 6]
    # A day later v4 is old enough too.
    assert _expire(store, project, now + DAY) == [("m", 4)]


def test_keep_aliased_spares_versions_with_custom_aliases_even_on_links(registry, store, project, tmp_path):
    _history(registry, tmp_path, project, "m", 5)
    registry.set_alias(project, "m", "best", 2)
    registry.link_version(project, "m", 3, project, "reg", aliases=["prod"])
    registry.set_retention(project, "m", RetentionPolicy(keep_last=1, keep_aliased=True))
    assert _expire(store, project) == [("m", 1), ("m", 4)]
    assert _live(registry, project, "m") == [2, 3, 5]
    # Without keep_aliased the aliases go with the versions, and the link with its source.
    registry.set_retention(project, "m", RetentionPolicy(keep_last=1))
    assert _expire(store, project) == [("m", 2), ("m", 3), ("reg", 1)]
    assert registry.get_artifact(project, "m").aliases == {"latest": 5}
    with pytest.raises(ArtifactNotFoundError):
        registry.get_artifact(project, "reg")


def test_the_newest_version_is_kept_by_any_policy(registry, store, project, tmp_path):
    _history(registry, tmp_path, project, "m", 3)
    registry.set_retention(project, "m", RetentionPolicy(keep_last=0, older_than=0))
    assert _expire(store, project, time.time() + 100 * DAY) == [("m", 1), ("m", 2)]
    assert _live(registry, project, "m") == [3]
    assert _expire(store, project, time.time() + 100 * DAY) == []
    # keep_aliased alone, or no policy, deletes nothing.
    registry.set_retention(project, "m", RetentionPolicy(keep_aliased=True))
    _log(registry, tmp_path, project, "m", b"more")
    assert _expire(store, project, time.time() + 100 * DAY) == []


# --- TTLs --------------------------------------------------------------------------------------------------


def test_a_version_goes_when_its_own_ttl_passes_latest_included(registry, store, project, tmp_path):
    v1 = _log(registry, tmp_path, project, "m", b"1", ttl=100)
    v2 = _log(registry, tmp_path, project, "m", b"2", ttl=None)
    v3 = _log(registry, tmp_path, project, "m", b"3", ttl=1000)
    assert (v1.ttl, v2.ttl, v3.ttl) == (100.0, None, 1000.0)
    assert v1.expires_at == pytest.approx(v1.created_at + 100) and v2.expires_at is None
    assert registry.resolve(project, "m", "v1").ttl == 100.0
    assert _expire(store, project, v1.created_at + 99) == []
    assert _expire(store, project, v1.created_at + 150) == [("m", 1)]
    assert _expire(store, project, v3.created_at + 1000) == [("m", 3)]
    assert _live(registry, project, "m") == [2]
    assert registry.resolve(project, "m", "latest").version == 2
    assert _expire(store, project, time.time() + 1e6) == []
    assert _log(registry, tmp_path, project, "m", b"4").version == 4


def test_the_artifact_default_ttl_is_inherited_by_versions_logged_later(registry, store, project, tmp_path):
    before = _log(registry, tmp_path, project, "m", b"1")
    assert before.ttl is None
    registry.set_retention(project, "m", RetentionPolicy(ttl=60))
    inherited = _log(registry, tmp_path, project, "m", b"2")
    assert inherited.ttl == 60.0
    kept = _log(registry, tmp_path, project, "m", b"3", ttl=None)
    assert kept.ttl is None
    own = _log(registry, tmp_path, project, "m", b"4", ttl=5)
    assert own.ttl == 5.0
    # Identical content: INHERIT leaves the version's TTL alone, an explicit TTL is set.
    assert _log(registry, tmp_path, project, "m", b"4").ttl == 5.0
    assert _log(registry, tmp_path, project, "m", b"4", ttl=7).ttl == 7.0
    assert registry.resolve(project, "m", "v1").ttl is None
    assert _expire(store, project, inherited.created_at + 61) == [("m", 2), ("m", 4)]
    assert _live(registry, project, "m") == [1, 3]


def test_a_link_to_an_expired_version_goes_with_it(registry, store, project, tmp_path):
    source = _log(registry, tmp_path, project, "m", b"1", ttl=10)
    _log(registry, tmp_path, project, "m", b"2")
    link = registry.link_version(project, "m", 1, project, "reg", aliases=["prod"])
    assert link.ttl is None
    assert _expire(store, project, source.created_at + 10, dry_run=True) == [("m", 1), ("reg", 1)]
    assert registry.resolve(project, "reg", "prod").version == 1
    assert _expire(store, project, source.created_at + 10) == [("m", 1), ("reg", 1)]
    with pytest.raises(ArtifactNotFoundError):
        registry.resolve(project, "reg", "prod")
    # Tombstones: lineage still answers.
    assert registry.logged_by(project, "m", 1) is None


def test_update_sets_clears_and_inherits_the_ttl(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    assert registry.update_version(project, "m", 1, VersionUpdate(ttl=3600)).ttl == 3600.0
    assert registry.resolve(project, "m", "v1").ttl == 3600.0
    # An update that does not name the TTL leaves it.
    assert registry.update_version(project, "m", 1, VersionUpdate(description="d")).ttl == 3600.0
    assert registry.update_version(project, "m", 1, VersionUpdate(clear_ttl=True)).ttl is None
    registry.set_retention(project, "m", RetentionPolicy(ttl=120))
    assert registry.update_version(project, "m", 1, VersionUpdate(inherit_ttl=True)).ttl == 120.0
    for bad in (VersionUpdate(ttl=0), VersionUpdate(ttl=-5), VersionUpdate(ttl=5, clear_ttl=True)):
        with pytest.raises(InvalidInputError):
            registry.update_version(project, "m", 1, bad)
    registry.link_version(project, "m", 1, project, "reg")
    with pytest.raises(InvalidInputError, match="link"):
        registry.update_version(project, "reg", 1, VersionUpdate(ttl=60))
    assert registry.resolve(project, "m", "v1").ttl == 120.0


def test_set_retention_refuses_bad_values_and_changes_nothing(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    registry.set_retention(project, "m", RetentionPolicy(keep_last=2))
    for bad in (
        RetentionPolicy(keep_last=-1),
        RetentionPolicy(keep_last=1.5),  # type: ignore[arg-type]
        RetentionPolicy(ttl=0),
        RetentionPolicy(ttl=-1),
        RetentionPolicy(older_than=-1),
    ):
        with pytest.raises(InvalidInputError):
            registry.set_retention(project, "m", bad)
    with pytest.raises(ArtifactNotFoundError):
        registry.set_retention(project, "nope", RetentionPolicy(keep_last=1))
    registry.link_version(project, "m", 1, project, "reg")
    with pytest.raises(InvalidInputError, match="link collection"):
        registry.set_retention(project, "reg", RetentionPolicy(ttl=60))
    assert registry.set_retention(project, "reg", RetentionPolicy(keep_last=1)).keep_last == 1
    assert registry.get_artifact(project, "m").retention == RetentionPolicy(keep_last=2)
    assert registry.set_retention(project, "m", RetentionPolicy()) == RetentionPolicy()
    assert registry.get_artifact(project, "m").retention == RetentionPolicy()


def test_finalize_refuses_a_bad_ttl(registry, project, tmp_path):
    for bad in (0, -1, float("inf")):
        with pytest.raises(InvalidInputError):
            _log(registry, tmp_path, project, "m", b"1", ttl=bad)
    assert _log(registry, tmp_path, project, "m", b"1", ttl=ArtifactTTL.INHERIT).ttl is None


# --- SDK ---------------------------------------------------------------------------------------------------


def test_sdk_artifact_ttl_round_trip(backend, project, tmp_path):
    run = wanllmdb.init(project=project)
    art = wanllmdb.Artifact("m", "model")
    with art.new_file("w.txt") as f:
        f.write("test_retention weights")
    with pytest.raises(ArtifactNotLoggedError):
        art.ttl  # noqa: B018  (inherited: unknown until logged, as in W&B)
    with pytest.raises(InvalidInputError):
        art.ttl = datetime.timedelta(seconds=-1)
    art.ttl = datetime.timedelta(days=3)
    run.log_artifact(art)
    assert art.ttl == datetime.timedelta(days=3)
    used = run.use_artifact("m:latest")
    assert used.ttl == datetime.timedelta(days=3)
    assert used.expires_at is not None
    used.ttl = datetime.timedelta(hours=1)
    used.save()
    assert run.use_artifact("m:v1").ttl == datetime.timedelta(hours=1)
    used.ttl = None
    used.save()
    again = run.use_artifact("m:v1")
    assert again.ttl is None and again.expires_at is None
    # INHERIT on a logged version: the artifact's default, known once saved.
    again._client.registry.set_retention(project, "m", RetentionPolicy(ttl=DAY))
    assert again.collection.retention == RetentionPolicy(ttl=DAY)
    again.ttl = wanllmdb.ArtifactTTL.INHERIT
    with pytest.raises(ArtifactNotLoggedError):
        again.ttl  # noqa: B018
    again.save()
    assert again.ttl == datetime.timedelta(days=1)
    # Not set before logging: the artifact's default.
    second = wanllmdb.Artifact("m", "model")
    with second.new_file("w.txt") as f:
        f.write("test_retention weights 2")
    run.log_artifact(second)
    assert second.ttl == datetime.timedelta(days=1)
    run.finish()


# --- CLI ---------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wanllmdb.cli.main", *args], capture_output=True, text=True, env=os.environ.copy()
    )


def test_cli_retain_sets_shows_and_clears(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    ref = f"{project}/m"
    shown = _cli("artifact", "retain", ref)
    assert shown.returncode == 0, shown.stderr
    assert "ttl: -  keep-last: -  older-than: -  keep-aliased: no" in shown.stdout
    done = _cli("artifact", "retain", ref, "--keep-last", "5", "--keep-aliased", "--older-than", "30d", "--ttl", "12h")
    assert done.returncode == 0, done.stderr
    assert "ttl: 12h  keep-last: 5  older-than: 30d  keep-aliased: yes" in done.stdout
    assert registry.get_artifact(project, "m").retention == RetentionPolicy(12 * 3600, 5, True, 30 * DAY)
    # Options not given keep their value; 'none' unsets one.
    assert _cli("artifact", "retain", ref, "--ttl", "none").returncode == 0
    assert registry.get_artifact(project, "m").retention == RetentionPolicy(None, 5, True, 30 * DAY)
    assert "keep-last: 5" in _cli("artifact", "retain", "m", "-p", project, "--show").stdout
    cleared = _cli("artifact", "retain", ref, "--clear")
    assert cleared.returncode == 0 and "keep-last: -" in cleared.stdout
    assert registry.get_artifact(project, "m").retention == RetentionPolicy()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--keep-last", "-2"], ">= 0"),
        (["--keep-last", "many"], "whole number"),
        (["--older-than", "3 fortnights"], "not a duration"),
        (["--ttl", "0"], "positive"),
        (["--ttl", "7d", "--clear"], "alone"),
    ],
)
def test_cli_retain_bad_input_is_one_line_and_changes_nothing(registry, project, tmp_path, args, expected):
    _log(registry, tmp_path, project, "m", b"1")
    registry.set_retention(project, "m", RetentionPolicy(keep_last=3))
    proc = _cli("artifact", "retain", f"{project}/m", *args)
    assert proc.returncode != 0
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert registry.get_artifact(project, "m").retention == RetentionPolicy(keep_last=3)


def test_cli_retain_missing_artifact_or_version_ref(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    for ref, expected in ((f"{project}/nope", "not found"), (f"{project}/m:v1", "not a version")):
        proc = _cli("artifact", "retain", ref, "--keep-last", "1")
        assert proc.returncode != 0
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert registry.get_artifact(project, "m").retention == RetentionPolicy()


# --- HTTP route ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"keep_last": -1},
        {"keep_last": "x"},
        {"ttl": 0},
        {"older_than": -3},
        {"keep_last": 2, "unknown": True},
    ],
)
def test_http_retention_route_validates(live_server, project, tmp_path, body):
    registry = live_server.registry()
    _log(registry, tmp_path, project, "m", b"1")
    url = f"{live_server.url}/api/v1/projects/{project}/artifacts/m/retention"
    answer = requests.put(url, json=body, headers=live_server.headers, timeout=30)
    assert answer.status_code == 400, answer.text
    assert registry.get_artifact(project, "m").retention == RetentionPolicy()
    ok = requests.put(url, json={"keep_last": 2, "older_than": 60}, headers=live_server.headers, timeout=30)
    assert ok.status_code == 200 and ok.json() == {"ttl": None, "keep_last": 2, "keep_aliased": False,
                                                   "older_than": 60.0}
    missing = requests.put(url.replace("/m/", "/nope/"), json={}, headers=live_server.headers, timeout=30)
    assert missing.status_code == 404
    got = requests.get(f"{live_server.url}/api/v1/projects/{project}/artifacts/m", headers=live_server.headers)
    assert got.json()["retention"]["keep_last"] == 2
    registry.close()


def test_http_finalize_ttl_wire_format(live_server, project, tmp_path):
    registry = live_server.registry()
    version = _log(registry, tmp_path, project, "m", b"1", ttl=90)
    data = requests.get(
        f"{live_server.url}/api/v1/projects/{project}/artifacts/m/versions/v1", headers=live_server.headers
    ).json()
    assert data["ttl"] == 90.0 and data["expires_at"] == pytest.approx(version.created_at + 90)
    registry.close()
