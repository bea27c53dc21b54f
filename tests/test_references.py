"""Reference artifacts (``add_reference``): recorded by URI and digest, fetched from the URI and checked.

``file://`` files and directories and ``http(s)://`` URLs served by a real ``http.server`` on 127.0.0.1 (with
ETags), over the embedded registry and a real ``wanllmdb server``; reads through ``download()``,
``get_path()`` and a real FUSE mount.
"""

from __future__ import annotations

import errno
import http.server
import os
import pathlib
import subprocess
import sys
import threading

import pytest

import wanllmdb as wandb
from wanllmdb.errors import (
    BlobNotFoundError,
    ChecksumError,
    InvalidInputError,
    ReferenceChangedError,
    ReferenceNotFoundError,
    UnsupportedReferenceError,
)
from wanllmdb.manifest import Manifest, ManifestEntry, hash_bytes
from wanllmdb.manifest.entry import unchecked_reference
from wanllmdb.sdk.client import get_client
from wanllmdb.settings import CHUNK_SIZE

from .support.mount import wait_until


class _ETagHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; every file carries an ETag made of its size and mtime."""

    def end_headers(self) -> None:
        path = self.translate_path(self.path)
        if os.path.isfile(path):
            st = os.stat(path)
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        super().end_headers()

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def web(tmp_path):
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving that folder."""
    root = tmp_path / "web"
    root.mkdir()

    def handler(*args, **kwargs):
        return _ETagHandler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _log(project: str, name: str, add) -> wandb.Artifact:
    with wandb.init(project=project) as run:
        art = wandb.Artifact(name, type="dataset")
        add(art)
        run.log_artifact(art)
    return art


def _use(project: str, name: str) -> wandb.Artifact:
    return wandb.Api().artifact(f"{project}/{name}:latest")


class _Discard:
    def write(self, data) -> int:
        return len(data)


def _cached(sha256: str) -> bool:
    return get_client().cache.lookup(sha256) is not None


# --- recording -------------------------------------------------------------------------------------------


def test_file_reference_is_recorded_by_digest_and_nothing_is_uploaded(backend, project, tmp_path):
    data = os.urandom(3000)
    src = tmp_path / "ext" / "weights.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    uri = src.as_uri()

    added = []
    _log(project, "refs", lambda art: added.extend(art.add_reference(uri)))

    assert [(f.path, f.ref, f.size, f.sha256) for f in added] == [("weights.bin", uri, 3000, hash_bytes(data).sha256)]
    with pytest.raises(BlobNotFoundError):  # the registry stores no blob for it
        get_client().registry.fetch_blob(hash_bytes(data).sha256, 3000, _Discard())
    used = _use(project, "refs")
    entry = used.manifest.get("weights.bin")
    assert entry.ref == uri and entry.size == 3000 and entry.md5 == hash_bytes(data).md5
    root = used.download(str(tmp_path / "out"))
    assert (pathlib.Path(root) / "weights.bin").read_bytes() == data
    assert used.verify(root)
    assert pathlib.Path(used.get_path("weights.bin")).read_bytes() == data


def test_directory_reference_expands_under_name_within_max_objects(backend, project, tmp_path):
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n", "sub/c d.txt": b"gamma\n"}
    for rel, content in files.items():
        (src / rel).write_bytes(content)

    art = wandb.Artifact("tree", type="dataset")
    with pytest.raises(InvalidInputError, match="more than 2 files"):
        art.add_reference(src.as_uri(), name="data", max_objects=2)
    assert art.file_count == 0

    added = []
    _log(project, "tree", lambda a: added.extend(a.add_reference(src.as_uri(), name="data", max_objects=3)))

    assert sorted(f.path for f in added) == ["data/a.txt", "data/sub/b.txt", "data/sub/c d.txt"]
    assert {f.path: f.ref for f in added}["data/sub/c d.txt"] == (src / "sub" / "c d.txt").as_uri()
    root = pathlib.Path(_use(project, "tree").download(str(tmp_path / "out")))
    assert {rel: (root / "data" / rel).read_bytes() for rel in files} == files


def test_http_reference_keeps_the_etag_and_downloads(backend, project, tmp_path, web):
    folder, base = web
    data = os.urandom(CHUNK_SIZE + 777)  # more than one chunk: chunk digests recorded too
    (folder / "model.bin").write_bytes(data)
    uri = f"{base}/model.bin"

    _log(project, "web", lambda art: art.add_reference(uri))

    used = _use(project, "web")
    entry = used.manifest.get("model.bin")
    st = os.stat(folder / "model.bin")
    assert entry.ref == uri and entry.etag == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    assert entry.sha256 == hash_bytes(data).sha256 and entry.chunks == hash_bytes(data).chunks
    assert pathlib.Path(used.get_path("model.bin")).read_bytes() == data


