"""The write path's two shortcuts, over both registries: a new large file is uploaded in the same read that
hashes it, and an unchanged file is never read again (its digest is remembered)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import pytest
import requests

import wanllmdb
import wanllmdb.sdk.hashing as sdk_hashing
from tests.support.data import read_range
from wanllmdb.errors import ChecksumError
from wanllmdb.manifest import hash_file
from wanllmdb.sdk.client import get_client


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setenv("WANLLMDB_SINGLE_PASS_MIN", "1MiB")


def _aged_file(path, size: int, seed: int = 0) -> str:
    """A file old enough for its digest to be remembered (the racy-mtime rule)."""
    with open(path, "wb") as f:
        f.write(seed.to_bytes(4, "little") + os.urandom(size - 4))
    past = time.time() - 60
    os.utime(path, (past, past))
    return str(path)


@pytest.fixture
def hash_calls(monkeypatch):
    calls: list[str] = []
    real = sdk_hashing.hash_file

    def counting(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sdk_hashing, "hash_file", counting)
    return calls


def _spy(monkeypatch, registry, name: str) -> list:
    calls: list = []
    real = getattr(registry, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, name, spy)
    return calls


def test_a_new_large_file_is_stored_in_the_read_that_hashes_it(backend, project, tmp_path, hash_calls, monkeypatch):
    big = _aged_file(tmp_path / "weights.bin", 9 * 1024 * 1024 + 77)
    registry = get_client().registry
    single_pass = _spy(monkeypatch, registry, "store_unhashed")
    uploads = _spy(monkeypatch, registry, "upload_blob")
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("model", type="model")
        art.add_file(big)
        assert art.file_count == 1 and art.size == os.path.getsize(big)
        run.log_artifact(art)
    assert len(single_pass) == 1 and uploads == [] and hash_calls == []
    expected = hash_file(big)
    entry = art.get_entry("weights.bin").entry
    assert (entry.sha256, entry.md5, entry.chunks) == (expected.sha256, expected.md5, expected.chunks)
    root = wanllmdb.Api().artifact(f"{project}/model:v1").download(str(tmp_path / "out"))
    assert open(os.path.join(root, "weights.bin"), "rb").read() == open(big, "rb").read()


def test_content_of_a_known_size_is_hashed_first_and_not_uploaded_again(backend, project, tmp_path, monkeypatch):
    first = _aged_file(tmp_path / "a.bin", 3 * 1024 * 1024)
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("one", type="dataset")
        art.add_file(first)
        run.log_artifact(art)
    copy = str(tmp_path / "copy.bin")  # same bytes, another inode: its digest is not remembered
    shutil.copyfile(first, copy)
    registry = get_client().registry
    single_pass = _spy(monkeypatch, registry, "store_unhashed")
    uploads = _spy(monkeypatch, registry, "upload_blob")
    with wanllmdb.init(project=project) as run:
        other = wanllmdb.Artifact("two", type="dataset")
        other.add_file(copy)
        run.log_artifact(other)
    assert single_pass == [] and uploads == []
    assert other.version == "v1" and other.get_entry("copy.bin").sha256 == hash_file(first).sha256


def test_an_unchanged_file_is_not_read_again(backend, project, tmp_path, hash_calls):
    small = _aged_file(tmp_path / "small.txt", 1000)
    big = _aged_file(tmp_path / "big.bin", 2 * 1024 * 1024, seed=1)
    for _ in range(2):
        with wanllmdb.init(project=project) as run:
            art = wanllmdb.Artifact("data", type="dataset")
            art.add_file(small)
            art.add_file(big)
            run.log_artifact(art)
    assert hash_calls == [small], "the small file is hashed once; the big one only in its single-pass upload"
    assert art.version == "v1"
    with open(small, "r+b") as f:  # a change in place: new mtime and ctime, same size
        f.write(b"X")
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("data", type="dataset")
        art.add_file(small)
        art.add_file(big)
        run.log_artifact(art)
    assert art.version == "v2" and hash_calls == [small, small]


def test_remembered_sha256_chunk_digests_are_not_reused_for_blake3(backend, project, tmp_path, hash_calls, monkeypatch):
    small = _aged_file(tmp_path / "small.bin", 512 * 1024)  # under the single-pass size: hashed first
    mid = _aged_file(tmp_path / "mid.bin", 1024 * 1024 + 5, seed=2)  # two chunks, still hashed first
    monkeypatch.setenv("WANLLMDB_SINGLE_PASS_MIN", "64MiB")
    monkeypatch.setenv("WANLLMDB_CHUNK_HASH", "sha256")  # as a wanllmdb before BLAKE3 remembered them
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("algo", type="dataset")
        art.add_file(small)
        art.add_file(mid)
        run.log_artifact(art)
    assert art.get_entry("mid.bin").entry.chunks[0][:7] != "blake3:"
    monkeypatch.delenv("WANLLMDB_CHUNK_HASH")
    for _ in range(2):
        with wanllmdb.init(project=project) as run:
            art = wanllmdb.Artifact("algo", type="dataset")
            art.add_file(small)
            fresh = art.add_file(mid)
            assert all(c.startswith("blake3:") for c in fresh.entry.chunks)
            assert fresh.entry.chunks == hash_file(mid).chunks
            run.log_artifact(art)
        assert art.version == "v1", "the same content is the same version, whatever checks its chunks"
    # The small file has no chunk digests: its remembered digest stands. The chunked one is read again,
    # once: its BLAKE3 digests are remembered in turn.
    assert hash_calls == [small, mid, mid]
    out = wanllmdb.Api().artifact(f"{project}/algo:v1").download(str(tmp_path / "out"))
    assert open(os.path.join(out, "mid.bin"), "rb").read() == open(mid, "rb").read()


def test_a_file_changing_during_its_single_pass_upload_is_refused(backend, project, tmp_path, monkeypatch):
    big = _aged_file(tmp_path / "growing.bin", 2 * 1024 * 1024 + 12345)  # a size no test stored
    registry = get_client().registry
    real = registry.store_unhashed

    def grow_then_store(path, size, progress=None):
        with open(path, "ab") as f:
            f.write(b"more")
        return real(path, size, progress)

    monkeypatch.setattr(registry, "store_unhashed", grow_then_store)
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("g", type="dataset")
        art.add_file(big)
        with pytest.raises(ChecksumError, match="growing.bin"):
            run.log_artifact(art)
    with pytest.raises(LookupError):
        wanllmdb.Api().artifact(f"{project}/g")


def test_digests_of_a_pending_file_are_computed_when_asked(project, tmp_path):
    big = _aged_file(tmp_path / "big.bin", 2 * 1024 * 1024)
    art = wanllmdb.Artifact("lazy", type="dataset")
    item = art.add_file(big)
    assert item.size == 2 * 1024 * 1024
    assert item.sha256 == hash_file(big).sha256
    assert art.digest == art.manifest.digest


def test_known_sizes_and_store_unhashed_contract(registry, tmp_path):
    # a size no other test stores (the HTTP registry is a server shared by the session)
    path = _aged_file(tmp_path / "blob.bin", 3 * 1024 * 1024 + int.from_bytes(os.urandom(2), "little") + 7)
    size = os.path.getsize(path)
    assert size not in registry.known_sizes([size])
    digest = registry.store_unhashed(path, size)
    assert digest == hash_file(path)
    assert registry.known_sizes([size, size + 1]) == {size}
    assert read_range(registry, digest.sha256, 10, 20) == open(path, "rb").read()[10:30]


def test_a_folder_of_unchanged_files_is_not_read_again_and_a_changed_or_racy_one_is(
    backend, project, tmp_path, hash_calls
):
    """add_dir looks its files' digests up and remembers them in batches: the same rules as one file at a
    time (an unchanged file is read once, a changed one again, one modified just now is never remembered)."""
    folder = tmp_path / "many"
    folder.mkdir()
    old = [_aged_file(folder / f"f{i:03d}.txt", 100, seed=i) for i in range(30)]
    racy = folder / "racy.txt"
    racy.write_bytes(b"written just now")
    for _ in range(2):
        with wanllmdb.init(project=project) as run:
            art = wanllmdb.Artifact("folder", type="dataset")
            art.add_dir(str(folder))
            run.log_artifact(art)
    assert sorted(hash_calls) == sorted([*old, str(racy), str(racy)])
    assert art.version == "v1"
    with open(old[7], "r+b") as f:  # a change in place: new mtime and ctime, same size
        f.write(b"X")
    hash_calls.clear()
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("folder", type="dataset")
        art.add_dir(str(folder))
        run.log_artifact(art)
    assert sorted(hash_calls) == sorted([old[7], str(racy)])
    assert art.version == "v2" and art.get_entry("f007.txt").sha256 == hash_file(old[7]).sha256


def test_a_folder_hashed_a_window_at_a_time_keeps_each_digest_with_its_file(project, tmp_path, monkeypatch):
    """add_dir hands the hashing threads a window of files at a time (a thread pool's map would hold a future
    per file of the whole folder, ~150 MB for 100,000 files): no more than a window is handed over at once,
    and every entry still gets its own file's digests, remembered ones included, whatever window it falls in."""
    monkeypatch.setattr(sdk_hashing, "HASH_WINDOW", 4)
    folder = tmp_path / "many"
    folder.mkdir()
    paths = [_aged_file(folder / f"f{i:03d}.bin", 50 + i, seed=i) for i in range(23)]
    with wanllmdb.init(project=project) as run:  # every third file's digest is remembered beforehand
        first = wanllmdb.Artifact("some", type="dataset")
        for path in paths[::3]:
            first.add_file(path)
        run.log_artifact(first)

    handed: list[int] = []

    def recording_map(fn, items):
        items = list(items)
        handed.append(len(items))
        return map(fn, items)

    items = [(path, os.stat(path)) for path in paths]
    digests = sdk_hashing.digest_files(get_client().digests, items, recording_map)
    assert [(d.sha256, d.md5, d.size) for d in digests] == [
        (h.sha256, h.md5, h.size) for h in map(hash_file, paths)
    ]
    assert sum(handed) == len(paths) - len(paths[::3]) and max(handed) <= 4, handed

    art = wanllmdb.Artifact("folder", type="dataset")  # the same through add_dir and its thread pool
    art.add_dir(str(folder))
    for path in paths:
        entry, expected = art.get_entry(os.path.basename(path)), hash_file(path)
        assert (entry.sha256, entry.md5, entry.size) == (expected.sha256, expected.md5, expected.size), path


