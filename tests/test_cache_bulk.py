"""A download of many cached blobs: stamps read in one pass over the index, access times and new stamps written
in one pass by rowid, files hard-linked straight to their names; none of it may serve a changed blob, update
the wrong row, or leave a half-placed file."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from wanllmdb.cache import BlobCache, Placer
from wanllmdb.cache import index as cache_index
from wanllmdb.cache import store as cache_store
from wanllmdb.cache.index import CacheIndex
from wanllmdb.cache.store import blob_stamp


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def scan_always(monkeypatch):
    """Every stamp query of more than one key reads the whole table (as one of a million keys does)."""
    monkeypatch.setattr(cache_index, "SCAN_MIN_KEYS", 2)


def _index_with(tmp_path, n: int) -> tuple[CacheIndex, list[str]]:
    index = CacheIndex(str(tmp_path / "index.sqlite"))
    keys = [_sha(str(i).encode()) for i in range(n)]
    index.admit_blobs({key: (i + 1, f"1:{i + 1}:3:{i}") for i, key in enumerate(keys)}, 1 << 40)
    return index, keys


def test_the_stamp_scan_answers_what_the_lookups_answer(tmp_path, monkeypatch):
    index, keys = _index_with(tmp_path, 50)
    index.touch_blobs({"f" * 64: 7})  # a row without a stamp: not answered either way
    every = index.stamp_rows(keys)
    assert len(every) == 50 and len({rowid for rowid, _stamp in every.values()}) == 50
    asked = [*keys[::2], "e" * 64, "f" * 64]  # half the rows, a key not in the index, one without a stamp
    probed = index.stamp_rows(asked)
    monkeypatch.setattr(cache_index, "SCAN_MIN_KEYS", 2)
    scanned = index.stamp_rows(asked)
    assert scanned == probed
    assert set(probed) == set(keys[::2])
    assert index.stamps(asked) == {key: stamp for key, (_rowid, stamp) in probed.items()}
    assert probed == {key: every[key] for key in keys[::2]}
    monkeypatch.setattr(cache_index, "SCAN_SHARE", 1)  # too small a share of the rows: looked up after all
    assert index.stamp_rows(keys[:10]) == {key: every[key] for key in keys[:10]}


def test_a_rowid_that_now_holds_another_key_updates_nothing_and_the_key_is_upserted(tmp_path):
    index, keys = _index_with(tmp_path, 3)
    rows = index.stamp_rows(keys)
    gone, other = keys[2], _sha(b"another")
    index.remove([gone])
    index.admit_blobs({other: (99, "9:99:9:9")}, 1 << 40)  # takes the largest rowid, freed by the removal
    assert index.stamp_rows([other])[other][0] == rows[gone][0], "the rowid was given to another key"
    before = index.get(other)
    time.sleep(0.01)
    rowids = {key: rowid for key, (rowid, _stamp) in rows.items()}
    index.touch_blobs({keys[0]: 1, gone: 3}, rowids=rowids)
    index.set_stamps({keys[1]: (2, "new-1"), gone: (3, "new-gone")}, rowids, touch=True)
    assert index.get(other) == before, "the other key's row is untouched"
    assert index.stamps([other]) == {other: "9:99:9:9"}
    assert index.stamps([gone]) == {gone: "new-gone"} and index.get(gone).size == 3, "upserted by key"
    assert index.stamps([keys[1]]) == {keys[1]: "new-1"}
    assert index.get(keys[0]).last_access > before.last_access
    assert index.get(keys[1]).last_access > before.last_access
    assert index.total_size() == 1 + 2 + 3 + 99


def test_rows_of_known_and_unknown_rowid_are_written_together(tmp_path):
    index, keys = _index_with(tmp_path, 4)
    rowids = {key: rowid for key, (rowid, _stamp) in index.stamp_rows(keys[:2]).items()}
    new = _sha(b"not indexed yet")
    index.set_stamps({keys[0]: (1, "a"), keys[3]: (4, "d"), new: (5, "n")}, rowids)
    assert index.stamps([keys[0], keys[3], new]) == {keys[0]: "a", keys[3]: "d", new: "n"}
    assert index.stamps([keys[1]]) == {keys[1]: "1:2:3:1"}
    assert index.total_size() == 1 + 2 + 3 + 4 + 5


def _log(tmp_path, name: str, count: int) -> dict[str, bytes]:
    import wanllmdb

    files = {f"d{i % 3}/f{i}.bin": os.urandom(1000 + i) for i in range(count)}
    with wanllmdb.init(project="bulk") as run:
        art = wanllmdb.Artifact(name, type="dataset")
        for path, data in files.items():
            src = tmp_path / "src" / path
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            art.add_file(str(src), name=path)
        run.log_artifact(art)
    return files


def test_a_cached_download_writes_every_access_time_and_stamp_and_never_serves_a_changed_blob(
    tmp_path, monkeypatch, scan_always, live_server
):
    import wanllmdb

    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url)
    if live_server.api_key:
        monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
    files = _log(tmp_path, "bulk", 24)
    art = wanllmdb.Api().artifact("bulk/bulk:latest")
    art.download(str(tmp_path / "one"))
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    shas = {path: _sha(data) for path, data in files.items()}
    old = time.time() - 3600
    cache.index.touch_blobs(dict.fromkeys(shas.values(), 1), now=old)
    # One blob edited through the first download's hard link, mtime and size kept: only its ctime tells.
    edited = tmp_path / "one" / "d1" / "f4.bin"
    before = os.stat(edited)
    os.chmod(edited, 0o644)
    with open(edited, "r+b") as f:
        f.write(bytes([files["d1/f4.bin"][0] ^ 0xFF]))
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda p: hashed.append(p) or real(p))

    root = art.download(str(tmp_path / "two"))

    for path, data in files.items():
        assert open(os.path.join(root, path), "rb").read() == data, path
    assert hashed == [cache.blob_path(shas["d1/f4.bin"])], "only the blob whose stamp moved was hashed"
    fresh = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])  # another process, with only the index's stamps
    stamps = fresh.index.stamps(shas.values())
    for path, sha in shas.items():
        assert stamps[sha] == blob_stamp(os.stat(fresh.blob_path(sha))), f"{path}: its new stamp is recorded"
        assert fresh.index.get(sha).last_access > old + 3000, f"{path}: its access time is written"
    assert not os.path.samefile(edited, fresh.blob_path(shas["d1/f4.bin"])), "the edited blob was fetched again"
    hashed.clear()
    assert len(fresh.lookup_many(shas.values())) == len(shas) and hashed == []
    assert not [name for _, _, names in os.walk(root) for name in names if name.startswith(".wanllmdb-")]
    assert fresh.index.ref_digest("bulk/bulk", "v1") == art.digest, "the version is recorded with its digest"


def test_placing_links_a_new_name_keeps_a_same_file_and_replaces_another(tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(b"cached bytes")
    other = tmp_path / "other"
    other.write_bytes(b"something else")
    placer = Placer(str(tmp_path / "root"))
    target = placer.place("a/file.bin", str(src))
    assert os.path.samefile(target, src)
    assert placer.place("a/file.bin", str(src)) == target and os.path.samefile(target, src)
    placer.place("a/file.bin", str(other))  # a name taken by another file is replaced, atomically
    assert open(target, "rb").read() == b"something else" and src.read_bytes() == b"cached bytes"
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    os.symlink(outside, tmp_path / "root" / "a" / "planted")
    placed = placer.place("a/planted", str(src))
    assert not os.path.islink(placed) and os.path.samefile(placed, src)
    assert outside.read_bytes() == b"not yours", "a symlink at the name is replaced, never written through"
    assert sorted(os.listdir(tmp_path / "root" / "a")) == ["file.bin", "planted"]


def test_placing_across_filesystems_copies_whole_files(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    import tempfile

    src = tmp_path / "blob"
    src.write_bytes(os.urandom(5000))
    with tempfile.TemporaryDirectory(dir=shm) as root:
        placer = Placer(root)
        first = placer.place("x/one.bin", str(src))
        assert not placer.link, "link refused across filesystems: copies from now on"
        second = placer.place("x/two.bin", str(src))
        for target in (first, second):
            assert open(target, "rb").read() == src.read_bytes()
            assert os.stat(target).st_ino != os.stat(src).st_ino
        assert sorted(os.listdir(os.path.join(root, "x"))) == ["one.bin", "two.bin"]


def test_a_cached_download_that_copies_still_writes_every_access_time(tmp_path, monkeypatch, live_server):
    """Copies move no ctime: the hits' access times are written all the same, and no stamp changes."""
    import tempfile

    import wanllmdb

    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url)
    if live_server.api_key:
        monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
    monkeypatch.setattr(cache_store, "TOUCH_INTERVAL", -1.0)  # every hit's touch due, in this process too
    files = _log(tmp_path, "copied", 6)
    art = wanllmdb.Api().artifact("bulk/copied:latest")
    art.download(str(tmp_path / "one"))
    cache = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    shas = [_sha(data) for data in files.values()]
    old = time.time() - 3600
    cache.index.touch_blobs(dict.fromkeys(shas, 1), now=old)
    stamps = cache.index.stamps(shas)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as root:
        wanllmdb.Api().artifact("bulk/copied:latest").download(root)
        for path, data in files.items():
            assert open(os.path.join(root, path), "rb").read() == data
    assert all(cache.index.get(sha).last_access > old + 3000 for sha in shas)
    assert cache.index.stamps(shas) == stamps