def test_bad_uris_are_refused_when_added(tmp_path):
    art = wandb.Artifact("bad", type="dataset")
    with pytest.raises(UnsupportedReferenceError, match=r"s3://.*object-store client"):
        art.add_reference("s3://bucket/key.bin")
    with pytest.raises(UnsupportedReferenceError, match="unsupported scheme 'ftp'"):
        art.add_reference("ftp://host/x")
    with pytest.raises(UnsupportedReferenceError, match="not a URI"):
        art.add_reference(str(tmp_path))
    with pytest.raises(InvalidInputError, match="names host 'elsewhere'"):
        art.add_reference("file://elsewhere/x")
    with pytest.raises(ReferenceNotFoundError, match="missing.bin"):
        art.add_reference((tmp_path / "missing.bin").as_uri())
    assert art.file_count == 0


def test_http_reference_that_is_missing_when_added_names_the_url(web):
    _folder, base = web
    with pytest.raises(ReferenceNotFoundError, match=r"nothing\.bin is gone \(HTTP 404\)"):
        wandb.Artifact("x", type="dataset").add_reference(f"{base}/nothing.bin")


# --- broken references ---------------------------------------------------------------------------------


def test_changed_or_vanished_file_reference_fails_naming_it_and_caches_nothing(backend, project, tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "a.bin").write_bytes(b"original a")
    (ext / "b.bin").write_bytes(b"original b")
    _log(project, "fragile", lambda art: (art.add_reference((ext / "a.bin").as_uri()),
                                          art.add_reference((ext / "b.bin").as_uri())))  # fmt: skip
    used = _use(project, "fragile")
    sha_a = used.manifest.get("a.bin").sha256

    (ext / "a.bin").write_bytes(b"tampered a")  # same size, other bytes
    with pytest.raises(ReferenceChangedError) as info:
        used.get_path("a.bin")
    assert isinstance(info.value, ChecksumError) and isinstance(info.value, ValueError)
    assert "a.bin" in str(info.value) and (ext / "a.bin").as_uri() in str(info.value)
    assert "changed since it was logged" in str(info.value)
    assert not _cached(sha_a) and not _cached(hash_bytes(b"tampered a").sha256)

    (ext / "a.bin").write_bytes(b"original a, then grown")
    with pytest.raises(ReferenceChangedError, match="more than 10 bytes"):
        used.get_path("a.bin")
    assert not _cached(sha_a)

    (ext / "a.bin").write_bytes(b"original a")
    os.unlink(ext / "b.bin")
    with pytest.raises(ReferenceNotFoundError) as info:
        used.download(str(tmp_path / "out"))
    assert (ext / "b.bin").as_uri() in str(info.value) and "no longer exists" in str(info.value)
    assert not (tmp_path / "out" / "b.bin").exists()


def test_changed_or_vanished_http_reference_fails_naming_it(backend, project, tmp_path, web):
    folder, base = web
    (folder / "x.bin").write_bytes(b"served bytes")
    _log(project, "webfrag", lambda art: art.add_reference(f"{base}/x.bin"))
    used = _use(project, "webfrag")

    (folder / "x.bin").write_bytes(b"SERVED BYTES")
    with pytest.raises(ReferenceChangedError, match=rf"x\.bin.*{base}/x\.bin changed since it was logged"):
        used.get_path("x.bin")
    assert not _cached(used.manifest.get("x.bin").sha256)

    os.unlink(folder / "x.bin")
    with pytest.raises(ReferenceNotFoundError, match=rf"{base}/x\.bin is gone \(HTTP 404\)"):
        used.download(str(tmp_path / "out"))

    (folder / "x.bin").write_bytes(b"served bytes")  # restored: readable again
    assert pathlib.Path(used.get_path("x.bin")).read_bytes() == b"served bytes"


# --- checksum=False ------------------------------------------------------------------------------------


def test_unchecked_reference_records_the_uri_only_and_downloads_what_is_there(backend, project, tmp_path, web):
    folder, base = web
    (folder / "live.txt").write_bytes(b"first")
    uri = f"{base}/live.txt"
    added = []
    _log(project, "loose", lambda art: added.extend(art.add_reference(uri, checksum=False)))

    assert added[0].size == 0 and added[0].ref == uri and not added[0].entry.is_checked
    assert added[0].entry == unchecked_reference("live.txt", uri)
    (folder / "live.txt").write_bytes(b"changed later")  # nothing was recorded to check against
    used = _use(project, "loose")
    root = used.download(str(tmp_path / "out"))
    assert (pathlib.Path(root) / "live.txt").read_bytes() == b"changed later"
    assert used.verify(root)  # nothing recorded to check it against: present is all verify can ask
    assert not _cached(hash_bytes(b"changed later").sha256)  # unverified bytes never enter the cache


# --- manifest and digest -------------------------------------------------------------------------------


def test_entries_without_ref_serialize_and_digest_as_before():
    entry = ManifestEntry("a.txt", 1, "0" * 32, "1" * 64)
    assert entry.to_dict() == {"path": "a.txt", "size": 1, "md5": "0" * 32, "sha256": "1" * 64}
    manifest = Manifest.from_entries([entry])
    import hashlib

    assert manifest.digest == hashlib.sha256(b'[["a.txt",1,"' + b"1" * 64 + b'"]]').hexdigest()