@pytest.mark.parametrize("pieces", [[1], [300_000, 1 << 20, 5, (1 << 20) + 7, 2 << 20, 12_345]])
def test_pipelined_digester_gives_the_digests_of_one_pass(pieces):
    from wanllmdb.manifest.chunkhash import chunk_hash
    from wanllmdb.manifest.digest import ChunkDigester, Digester, Pipelined, chunk_list_digest, hash_bytes

    data = os.urandom(sum(pieces))
    digester, chunks = Pipelined(Digester(), depth=2), Pipelined(ChunkDigester(), depth=2)
    offset = 0
    for n in pieces:
        digester.update(data[offset : offset + n])
        chunks.update(data[offset : offset + n])
        offset += n
    digester.finish()
    chunks.finish()
    expected = hash_bytes(data)
    assert digester.digester.result() == expected
    # The chunk digests alone cover every byte, the last partial chunk (or the only one) included.
    listed = chunks.digester.digests()
    mib = 1 << 20
    assert listed == tuple(chunk_hash().of(data[i : i + mib]) for i in range(0, len(data), mib))
    assert expected.chunks == (listed if len(data) > mib else ())
    assert chunk_list_digest(listed) != chunk_list_digest(listed[:-1])
    digester.close()  # idempotent after finish()


@pytest.mark.parametrize("reuse", [False, True])
def test_a_drain_fed_from_one_reused_buffer_consumes_every_piece_as_it_was(reuse):
    """The HTTP receive loop hands each piece in the same buffer, overwritten at once: a Drain must copy it (with
    ``reuse``, into buffers its worker hands back) so that the worker sees exactly the bytes of each piece."""
    import hashlib

    from wanllmdb.iobuf import Drain

    data = os.urandom(9 << 20)
    sizes = [1 << 20, 5, (1 << 20) - 3, 300_000, 1 << 20, 12_345]
    seen = hashlib.sha256()
    drain = Drain(seen.update, 2, "test-drain", reuse=reuse)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    offset = i = 0
    while offset < len(data):
        n = min(sizes[i % len(sizes)], len(data) - offset)
        view[:n] = data[offset : offset + n]
        drain.put(view[:n])
        view[:] = b"\0" * len(view)  # the caller reuses its buffer at once
        offset += n
        i += 1
    drain.close()
    drain.check()
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()


