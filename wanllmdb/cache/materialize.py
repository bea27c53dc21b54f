"""Place cached blobs as files under a target root: reflinks where the filesystem offers them, else hard links,
else copies.

A reflink (``FICLONE``: btrfs, XFS) costs what a link costs and shares no inode with the cache, so editing the
file never touches the cached blob. Without one, a hard link (tens of microseconds) is chosen over a copy
(0.5-2.3 s per GB on this project's machines, and twice the disk): an edit through the link then changes the
blob, which the cache notices at its next hit (``store.py``) and never serves.

Nothing is ever written outside the root: every path is validated, and a parent directory that resolves
outside the root (a symlink planted inside it) is refused. Each file appears atomically (link or copy to a
temporary name in the same directory, then ``os.replace``; a hard link to a new name is made there directly,
since ``link`` is atomic itself), so an interrupted download leaves whole files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Mapping

from ..errors import InvalidPathError
from ..manifest import Manifest, validate_path

#: ``_IOW(0x94, 9, int)`` from linux/fs.h: make the target share the source's extents (copy on write).
FICLONE = 0x40049409
#: What a filesystem (or a pair of them) without reflinks answers.
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.ENOSYS)
#: What ``link`` answers where the cache and the root cannot share an inode (then files are copied).
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class Placer:
    """Places files under one root, remembering which directories it already checked."""

    def __init__(self, root: str, *, link: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        os.makedirs(self.root, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self._checked_dirs: set[str] = set()
        self.link = link
        self.reflink = True  # until the filesystem says it has none

    def target(self, rel_path: str) -> str:
        """Absolute path for ``rel_path`` under the root, after checking that it stays inside."""
        validate_path(rel_path)
        target = os.path.join(self.root, *rel_path.split("/"))
        parent = os.path.dirname(target)
        if parent not in self._checked_dirs:
            os.makedirs(parent, exist_ok=True)
            real = os.path.realpath(parent)
            if real != self._real_root and not real.startswith(self._real_root + os.sep):
                raise InvalidPathError(
                    f"refusing to write {rel_path!r}: its directory resolves outside {self.root}"
                )
            self._checked_dirs.add(parent)
        return target

    def place(self, rel_path: str, src: str) -> str:
        """Make ``rel_path`` under the root hold the bytes of ``src``; returns the target path."""
        target = self.target(rel_path)
        if self.link and not self.reflink:
            # A new name, linked straight in: ``link`` makes it whole or not at all, and refuses a name that
            # exists. One call where a temporary name and a rename cost three (12 against 28 µs a file here).
            try:
                if self._link(src, target):
                    return target
            except FileExistsError:
                pass  # replaced below, unless it already is this file
        try:  # the target first: in a new download it is missing, and src need not be looked at
            there = os.stat(target)
            if os.path.samestat(os.stat(src), there):
                return target
        except FileNotFoundError:
            pass
        # A short name of its own: the final name may already be NAME_MAX (255 bytes) long.
        tmp = os.path.join(os.path.dirname(target), f".wanllmdb-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        placed = False
        try:
            if self.reflink and _clone(src, tmp):
                os.replace(tmp, target)
                placed = True
                return target
            self.reflink = False
            if not (self.link and self._link(src, tmp)):
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            placed = True
        finally:
            if not placed and os.path.lexists(tmp):
                os.unlink(tmp)
        return target

    def _link(self, src: str, dst: str) -> bool:
        """Hard-link ``src`` as ``dst``; False, and copies from now on, where the two cannot share an inode."""
        try:
            os.link(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            self.link = False
            return False


def _clone(src: str, dst: str) -> bool:
    """Make ``dst`` a reflink of ``src``; False (and no ``dst``) where the filesystem offers none."""
    with open(src, "rb") as fin, open(dst, "xb") as out:
        try:
            fcntl.ioctl(out.fileno(), FICLONE, fin.fileno())
            return True
        except OSError as exc:
            if exc.errno not in _NO_REFLINK:
                raise
    os.unlink(dst)
    return False


def materialize(manifest: Manifest, root: str, blob_paths: Mapping[str, str], *, link: bool = True) -> str:
    """Place every file of ``manifest`` under ``root`` from ``blob_paths`` (sha256 -> cached path)."""
    placer = Placer(root, link=link)
    for entry in manifest:
        placer.place(entry.path, blob_paths[entry.sha256])
    return placer.root
