"""The mount's namespace as plain values: nodes with stat-like attributes, built from listings and manifests.

Nothing here does I/O. :class:`VersionTree` turns one manifest into directories and files;
:func:`artifact_listing` turns an artifact's versions and aliases into ``v1 .. vN`` directories and alias
symlinks (``latest -> v2``). The layers above (projects, artifacts) are listed from registry summaries by
``core.ArtifactFS``.

Attributes follow what a finalized version promises: files 0444, directories 0555, symlinks 0777 (as
everywhere on Linux), every time inside a version is the version's finalize time, a directory's link count
is 2 plus its subdirectories, and ``st_blksize`` is large so that tools read in big requests.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..manifest import Manifest, ManifestEntry, parse_version

#: Preferred I/O size reported to readers (``st_blksize``): one FUSE request.
BLOCK_SIZE = 1 << 20
#: Large (chunked) files of a newly loaded version whose downloads are prepared at once.
PRESIGN_LARGE = 1000
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` reports for a node."""

    mode: int
    size: int
    mtime: float
    nlink: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def blocks(self) -> int:
        """512-byte blocks, so that ``du`` reports the content size."""
        return -(-self.size // 512)


def dir_attr(mtime: float, subdirs: int) -> Attr:
    return Attr(DIR_MODE, 0, mtime, 2 + subdirs)


def link_attr(target: str, mtime: float) -> Attr:
    return Attr(LINK_MODE, len(target.encode()), mtime, 1)


class FileNode:
    """A file of a version: its manifest entry (attributes are made on demand: a tree may hold 100,000s)."""

    __slots__ = ("entry", "mtime")

    def __init__(self, entry: ManifestEntry, mtime: float) -> None:
        self.entry = entry
        self.mtime = mtime

    @property
    def attr(self) -> Attr:
        return Attr(FILE_MODE, self.entry.size, self.mtime, 1)


class DirNode:
    """A directory: children by name (files, directories, or symlinks)."""

    __slots__ = ("children", "mtime", "subdirs")

    def __init__(self, mtime: float) -> None:
        self.children: dict[str, FileNode | DirNode | LinkNode] = {}
        self.mtime = mtime
        self.subdirs = 0

    @property
    def attr(self) -> Attr:
        return dir_attr(self.mtime, self.subdirs)

    def listing(self) -> list[tuple[str, Attr]]:
        """The children's names with their attributes (what ``readdir`` answers)."""
        return [(name, child.attr) for name, child in self.children.items()]

    def files(self) -> Iterator[tuple[str, ManifestEntry]]:
        """The files directly in this directory, by name, with their entries, in name order."""
        for name, child in self.children.items():  # (a version's entries come in path order)
            if isinstance(child, FileNode):
                yield name, child.entry


class LinkNode:
    """A relative symlink, e.g. the alias ``latest -> v2``."""

    __slots__ = ("target", "attr")

    def __init__(self, target: str, mtime: float) -> None:
        self.target = target
        self.attr = link_attr(target, mtime)


Node = FileNode | DirNode | LinkNode


class VersionTree:
    """Every directory and file of one finalized version (immutable once built).

    Args:
        manifest: the version's files; their paths are already validated relative POSIX paths, and a
            manifest never holds a path that is both a file and a directory.
        mtime: the version's finalize time, used for every node.
    """

    __slots__ = ("root", "file_count", "mtime", "large_entries")

    def __init__(self, manifest: Manifest, mtime: float) -> None:
        self.mtime = mtime
        self.root = DirNode(mtime)
        self.file_count = len(manifest)
        #: Files stored in chunks (read in ranges), in path order.
        self.large_entries: list[ManifestEntry] = []
        # Entries come sorted by path, so files of one directory arrive together: remembering the last
        # directory walked to saves re-walking it for each of its files.
        last_dir_path: str | None = None
        last_dir = self.root
        for entry in manifest:
            dir_path, _, name = entry.path.rpartition("/")
            if dir_path != last_dir_path:
                last_dir = self._make_dirs(dir_path)
                last_dir_path = dir_path
            last_dir.children[name] = FileNode(entry, mtime)
            if entry.chunks:
                self.large_entries.append(entry)

    def _make_dirs(self, dir_path: str) -> DirNode:
        node = self.root
        if not dir_path:
            return node
        for part in dir_path.split("/"):
            child = node.children.get(part)
            if child is None:
                child = DirNode(self.mtime)
                node.children[part] = child
                node.subdirs += 1
            node = child  # type: ignore[assignment]  # a manifest never has a file where a directory is
        return node

    def lookup(self, parts: list[str] | tuple[str, ...]) -> Node | None:
        """The node at ``parts`` (path segments below the version directory), or None."""
        node: Node = self.root
        for part in parts:
            if not isinstance(node, DirNode):
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    @property
    def weight(self) -> int:
        """Cost of keeping this tree in memory, in entries (for the LRU that bounds metadata)."""
        return self.file_count + 1


@dataclass(frozen=True)
class VersionRef:
    """A version directory known from an artifact listing, before its manifest is loaded."""

    version: int
    created_at: float


def artifact_listing(
    versions: Mapping[int, float], aliases: Mapping[str, int]
) -> Iterator[tuple[str, VersionRef | LinkNode]]:
    """Children of an artifact directory: ``vN`` for every version, a symlink for every alias.

    Args:
        versions: version number -> finalize time.
        aliases: alias -> version number (aliases spelled like versions are skipped: they would shadow
            the version directory of the same name).
    """
    for number in sorted(versions):
        yield f"v{number}", VersionRef(number, versions[number])
    for alias in sorted(aliases):
        target = aliases[alias]
        if target in versions and _not_version_name(alias):
            yield alias, LinkNode(f"v{target}", versions[target])


def _not_version_name(name: str) -> bool:
    try:
        return parse_version(name) is None
    except ValueError:
        return False


def split_path(path: str) -> list[str]:
    """``"/a/b/c"`` -> ``["a", "b", "c"]``; ``"/"`` -> ``[]``."""
    return [part for part in path.split("/") if part]