def test_reference_entries_need_no_blob_and_differ_in_digest_from_a_stored_copy():
    stored = ManifestEntry("a.txt", 1, "0" * 32, "1" * 64)
    ref = ManifestEntry("a.txt", 1, "0" * 32, "1" * 64, ref="file:///x/a.txt", etag='"e1"')
    assert ManifestEntry.from_dict(ref.to_dict()) == ref and ref.with_path("b.txt").etag == '"e1"'
    assert Manifest.from_entries([ref]).blobs() == {} and Manifest.from_entries([stored]).blobs() == {"1" * 64: 1}
    assert Manifest.from_entries([ref]).digest != Manifest.from_entries([stored]).digest
    moved = ManifestEntry("a.txt", 1, "0" * 32, "1" * 64, ref="file:///y/a.txt")
    assert Manifest.from_entries([moved]).digest != Manifest.from_entries([ref]).digest
    assert ref.is_checked and not unchecked_reference("a.txt", "file:///x/a.txt").is_checked


def test_stored_copy_logged_after_a_reference_of_the_same_content_is_uploaded(project, tmp_path):
    src = tmp_path / "same.bin"
    src.write_bytes(b"identical content")
    first = _log(project, "mix", lambda art: art.add_reference(src.as_uri()))
    second = _log(project, "mix", lambda art: art.add_file(str(src)))
    assert (first.version, second.version) == ("v1", "v2")
    os.unlink(src)  # the reference breaks, the stored copy does not
    assert pathlib.Path(wandb.Api().artifact(f"{project}/mix:v2").get_path("same.bin")).read_bytes() == (
        b"identical content"
    )


# --- the mount -----------------------------------------------------------------------------------------


def _cat(path: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cat", str(path)], capture_output=True, timeout=60)


def test_mount_serves_verified_references_and_refuses_broken_ones(project, tmp_path, mounter, web):
    folder, base = web
    ext = tmp_path / "ext"
    ext.mkdir()
    big = os.urandom(2 * CHUNK_SIZE + 5)  # a chunked entry: references are still fetched whole
    (ext / "big.bin").write_bytes(big)
    (ext / "gone.txt").write_bytes(b"soon gone")
    (ext / "edit.txt").write_bytes(b"before edit")
    (folder / "page.html").write_bytes(b"<p>hi</p>")
    (folder / "loose.txt").write_bytes(b"unchecked")

    def add(art):
        for name in ("big.bin", "gone.txt", "edit.txt"):
            art.add_reference((ext / name).as_uri())
        art.add_reference(f"{base}/page.html")
        art.add_reference(f"{base}/loose.txt", checksum=False)

    _log(project, "mnt", add)
    os.unlink(ext / "gone.txt")
    (ext / "edit.txt").write_bytes(b"after edit!")
    mnt = mounter()
    v1 = mnt.path / project / "mnt" / "v1"

    assert (v1 / "big.bin").read_bytes() == big and os.stat(v1 / "big.bin").st_size == len(big)
    assert _cat(v1 / "page.html").stdout == b"<p>hi</p>"
    assert os.getxattr(v1 / "page.html", "user.wanllmdb.ref") == f"{base}/page.html".encode()
    for name in ("gone.txt", "edit.txt", "loose.txt"):
        result = _cat(v1 / name)
        assert result.returncode != 0 and b"Input/output error" in result.stderr and not result.stdout, name
        with pytest.raises(OSError) as info:
            (v1 / name).read_bytes()
        assert info.value.errno == errno.EIO
    wait_until(
        lambda: all(what in mnt.log() for what in ((ext / "gone.txt").as_uri(), (ext / "edit.txt").as_uri(),
                                                   f"{base}/loose.txt")),
        10, "log lines naming the broken references",
    )  # fmt: skip
    assert not _cached(hash_bytes(b"after edit!").sha256)


def test_reference_example_runs():
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).parents[1] / "examples" / "reference_artifact.py")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 references, nothing uploaded" in proc.stdout and "'rows of shard 0'" in proc.stdout
    assert "refused the edited reference: ReferenceChangedError" in proc.stdout and "shard-2.txt" in proc.stdout


def test_registries_neither_ask_for_nor_require_reference_blobs(registry, project):
    from wanllmdb.registry import DraftSpec

    data = os.urandom(5000)
    d = hash_bytes(data)
    ref = ManifestEntry("r.bin", d.size, d.md5, d.sha256, ref="https://example.invalid/r.bin", etag='"abc"')
    draft = registry.create_draft(DraftSpec(project, "onlyrefs", "dataset", Manifest.from_entries([ref])))
    assert draft.missing == ()
    result = registry.finalize_draft(draft.id)
    resolved = registry.resolve(project, "onlyrefs", f"v{result.version.version}")
    assert resolved.manifest.get("r.bin") == ref
    with pytest.raises(BlobNotFoundError):
        registry.fetch_blob(d.sha256, d.size, _Discard())