def test_a_version_recorded_with_its_digest_is_only_touched_when_downloaded_again(tmp_path):
    from wanllmdb.cache import ArtifactCache
    from wanllmdb.manifest import Manifest, ManifestEntry

    def manifest(data: bytes) -> Manifest:
        return Manifest.from_entries([ManifestEntry("a.bin", len(data), hashlib.md5(data).hexdigest(), _sha(data))])

    cache = ArtifactCache(str(tmp_path / "c"))
    first, other = manifest(b"one"), manifest(b"two")
    cache.record("p/art", "v1", first, "digest-1")
    touched = cache.blobs.index.get_ref("p/art", "v1").last_access
    time.sleep(0.01)
    cache.record("p/art", "v1", other, "digest-1")  # same digest: the stored manifest stands
    ref = cache.blobs.index.get_ref("p/art", "v1")
    assert Manifest.from_json(ref.manifest_json) == first and ref.last_access > touched
    cache.record("p/art", "v1", other, "digest-2")  # another digest: recorded again
    assert Manifest.from_json(cache.blobs.index.get_ref("p/art", "v1").manifest_json) == other
    cache.record("p/art", "v1", first)  # no digest (the seed's put): always recorded
    assert Manifest.from_json(cache.blobs.index.get_ref("p/art", "v1").manifest_json) == first
    assert cache.blobs.index.ref_digest("p/art", "v1") is None


