"""A manifest cannot lie about the blobs the registry stores (issue 10, point 3): finalize holds every entry to
the stored blob's size and MD5, answers 4xx naming the entry, and creates nothing."""

from __future__ import annotations

import hashlib

import pytest
import requests

from tests.support.server import log_version, write_files
from wanllmdb.errors import InvalidManifestError, ManifestMismatchError
from wanllmdb.manifest import Manifest, ManifestEntry
from wanllmdb.registry import DraftSpec


def _stored_entry(registry, project, tmp_path):
    files = write_files(tmp_path / "src", 1, size=5000)
    result = log_version(registry, project, "honest", files)
    entry = next(iter(result.version.manifest))
    return entry


@pytest.mark.parametrize("lie", ["size", "md5"])
def test_finalize_refuses_an_entry_that_contradicts_its_stored_blob(registry, project, tmp_path, lie):
    entry = _stored_entry(registry, project, tmp_path)
    if lie == "size":
        claimed = ManifestEntry("data/liar.bin", entry.size + 1, entry.md5, entry.sha256)
    else:
        claimed = ManifestEntry("data/liar.bin", entry.size, hashlib.md5(b"other").hexdigest(), entry.sha256)
    manifest = Manifest.from_entries([claimed])
    draft = registry.create_draft(DraftSpec(project, "liar", "dataset", manifest))
    assert draft.missing == ()  # the blob is stored: nothing to upload, only the manifest lies
    with pytest.raises(ManifestMismatchError) as info:
        registry.finalize_draft(draft.id)
    assert "data/liar.bin" in str(info.value)
    assert ("bytes" if lie == "size" else "MD5") in str(info.value)
    assert isinstance(info.value, ValueError)
    assert [a.name for a in registry.list_artifacts(project)] == ["honest"]


def test_an_honest_entry_naming_a_stored_blob_still_finalizes(registry, project, tmp_path):
    entry = _stored_entry(registry, project, tmp_path)
    manifest = Manifest.from_entries([ManifestEntry("copy.bin", entry.size, entry.md5, entry.sha256)])
    draft = registry.create_draft(DraftSpec(project, "copy", "dataset", manifest))
    assert registry.finalize_draft(draft.id).version.version == 1


@pytest.mark.server
def test_the_server_computes_md5s_so_a_first_uploader_cannot_plant_a_false_one(make_server, project, tmp_path):
    """The uploader of a new blob states its MD5 in the manifest: the server checks it against the bytes."""
    server = make_server()
    registry = server.registry()
    try:
        data = b"bytes whose md5 is known" * 100
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        lie = ManifestEntry("f.bin", len(data), hashlib.md5(b"not these bytes").hexdigest(), sha)
        draft = registry.create_draft(DraftSpec(project, "planted", "dataset", Manifest.from_entries([lie])))
        for target in draft.missing:
            registry.upload_blob(draft, target, str(path))
        with pytest.raises(ManifestMismatchError, match="f.bin"):
            registry.finalize_draft(draft.id)
        honest = ManifestEntry("f.bin", len(data), hashlib.md5(data).hexdigest(), lie.sha256)
        again = registry.create_draft(DraftSpec(project, "planted", "dataset", Manifest.from_entries([honest])))
        assert again.missing == ()
        assert registry.finalize_draft(again.id).version.version == 1
    finally:
        registry.close()


@pytest.mark.server
@pytest.mark.parametrize("size", [2**63, -1, 2**64 + 5, "12", 1.5])
def test_absurd_sizes_are_a_400_naming_the_entry_never_a_500(make_server, project, size):
    server = make_server()
    entry = {"path": "huge.bin", "size": size, "md5": "0" * 32, "sha256": "c" * 64}
    body = {"project": project, "name": "n", "type": "t", "manifest": {"entries": [entry]}}
    answer = requests.post(server.url + "/api/v1/drafts", json=body, headers=server.headers)
    assert answer.status_code in (400, 422), answer.text
    assert "huge.bin" in answer.text or "size" in answer.text


def test_absurd_sizes_are_refused_by_the_manifest_itself():
    with pytest.raises(InvalidManifestError, match="huge.bin"):
        ManifestEntry("huge.bin", 2**63, "0" * 32, "c" * 64)
    half = 2**62
    entries = [ManifestEntry(f"part{i}.bin", half, "0" * 32, f"{i:064x}") for i in range(2)]
    with pytest.raises(InvalidManifestError):
        from wanllmdb.registry.local import LocalRegistry

        LocalRegistry("registry-root").create_draft(DraftSpec("p", "n", "t", Manifest.from_entries(entries)))
