"""The server passes a version's stored manifest text on without parsing it (``server/api_read.py``).

The claims attacked: every client reads the same manifest as before (plain, chunked, unicode and many-entry
versions, small and streamed answers), ``?urls=large`` still names exactly the chunked files, and a stored text
not in the form ``Manifest.to_json`` writes (another key order, whitespace) is parsed and answered right.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
import requests

from tests.support.server import log_version, manifest_of, write_files
from wanllmdb.manifest import Manifest
from wanllmdb.server import api_read

MiB = 1 << 20


@pytest.fixture
def http_registry(live_server):
    registry = live_server.registry()
    yield registry
    registry.close()


def _answer(live_server, project: str, name: str, query: str = "") -> requests.Response:
    url = f"{live_server.url}/api/v1/projects/{project}/artifacts/{name}/versions/v1{query}"
    answer = requests.get(url, headers=live_server.headers, timeout=60)
    assert answer.status_code == 200, answer.text[:500]
    return answer


def _stored_text(server, project: str, name: str) -> str:
    with sqlite3.connect(os.path.join(server.root, "registry.sqlite")) as conn:
        (text,) = conn.execute(
            "SELECT v.manifest FROM versions v JOIN artifacts a ON a.id = v.artifact_id "
            "JOIN projects p ON p.id = a.project_id WHERE p.name = ? AND a.name = ?",
            (project, name),
        ).fetchone()
    return text


def _files(tmp_path) -> dict[str, str]:
    files = write_files(tmp_path / "big", 2, size=3 * MiB + 5)  # chunked
    files.update(write_files(tmp_path / "small", 3, size=100, prefix="s"))
    for i, name in enumerate(["données/é.csv", "日本/ファイル.txt", "space name.bin"]):
        local = tmp_path / f"u{i}"
        local.write_bytes(os.urandom(50 + i))
        files[name] = str(local)
    return files


def test_a_spliced_answer_reads_as_the_manifest_that_was_logged(http_registry, live_server, project, tmp_path):
    files = _files(tmp_path)
    manifest, _ = manifest_of(files)
    log_version(http_registry, project, "mixed", files)
    assert _stored_text(live_server, project, "mixed").startswith(api_read._STORED_PREFIX)

    answer = _answer(live_server, project, "mixed")
    assert answer.json()["manifest"] == manifest.to_dict()
    assert Manifest.from_dict(answer.json()["manifest"]).digest == manifest.digest
    assert answer.json()["file_count"] == len(files) and answer.json()["version"] == 1

    asked = _answer(live_server, project, "mixed", "?urls=large").json()
    assert set(asked["blob_urls"]) == {e.sha256 for e in manifest if e.is_chunked}
    assert asked["manifest"] == manifest.to_dict()
    for item in asked["blob_urls"].values():  # the URLs work and serve the blob
        got = requests.get(item["url"], headers={"Range": "bytes=0-99"}, timeout=30)
        assert got.status_code == 206 and len(got.content) == 100
    # The SDK's reader gets the same manifest through its own parser.
    assert http_registry.resolve_for_reading(project, "mixed", "v1").manifest.digest == manifest.digest


def test_a_streamed_spliced_answer_is_whole_and_valid_json(http_registry, live_server, project, tmp_path):
    files = write_files(tmp_path / "src", api_read.STREAM_MANIFEST_MIN + 7, size=8)
    manifest, _ = manifest_of(files)
    log_version(http_registry, project, "many", files)
    answer = _answer(live_server, project, "many")
    assert answer.headers.get("transfer-encoding") == "chunked"
    data = json.loads(answer.content)
    assert data["manifest"] == manifest.to_dict()


def _server_with_a_version(make_server, project: str, tmp_path):
    """A server of its own (its stored texts get rewritten) holding ``project/older:v1``; its manifest and
    stored text, parsed."""
    server = make_server()
    registry = server.registry()
    try:
        files = _files(tmp_path)
        manifest, _ = manifest_of(files)
        log_version(registry, project, "older", files)
    finally:
        registry.close()
    return server, manifest, json.loads(_stored_text(server, project, "older"))


def test_a_stored_text_in_another_form_is_parsed_and_answered_right(make_server, project, tmp_path):
    server, manifest, data = _server_with_a_version(make_server, project, tmp_path)
    # Rewrite the stored text as an older writer might have: other key order, indentation, sorted keys.
    other = json.dumps({"entries": data["entries"], "format": data["format"]}, indent=1, sort_keys=True)
    assert not other.startswith(api_read._STORED_PREFIX)
    with sqlite3.connect(os.path.join(server.root, "registry.sqlite")) as conn:
        conn.execute("UPDATE versions SET manifest = ?", (other,))

    answer = _answer(server, project, "older", "?urls=large").json()
    assert answer["manifest"] == manifest.to_dict()
    assert set(answer["blob_urls"]) == {e.sha256 for e in manifest if e.is_chunked}


def test_chunked_entries_are_found_in_a_stored_text_without_parsing_it():
    from wanllmdb.manifest import ManifestEntry

    chunks = tuple("blake3:" + f"{i:064x}" for i in range(2))
    entries = [
        ManifestEntry("a.bin", 10, "0" * 32, "a" * 64),
        ManifestEntry("b.bin", 2 * MiB, "1" * 32, "b" * 64, MiB, chunks),
        ManifestEntry("c.bin", 2 * MiB, "2" * 32, "c" * 64, MiB, chunks),
        ManifestEntry("d.bin", 2 * MiB, "2" * 32, "c" * 64, MiB, chunks),  # the same blob twice: named once
        # A path that spells the key pattern is escaped in JSON, so it is not taken for a chunked entry.
        ManifestEntry('e","sha256":"' + "e" * 64 + '","chunk_size":1', 10, "3" * 32, "f" * 64),
    ]
    text = Manifest.from_entries(entries).to_json()
    assert api_read._chunked_in_text(text) == ["b" * 64, "c" * 64]


def _manifest_route(server, project: str, name: str, selector: str = "v1") -> requests.Response:
    url = f"{server.url}/api/v1/projects/{project}/artifacts/{name}/versions/{selector}/manifest"
    return requests.get(url, headers=server.headers, timeout=60)


def test_the_manifest_alone_is_the_canonical_text_and_streams_to_the_logged_entries(
    http_registry, live_server, project, tmp_path
):
    from wanllmdb.manifest.stream import iter_entries

    files = write_files(tmp_path / "src", api_read.STREAM_MANIFEST_MIN + 3, size=8)
    files.update(_files(tmp_path))
    manifest, _ = manifest_of(files)
    log_version(http_registry, project, "alone", files)
    answer = _manifest_route(live_server, project, "alone", "latest")
    assert answer.status_code == 200 and answer.headers["x-wanllmdb-version"] == "1"
    assert answer.headers.get("transfer-encoding") == "chunked"
    assert answer.text == manifest.to_json()
    with http_registry.open_manifest(project, "alone", "v1") as body:
        assert list(iter_entries(body)) == list(manifest)
    missing = _manifest_route(live_server, project, "alone", "v2")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found", missing.text
    bad = _manifest_route(live_server, project, "alone", "bad$alias")
    assert bad.status_code == 400 and "bad$alias" in bad.text


def test_the_manifest_alone_of_a_stored_text_in_another_form_is_canonical(make_server, project, tmp_path):
    server, manifest, data = _server_with_a_version(make_server, project, tmp_path)
    other = json.dumps({"entries": data["entries"][::-1], "format": 1}, indent=1, sort_keys=True)
    with sqlite3.connect(os.path.join(server.root, "registry.sqlite")) as conn:
        conn.execute("UPDATE versions SET manifest = ?", (other,))
    assert _manifest_route(server, project, "older").text == manifest.to_json()