def test_touching_a_ref_leaves_its_manifest_row_alone_and_counts_everywhere(tmp_path, monkeypatch):
    """A ref's manifest is ~150 MB of JSON at a million files, and updating any column of a row rewrites all
    of it: its access time is kept apart. Every reader sees the later of the two times: the listing, a
    cleanup by age (a ref used lately stays however old its row), and a removal drops both."""
    import sqlite3

    from wanllmdb.cache import ArtifactCache
    from wanllmdb.cache import artifacts as cache_artifacts
    from wanllmdb.manifest import Manifest, ManifestEntry

    data = b"kept apart"
    manifest = Manifest.from_entries([ManifestEntry("a.bin", len(data), hashlib.md5(data).hexdigest(), _sha(data))])
    cache = ArtifactCache(str(tmp_path / "c"))
    cache.record("p/art", "v1", manifest, "digest-1")
    raw = sqlite3.connect(os.path.join(cache.root, "index.sqlite"))
    row = raw.execute("SELECT rowid, manifest, last_access FROM refs").fetchall()
    year = 365 * 86400
    raw.execute("UPDATE refs SET last_access = last_access - ?", (year,))  # as if recorded a year ago
    raw.commit()
    cache.record("p/art", "v1", manifest, "digest-1")  # downloaded again: only touched
    assert raw.execute("SELECT rowid, manifest, last_access + ? FROM refs", (year,)).fetchall() == row, (
        "the ref's own row was rewritten"
    )
    assert cache.blobs.index.get_ref("p/art", "v1").last_access == pytest.approx(time.time(), abs=60)
    assert cache.cleanup(max_size_gb=1, max_age_days=30)["removed_refs"] == 0, "a ref used just now was dropped"
    listed = cache.list()
    assert [r["version"] for r in listed] == ["v1"]
    cache.blobs.index.touch_ref("p/art", "v9")  # no such ref: nothing to remember
    assert raw.execute("SELECT artifact_id, version FROM ref_access").fetchall() == [("p/art", "v1")]

    later = time.time() + 2 * year  # two years on, neither time is recent: the ref goes, with its access time
    monkeypatch.setattr(cache_artifacts, "_now", lambda: later)
    assert cache.cleanup(max_size_gb=1, max_age_days=30)["removed_refs"] == 1
    assert raw.execute("SELECT count(*) FROM ref_access").fetchone() == (0,)
    assert cache.blobs.index.get_ref("p/art", "v1") is None