def _new_upload_url(server, size: int) -> dict:
    answer = requests.post(f"{server.url}/api/v1/uploads", json={"size": size}, headers=server.headers, timeout=30)
    answer.raise_for_status()
    return answer.json()


def test_the_server_answers_the_digests_of_an_unaddressed_upload(live_server):
    """``PUT /blobs/new`` answers MD5 and SHA-256 of what arrived and, when asked, one digest of its chunk
    digests; a malformed request for them is refused before a byte is stored."""
    from wanllmdb.manifest.chunkhash import chunk_hash
    from wanllmdb.manifest.digest import CHUNKS_HEADER, chunk_list_digest, hash_bytes

    data = os.urandom(2 * 1024 * 1024 + 4321)
    offer = _new_upload_url(live_server, len(data))
    assert offer["server_digests"] is True
    mib = 1 << 20
    for algorithm in ("blake3", "sha256"):
        offer = _new_upload_url(live_server, len(data))
        answer = requests.put(offer["url"], data=data, headers={CHUNKS_HEADER: f"{algorithm} {mib}"}, timeout=60)
        assert answer.status_code == 201, answer.text
        body, expected = answer.json(), hash_bytes(data)
        assert (body["sha256"], body["md5"], body["size"]) == (expected.sha256, expected.md5, len(data))
        listed = [chunk_hash(algorithm).of(data[i : i + mib]) for i in range(0, len(data), mib)]
        assert body["chunks"] == {"algorithm": algorithm, "size": mib, "count": 3, "digest": chunk_list_digest(listed)}
    plain = requests.put(_new_upload_url(live_server, len(data))["url"], data=data, timeout=60).json()
    assert "chunks" not in plain and plain["md5"] == hash_bytes(data).md5

    other = os.urandom(70_000)
    sha = hashlib.sha256(other).hexdigest()
    for bad in ("md5 1048576", "blake3", "blake3 12", "blake3 1MiB", "blake3 99999999999"):
        answer = requests.put(
            _new_upload_url(live_server, len(other))["url"], data=other, headers={CHUNKS_HEADER: bad}, timeout=60
        )
        assert answer.status_code == 400, (bad, answer.text)
        assert CHUNKS_HEADER in answer.json()["error"]["message"], bad
    assert not os.path.exists(os.path.join(live_server.root, "blobs", sha[:2], sha)), "a refused upload stored a blob"


