"""The embedded registry's single-read store of a new file (``BlobStore.put_unhashed``) and its writer.

The claims attacked: the bytes stored under a SHA-256 are the bytes that were hashed (also when the caller
reuses its buffer at once, which vmsplice makes a real hazard: the pipe holds the buffer's pages), and a file
that is not complete is never renamed into place. Reflinks (``FICLONE``) cannot be exercised on the ext4 of
the test machines: only the fallback to the hashing copy is checked here.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from wanllmdb.errors import ChecksumError
from wanllmdb.manifest.digest import hash_file
from wanllmdb.registry import blobstore
from wanllmdb.registry.blobstore import BlobStore, reflink

MiB = 1 << 20


def _file(path, size: int, seed: int = 7) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[: min(size, 4096)])) + data[4096:]
    path.write_bytes(data)
    return data


@pytest.mark.parametrize(
    "size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345], ids=["empty", "1B", "1MiB-1", "1MiB", "1MiB+1", "3MiB+"]
)
def test_put_unhashed_stores_exactly_the_hashed_bytes(tmp_path, size):
    src = tmp_path / "src.bin"
    data = _file(src, size)
    store = BlobStore(str(tmp_path / "store"))
    installed = []
    store.on_install = installed.extend
    progress = []
    digest = store.put_unhashed(str(src), size, progress=progress.append)
    assert digest == hash_file(src)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    with open(store.path(digest.sha256), "rb") as f:
        assert f.read() == data
    assert installed == [(digest.sha256, size, digest.md5)]
    assert sum(progress) == size
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_put_unhashed_of_stored_content_keeps_the_blob_and_drops_the_copy(tmp_path):
    src = tmp_path / "src.bin"
    data = _file(src, 2 * MiB + 5)
    store = BlobStore(str(tmp_path / "store"))
    first = store.put_unhashed(str(src), len(data))
    installed = []
    store.on_install = installed.extend
    assert store.put_unhashed(str(src), len(data)) == first
    assert installed == []  # already stored: nothing installed again
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_put_unhashed_of_a_file_that_changed_size_stores_nothing(tmp_path):
    src = tmp_path / "src.bin"
    data = _file(src, 2 * MiB)
    store = BlobStore(str(tmp_path / "store"))
    with pytest.raises(ChecksumError):
        store.put_unhashed(str(src), len(data) - 1)  # the file "grew" by a byte since it was listed
    assert list(store.list_blobs()) == []
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_reflink_is_refused_on_this_filesystem_and_the_copy_is_used(tmp_path):
    """ext4 has no FICLONE: ``reflink`` says so instead of raising, and leaves the target empty."""
    src = tmp_path / "src.bin"
    _file(src, MiB)
    with open(src, "rb") as fin, open(tmp_path / "dst", "wb") as out:
        cloned = reflink(fin.fileno(), out.fileno())
    if cloned:  # a filesystem with reflinks (btrfs, XFS): the clone holds the bytes
        assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    else:
        assert (tmp_path / "dst").read_bytes() == b""


def test_the_copy_uses_pieces_the_md5_thread_takes():
    from wanllmdb.manifest.digest import THREAD_MIN_PIECE

    assert blobstore.COPY_PIECE >= THREAD_MIN_PIECE


def test_a_batch_received_with_md5_on_a_worker_is_checked_as_written_one_by_one(tmp_path):
    """``IncomingBlob.write_many`` (the server's receive: MD5 on a worker beside SHA-256, chunk digests and the
    write) stores exactly what one ``write`` per piece would, refuses a wrong MD5 or a body over its size,
    and leaves nothing behind when it refuses."""
    from wanllmdb.manifest.digest import ChunkDigester, hash_bytes

    store = BlobStore(str(tmp_path / "store"), compute_md5=True)
    data = os.urandom(5 * MiB + 333)
    pieces = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]
    expected = hash_bytes(data)
    incoming = store.begin(None, len(data), chunks=ChunkDigester())
    for start in range(0, len(pieces), 7):
        incoming.write_many(pieces[start : start + 7])
    assert incoming.commit() is True
    assert (incoming.sha256, incoming.md5) == (expected.sha256, expected.md5)
    assert incoming.chunks.digests() == expected.chunks
    assert open(store.path(expected.sha256), "rb").read() == data

    wrong_md5 = hashlib.md5(b"other").hexdigest()
    other = os.urandom(3 * MiB)
    incoming = store.begin(hashlib.sha256(other).hexdigest(), len(other), wrong_md5)
    incoming.write_many([other[:MiB], other[MiB:]])
    with pytest.raises(ChecksumError, match="MD5 mismatch"):
        incoming.commit()
    incoming = store.begin(None, 2 * MiB)
    with pytest.raises(ChecksumError, match="more than the declared"):
        incoming.write_many([other[:MiB], other[MiB:]])
    incoming.abort()
    assert not os.path.exists(store.path(hashlib.sha256(other).hexdigest()))
    assert os.listdir(os.path.join(store.root, "tmp")) == []