def test_a_lookup_that_outgrows_the_remembered_stamps_still_touches_every_hit(tmp_path, monkeypatch, scan_always):
    """Outside a download (a prefetch, a lookup) the stamps this process remembers are dropped whenever they
    reach MAX_KNOWN_STAMPS, also in the middle of one lookup: the hits' access times must not depend on them."""
    monkeypatch.setattr(cache_store, "MAX_KNOWN_STAMPS", 3)
    cache = BlobCache(str(tmp_path / "c"))
    blobs = {_sha(data): data for data in (os.urandom(500 + i) for i in range(10))}
    for sha, data in blobs.items():
        cache.ensure(sha, len(data), lambda writer, data=data: writer.write(data))
    cache.flush()
    old = time.time() - 7200
    cache.index.touch(list(blobs), now=old)
    fresh = BlobCache(str(tmp_path / "c"))  # another process: every stamp comes from the index
    assert set(fresh.lookup_many(blobs)) == set(blobs)
    assert all(fresh.index.get(sha).last_access > old + 3000 for sha in blobs), "a hit's access time was lost"


def test_an_index_from_before_ref_digests_gains_the_column_and_keeps_its_refs(tmp_path):
    import sqlite3

    path = str(tmp_path / "index.sqlite")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE refs (artifact_id TEXT NOT NULL, version TEXT NOT NULL, manifest TEXT NOT NULL, "
                "created REAL NOT NULL, last_access REAL NOT NULL, PRIMARY KEY (artifact_id, version))")
    old.execute("INSERT INTO refs VALUES ('p/art', 'v1', '{}', 1.0, 2.0)")
    old.commit()
    old.close()
    index = CacheIndex(path)
    assert index.get_ref("p/art", "v1").manifest_json == "{}"
    assert index.ref_digest("p/art", "v1") is None
    index.put_ref("p/art", "v2", "{}", "d")
    assert index.ref_digest("p/art", "v2") == "d"


def test_a_download_that_fails_midway_still_restamps_the_blobs_it_linked(tmp_path, monkeypatch, make_server):
    """One damaged blob on the server fails the download; the cached files it had linked by then keep a
    current stamp, so the next lookup hashes none of them."""
    import glob

    import wanllmdb
    from wanllmdb.errors import ChecksumError

    server = make_server()
    monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
    if server.api_key:
        monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key)
    files = _log(tmp_path, "first", 8)
    wanllmdb.Api().artifact("bulk/first:latest").download(str(tmp_path / "one"))  # all 8 now cached
    extra = os.urandom(3000)
    (tmp_path / "extra.bin").write_bytes(extra)
    with wanllmdb.init(project="bulk") as run:
        art = wanllmdb.Artifact("second", type="dataset")
        for path in files:
            art.add_file(str(tmp_path / "src" / path), name=path)
        art.add_file(str(tmp_path / "extra.bin"), name="zz/extra.bin")
        run.log_artifact(art)
    (stored,) = glob.glob(os.path.join(server.root, "**", _sha(extra)), recursive=True)
    os.chmod(stored, 0o644)
    with open(stored, "r+b") as f:  # the server now serves bytes that do not match the digest
        f.write(bytes([extra[0] ^ 0xFF]))
    with pytest.raises(ChecksumError):
        wanllmdb.Api().artifact("bulk/second:latest").download(str(tmp_path / "two"))
    for path, data in files.items():
        assert (tmp_path / "two" / path).read_bytes() == data, "the cached files were placed before the failure"
    hashed: list[str] = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda p: hashed.append(p) or real(p))
    fresh = BlobCache(os.environ["WANLLMDB_CACHE_DIR"])
    assert len(fresh.lookup_many([_sha(data) for data in files.values()])) == len(files)
    assert hashed == [], "their stamps were recorded although the download failed"
    assert not os.path.exists(fresh.blob_path(_sha(extra))), "nothing unverified was cached"
