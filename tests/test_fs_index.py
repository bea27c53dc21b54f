"""The on-disk index of a large version (``fs/index.py``) against the in-memory tree it stands in for, and the
streamed manifest parse it is built from (``manifest/stream.py``), without FUSE or a registry."""

from __future__ import annotations

import io
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanllmdb.errors import InvalidManifestError, TransportError
from wanllmdb.fs.index import IndexedTree, IndexFolder
from wanllmdb.fs.tree import DirNode, FileNode, VersionTree
from wanllmdb.manifest import Manifest, ManifestEntry
from wanllmdb.manifest.stream import iter_entries

MD5 = "0" * 32


def sha(i: int) -> str:
    return f"{i:064x}"


def entry(path: str, size: int = 10, i: int = 0) -> ManifestEntry:
    return ManifestEntry(path, size, MD5, sha(i))


def manifest_of(*paths: str) -> Manifest:
    return Manifest.from_entries(entry(p, size=len(p), i=i) for i, p in enumerate(paths))


def build(tmp_path, entries, **kwargs) -> IndexedTree:
    folder = tmp_path / "index"
    folder.mkdir(exist_ok=True)
    return IndexedTree.build(str(folder / "v.sqlite"), entries, 1700000000.5, **kwargs)


def same_tree(indexed: IndexedTree, memory: VersionTree) -> None:
    """Every directory lists the same children with the same attributes; every file has the same entry."""
    assert indexed.file_count == memory.file_count
    assert indexed.root.attr == memory.root.attr
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        got, want = indexed.lookup(list(parts)), memory.lookup(list(parts))
        assert isinstance(got, DirNode) and isinstance(want, DirNode)
        assert got.attr == want.attr, parts
        assert sorted(got.listing()) == sorted(want.listing()), parts  # (from the index: not loaded yet)
        assert sorted(got.children) == sorted(want.children), parts
        assert list(got.files()) == list(want.files()), parts
        assert sorted(got.listing()) == sorted(want.listing()), parts  # (from the loaded directory)
        for name, child in want.children.items():
            mine = got.children[name]
            assert mine.attr == child.attr, (*parts, name)
            assert indexed.lookup([*parts, name]).attr == child.attr  # the point lookup agrees with the listing
            if isinstance(child, FileNode):
                assert isinstance(mine, FileNode) and mine.entry == child.entry
            else:
                pending.append((*parts, name))


def test_an_index_answers_as_the_in_memory_tree_does(tmp_path):
    large = ManifestEntry("big/model.bin", 3000, MD5, sha(99), chunk_size=1024, chunks=tuple(sha(i) for i in (1, 2, 3)))
    ref = ManifestEntry("refs/data.csv", 5, MD5, sha(7), ref="https://example.com/data.csv", etag='"e1"')
    plain = manifest_of("train.csv", "images/a/1.png", "images/a/2.png", "images/b/3.png", "README", "ünï/çødé.txt")
    manifest = Manifest.from_entries([*plain, large, ref])
    indexed = build(tmp_path, iter(manifest))
    same_tree(indexed, VersionTree(manifest, 1700000000.5))
    assert [e.path for e in indexed.large_entries] == ["big/model.bin"]
    assert indexed.lookup(["big", "model.bin"]).entry == large
    assert indexed.lookup(["nope"]) is None
    assert indexed.lookup(["train.csv", "deeper"]) is None
    assert indexed.lookup(["images", "c"]) is None


_segment = st.text(alphabet="abc", min_size=1, max_size=2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_segment, min_size=1, max_size=4).map("/".join), min_size=1, max_size=40, unique=True))
def test_any_tree_indexes_to_what_memory_holds(tmp_path_factory, paths):
    try:
        manifest = manifest_of(*paths)
    except InvalidManifestError:  # a path that is also a directory: refused by both (see below)
        with pytest.raises(InvalidManifestError, match="is a file and also a directory"):
            build(tmp_path_factory.mktemp("idx"), (entry(p, i=i) for i, p in enumerate(paths)))
        return
    # entries in any order build the same index (another writer's text need not be sorted)
    entries = sorted(manifest, key=lambda e: e.path[::-1])
    same_tree(build(tmp_path_factory.mktemp("idx"), iter(entries), dir_entries=8), VersionTree(manifest, 1700000000.5))


