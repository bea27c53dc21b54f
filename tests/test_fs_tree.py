"""The mount's path -> node tree, built from manifests without FUSE or a registry."""

from __future__ import annotations

import stat

from wanllmdb.fs.tree import (
    BLOCK_SIZE,
    DirNode,
    FileNode,
    LinkNode,
    VersionRef,
    VersionTree,
    artifact_listing,
    split_path,
)
from wanllmdb.manifest import Manifest, ManifestEntry

MD5 = "0" * 32
SHA = "a" * 64


def entry(path: str, size: int = 10) -> ManifestEntry:
    return ManifestEntry(path, size, MD5, SHA)


def tree_of(*paths: str, mtime: float = 1700000000.5) -> VersionTree:
    return VersionTree(Manifest.from_entries(entry(p, size=len(p)) for p in paths), mtime)


def test_files_and_nested_directories_resolve_by_segments():
    tree = tree_of("train.csv", "images/a/1.png", "images/a/2.png", "images/b/3.png", "README")
    node = tree.lookup(["images", "a", "2.png"])
    assert isinstance(node, FileNode) and node.entry.path == "images/a/2.png"
    assert isinstance(tree.lookup(["images", "b"]), DirNode)
    assert tree.lookup([]) is tree.root
    assert sorted(tree.root.children) == ["README", "images", "train.csv"]
    assert sorted(tree.lookup(["images"]).children) == ["a", "b"]


def test_missing_paths_and_paths_through_files_are_none():
    tree = tree_of("a/b.txt")
    assert tree.lookup(["a", "c.txt"]) is None
    assert tree.lookup(["nope"]) is None
    assert tree.lookup(["a", "b.txt", "deeper"]) is None


def test_attributes_are_read_only_with_version_time_and_link_counts():
    mtime = 1712345678.25
    tree = tree_of("x/y/z.bin", "x/w.bin", "x/v/u.bin", "top.bin", mtime=mtime)
    file_attr = tree.lookup(["top.bin"]).attr
    assert file_attr.mode == stat.S_IFREG | 0o444
    assert file_attr.size == len("top.bin")
    assert file_attr.mtime == mtime
    assert file_attr.nlink == 1
    assert file_attr.blocks == 1
    x = tree.lookup(["x"]).attr
    assert x.mode == stat.S_IFDIR | 0o555
    assert x.nlink == 2 + 2  # y and v
    assert tree.root.attr.nlink == 2 + 1
    assert tree.lookup(["x", "y"]).attr.nlink == 2
    assert BLOCK_SIZE >= 1 << 20


def test_weight_counts_entries_for_the_metadata_lru():
    tree = tree_of(*[f"d/{i}.txt" for i in range(50)])
    assert tree.file_count == 50
    assert tree.weight == 51


def test_artifact_listing_has_versions_and_alias_symlinks():
    versions = {1: 100.0, 2: 200.0, 3: 300.0}
    aliases = {"latest": 3, "best": 1, "gone": 9}
    listing = dict(artifact_listing(versions, aliases))
    assert [name for name in listing if name.startswith("v")] == ["v1", "v2", "v3"]
    assert isinstance(listing["v2"], VersionRef) and listing["v2"].created_at == 200.0
    latest, best = listing["latest"], listing["best"]
    assert isinstance(latest, LinkNode) and latest.target == "v3"
    assert isinstance(best, LinkNode) and best.target == "v1"
    assert stat.S_ISLNK(best.attr.mode) and best.attr.size == 2 and best.attr.mtime == 100.0
    assert "gone" not in listing  # an alias to a version that is not listed would dangle


def test_an_alias_spelled_like_a_version_never_shadows_the_version_directory():
    listing = dict(artifact_listing({1: 1.0, 2: 2.0}, {"v1": 2}))
    assert isinstance(listing["v1"], VersionRef)


def test_split_path():
    assert split_path("/") == []
    assert split_path("/a/b/c") == ["a", "b", "c"]
    assert split_path("a//b/") == ["a", "b"]


def test_a_version_of_100k_files_builds():
    # How the time grows with the file count is measured by benchmarks/bench_scale.py, not asserted here.
    manifest = Manifest.from_entries(entry(f"d{i // 1000:03d}/f{i:06d}.txt") for i in range(100_000))
    tree = VersionTree(manifest, 1.0)
    assert tree.file_count == 100_000
    assert len(tree.root.children) == 100
    assert tree.root.attr.nlink == 102
