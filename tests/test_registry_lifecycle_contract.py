"""Changing, deleting and linking logged versions (issue 12; delete semantics of issue 13, point 1).

Part of the registry contract: every test takes the ``registry`` fixture and runs against the embedded
registry and a real ``wanllmdb server``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import REGISTRY_KINDS, SCALE_KINDS, use_backend
from tests.support.data import log_files
from tests.support.server import start_server
from wanllmdb.errors import (
    AliasError,
    AliasProtectedError,
    ArtifactNotFoundError,
    ArtifactTypeMismatchError,
    ConflictError,
    InvalidTagError,
    NotFoundError,
    RunNotFoundError,
    VersionNotFoundError,
)
from wanllmdb.registry import RunSpec, VersionUpdate
from wanllmdb.registry.db import SCHEMA_VERSION
from wanllmdb.registry.local import LocalRegistry


@pytest.fixture(params=[*REGISTRY_KINDS, *SCALE_KINDS])
def backend(request, monkeypatch) -> str:
    """This suite also runs over the scale-out backends (see conftest.SCALE_KINDS)."""
    return use_backend(request, monkeypatch, request.param)


V1_DUMP = Path(__file__).parent / "data" / "registry-v1.sql"


def _log(registry, tmp_path, project, name, content: bytes, **kwargs):
    return log_files(registry, str(tmp_path), project, name, {"f.bin": content}, **kwargs).version


# --- tags and updates ------------------------------------------------------------------------------------


def test_tags_are_set_at_finalize_and_added_when_content_is_identical(registry, project, tmp_path):
    first = _log(registry, tmp_path, project, "m", b"w", tags=["epoch-1", "baseline"])
    assert first.tags == ("epoch-1", "baseline")
    again = _log(registry, tmp_path, project, "m", b"w", tags=["reviewed"])
    assert again.version == 1
    assert set(registry.resolve(project, "m", "v1").tags) == {"epoch-1", "baseline", "reviewed"}
    second = _log(registry, tmp_path, project, "m", b"x")
    assert second.tags == () and second.id and second.id != first.id
    assert registry.resolve(project, "m", "v1").id == first.id


def test_invalid_tags_are_refused_and_nothing_is_logged(registry, project, tmp_path):
    with pytest.raises(InvalidTagError, match="a,b"):
        _log(registry, tmp_path, project, "m", b"w", tags=["a,b"])
    with pytest.raises(ArtifactNotFoundError):
        registry.get_artifact(project, "m")


def test_update_rewrites_metadata_description_tags_and_aliases(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1", metadata={"acc": 0.5})
    logged = _log(registry, tmp_path, project, "m", b"2", aliases=["candidate"])
    updated = registry.update_version(
        project,
        "m",
        2,
        VersionUpdate(
            description="evaluated",
            metadata={"acc": 0.9},
            tags=["gold"],
            add_aliases=["production", "latest"],
            remove_aliases=["candidate"],
        ),
    )
    assert updated.description == "evaluated" and dict(updated.metadata) == {"acc": 0.9}
    assert updated.tags == ("gold",)
    assert set(updated.aliases) == {"latest", "production"}
    assert updated.updated_at >= logged.created_at
    resolved = registry.resolve(project, "m", "production")
    assert resolved.version == 2 and resolved.digest == logged.digest and resolved.tags == ("gold",)
    assert registry.get_artifact(project, "m").aliases == {"latest": 2, "production": 2}
    assert dict(registry.resolve(project, "m", "v1").metadata) == {"acc": 0.5}


def test_update_moves_a_custom_alias_from_another_version(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1", aliases=["best"])
    _log(registry, tmp_path, project, "m", b"2")
    registry.update_version(project, "m", 2, VersionUpdate(add_aliases=["best"]))
    assert registry.get_artifact(project, "m").aliases == {"best": 2, "latest": 2}


def test_latest_cannot_be_moved_or_removed_by_update(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    _log(registry, tmp_path, project, "m", b"2")
    with pytest.raises(AliasError, match="latest"):
        registry.update_version(project, "m", 1, VersionUpdate(add_aliases=["latest"]))
    with pytest.raises(AliasError, match="latest"):
        registry.update_version(project, "m", 2, VersionUpdate(remove_aliases=["latest"]))
    with pytest.raises(AliasError, match="v3"):
        registry.update_version(project, "m", 2, VersionUpdate(add_aliases=["v3"]))
    with pytest.raises(VersionNotFoundError, match="nope"):
        registry.update_version(project, "m", 2, VersionUpdate(remove_aliases=["nope"]))
    with pytest.raises(VersionNotFoundError, match="v9"):
        registry.update_version(project, "m", 9, VersionUpdate(description="x"))
    assert registry.get_artifact(project, "m").aliases == {"latest": 2}


# --- deletion --------------------------------------------------------------------------------------------


def test_deleted_version_is_not_found_and_its_number_is_never_reused(registry, project, tmp_path):
    for content in (b"1", b"2", b"3"):
        _log(registry, tmp_path, project, "m", content)
    registry.delete_version(project, "m", 3)
    with pytest.raises(VersionNotFoundError, match="v3"):
        registry.resolve(project, "m", "v3")
    assert registry.resolve(project, "m").version == 2
    assert [v.version for v in registry.get_artifact(project, "m").versions] == [1, 2]
    assert registry.get_artifact(project, "m").aliases == {"latest": 2}
    again = _log(registry, tmp_path, project, "m", b"3")
    assert again.version == 4
    assert registry.resolve(project, "m").version == 4
    with pytest.raises(VersionNotFoundError):
        registry.delete_version(project, "m", 3)


def test_deleting_the_newest_version_then_identical_content_makes_a_new_number(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    _log(registry, tmp_path, project, "m", b"2")
    registry.delete_version(project, "m", 2)
    relogged = log_files(registry, str(tmp_path), project, "m", {"f.bin": b"1"})
    assert not relogged.created and relogged.version.version == 1


def test_alias_protected_version_is_refused_unless_aliases_go_too(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1", aliases=["production"])
    _log(registry, tmp_path, project, "m", b"2")
    with pytest.raises(AliasProtectedError, match="production") as info:
        registry.delete_version(project, "m", 1)
    assert isinstance(info.value, ConflictError)
    assert registry.resolve(project, "m", "production").version == 1
    registry.delete_version(project, "m", 1, delete_aliases=True)
    assert registry.get_artifact(project, "m").aliases == {"latest": 2}
    with pytest.raises(VersionNotFoundError):
        registry.resolve(project, "m", "production")


def test_latest_alone_does_not_protect_and_moves_down(registry, project, tmp_path):
    _log(registry, tmp_path, project, "m", b"1")
    _log(registry, tmp_path, project, "m", b"2")
    registry.delete_version(project, "m", 2)
    assert registry.get_artifact(project, "m").aliases == {"latest": 1}


def test_deleting_the_last_version_or_the_artifact_removes_it_from_listings(registry, project, tmp_path):
    _log(registry, tmp_path, project, "keep", b"k")
    _log(registry, tmp_path, project, "gone", b"1", aliases=["best"])
    _log(registry, tmp_path, project, "gone", b"2")
    assert registry.delete_artifact(project, "gone") == 2
    assert [a.name for a in registry.list_artifacts(project)] == ["keep"]
    with pytest.raises(ArtifactNotFoundError, match="gone"):
        registry.get_artifact(project, "gone")
    with pytest.raises(NotFoundError):
        registry.resolve(project, "gone", "best")
    with pytest.raises(ArtifactNotFoundError):
        registry.delete_artifact(project, "gone")
    assert _log(registry, tmp_path, project, "gone", b"1").version == 3


def test_lineage_keeps_tombstones_of_deleted_versions(registry, project, tmp_path):
    registry.create_run(RunSpec(project, "writer", "writer"))
    registry.create_run(RunSpec(project, "reader", "reader"))
    _log(registry, tmp_path, project, "m", b"1", run_id="writer")
    _log(registry, tmp_path, project, "m", b"2", run_id="writer")
    registry.record_use("reader", project, "m", 1)
    registry.delete_version(project, "m", 1)
    assert registry.logged_by(project, "m", 1).id == "writer"
    assert [r.id for r in registry.used_by(project, "m", 1)] == ["reader"]
    logged = registry.logged_artifacts("writer")
    assert [(v.name, v.version, v.state) for v in logged] == [("m", 1, "DELETED"), ("m", 2, "COMMITTED")]
    assert logged[1].aliases == ("latest",)
    used = registry.used_artifacts("reader")
    assert [(v.version, v.state) for v in used] == [(1, "DELETED")]
    with pytest.raises(VersionNotFoundError):
        registry.record_use("reader", project, "m", 1)
    with pytest.raises(RunNotFoundError):
        registry.logged_artifacts("no-such-run")


# --- links -----------------------------------------------------------------------------------------------


def test_link_resolves_to_the_source_manifest(registry, project, tmp_path):
    source = log_files(registry, str(tmp_path), project, "model", {"w.bin": b"weights"}, type="model").version
    link = registry.link_version(project, "model", 1, project, "registry-models", aliases=["production"])
    assert (link.version, link.type, link.link_source) == (1, "model", f"{project}/model:v1")
    assert set(link.aliases) == {"latest", "production"}
    resolved = registry.resolve(project, "registry-models", "production")
    assert resolved.link_source == f"{project}/model:v1"
    assert resolved.digest == source.digest
    assert resolved.manifest.get("w.bin").sha256 == hashlib.sha256(b"weights").hexdigest()
    assert registry.link_version(project, "model", 1, project, "registry-models").version == 1
    log_files(registry, str(tmp_path), project, "model", {"w.bin": b"better"}, type="model")
    second = registry.link_version(project, "model", 2, project, "registry-models")
    assert second.version == 2 and registry.resolve(project, "registry-models").link_source == f"{project}/model:v2"
    assert registry.resolve(project, "model", "v1").link_source is None


def test_link_of_a_link_points_at_the_original(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "model", {"w.bin": b"w"}, type="model")
    registry.link_version(project, "model", 1, project, "staging")
    final = registry.link_version(project, "staging", 1, project, "prod")
    assert final.link_source == f"{project}/model:v1"


def test_links_refuse_wrong_targets(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "model", {"w.bin": b"w"}, type="model")
    log_files(registry, str(tmp_path), project, "data", {"d.bin": b"d"}, type="dataset")
    registry.link_version(project, "model", 1, project, "models")
    with pytest.raises(ConflictError, match="not a link collection"):
        registry.link_version(project, "model", 1, project, "data")
    with pytest.raises(ArtifactTypeMismatchError, match="models"):
        registry.link_version(project, "data", 1, project, "models")
    with pytest.raises(ConflictError, match="link collection"):
        log_files(registry, str(tmp_path), project, "models", {"x": b"x"}, type="model")
    with pytest.raises(VersionNotFoundError):
        registry.link_version(project, "model", 7, project, "models")


def test_deleting_a_linked_version_deletes_its_links_and_respects_their_aliases(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "model", {"w.bin": b"1"}, type="model")
    log_files(registry, str(tmp_path), project, "model", {"w.bin": b"2"}, type="model")
    registry.link_version(project, "model", 1, project, "reg", aliases=["production"])
    registry.link_version(project, "model", 2, project, "reg")
    with pytest.raises(AliasProtectedError, match="production"):
        registry.delete_version(project, "model", 1)
    registry.delete_version(project, "model", 1, delete_aliases=True)
    info = registry.get_artifact(project, "reg")
    assert [v.version for v in info.versions] == [2] and info.aliases == {"latest": 2}
    with pytest.raises(VersionNotFoundError):
        registry.resolve(project, "reg", "v1")


# --- migration of a database written before this schema --------------------------------------------------


def _old_registry(root: Path) -> None:
    """A registry directory whose database was written by wanllmdb at schema 1 (see the dump's header)."""
    root.mkdir(parents=True)
    conn = sqlite3.connect(root / "registry.sqlite")
    conn.executescript(V1_DUMP.read_text())
    conn.close()
    for content in (b"one", b"two"):
        sha = hashlib.sha256(content).hexdigest()
        os.makedirs(root / "blobs" / sha[:2], exist_ok=True)
        (root / "blobs" / sha[:2] / sha).write_bytes(content)


def _check_migrated(registry, tmp_path) -> None:
    info = registry.get_artifact("vision", "mnist")
    assert info.aliases == {"best": 1, "latest": 2}
    v1 = registry.resolve("vision", "mnist", "best")
    assert v1.tags == () and v1.state == "COMMITTED" and len(v1.id) == 32 and v1.updated_at == v1.created_at
    assert v1.manifest.get("a.txt").sha256 == hashlib.sha256(b"one").hexdigest()
    registry.delete_version("vision", "mnist", 2)
    assert _log(registry, tmp_path, "vision", "mnist", b"three").version == 3
    assert [(v.version, v.state) for v in registry.logged_artifacts("run1")] == [(1, "COMMITTED"), (2, "DELETED")]
    assert [v.version for v in registry.used_artifacts("run1")] == [1]


def test_old_database_is_upgraded_in_place_embedded(tmp_path):
    root = tmp_path / "old"
    _old_registry(root)
    registry = LocalRegistry(str(root))
    try:
        _check_migrated(registry, tmp_path)
    finally:
        registry.close()
    conn = sqlite3.connect(root / "registry.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    reopened = LocalRegistry(str(root))
    try:
        assert reopened.resolve("vision", "mnist").version == 3
    finally:
        reopened.close()


def test_old_database_is_upgraded_in_place_by_the_server(tmp_path):
    _old_registry(tmp_path / "srv" / "registry")
    server = start_server(tmp_path / "srv")
    registry = server.registry()
    try:
        _check_migrated(registry, tmp_path)
    finally:
        registry.close()
        server.stop()
    shutil.rmtree(tmp_path / "srv")