def test_listed_directories_held_in_memory_stay_within_the_bound(tmp_path):
    paths = [f"d{i // 100:02d}/f{i:04d}" for i in range(2000)]
    indexed = build(tmp_path, iter(manifest_of(*paths)), dir_entries=350)
    for d in range(20):
        listed = indexed.lookup([f"d{d:02d}"]).children
        assert len(listed) == 100
        assert indexed.loaded_entries() <= 350
    assert indexed.loaded_entries() > 0
    assert indexed.lookup(["d05", "f0512"]).entry.path == "d05/f0512"


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["a/b", "c", "a/b"], "duplicate path in manifest: 'a/b'"),
        (["a", "a/b"], "'a' is a file and also a directory"),
        (["x/y", "x/y/z"], "'x/y' is a file and also a directory"),
    ],
)
def test_a_manifest_no_filesystem_can_show_is_refused_and_leaves_no_file(tmp_path, paths, message):
    with pytest.raises(InvalidManifestError, match=message):
        build(tmp_path, (entry(p, i=i) for i, p in enumerate(paths)))
    assert not os.listdir(tmp_path / "index")


def test_a_duplicate_across_batches_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr("wanllmdb.fs.index.BATCH", 3)
    paths = [f"f{i}" for i in range(10)] + ["f4"]
    with pytest.raises(InvalidManifestError, match="duplicate path in manifest: 'f4'"):
        build(tmp_path, (entry(p) for p in paths))
    assert not os.listdir(tmp_path / "index")


def test_a_broken_answer_leaves_no_file(tmp_path):
    def entries():
        yield entry("a/1")
        yield entry("a/2")
        raise TransportError("the answer broke off")

    with pytest.raises(TransportError):
        build(tmp_path, entries())
    assert not os.listdir(tmp_path / "index")


def test_dropping_the_tree_removes_its_file(tmp_path):
    indexed = build(tmp_path, iter(manifest_of("a", "b/c")))
    assert os.listdir(tmp_path / "index") == ["v.sqlite"]
    indexed.close()
    assert not os.listdir(tmp_path / "index")


def test_an_index_folder_left_by_a_dead_mount_is_removed_by_the_next(tmp_path):
    tmp_path = tmp_path / "index"
    first = IndexFolder(str(tmp_path))
    open(first.new_file(), "w").close()
    second = IndexFolder(str(tmp_path))  # the first is alive (its lock held): left alone
    assert os.path.isdir(first.path)
    first._lock.close()  # what the kernel does when its mount dies
    third = IndexFolder(str(tmp_path))
    assert not os.path.exists(first.path)
    assert sorted(os.listdir(tmp_path)) == sorted([*(os.path.basename(f.path) for f in (second, third)), "kept"])
    second.close()
    third.close()
    assert os.listdir(tmp_path) == ["kept"]  # the indexes kept for later mounts (none here)
    assert not os.listdir(tmp_path / "kept")


