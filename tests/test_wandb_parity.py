"""W&B's artifact API, called the way W&B's documentation and training scripts call it (issue 12), on the
embedded registry and over a real server."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os

import pytest

import wanllmdb as wandb
from wanllmdb.errors import AliasProtectedError, ArtifactNotLoggedError, ChecksumError, CommError


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_text("x,y\n1,2\n")
    (root / "images" / "a.png").write_bytes(b"png-a")
    (root / "images" / "b.png").write_bytes(b"png-b")
    return root


def _log(project, files, name="ds", aliases=None, tags=None):
    with wandb.init(project=project) as run:
        art = wandb.Artifact(name, type="dataset", description="first", metadata={"rows": 1})
        art.add_file(str(files / "train.csv"))
        art.add_dir(str(files / "images"), name="images")
        run.log_artifact(art, aliases=aliases, tags=tags)
    return art


def test_verify_raises_naming_the_changed_file_and_returns_true_when_intact(backend, project, files, tmp_path):
    _log(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    root = art.download(str(tmp_path / "out"))
    assert art.verify(root) is True
    os.remove(os.path.join(root, "images", "a.png"))
    with pytest.raises(ValueError, match="images/a.png") as info:
        art.verify(root)
    assert isinstance(info.value, ChecksumError)


def test_download_with_a_path_prefix_downloads_only_that_part(backend, project, files, tmp_path):
    _log(project, files)
    art = wandb.Api().artifact(f"{project}/ds:latest")
    root = art.download(str(tmp_path / "part"), path_prefix="images/")
    found = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert found == ["images/a.png", "images/b.png"]


def test_promotion_flow_aliases_description_metadata_and_tags_are_saved(backend, project, files):
    _log(project, files, tags=["raw"])
    art = wandb.Api().artifact(f"{project}/ds:v1")
    assert art.tags == ["raw"]
    art.aliases.append("production")
    art.description = "evaluated"
    art.metadata["accuracy"] = 0.97
    art.tags.append("validated")
    art.save()
    again = wandb.Api().artifact(f"{project}/ds:production")
    assert again.version == "v1" and "production" in again.aliases and "latest" in again.aliases
    assert again.description == "evaluated" and again.metadata == {"rows": 1, "accuracy": 0.97}
    assert sorted(again.tags) == ["raw", "validated"]
    again.aliases.remove("production")
    again.save()
    assert "production" not in wandb.Api().artifact(f"{project}/ds:v1").aliases
    assert sorted(f.path for f in again.files()) == ["images/a.png", "images/b.png", "train.csv"]  # contents fixed


def test_tags_given_to_log_artifact_and_module_level_log_artifact(backend, project, files):
    with wandb.init(project=project):
        art = wandb.Artifact("tagged", type="dataset")
        art.add_file(str(files / "train.csv"))
        wandb.log_artifact(art, tags=["one", "two"])
    assert sorted(wandb.Api().artifact(f"{project}/tagged:v1").tags) == ["one", "two"]


def test_names_versions_and_times_have_wandb_shapes(backend, project, files):
    draft = wandb.Artifact("ds", type="dataset")
    assert draft.name == "ds" and draft.is_draft()
    with pytest.raises(ArtifactNotLoggedError, match="not logged yet"):
        _ = draft.version
    logged = _log(project, files, aliases=["best"])
    assert logged.name == "ds" and logged.version == "v1" and not logged.is_draft()
    fetched = wandb.Api().artifact(f"{project}/ds:v1")
    name, version = fetched.name.split(":")
    assert (name, version) == ("ds", "v1")
    assert wandb.Api().artifact(f"{project}/ds:best").name == "ds:best"
    assert fetched.collection.name == "ds" and fetched.source_name == "ds:v1"
    created = datetime.datetime.fromisoformat(fetched.created_at)
    assert created.tzinfo is not None and abs(created.timestamp() - datetime.datetime.now().timestamp()) < 600
    datetime.datetime.fromisoformat(fetched.updated_at)
    assert fetched.id and fetched.id == wandb.Api().artifact(f"{project}/ds:best").id


def test_files_and_manifest_entries_have_wandb_shapes(backend, project, files, tmp_path):
    _log(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    data = (files / "train.csv").read_bytes()
    b64_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert art.manifest.entries["train.csv"].digest == b64_md5
    assert art.get_entry("train.csv").digest == b64_md5
    assert art.get_entry("train.csv").sha256 == hashlib.sha256(data).hexdigest()
    item = {f.name: f for f in art.files()}["train.csv"]
    path = item.download(root=str(tmp_path / "one"))
    assert open(path, "rb").read() == data
    with open(path, "w") as f:
        f.write("changed")
    with pytest.raises(ValueError, match="replace=True"):
        item.download(root=str(tmp_path / "one"))
    assert item.download(root=str(tmp_path / "one"), exist_ok=True) == path
    item.download(root=str(tmp_path / "one"), replace=True)
    assert open(path, "rb").read() == data


def test_api_takes_wandb_argument_order_and_the_old_one(backend, project, files):
    _log(project, files)
    api = wandb.Api()
    assert [a.version for a in api.artifact_versions("dataset", f"{project}/ds")] == ["v1"]
    assert [a.version for a in api.artifacts("dataset", f"{project}/ds")] == ["v1"]
    assert [a.version for a in api.artifact_versions(project, "ds")] == ["v1"]  # older (project, name)
    assert [a.version for a in wandb.Api(overrides={"project": project}).artifact_versions("dataset", "ds")] == ["v1"]
    collection = api.artifact_collection("dataset", f"{project}/ds")
    assert collection.name == "ds" and collection.type == "dataset" and "latest" in collection.aliases
    assert [v.version for v in collection.versions()] == ["v1"]
    assert [c.name for c in api.artifact_type("dataset", project).collections()] == ["ds"]


def test_remove_of_a_directory_and_add_file_of_a_missing_path(files):
    art = wandb.Artifact("ds", type="dataset")
    art.add_dir(str(files))
    art.remove("images")
    assert [f.path for f in art.files()] == ["train.csv"]
    with pytest.raises(ValueError, match="does not exist"):
        art.add_file(str(files / "missing.csv"))


def test_a_missing_artifact_raises_comm_error(backend, project, files):
    _log(project, files)
    assert wandb.errors.CommError is CommError
    with pytest.raises(CommError):
        wandb.Api().artifact(f"{project}/nope:latest")
    with wandb.init(project=project) as run, pytest.raises(wandb.errors.CommError):
        run.use_artifact("nope:v3")


def test_checkout_file_new_draft_and_delete(backend, project, files, tmp_path):
    _log(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    root = tmp_path / "co"
    (root / "images").mkdir(parents=True)
    (root / "images" / "stale.png").write_bytes(b"old")
    art.checkout(str(root))
    assert not (root / "images" / "stale.png").exists() and (root / "train.csv").exists()
    with pytest.raises(ValueError, match="3 files"):
        art.file()
    draft = art.new_draft()
    assert draft.is_draft()
    draft.remove("images")
    with wandb.init(project=project) as run:
        run.log_artifact(draft, aliases=["small"])
    small = wandb.Api().artifact(f"{project}/ds:small")
    assert small.version == "v2" and open(small.file(str(tmp_path / "single")), "rb").read() == b"x,y\n1,2\n"
    with pytest.raises(AliasProtectedError):
        small.delete()
    small.delete(delete_aliases=True)
    with pytest.raises(CommError, match="deleted"):
        small.download(str(tmp_path / "gone"))
    assert wandb.Api().artifact(f"{project}/ds:latest").version == "v1"
    with pytest.raises(CommError):
        wandb.Api().artifact(f"{project}/ds:v2")


def test_links_log_model_use_model_and_run_lineage(backend, project, files):
    with wandb.init(project=project) as run:
        model = run.log_model(str(files / "train.csv"), name="clf", aliases=["candidate"])
        assert model.type == "model" and model.version == "v1"
        run.link_artifact(model, f"{project}/registry-clf", aliases=["production"])
        run_id = run.id
    linked = wandb.Api().artifact(f"{project}/registry-clf:production")
    assert linked.files()[0].path == "train.csv"
    with wandb.init(project=project) as run:
        path = run.use_model("clf:candidate")
        assert open(path, "rb").read() == (files / "train.csv").read_bytes()
        user_id = run.id
    logged = wandb.Api().run(f"{project}/{run_id}").logged_artifacts()
    assert [(a.collection.name, a.version) for a in logged] == [("clf", "v1")]
    used = wandb.Api().run(f"{project}/{user_id}").used_artifacts()
    assert [(a.collection.name, a.version) for a in used] == [("clf", "v1")]


def test_link_of_a_fetched_version_and_a_deleted_handle_downloads_nothing(backend, project, files, tmp_path):
    _log(project, files)
    art = wandb.Api().artifact(f"{project}/ds:v1")
    assert [f.name for f in art.files(names=["train.csv"])] == ["train.csv"]
    linked = art.link(f"{project}/datasets", aliases=["golden"])
    assert linked.name == "datasets:v1" and "golden" in linked.aliases
    assert wandb.Api().artifact(f"{project}/datasets:golden").get_entry("train.csv").sha256 == art.get_entry(
        "train.csv"
    ).sha256
    art.delete(delete_aliases=True)
    assert art.state == "DELETED"
    with pytest.raises(CommError, match="deleted"):
        art.download(str(tmp_path / "gone"))
    with pytest.raises(CommError, match="deleted"):
        art.get_path("train.csv")
    assert not (tmp_path / "gone").exists()


def test_api_lists_types_and_collections_of_a_project(backend, project, files):
    _log(project, files)
    with wandb.init(project=project) as run:
        run.log_model(str(files / "train.csv"), name="clf")
    api = wandb.Api()
    assert [t.name for t in api.artifact_types(project)] == ["dataset", "model"]
    assert [(c.name, c.type) for c in api.artifact_collections(project, "model")] == [("clf", "model")]
