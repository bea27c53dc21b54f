"""Registry behaviour every implementation must show; runs against the embedded registry and a real server.

Each test takes the ``registry`` fixture, parametrized over REGISTRY_KINDS in conftest.py.
"""

from __future__ import annotations

import hashlib
import io

import pytest

from tests.conftest import WITH_POSTGRES, select_backend
from tests.support.data import log_files, manifest_for, read_range, write_files
from wanllmdb.errors import (
    AliasError,
    ArtifactNotFoundError,
    ArtifactTypeMismatchError,
    DraftNotFoundError,
    EmptyArtifactError,
    IncompleteDraftError,
    InvalidNameError,
    NotFoundError,
    ProjectNotFoundError,
    VersionNotFoundError,
)
from wanllmdb.manifest import Manifest
from wanllmdb.registry import DraftSpec, RunSpec


@pytest.fixture(params=WITH_POSTGRES)
def backend(request, monkeypatch) -> str:
    """Also against a server whose metadata is in PostgreSQL."""
    return select_backend(request, monkeypatch)



def test_versions_count_from_v1_and_latest_moves(registry, project, tmp_path):
    first = log_files(registry, str(tmp_path), project, "mnist", {"a.txt": b"one"})
    second = log_files(registry, str(tmp_path), project, "mnist", {"a.txt": b"two"})
    assert (first.version.version, second.version.version) == (1, 2)
    assert first.created and second.created
    assert registry.resolve(project, "mnist").version == 2
    assert registry.resolve(project, "mnist", "latest").version == 2
    assert registry.resolve(project, "mnist", "v1").digest == first.version.digest
    info = registry.get_artifact(project, "mnist")
    assert [v.version for v in info.versions] == [1, 2]
    assert info.aliases == {"latest": 2}
    assert info.type == "dataset"


def test_resolve_returns_the_manifest_with_digests(registry, project, tmp_path):
    result = log_files(registry, str(tmp_path), project, "data", {"x/y.bin": b"payload", "z.txt": b"zz"})
    version = registry.resolve(project, "data", "v1")
    assert isinstance(version.manifest, Manifest)
    entry = version.manifest.get("x/y.bin")
    assert entry.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert entry.md5 == hashlib.md5(b"payload").hexdigest()
    assert version.size == 9 and version.file_count == 2
    assert version.digest == result.version.digest == version.manifest.digest


def test_relogging_identical_content_creates_no_version_but_applies_aliases(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"w.bin": b"weights"})
    again = log_files(registry, str(tmp_path), project, "m", {"w.bin": b"weights"}, aliases=["best"])
    assert not again.created
    assert again.version.version == 1
    assert set(again.version.aliases) == {"best", "latest"}
    assert [v.version for v in registry.get_artifact(project, "m").versions] == [1]


def test_identical_content_to_an_older_version_is_a_new_version(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"w.bin": b"A"})
    log_files(registry, str(tmp_path), project, "m", {"w.bin": b"B"})
    third = log_files(registry, str(tmp_path), project, "m", {"w.bin": b"A"})
    assert third.created and third.version.version == 3


def test_custom_aliases_move_to_the_version_logged_with_them(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"f": b"1"}, aliases=["best", "prod"])
    log_files(registry, str(tmp_path), project, "m", {"f": b"2"}, aliases=["best"])
    aliases = registry.get_artifact(project, "m").aliases
    assert aliases == {"best": 2, "prod": 1, "latest": 2}
    assert registry.resolve(project, "m", "prod").version == 1


def test_version_spelled_alias_only_for_that_very_version(registry, project, tmp_path):
    ok = log_files(registry, str(tmp_path), project, "m", {"f": b"1"}, aliases=["v1"])
    assert ok.version.version == 1 and "v1" not in ok.version.aliases
    with pytest.raises(AliasError, match="v5"):
        log_files(registry, str(tmp_path), project, "m", {"f": b"2"}, aliases=["v5"])
    assert [v.version for v in registry.get_artifact(project, "m").versions] == [1], (
        "a failed log skips no number"
    )
    assert log_files(registry, str(tmp_path), project, "m", {"f": b"3"}).version.version == 2