def test_a_kept_index_serves_later_folders_and_outlives_the_mounts_that_used_it(tmp_path):
    entries = [entry(f"d{i % 3}/f{i}.bin", i=i) for i in range(40)]
    first = IndexFolder(str(tmp_path / "index"))
    built = IndexedTree.build(first.new_file(), entries, 0.0)
    first.keep(built.path, "a" * 32)
    second = IndexFolder(str(tmp_path / "index"))
    path = second.kept("a" * 32)
    assert path is not None and os.path.dirname(path) == second.path  # its own name for it
    kept = IndexedTree(path, 0.0)
    assert kept.file_count == 40
    assert kept.lookup(["d1", "f4.bin"]).entry == entries[4]
    assert sorted(kept.root.children) == ["d0", "d1", "d2"]
    built.close()
    kept.close()
    first.close()
    second.close()
    assert os.listdir(tmp_path / "index" / "kept") == ["a" * 32 + ".s1.sqlite"]
    third = IndexFolder(str(tmp_path / "index"))
    assert third.kept("b" * 32) is None, "another version's id finds nothing"
    again = IndexedTree(third.kept("a" * 32), 0.0)
    assert again.lookup(["d2", "f5.bin"]).entry == entries[5]
    again.close()
    third.close()


@pytest.mark.parametrize("version_id", ["", "short", "../../etc/x" + "0" * 20, "a/b" + "0" * 30])
def test_an_id_that_cannot_name_a_file_keeps_nothing(tmp_path, version_id):
    folder = IndexFolder(str(tmp_path / "index"))
    tree = IndexedTree.build(folder.new_file(), [entry("a.bin")], 0.0)
    folder.keep(tree.path, version_id)
    assert folder.kept(version_id) is None
    assert os.listdir(tmp_path / "index" / "kept") == []
    assert not os.path.exists(tmp_path / "etc")
    tree.close()
    folder.close()


def test_kept_indexes_stay_within_their_bound_least_recently_used_first(tmp_path):
    folder = IndexFolder(str(tmp_path / "index"), kept_bytes=1)  # any index is over: room for the newest only
    roomy = IndexFolder(str(tmp_path / "index"))
    trees = []
    for n, version_id in enumerate(("a" * 32, "b" * 32, "c" * 32)):
        trees.append(IndexedTree.build(roomy.new_file(), [entry(f"f{i}") for i in range(n + 5)], 0.0))
        roomy.keep(trees[-1].path, version_id)
    os.utime(os.path.join(roomy.kept_dir, "a" * 32 + ".s1.sqlite"), (1, 1))  # the least recently used
    assert roomy.kept("b" * 32) is not None  # used now
    roomy._kept_bytes = sum(os.path.getsize(os.path.join(roomy.kept_dir, n)) for n in os.listdir(roomy.kept_dir)) - 1
    roomy._trim()
    assert sorted(os.listdir(roomy.kept_dir)) == ["b" * 32 + ".s1.sqlite", "c" * 32 + ".s1.sqlite"]
    d = IndexedTree.build(folder.new_file(), [entry("x")], 0.0)
    folder.keep(d.path, "d" * 32)
    assert os.listdir(folder.kept_dir) == []  # nothing fits 1 byte: kept, then trimmed at once
    assert d.lookup(["x"]) is not None, "the mount's own link stays usable"
    for tree in (*trees, d):
        tree.close()
    folder.close()
    roomy.close()


# --- the streamed parse ----------------------------------------------------------------------------------


def test_the_canonical_text_streams_to_the_same_entries_as_a_whole_parse():
    manifest = Manifest.from_entries(
        [entry(f"d/{i}.bin", i=i) for i in range(3000)]
        + [ManifestEntry("big", 5000, MD5, sha(1), chunk_size=2048, chunks=(f"blake3:{sha(2)}",) * 3)]
        + [ManifestEntry("r", 0, MD5, sha(3), ref="s3://bucket/key")]
    )

    class Trickle(io.BytesIO):  # a body that arrives a few bytes at a time
        def read(self, size=-1):
            return super().read(7 if size is None or size < 0 else min(size, 7))

    assert list(iter_entries(Trickle(manifest.to_json().encode()))) == list(manifest)


def test_another_spelling_of_a_manifest_is_read_too():
    manifest = manifest_of("b", "a/c")
    text = json.dumps({"entries": [e.to_dict() for e in manifest], "format": 1}, indent=2)
    assert list(iter_entries(io.BytesIO(text.encode()))) == list(manifest)


