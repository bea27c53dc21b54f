"""A large upload's lanes (``IncomingBlob.submit``, the server's ``_Body.read_into``): the MD5 and the
SHA-256/chunk-digest/write threads take batches in order at their own pace, several batches in flight.

The claims attacked: what is stored and hashed is exactly the body, in order, also with two uploads at
once; a lane that fails stops the jobs queued behind it and the blob is never committed; a body cut off
mid-way leaves no blob, no temporary file and no thread behind.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.support.server import manifest_of, start_server
from wanllmdb.errors import ChecksumError
from wanllmdb.manifest.digest import ChunkDigester, hash_bytes
from wanllmdb.registry.base import DraftSpec
from wanllmdb.registry.blobstore import BlobStore

MiB = 1 << 20


def _pieces(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_batches_through_the_lanes_store_what_one_write_per_piece_would(tmp_path):
    store = BlobStore(str(tmp_path / "store"), compute_md5=True)
    data = os.urandom(9 * MiB + 4321)
    expected = hash_bytes(data)
    incoming = store.begin(None, len(data), chunks=ChunkDigester())
    pieces = _pieces(data)
    futures = []
    for start in range(0, len(pieces), 5):  # many batches queued before any is waited for
        futures += incoming.submit(pieces[start : start + 5])
    for future in futures:
        future.result(timeout=30)
    assert incoming.commit() is True
    assert (incoming.sha256, incoming.md5) == (expected.sha256, expected.md5)
    assert incoming.chunks.digests() == expected.chunks
    assert open(store.path(expected.sha256), "rb").read() == data
    assert incoming._lanes is None  # commit stopped its threads


def test_a_batch_over_the_declared_size_is_refused_before_it_is_queued(tmp_path):
    store = BlobStore(str(tmp_path / "store"), compute_md5=True)
    incoming = store.begin(None, 2 * MiB)
    first = incoming.submit([os.urandom(MiB)])
    with pytest.raises(ChecksumError, match="more than the declared"):
        incoming.submit([os.urandom(MiB), os.urandom(MiB)])
    for future in first:
        future.result(timeout=30)
    assert incoming.received == MiB
    incoming.abort()
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_after_a_lane_fails_the_jobs_behind_it_do_nothing_and_nothing_is_committed(tmp_path):
    store = BlobStore(str(tmp_path / "store"), compute_md5=True)
    data = os.urandom(3 * MiB)
    incoming = store.begin(hashlib.sha256(data).hexdigest(), len(data))
    written = []
    original = incoming._hash_and_write

    def failing(piece):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(len(piece))
        original(piece)

    incoming._hash_and_write = failing
    futures = [incoming.submit([piece]) for piece in _pieces(data, MiB // 2)]
    errors = [f.exception(timeout=30) for batch in futures for f in batch[:1]]
    assert isinstance(errors[2], OSError) and errors[3:] == [None] * 3  # the ones behind did nothing
    assert written == [MiB // 2, MiB // 2]
    with pytest.raises(OSError, match="No space left"):
        incoming.commit()
    assert not os.path.exists(store.path(hashlib.sha256(data).hexdigest()))
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _eventually(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.server
def test_two_large_uploads_at_once_and_one_cut_off_midway(tmp_path):
    """Through a real server: two 24 MiB uploads sent at once are each stored exactly; a third whose client
    goes away after 13 MiB (batches already in its lanes) stores nothing and leaves no temporary file and
    no thread once the server has noticed."""
    server = start_server(tmp_path / "srv")
    registry = server.registry()
    try:
        files = {}
        for name in ("a", "b", "cut"):
            path = tmp_path / f"{name}.bin"
            path.write_bytes(os.urandom(24 * MiB))
            files[name] = str(path)
        manifest, by_sha = manifest_of(files)
        draft = registry.create_draft(DraftSpec("lanes", "big", "dataset", manifest))
        targets = {os.path.basename(by_sha[t.sha256]): t for t in draft.missing}
        registry.upload_blob(draft, targets["a.bin"], files["a"])  # warms the server's own threads
        baseline = _threads(server.process.pid)

        cut = targets["cut.bin"]
        url = urlsplit(cut.url)
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Content-Length: {24 * MiB}\r\n\r\n".encode()
            )
            with open(files["cut"], "rb") as f:
                sock.sendall(f.read(13 * MiB))
            time.sleep(0.3)  # let the server hand batches to the lanes before the client goes away
        tmp = os.path.join(server.root, "tmp")
        assert _eventually(lambda: os.listdir(tmp) == [])
        assert _eventually(lambda: _threads(server.process.pid) <= baseline)
        assert not os.path.exists(os.path.join(server.root, "blobs", cut.sha256[:2], cut.sha256))

        from concurrent.futures import ThreadPoolExecutor

        second = registry.create_draft(DraftSpec("lanes", "again", "dataset", manifest))
        again = {os.path.basename(by_sha[t.sha256]): t for t in second.missing}
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda name: registry.upload_blob(second, again[f"{name}.bin"], files[name]), ("b", "cut")))
        for name in ("a", "b", "cut"):
            sha = hashlib.sha256(open(files[name], "rb").read()).hexdigest()
            stored = os.path.join(server.root, "blobs", sha[:2], sha)
            assert open(stored, "rb").read() == open(files[name], "rb").read()
        assert "broke off" in server.log()
    finally:
        registry.close()
        server.stop()
