"""The W&B-shaped SDK end to end: runs, artifacts, use, download, verify, Api — over both registries."""

from __future__ import annotations

import os

import pytest

import wanllmdb
import wanllmdb as wandb
from wanllmdb.errors import (
    ArtifactFinalizedError,
    ArtifactTypeMismatchError,
    ChecksumError,
    EmptyArtifactError,
    FileNotInArtifactError,
    InvalidNameError,
    InvalidPathError,
    InvalidRefError,
    LocalFileNotFoundError,
    VersionNotFoundError,
    WanllmdbError,
)


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_text("x,y\n1,2\n3,4\n")
    (root / "test.csv").write_text("x,y\n5,6\n")
    for i in range(3):
        (root / "images" / f"{i}.png").write_bytes(os.urandom(1000 + i))
    return root


def _log_dataset(project, files, aliases=None, name="ds"):
    with wandb.init(project=project) as run:
        art = wandb.Artifact(name, type="dataset", description="d", metadata={"rows": 2})
        art.add_file(str(files / "train.csv"))
        art.add_file(str(files / "test.csv"))
        art.add_dir(str(files / "images"), name="images")
        run.log_artifact(art, aliases=aliases)
    return art


def test_log_use_download_verify(backend, project, files, tmp_path):
    art = _log_dataset(project, files, aliases=["best"])
    assert art.version == "v1" and set(art.aliases) == {"best", "latest"}
    assert art.file_count == 5 and art.size == sum(f.size for f in art.files())
    assert art.metadata == {"rows": 2} and art.description == "d"

    with wandb.init(project=project) as run:
        used = run.use_artifact("ds:latest")
        root = used.download(str(tmp_path / "out"))
        assert (
            open(os.path.join(root, "images", "1.png"), "rb").read()
            == (files / "images" / "1.png").read_bytes()
        )
        assert open(used.get_path("train.csv")).read() == "x,y\n1,2\n3,4\n"
        assert used.verify(root) is True
        assert used.digest == art.digest
        by_path = {f.path: f for f in used.files()}
        assert by_path["train.csv"].sha256 == art.get_entry("train.csv").sha256
    assert used.logged_by().id != run.id
    assert [r.id for r in used.used_by()] == [run.id]


def test_default_download_root_is_artifacts_name_version(backend, project, files):
    _log_dataset(project, files)
    with wandb.init(project=project) as run:
        root = run.use_artifact("ds").download()
    assert root == os.path.abspath(os.path.join("artifacts", "ds:v1"))
    assert os.path.exists(os.path.join(root, "train.csv"))


def test_refs_forms_and_keywords(backend, project, files):
    _log_dataset(project, files, aliases=["best"])
    (files / "train.csv").write_text("changed\n")
    _log_dataset(project, files)
    with wandb.init(project=project) as run:
        assert run.use_artifact("ds").version == "v2"
        assert run.use_artifact("ds:v1").version == "v1"
        assert run.use_artifact("ds:best").version == "v1"
        assert run.use_artifact(f"{project}/ds:latest").version == "v2"
        assert run.use_artifact("ds", version="v1").version == "v1"
        assert run.use_artifact("ds", alias="best").version == "v1"
        with pytest.raises(VersionNotFoundError, match="v1..v2|v1, v2"):
            run.use_artifact("ds:v9")
        with pytest.raises(VersionNotFoundError, match="best"):
            run.use_artifact("ds:vX")
        with pytest.raises(InvalidRefError):
            run.use_artifact("ds:v0")
        with pytest.raises(ArtifactTypeMismatchError):
            run.use_artifact("ds", type="model")
        with pytest.raises(LookupError):
            run.use_artifact("missing")


def test_relog_identical_returns_existing_version_with_new_alias(backend, project, files):
    first = _log_dataset(project, files)
    again = _log_dataset(project, files, aliases=["prod"])
    assert again.version == first.version == "v1"
    assert "prod" in again.aliases
    assert [a.version for a in wandb.Api().artifact_versions(project, "ds")] == ["v1"]