def _one_entry(fields: str) -> bytes:
    return f'{{"format":1,"entries":[{{{fields},"md5":"{MD5}","sha256":"{sha(0)}"}}]}}'.encode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"format":1,"entries":[{"path":"a"}]}', "lacks 'size'"),
        (b'{"format":1,"entries":[', "not valid JSON"),
        (b'{"format":1,"entries":[]} trailing', "not valid JSON"),
        (b'{"format":2,"entries":[]}', "unsupported manifest format 2"),
        (b"[]", "must be an object"),
        (b"", "not valid JSON"),
        (_one_entry('"path":"../x","size":1'), r"\.\."),
        (_one_entry('"path":"a","size":1.5'), "size must be an integer"),
    ],
)
def test_a_bad_manifest_text_names_what_is_wrong(text, message):
    with pytest.raises(InvalidManifestError, match=message):
        list(iter_entries(io.BytesIO(text)))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-tree-entries", "0"], "--max-tree-entries must be at least 1, got 0"),
        (["--index-min", "-3"], "--index-min must be at least 1, got -3"),
        (["--index-min", "many"], "invalid int value: 'many'"),
    ],
)
def test_bad_index_options_of_the_mount_are_refused_in_one_line(tmp_path, args, named):
    from tests.support.mount import run_cli

    (tmp_path / "mnt").mkdir()
    result = run_cli("mount", str(tmp_path / "mnt"), *args, timeout=30)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert named in result.stderr, result.stderr
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1 << 16])
def test_the_embedded_registry_reads_a_stored_text_as_its_bytes_a_piece_at_a_time(monkeypatch, size):
    from wanllmdb.registry.local import _EncodedText

    monkeypatch.setattr(_EncodedText, "PIECE", 5)
    text = "plain, ünïcödé ✓, 日本語, 𝄞 and more " * 40
    reader = _EncodedText(text)
    assert reader.read(0) == b""
    pieces = []
    while piece := reader.read(size):
        assert len(piece) <= size
        pieces.append(piece)
    assert b"".join(pieces) == text.encode()
    half = _EncodedText(text)
    assert half.read(10) + half.read(-1) == text.encode()


def test_an_index_from_elsewhere_is_checked_before_it_is_opened(tmp_path):
    """``check_index`` (what a mount runs on a server-built index before opening it) passes a sound index and
    counts its files, and refuses a file that is not SQLite, a SQLite file of other tables, one whose tables
    differ from the schema's, and a damaged one; ``write_index`` leaves nothing behind a bad manifest."""
    import sqlite3

    from wanllmdb.fs.index import check_index, write_index

    entries = [ManifestEntry(f"d{i % 3}/f{i}.txt", i, "a" * 32, "b" * 64) for i in range(500)]
    sound = str(tmp_path / "sound.sqlite")
    assert write_index(sound, entries) == 500
    assert check_index(sound) == 500

    not_sqlite = tmp_path / "text.sqlite"
    not_sqlite.write_bytes(b"SQLite format 2\x00" + b"x" * 5000)
    other = str(tmp_path / "other.sqlite")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE files (a, b)")
    altered = str(tmp_path / "altered.sqlite")
    write_index(altered, entries)
    with sqlite3.connect(altered) as conn:
        conn.execute("ALTER TABLE files ADD COLUMN planted TEXT")
    damaged = tmp_path / "damaged.sqlite"
    data = bytearray(open(sound, "rb").read())
    for page in range(4096, len(data), 4096):  # every page past the first: its cell count and content start
        data[page + 3] ^= 0xFF
        data[page + 5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    for bad in (str(not_sqlite), other, altered, str(damaged)):
        with pytest.raises(sqlite3.DatabaseError):
            check_index(bad)

    twice = [*entries, entries[7]]
    with pytest.raises(InvalidManifestError, match="duplicate path"):
        write_index(str(tmp_path / "bad.sqlite"), twice)
    assert not (tmp_path / "bad.sqlite").exists()