def test_set_and_delete_alias(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"f": b"1"})
    log_files(registry, str(tmp_path), project, "m", {"f": b"2"})
    registry.set_alias(project, "m", "stable", 1)
    assert registry.resolve(project, "m", "stable").version == 1
    registry.delete_alias(project, "m", "stable")
    with pytest.raises(VersionNotFoundError):
        registry.resolve(project, "m", "stable")
    with pytest.raises(AliasError):
        registry.set_alias(project, "m", "latest", 1)
    with pytest.raises(AliasError):
        registry.set_alias(project, "m", "v2", 1)
    with pytest.raises(VersionNotFoundError):
        registry.set_alias(project, "m", "x", 9)


def test_type_is_fixed_per_name(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "mnist", {"f": b"1"}, type="dataset")
    with pytest.raises(ArtifactTypeMismatchError, match="dataset") as info:
        log_files(registry, str(tmp_path), project, "mnist", {"f": b"2"}, type="model")
    assert isinstance(info.value, ValueError)
    assert [v.version for v in registry.get_artifact(project, "mnist").versions] == [1]


def test_missing_things_raise_not_found_naming_what_exists(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "mnist", {"f": b"1"}, aliases=["best"])
    log_files(registry, str(tmp_path), project, "mnist", {"f": b"2"})
    with pytest.raises(VersionNotFoundError) as info:
        registry.resolve(project, "mnist", "v7")
    message = str(info.value)
    assert "mnist:v7" in message and project in message and "v1" in message and "best" in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(VersionNotFoundError, match="vX"):
        registry.resolve(project, "mnist", "vX")
    with pytest.raises(ArtifactNotFoundError, match="mnist"):
        registry.resolve(project, "nope")
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        registry.resolve(project + "-missing", "mnist")
    with pytest.raises(ProjectNotFoundError):
        registry.list_artifacts(project + "-missing")


def test_drafts_are_invisible_until_finalized(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"f": b"1"})
    local = write_files(str(tmp_path / "d"), {"f": b"draft content"})
    draft = registry.create_draft(DraftSpec(project, "m", "dataset", manifest_for(local)))
    for target in draft.missing:
        registry.upload_blob(draft, target, local["f"])
    assert registry.resolve(project, "m").version == 1
    assert [v.version for v in registry.get_artifact(project, "m").versions] == [1]
    fresh = registry.create_draft(DraftSpec(project, "brand-new", "dataset", manifest_for(local)))
    assert "brand-new" not in [a.name for a in registry.list_artifacts(project)]
    with pytest.raises(ArtifactNotFoundError):
        registry.resolve(project, "brand-new")
    registry.abort_draft(fresh.id)
    with pytest.raises(DraftNotFoundError):
        registry.finalize_draft(fresh.id)
    assert registry.finalize_draft(draft.id).version.version == 2


def test_finalize_refuses_a_draft_whose_blobs_are_missing(registry, project, tmp_path):
    local = write_files(str(tmp_path / "d"), {"a": b"aaa", "b": b"bbb"})
    draft = registry.create_draft(DraftSpec(project, "m", "dataset", manifest_for(local)))
    assert len(draft.missing) == 2
    registry.upload_blob(
        draft,
        draft.missing[0],
        local["a"]
        if draft.missing[0].size and draft.missing[0].sha256 == hashlib.sha256(b"aaa").hexdigest()
        else local["b"],
    )
    with pytest.raises(IncompleteDraftError) as info:
        registry.finalize_draft(draft.id)
    assert len(info.value.missing) == 1
    with pytest.raises(ArtifactNotFoundError):
        registry.resolve(project, "m")


def test_stored_blobs_are_not_requested_again(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "m", {"a": b"shared", "b": b"only-in-v1"})
    local = write_files(str(tmp_path / "d2"), {"a": b"shared", "c": b"new"})
    draft = registry.create_draft(DraftSpec(project, "m", "dataset", manifest_for(local)))
    assert [t.sha256 for t in draft.missing] == [hashlib.sha256(b"new").hexdigest()]