def test_bad_input_to_add_file_and_add_dir(files, tmp_path):
    art = wandb.Artifact("x", type="dataset")
    with pytest.raises(LocalFileNotFoundError, match="does not exist"):
        art.add_file(str(tmp_path / "nope.txt"))
    with pytest.raises(InvalidPathError, match="add_dir"):
        art.add_file(str(files / "images"))
    with pytest.raises(InvalidPathError, match="add_file"):
        art.add_dir(str(files / "train.csv"))
    with pytest.raises(LocalFileNotFoundError):
        art.add_dir(str(tmp_path / "nodir"))
    for bad in ("../escape.csv", "/abs.csv", "a\x00b", "a//b"):
        with pytest.raises(InvalidPathError):
            art.add_file(str(files / "train.csv"), name=bad)
    with pytest.raises(InvalidNameError):
        wandb.Artifact("bad/name", type="dataset")
    with pytest.raises(InvalidNameError):
        wandb.Artifact("ok", type="")
    assert art.file_count == 0


def test_same_path_with_other_content_needs_overwrite(files):
    art = wandb.Artifact("x", type="dataset")
    art.add_file(str(files / "train.csv"), name="data.csv")
    with pytest.raises(ValueError, match="overwrite"):
        art.add_file(str(files / "test.csv"), name="data.csv")
    art.add_file(str(files / "test.csv"), name="data.csv", overwrite=True)
    assert art.get_entry("data.csv").size == len("x,y\n5,6\n")
    with pytest.raises(ValueError, match="file and also a directory"):
        art.add_file(str(files / "test.csv"), name="data.csv/inner")


def test_empty_artifact_is_refused_and_creates_nothing(backend, project):
    with wandb.init(project=project) as run:
        with pytest.raises(EmptyArtifactError, match="no files"):
            run.log_artifact(wandb.Artifact("empty", type="dataset"))
    with pytest.raises(LookupError):
        wandb.Api().artifact(f"{project}/empty")


def test_type_mismatch_is_refused(backend, project, files):
    _log_dataset(project, files)
    with wandb.init(project=project) as run:
        model = wandb.Artifact("ds", type="model")
        model.add_file(str(files / "train.csv"))
        with pytest.raises(ArtifactTypeMismatchError, match="dataset"):
            run.log_artifact(model)


def test_new_file_and_logged_artifacts_are_immutable(backend, project):
    with wandb.init(project=project) as run:
        art = wandb.Artifact("gen", type="model")
        with art.new_file("config/params.json") as f:
            f.write('{"a": 1}')
        run.log_artifact(art)
        assert art.version == "v1"
        with pytest.raises(ArtifactFinalizedError):
            art.add_file(__file__)
        with pytest.raises(ArtifactFinalizedError):
            with art.new_file("more.txt") as f:
                f.write("x")
    used = wandb.Api().artifact(f"{project}/gen:v1")
    assert open(used.get_path("config/params.json")).read() == '{"a": 1}'
    with pytest.raises(FileNotInArtifactError, match="params.json"):
        used.get_path("params.json")


def test_verify_names_a_tampered_file_and_drops_the_damaged_cache_blob(
    backend, project, files, tmp_path, caplog
):
    _log_dataset(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    root = art.download(str(tmp_path / "out"))
    target = os.path.join(root, "train.csv")
    os.chmod(target, 0o644)
    with open(target, "r+") as f:  # in place, through the hard link into the cache
        f.write("TAMPERED")
    with caplog.at_level("WARNING"), pytest.raises(ChecksumError, match="train.csv") as info:
        art.verify(root)  # W&B's shape: a mismatch raises (a ValueError), naming the file
    assert isinstance(info.value, ValueError)
    assert "train.csv" in caplog.text
    os.remove(os.path.join(root, "test.csv"))
    with pytest.raises(ChecksumError, match="test.csv is missing"):
        art.verify(root)
    fresh = art.download(str(tmp_path / "again"))
    assert open(os.path.join(fresh, "train.csv")).read() == "x,y\n1,2\n3,4\n"
    assert art.verify(fresh) is True


def test_corrupted_blob_in_registry_raises_and_caches_nothing(backend, project, files, tmp_path, request):
    art = _log_dataset(project, files)
    sha = art.get_entry("train.csv").sha256
    if backend == "http":
        blob_root = str(request.getfixturevalue("live_server").root)
    else:
        blob_root = wanllmdb.sdk.client.get_client().settings.data_dir
    blob = os.path.join(blob_root, "blobs", sha[:2], sha)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"Z")
    try:
        used = wandb.Api().artifact(f"{project}/ds:v1")
        with pytest.raises(ChecksumError, match="train.csv"):
            used.download(str(tmp_path / "out"))
        cache = wanllmdb.sdk.client.get_client().cache
        assert not cache.contains(sha)
        assert not os.path.exists(os.path.join(str(tmp_path / "out"), "train.csv"))
    finally:
        with open(blob, "r+b") as f:
            f.write(b"x")


