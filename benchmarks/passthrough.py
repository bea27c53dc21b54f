"""A minimal read-only passthrough FUSE filesystem of one directory: the baseline for ``wanllmdb mount``.

    python benchmarks/passthrough.py SOURCE_DIR MOUNTPOINT      # serves in the foreground until unmounted

It is what "FUSE in Python" costs with nothing else in the way: mfusepy's stock ``read`` (``os.pread`` into a
bytes object, copied into the kernel's buffer), on the same libfuse as the mount (libfuse 3 when installed)
and with the kernel options the mount passes where they apply: ``ro``, ``kernel_cache``, ``max_readahead``
8 MiB, the same worker-thread limits, entry/attribute timeouts.
"""

from __future__ import annotations

import ctypes.util
import errno
import os
import sys

if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"  # as wanllmdb/fs/fuse_ops.py: mfusepy would pick libfuse 2 first

import mfusepy as fuse  # noqa: E402

TTL = 5.0
STAT_KEYS = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_blksize", "st_blocks")


class Passthrough(fuse.Operations):
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def init_with_config(self, conn_info, config_3) -> None:  # the same kernel options as the mount
        if config_3 is not None:
            config_3.kernel_cache = 1
            config_3.entry_timeout = TTL
            config_3.attr_timeout = TTL
            config_3.negative_timeout = 0.0
        if conn_info is not None:
            conn_info.max_readahead = 8 << 20

    def getattr(self, path: str, fh: int | None = None) -> dict:
        try:
            st = os.lstat(self._full(path))
        except OSError as exc:
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        attrs = {key: getattr(st, key) for key in STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise fuse.FuseOSError(errno.EROFS)
        return os.open(self._full(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict:
        st = os.statvfs(self._full(path))
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                    "f_files", "f_ffree", "f_namemax")}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    source, mountpoint = argv
    options = {"foreground": True, "ro": True, "fsname": "passthrough", "default_permissions": True,
               "entry_timeout": TTL, "attr_timeout": TTL, "negative_timeout": 0}
    if getattr(fuse, "fuse_version_major", 2) >= 3:
        options.update(max_threads=64, max_idle_threads=64)
    else:
        options.update(kernel_cache=True, max_read=1 << 20)
    fuse.FUSE(Passthrough(source), mountpoint, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
