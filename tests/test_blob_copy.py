"""The embedded registry's single-read store of a new file (``BlobStore.put_unhashed``) and its writer.

The claims attacked: the bytes stored under a SHA-256 are the bytes that were hashed (also when the caller
reuses its buffer at once, which vmsplice makes a real hazard: the pipe holds the buffer's pages), and a file
that is not complete is never renamed into place. Reflinks (``FICLONE``) cannot be exercised on the ext4 of
the test machines: only the fallback to the hashing copy is checked here.
"""

from __future__ import annotations

import hashlib
import mmap
import os

import pytest

from wanllmdb.errors import ChecksumError
from wanllmdb.manifest.digest import hash_file
from wanllmdb.registry import blobstore, pagecopy
from wanllmdb.registry.blobstore import BlobStore, reflink
from wanllmdb.registry.pagecopy import SpliceWriter

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


@pytest.mark.parametrize("kind", ["mmap", "bytearray"])
def test_splice_writer_copies_the_bytes_before_returning(tmp_path, kind):
    """The caller overwrites its buffer as soon as ``write_at`` returns: the file must hold the old bytes."""
    piece = 3 * MiB + 100  # more than a pipe holds, and not a whole number of pages
    buf = mmap.mmap(-1, piece) if kind == "mmap" else bytearray(piece)
    view = memoryview(buf)
    expected = bytearray()
    with open(tmp_path / "out", "wb", buffering=0) as out, SpliceWriter(out.fileno()) as writer:
        for round_ in range(4):
            view[:] = bytes([round_ + 1]) * piece
            part = view[7:] if round_ == 2 else view  # a piece starting inside a page
            writer.write_at(part, len(expected))
            expected += bytes(part)
            view[:] = b"\xee" * piece  # reused at once
    assert (tmp_path / "out").read_bytes() == bytes(expected)


def test_splice_writer_writes_at_offsets(tmp_path):
    with open(tmp_path / "out", "wb", buffering=0) as out, SpliceWriter(out.fileno()) as writer:
        writer.write_at(memoryview(bytearray(b"B" * MiB)), MiB)
        writer.write_at(memoryview(bytearray(b"A" * MiB)), 0)
        writer.write_at(memoryview(bytearray(0)), 5)
    assert (tmp_path / "out").read_bytes() == b"A" * MiB + b"B" * MiB


def test_without_vmsplice_the_store_writes_with_pwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(pagecopy, "_vmsplice", None)
    src = tmp_path / "src.bin"
    data = _file(src, 2 * MiB + 3)
    with open(tmp_path / "probe", "wb") as probe:
        assert not SpliceWriter(probe.fileno()).splicing
    store = BlobStore(str(tmp_path / "store"))
    digest = store.put_unhashed(str(src), len(data))
    assert open(store.path(digest.sha256), "rb").read() == data


def test_the_copy_uses_pieces_the_md5_thread_takes():
    from wanllmdb.manifest.digest import THREAD_MIN_PIECE

    assert blobstore.COPY_PIECE >= THREAD_MIN_PIECE


def test_a_file_refusing_splice_gets_the_rest_by_pwrite(tmp_path, monkeypatch):
    """Splice refused after vmsplice took the piece: the bytes still come from the caller's buffer."""
    calls = []
    real = pagecopy._splice

    def refuse_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(22, "Invalid argument")
        return real(*args, **kwargs)

    monkeypatch.setattr(pagecopy, "_splice", refuse_second)
    src = tmp_path / "src.bin"
    data = _file(src, 5 * MiB + 77)
    store = BlobStore(str(tmp_path / "store"))
    digest = store.put_unhashed(str(src), len(data))
    assert open(store.path(digest.sha256), "rb").read() == data
    assert len(calls) == 2  # after the refusal every piece went by pwrite