def test_fully_cached_download_reads_no_blob(backend, project, files, tmp_path, monkeypatch):
    _log_dataset(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    art.download(str(tmp_path / "first"))
    registry = wanllmdb.sdk.client.get_client().registry
    calls = []
    monkeypatch.setattr(registry, "fetch_blob", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(registry, "fetch_range_into", lambda *a, **k: calls.append(a))
    second = wandb.Api().artifact(f"{project}/ds:v1")
    root = second.download(str(tmp_path / "second"))
    assert calls == []
    assert second.verify(root)
    assert os.path.samefile(
        os.path.join(root, "train.csv"), os.path.join(str(tmp_path / "first"), "train.csv")
    )


def test_logging_does_not_copy_files_into_the_cache(backend, project, files):
    _log_dataset(project, files)
    cache = wanllmdb.sdk.client.get_client().cache
    assert cache.entries() == []


def test_run_config_log_summary_and_module_level_state(backend, project):
    assert wandb.run is None
    with pytest.raises(WanllmdbError, match="init"):
        wandb.log({"x": 1})
    run = wandb.init(
        project=project,
        name="trainer",
        config={"lr": 0.01},
        tags=["a"],
        notes="n",
        group="g",
        job_type="train",
        reinit=True,
        mode="online",
        entity="ignored",
    )
    assert wandb.run is run and wandb.config is run.config and wandb.summary is run.summary
    wandb.config.update({"epochs": 3})
    wandb.config.batch = 32
    for step in range(3):
        wandb.log({"loss": 1.0 / (step + 1)})
    run.summary["best"] = 0.33
    wandb.finish()
    assert wandb.run is None
    info = wandb.Api().run(run.id)
    assert info.config == {"lr": 0.01, "epochs": 3, "batch": 32}
    assert info.summary["loss"] == pytest.approx(1 / 3) and info.summary["best"] == 0.33
    assert info.state == "finished" and info.name == "trainer" and info.tags == ("a",)
    history = wandb.Api().run_history(run.id)
    assert [row["loss"] for row in history] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert [row["_step"] for row in history] == [0, 1, 2]


def test_init_finishes_the_previous_run_and_context_manager_marks_failures(backend, project):
    first = wandb.init(project=project)
    second = wandb.init(project=project)
    assert wandb.Api().run(first.id).state == "finished"
    assert wandb.init(project=project, reinit="return_previous") is second
    with pytest.raises(RuntimeError):
        with second:
            raise RuntimeError("boom")
    assert wandb.Api().run(second.id).state == "failed"


def test_disabled_mode_writes_nothing(project, files):
    run = wandb.init(project=project, mode="disabled")
    run.log({"x": 1})
    art = wandb.Artifact("ds", type="dataset")
    art.add_file(str(files / "train.csv"))
    assert run.log_artifact(art).is_draft()  # not logged: a draft has no version (asking for one raises)
    run.finish()
    assert project not in wandb.Api().projects()


def test_api_listing(backend, project, files):
    _log_dataset(project, files, name="a1")
    _log_dataset(project, files, name="a2")
    api = wandb.Api()
    assert project in api.projects()
    assert [a.name for a in api.artifacts(project)] == ["a1:v1", "a2:v1"]  # W&B's "name:version"
    assert [a.collection.name for a in api.artifacts(project)] == ["a1", "a2"]
    assert [a.version for a in api.artifacts("dataset", f"{project}/a1")] == ["v1"]
    assert api.artifact_exists(f"{project}/a1:v1") and not api.artifact_exists(f"{project}/a1:v2")
    with pytest.raises(InvalidRefError, match="project"):
        api.artifact("a1")
    assert wandb.Api(overrides={"project": project}).artifact("a1").version == "v1"


def test_log_artifact_from_a_path(backend, project, files):
    with wandb.init(project=project) as run:
        art = run.log_artifact(str(files / "images"), name="imgs", type="dataset")
    assert art.version == "v1" and sorted(f.path for f in art.files()) == ["0.png", "1.png", "2.png"]