def test_empty_artifacts_are_refused(registry, project):
    with pytest.raises(EmptyArtifactError, match="no files"):
        registry.create_draft(DraftSpec(project, "empty", "dataset", Manifest({})))


def test_invalid_names_are_refused(registry, project):
    manifest = Manifest({})
    for bad in ("a/b", "..", "x" * 200):
        with pytest.raises(InvalidNameError):
            registry.create_draft(DraftSpec(project, bad, "dataset", manifest))
    with pytest.raises(InvalidNameError):
        registry.create_draft(DraftSpec("bad/project", "ok", "dataset", manifest))


def test_upload_of_changed_file_is_refused(registry, project, tmp_path):
    local = write_files(str(tmp_path / "d"), {"a": b"original"})
    draft = registry.create_draft(DraftSpec(project, "m", "dataset", manifest_for(local)))
    with open(local["a"], "wb") as f:
        f.write(b"changed!")
    from wanllmdb.errors import ChecksumError

    with pytest.raises(ChecksumError):
        registry.upload_blob(draft, draft.missing[0], local["a"])
    with pytest.raises(IncompleteDraftError):
        registry.finalize_draft(draft.id)


def test_blob_bytes_whole_and_ranged(registry, project, tmp_path):
    data = bytes(range(256)) * 100
    result = log_files(registry, str(tmp_path), project, "m", {"f.bin": data})
    sha = result.version.manifest.get("f.bin").sha256
    out = io.BytesIO()
    registry.fetch_blob(sha, len(data), out)
    assert out.getvalue() == data
    assert read_range(registry, sha, 1000, 500) == data[1000:1500]
    assert read_range(registry, sha, len(data) - 10, 10) == data[-10:]
    streamed = io.BytesIO()
    assert registry.fetch_range_into(sha, 1000, 500, streamed) == 500
    assert streamed.getvalue() == data[1000:1500]
    past_end = io.BytesIO()
    assert registry.fetch_range_into(sha, len(data) - 10, 100, past_end) == 10
    assert past_end.getvalue() == data[-10:]


def test_listings(registry, project, tmp_path):
    log_files(registry, str(tmp_path), project, "b-art", {"f": b"1"}, type="model")
    log_files(registry, str(tmp_path), project, "a-art", {"f": b"1"})
    log_files(registry, str(tmp_path), project, "a-art", {"f": b"2"})
    assert project in registry.list_projects()
    summaries = registry.list_artifacts(project)
    assert [(s.name, s.type, s.latest_version, s.version_count) for s in summaries] == [
        ("a-art", "dataset", 2, 2),
        ("b-art", "model", 1, 1),
    ]


def test_runs_and_lineage(registry, project, tmp_path):
    registry.create_run(RunSpec(project, "run1abcd", "producer", {"lr": 0.1}, ("t1",), "notes", "g", "train"))
    registry.create_run(RunSpec(project, "run2abcd", "consumer"))
    log_files(registry, str(tmp_path), project, "m", {"f": b"1"}, run_id="run1abcd")
    registry.record_use("run2abcd", project, "m", 1)
    registry.record_use("run2abcd", project, "m", 1)
    assert registry.logged_by(project, "m", 1).name == "producer"
    assert [r.id for r in registry.used_by(project, "m", 1)] == ["run2abcd"]
    registry.update_run(
        "run1abcd", summary={"loss": 0.5}, history=[{"loss": 1.0}, {"loss": 0.5}], state="finished"
    )
    run = registry.get_run("run1abcd")
    assert run.config == {"lr": 0.1} and run.summary == {"loss": 0.5} and run.state == "finished"
    assert run.tags == ("t1",) and run.job_type == "train"
    assert registry.run_history("run1abcd") == [{"loss": 1.0}, {"loss": 0.5}]
    with pytest.raises(NotFoundError):
        registry.get_run("nope0000")
