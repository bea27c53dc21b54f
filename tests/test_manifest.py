"""Unit tests: names, refs, manifest entries, manifest JSON/digest, streaming digests."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc

import pytest
from blake3 import blake3

from wanllmdb.errors import ConfigError, InvalidManifestError, InvalidNameError, InvalidPathError, InvalidRefError
from wanllmdb.iobuf import MAX_BUFFER
from wanllmdb.manifest import (
    Manifest,
    ManifestEntry,
    hash_bytes,
    hash_file,
    parse_ref,
    validate_alias,
    validate_artifact_name,
    validate_path,
)
from wanllmdb.manifest.entry import CANONICAL_PREFIX

MD5 = "0" * 32
SHA = "a" * 64


@pytest.mark.parametrize("name", ["mnist", "a", "x" * 128, "my.data_set-2", "A.B"])
def test_valid_artifact_names_pass(name):
    assert validate_artifact_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "a/b", "a b", "a:b", ".", "..", "naïve", "a\x00b", 3])
def test_invalid_artifact_names_are_refused_with_the_rule(name):
    with pytest.raises(InvalidNameError) as info:
        validate_artifact_name(name)
    assert isinstance(info.value, ValueError)
    assert "artifact name" in str(info.value)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "images/x.png", "dir with space/f", "ü/é.txt", "x" * 255])
def test_valid_paths_pass(path):
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "relative"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "NUL"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
    ],
)
def test_invalid_paths_are_refused_naming_the_rule(path, reason):
    with pytest.raises(InvalidPathError, match=reason):
        validate_path(path)


def test_aliases_share_the_name_alphabet_and_refuse_v0():
    assert validate_alias("best") == "best"
    assert validate_alias("v3") == "v3"
    with pytest.raises(InvalidNameError):
        validate_alias("has space")
    with pytest.raises(InvalidRefError):
        validate_alias("v0")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("mnist", (None, "mnist", "latest")),
        ("mnist:v1", (None, "mnist", "v1")),
        ("mnist:latest", (None, "mnist", "latest")),
        ("vision/mnist:best", ("vision", "mnist", "best")),
        ("entity/vision/mnist:v12", ("vision", "mnist", "v12")),
        ("mnist:vX", (None, "mnist", "vX")),
    ],
)
def test_parse_ref_forms(ref, expected):
    parsed = parse_ref(ref)
    assert (parsed.project, parsed.name, parsed.selector) == expected


@pytest.mark.parametrize(
    "ref", ["", "mnist:", "a:b:c", "a/b/c/d", "mnist:v0", "mnist:v01", "bad name", "p/../x"]
)
def test_parse_ref_refuses_malformed_refs(ref):
    with pytest.raises(InvalidRefError):
        parse_ref(ref)


def test_parse_ref_keywords_fill_a_missing_selector_and_conflicts_are_refused():
    assert parse_ref("mnist", version=3).selector == "v3"
    assert parse_ref("mnist", version="v3").selector == "v3"
    assert parse_ref("mnist", alias="best").selector == "best"
    with pytest.raises(InvalidRefError):
        parse_ref("mnist:v1", alias="best")


def _entry(path: str, sha: str = SHA, size: int = 3) -> ManifestEntry:
    return ManifestEntry(path, size, MD5, sha)


def test_entry_is_frozen_and_validated():
    entry = _entry("a.txt")
    with pytest.raises(AttributeError):
        entry.size = 4  # type: ignore[misc]
    with pytest.raises(InvalidManifestError, match="sha256"):
        ManifestEntry("a", 1, MD5, "xyz")
    with pytest.raises(InvalidManifestError, match="size"):
        ManifestEntry("a", -1, MD5, SHA)
    with pytest.raises(InvalidManifestError, match=r"\.\."):
        ManifestEntry("../a", 1, MD5, SHA)
    with pytest.raises(InvalidManifestError, match="chunk digests"):
        ManifestEntry("a", 20, MD5, SHA, chunk_size=8, chunks=(SHA,))


def test_chunk_digests_are_sha256_or_blake3_one_algorithm_per_file():
    b3 = "blake3:" + SHA
    old = ManifestEntry("old.bin", 20, MD5, SHA, chunk_size=8, chunks=(SHA, SHA, SHA))  # before BLAKE3
    new = ManifestEntry("new.bin", 20, MD5, SHA, chunk_size=8, chunks=(b3, b3, b3))
    manifest = Manifest.from_json(Manifest.from_entries([old, new]).to_json())
    assert manifest.get("old.bin").chunks == (SHA,) * 3 and manifest.get("new.bin").chunks == (b3,) * 3
    assert json.loads(manifest.to_json())["entries"][0]["chunks"] == [b3] * 3  # the algorithm travels in the digest
    with pytest.raises(InvalidManifestError, match="mix algorithms"):
        ManifestEntry("a", 20, MD5, SHA, chunk_size=8, chunks=(SHA, b3, SHA))
    for bad in ("md5:" + SHA, "BLAKE3:" + SHA, "blake3:" + SHA[:-1], "blake3:" + SHA + "0", "sha256:" + SHA):
        with pytest.raises(InvalidManifestError, match="chunk digests must be"):
            ManifestEntry("a", 20, MD5, SHA, chunk_size=8, chunks=(bad, bad, bad))
    # The content digest ignores how chunks are checked: the same bytes are the same version.
    assert Manifest.from_entries([old]).digest == Manifest.from_entries([new.with_path("old.bin")]).digest


def test_an_unknown_chunk_hash_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("WANLLMDB_CHUNK_HASH", "crc32")
    with pytest.raises(ConfigError, match="WANLLMDB_CHUNK_HASH"):
        hash_bytes(b"x" * 10, chunk_size=4)


def test_manifest_json_round_trip_is_stable_and_sorted():
    big = ManifestEntry("z/big.bin", 20, MD5, SHA, chunk_size=8, chunks=(SHA, SHA, SHA), ref="file:///x")
    manifest = Manifest.from_entries([big, _entry("b.txt"), _entry("a.txt")])
    assert [e.path for e in manifest] == ["a.txt", "b.txt", "z/big.bin"]
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.to_json() == manifest.to_json()
    assert again.get("z/big.bin").chunks == (SHA, SHA, SHA)
    assert again.get("z/big.bin").ref == "file:///x"


@pytest.mark.parametrize("batch", [1, 2, 3, 1024])
@pytest.mark.parametrize("count", [0, 1, 5])
def test_manifest_json_in_pieces_is_the_canonical_text(batch, count):
    """A writer of a million entries encodes a batch at a time (no dict per entry held): the pieces join into
    exactly the canonical text, whatever the batch, for any kind of entry (chunked, reference, non-ASCII)."""
    kinds = [
        ManifestEntry("z/big.bin", 20, MD5, SHA, chunk_size=8, chunks=(SHA, SHA, SHA)),
        ManifestEntry("ref/é.txt", 3, MD5, SHA, ref="https://example.org/é", etag='"abc"'),
        _entry("a.txt"),
        _entry("d/ü.txt", sha="b" * 64),
        _entry("d/e.txt", sha="c" * 64),
    ]
    manifest = Manifest.from_entries(kinds[:count])
    whole = json.dumps(manifest.to_dict(), separators=(",", ":"), ensure_ascii=False)
    assert "".join(manifest.json_pieces(batch)) == whole == manifest.to_json()
    assert whole.startswith(CANONICAL_PREFIX) and Manifest.from_json(whole) == manifest


def test_manifest_digest_depends_only_on_content():
    one = Manifest.from_entries([_entry("a.txt"), _entry("b.txt", sha="b" * 64)])
    two = Manifest.from_entries([_entry("b.txt", sha="b" * 64), _entry("a.txt")])
    assert one.digest == two.digest
    changed = Manifest.from_entries([_entry("a.txt"), _entry("b.txt", sha="c" * 64)])
    renamed = Manifest.from_entries([_entry("a2.txt"), _entry("b.txt", sha="b" * 64)])
    assert len({one.digest, changed.digest, renamed.digest}) == 3


def test_manifest_refuses_duplicates_and_file_directory_clashes():
    with pytest.raises(InvalidManifestError, match="duplicate"):
        Manifest.from_entries([_entry("a"), _entry("a")])
    with pytest.raises(InvalidManifestError, match="is a file and also a directory"):
        Manifest.from_entries([_entry("a"), _entry("a/b/c")])


def test_manifest_from_json_refuses_garbage_with_a_clear_error():
    with pytest.raises(InvalidManifestError, match="JSON"):
        Manifest.from_json("{nope")
    with pytest.raises(InvalidManifestError, match="entries"):
        Manifest.from_json('{"format": 1}')
    with pytest.raises(InvalidManifestError, match="lacks 'sha256'"):
        Manifest.from_json(json.dumps({"entries": [{"path": "a", "size": 1, "md5": MD5}]}))


@pytest.mark.parametrize("algorithm", [None, "blake3", "sha256"])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
def test_hash_file_matches_hashlib_and_chunks_at_boundaries(tmp_path, monkeypatch, size, algorithm):
    if algorithm is None:  # the default: BLAKE3
        monkeypatch.delenv("WANLLMDB_CHUNK_HASH", raising=False)
    else:
        monkeypatch.setenv("WANLLMDB_CHUNK_HASH", algorithm)
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest = hash_file(path, chunk_size=4096)
    assert digest.size == size
    assert digest.md5 == hashlib.md5(data).hexdigest()
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    if size > 4096:
        if algorithm == "sha256":
            expected = [hashlib.sha256(data[i : i + 4096]).hexdigest() for i in range(0, size, 4096)]
        else:
            expected = ["blake3:" + blake3(data[i : i + 4096]).hexdigest() for i in range(0, size, 4096)]
        assert list(digest.chunks) == expected and digest.chunk_size == 4096
    else:
        assert digest.chunks == () and digest.chunk_size == 0
    assert hash_bytes(data, chunk_size=4096) == digest


def test_hash_file_memory_does_not_grow_with_file_size(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    hash_file(path, chunk_size=1 << 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # two read buffers in turn, whatever the file's length (64 MiB here)
    assert peak < 2 * MAX_BUFFER + (1 << 20), f"peak {peak} bytes for a 64 MiB file"


@pytest.mark.parametrize("piece", [1, 1000, 4096, 5000, 3 * 4096])
def test_digester_gives_the_same_digest_whatever_the_piece_sizes(piece):
    from wanllmdb.manifest.digest import Digester

    data = os.urandom(3 * 4096 + 123)
    digester = Digester(chunk_size=4096)
    for i in range(0, len(data), piece):
        digester.update(data[i : i + piece])
    assert digester.result() == hash_bytes(data, chunk_size=4096)
