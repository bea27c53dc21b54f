"""A minimal read-only passthrough FUSE filesystem of one directory: the baseline for ``wanllmdb mount``.

    python benchmarks/passthrough.py [--splice] SOURCE_DIR MOUNTPOINT   # serves in the foreground until unmounted

It is what "FUSE in Python" costs with nothing else in the way: mfusepy's stock ``read`` (``os.pread`` into a
bytes object, copied into the kernel's buffer), on the same libfuse as the mount (libfuse 3 when installed)
and with the kernel options the mount passes where they apply: ``ro``, ``kernel_cache``, ``max_readahead``
8 MiB, the same worker-thread limits, entry/attribute timeouts.

``--splice`` answers reads as the mount does (libfuse 3): with the source file's descriptor (``read_buf``),
spliced into /dev/fuse with no copy through Python, in requests of up to ``SPLICE_MAX_READ``. It is the
fastest any FUSE filesystem that keeps the kernel's page cache can serve a file it holds on local disk on
this libfuse (FUSE's own passthrough needs libfuse 3.16+): the floor of the mount's cached reads.
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


class SplicePassthrough(Passthrough):
    """Reads answered with the source file's descriptor, as ``wanllmdb mount`` answers them."""

    def init_with_config(self, conn_info, config_3) -> None:
        from wanllmdb.fs.fuse_ops import FUSE_CAP_SPLICE_WRITE, SPLICE_MAX_READ

        super().init_with_config(conn_info, config_3)
        if conn_info is not None:
            conn_info.want |= FUSE_CAP_SPLICE_WRITE
            conn_info.max_read = SPLICE_MAX_READ

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._sizes: dict[int, int] = {}

    def open(self, path: str, flags: int) -> int:
        fh = super().open(path, flags)
        self._sizes[fh] = os.fstat(fh).st_size
        return fh

    def read_buf(self, fh: int, offset: int, size: int) -> tuple[int, int]:
        return fh, max(0, min(size, self._sizes[fh] - offset))

    def release(self, path: str, fh: int) -> int:
        self._sizes.pop(fh, None)
        return super().release(path, fh)


def _splice_fuse():
    """mfusepy's FUSE with the mount's ``read_buf`` answer (``wanllmdb.fs.fuse_ops.reply_with_fd``)."""
    from wanllmdb.fs.fuse_ops import reply_with_fd

    class SpliceFUSE(fuse.FUSE):
        def read_buf(self, path, bufpp, size, offset, fip) -> int:
            fd, count = self.operations.read_buf(fip.contents.fh, offset, size)
            return reply_with_fd(bufpp, fd, offset, count)

    return SpliceFUSE


def main(argv: list[str]) -> int:
    splice = argv[:1] == ["--splice"]
    argv = argv[1:] if splice else argv
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
    if splice:
        from wanllmdb.fs.fuse_ops import SPLICE_MAX_READ

        options["max_read"] = SPLICE_MAX_READ
        fs_class, operations = _splice_fuse(), SplicePassthrough(source)
    else:
        fs_class, operations = fuse.FUSE, Passthrough(source)
    fs_class(operations, mountpoint, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