@pytest.mark.parametrize("offered", [True, False], ids=["server-digests", "old-server"])
def test_an_unaddressed_upload_hashes_md5_and_sha256_once(live_server, tmp_path, monkeypatch, offered):
    """With a server that answers the digests, the client computes only the chunk digests of what it sends
    (no MD5 or SHA-256 of its own); a server that does not offer them (an older one) gets all three computed
    here. Either way the digest is the file's, exactly."""
    import wanllmdb.registry.http as http_registry

    path = _aged_file(tmp_path / "w.bin", 3 * 1024 * 1024 + int.from_bytes(os.urandom(2), "little") + 11)
    registry = live_server.registry()
    real_call = registry._call

    def call(method, route, *args, **kwargs):
        answer = real_call(method, route, *args, **kwargs)
        if route == "/uploads" and not offered:
            answer.pop("server_digests")
        return answer

    made: list[str] = []
    for name in ("Digester", "ChunkDigester"):
        real = getattr(http_registry, name)
        monkeypatch.setattr(
            http_registry, name, lambda *a, _real=real, _name=name, **k: made.append(_name) or _real(*a, **k)
        )
    monkeypatch.setattr(registry, "_call", call)
    try:
        digest = registry.store_unhashed(path, os.path.getsize(path))
    finally:
        registry.close()
    assert digest == hash_file(path)
    assert made == (["ChunkDigester"] if offered else ["Digester"])


def test_a_file_cut_short_while_it_is_sent_is_refused_naming_it(live_server, tmp_path):
    """The upload body reads the file block by block into one buffer: a file truncated after the first
    block ends the upload with a ChecksumError that says so, and the server stores nothing."""
    size = 5 * 1024 * 1024 + 777
    path = _aged_file(tmp_path / "shrinking.bin", size)
    registry = live_server.registry()
    sent: list[int] = []

    def progress(n: int) -> None:
        sent.append(n)
        if len(sent) == 1:
            os.truncate(path, 1024 * 1024 + 5)

    try:
        with pytest.raises(ChecksumError, match="shrinking.bin: ended after") as caught:
            registry.store_unhashed(path, size, progress)
    finally:
        registry.close()
    assert caught.value.expected == str(size)
    assert sum(sent) < size
    blobs = [name for _, _, names in os.walk(os.path.join(live_server.root, "blobs")) for name in names]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() not in blobs
