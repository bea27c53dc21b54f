"""The thin FUSE skin over :class:`~wanllmdb.fs.core.ArtifactFS`: the only module that imports fuse or knows errno.

Binding: mfusepy (fusepy's maintained fork) on libfuse 3 when it is installed — ``FUSE_LIBRARY_NAME=fuse3``
is set before the import, since mfusepy otherwise prefers libfuse 2 — else whatever mfusepy finds, else
fusepy on libfuse 2.

Four callbacks bypass mfusepy's generic wrappers, because they carry the volume:

- ``read_buf`` (libfuse 3) answers a read with the cache file's descriptor and offset, once the reader has
  the bytes present and verified: libfuse splices them from the file's pages into /dev/fuse
  (``FUSE_CAP_SPLICE_WRITE``), with no copy through user space and no Python touching the bytes. Reads are
  capped at ``SPLICE_MAX_READ`` (1 MiB less 16 KiB) because libfuse splices only through a pipe holding
  the whole reply and an unprivileged mount cannot grow a pipe past ``pipe-max-size`` (1 MiB);
  ``WANLLMDB_MOUNT_READ_BUF=0`` goes back to ``read``;
- ``read`` (libfuse 2, or with read_buf off) fills the kernel's buffer with ``preadv`` directly (no
  intermediate bytes object, no memmove);
- ``readdir`` (libfuse 3) answers READDIRPLUS with full attributes and real offsets, so ``ls -l`` and
  ``find`` of a 100,000-file version cost a few hundred requests instead of one lookup per entry
  (libfuse only forwards the attributes of entries given with an offset and ``FUSE_FILL_DIR_PLUS``);
- directory listings are snapshot at ``opendir`` and served by offset from the snapshot;
- "no open": the first OPEN is answered ENOSYS where the kernel supports it (``FUSE_CAP_NO_OPEN_SUPPORT``),
  so the kernel opens files itself and sends neither OPEN nor RELEASE again: per file read, two FUSE round
  trips (and Python callbacks) fewer. Reads then come with file handle 0 and find their file by path
  (``fs/pathhandles.py``, which also keeps each descriptor open until libfuse has spliced from it); the
  fetch and verification that ``open`` did happen at the first read instead, so a file that cannot be
  fetched fails its first read with EIO instead of its open. Off by default, on with
  ``WANLLMDB_MOUNT_NO_OPEN=1``: without OPEN the kernel says nothing of which open file a read comes from,
  so the readers of one file share one handle and one read-ahead (4 parallel ``dd`` of the quarters of a
  cold 512 MiB file: 270-298 MB/s and 1.74-2.04 mount CPU-s against 400-420 MB/s and 1.22-1.25 with OPEN).

Kernel options: read-only (``ro``), ``kernel_cache`` (version content never changes, so pages stay cached
across opens), entry/attribute timeouts equal to the metadata TTL (they are global in the high-level API,
so listings of new versions and aliases still refresh in time), no negative caching, many worker threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import (
    InvalidInputError,
    IsDirectoryError,
    MountError,
    NotDirectoryError,
    NotFoundError,
    ReadOnlyError,
    WanllmdbError,
)
from .core import ArtifactFS, AttributeMissingError, AttributeUnsupportedError
from .tree import BLOCK_SIZE, DIR_MODE, Attr

logger = logging.getLogger(__name__)


def _import_fuse() -> Any:
    if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy

        return mfusepy
    except ImportError:
        pass
    except OSError as exc:
        raise MountError(f"FUSE is not available on this machine: {exc} (install fuse3)") from None
    try:
        import fuse  # fusepy

        return fuse
    except (ImportError, OSError) as exc:
        raise MountError(f"FUSE is not available on this machine: {exc} (install fuse3 and mfusepy)") from None


fuse = _import_fuse()
FUSE_MAJOR: int = getattr(fuse, "fuse_version_major", 2)
_FILL_DIR_PLUS = 2
_READDIR_PLUS = 1

_ERRNO: tuple[tuple[type[BaseException], int], ...] = (
    (AttributeMissingError, errno.ENODATA),
    (AttributeUnsupportedError, errno.EOPNOTSUPP),
    (NotFoundError, errno.ENOENT),
    (ReadOnlyError, errno.EROFS),
    (IsDirectoryError, errno.EISDIR),
    (NotDirectoryError, errno.ENOTDIR),
    (InvalidInputError, errno.EINVAL),
    (WanllmdbError, errno.EIO),
)


def errno_for(exc: BaseException) -> int:
    """The errno a failed operation answers with: EIO for every fetch, transport or checksum failure."""
    for kind, number in _ERRNO:
        if isinstance(exc, kind):
            return number
    return errno.EIO


#: Callbacks that read an open file's bytes (their failures are the reader's, logged by it).
_READS = ("read", "read_into", "read_buf", "read_buf_path")


def _translated(method: Callable) -> Callable:
    """Turn wanllmdb errors into FuseOSError(errno); log what is not a plain "no such file"."""

    @functools.wraps(method)
    def wrapper(self: FuseOperations, *args: Any) -> Any:
        try:
            return method(self, *args)
        except WanllmdbError as exc:
            number = errno_for(exc)
            if number == errno.ENOENT and method.__name__ in _READS:
                # An open file whose bytes are gone (its version deleted and collected): the file is there,
                # its content cannot be had. ENOENT from read() would say the opposite.
                logger.warning("a read failed: %s", exc)
                number = errno.EIO
            if number == errno.EIO and method.__name__ not in (*_READS, "open"):
                logger.error("%s %s failed: %s", method.__name__, args[0] if args else "", exc)
            raise fuse.FuseOSError(number) from None
        except OSError:
            raise
        except Exception:
            logger.exception("%s %s failed unexpectedly", method.__name__, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper


def attr_dict(attr: Attr, uid: int, gid: int) -> dict[str, int]:
    """A stat dict as mfusepy wants it (times in nanoseconds: ``use_ns``)."""
    ns = int(attr.mtime * 1e9)
    return {
        "st_mode": attr.mode,
        "st_nlink": attr.nlink,
        "st_size": attr.size,
        "st_uid": uid,
        "st_gid": gid,
        "st_blksize": BLOCK_SIZE,
        "st_blocks": attr.blocks,
        "st_mtime": ns,
        "st_ctime": ns,
        "st_atime": ns,
    }


class FuseOperations(fuse.Operations):  # type: ignore[misc, name-defined]
    """Operations for mfusepy: each one a call into ArtifactFS.

    Args:
        fs: the filesystem logic.
        metadata_ttl: seconds the kernel may cache entries and attributes.
        on_init: called (on a FUSE thread) once the kernel connection is initialised.
    """

    use_ns = True

    def __init__(self, fs: ArtifactFS, *, metadata_ttl: float, on_init: Callable[[], None] | None = None) -> None:
        self.fs = fs
        self.metadata_ttl = metadata_ttl
        self._on_init = on_init
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._dirs: dict[int, list[tuple[bytes, dict[str, int], bool]]] = {}
        self._dir_lock = threading.Lock()
        self._next_dir = 1
        #: Whether the kernel was told to open files itself (see the module docstring), set at init.
        self.no_open = False

    # --- lifecycle --------------------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if config_3 is not None:
            config_3.kernel_cache = 1
            config_3.entry_timeout = self.metadata_ttl
            config_3.attr_timeout = self.metadata_ttl
            config_3.negative_timeout = 0.0
        if conn_info is not None:
            # The kernel caps this by the device's read_ahead_kb; the mount process raises that too.
            conn_info.max_readahead = 8 << 20
            if _read_buf_enabled():
                # reads answered with a descriptor (read_buf) go from the cache file's pages into /dev/fuse by
                # splice, with no copy through user space (libfuse falls back to pread + writev otherwise)
                conn_info.want |= FUSE_CAP_SPLICE_WRITE
                conn_info.max_read = SPLICE_MAX_READ  # libfuse refuses to mount unless it matches the option
                # reads by path need read_buf (it gets the path); the kernel says whether it can open by itself
                self.no_open = _no_open_enabled() and bool(conn_info.capable & FUSE_CAP_NO_OPEN_SUPPORT)
            logger.info("kernel opens files itself (no OPEN/RELEASE requests): %s", self.no_open)
        if self._on_init is not None:
            self._on_init()

    def destroy(self, path: str) -> None:
        self.fs.shutdown()

    # --- metadata ---------------------------------------------------------------------------------------

    @_translated
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return attr_dict(self.fs.getattr(path), self._uid, self._gid)

    @_translated
    def readlink(self, path: str) -> str:
        return self.fs.readlink(path)

    @_translated
    def opendir(self, path: str) -> int:
        listing = []
        # Files of one version mostly share their attributes (same time, often the same size): one stat dict
        # per distinct Attr, shared by its entries, which readdir_fuse_3 also turns into one C stat each.
        shared: dict[Attr, dict[str, int]] = {}
        for name, attr in self.fs.readdir(path):
            if attr is None or name in (".", ".."):  # dot entries never carry READDIRPLUS attributes
                mode = attr.mode if attr is not None else DIR_MODE
                listing.append((name.encode("utf-8", "surrogateescape"), {"st_mode": mode}, False))
            else:
                st = shared.get(attr)
                if st is None:
                    st = shared[attr] = attr_dict(attr, self._uid, self._gid)
                listing.append((name.encode("utf-8", "surrogateescape"), st, True))
        with self._dir_lock:
            fh = self._next_dir
            self._next_dir += 1
            self._dirs[fh] = listing
        return fh

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Generic path (libfuse 2): names with their modes."""
        return [(name.decode("utf-8", "surrogateescape"), st, 0) for name, st, _ in self._dirs.get(fh, [])]

    def listing(self, fh: int) -> list[tuple[bytes, dict[str, int], bool]]:
        return self._dirs.get(fh, [])

    def releasedir(self, path: str, fh: int) -> int:
        with self._dir_lock:
            self._dirs.pop(fh, None)
        return 0

    @_translated
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.fs.getxattr(path, name)

    @_translated
    def listxattr(self, path: str) -> list[str]:
        return self.fs.listxattr(path)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": BLOCK_SIZE, "f_frsize": BLOCK_SIZE, "f_namemax": 255}

    # --- files ------------------------------------------------------------------------------------------

    @_translated
    def open(self, path: str, flags: int) -> int:
        if self.no_open:
            # "success, and open every file yourself from now on": the kernel only sends OPEN for a file it
            # looked up, writes are refused by the read-only mount before they get here, and the reads that
            # follow find the file by path (read_buf_path), which checks what open would have
            raise fuse.FuseOSError(errno.ENOSYS)
        return self.fs.open(path, flags)

    @_translated
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.fs.read(fh, size, offset)

    @_translated
    def read_into(self, view: memoryview, offset: int, fh: int) -> int:
        return self.fs.read_into(fh, offset, view)

    @_translated
    def read_buf(self, fh: int, offset: int, size: int) -> tuple[int, int, int]:
        """The descriptor, position and byte count libfuse serves ``[offset, offset + size)`` from (see
        ``_KernelFUSE``)."""
        return self.fs.ready(fh, offset, size)

    @_translated
    def read_buf_path(self, path: str, offset: int, size: int) -> tuple[int, int, int]:
        """``read_buf`` of a file the kernel opened itself (no-open mode: file handle 0)."""
        return self.fs.ready_path(path, offset, size)

    def request_started(self) -> None:
        """Called at the start of every callback on a worker thread (its previous answer has been sent)."""
        self.fs.paths.idle()

    def release(self, path: str, fh: int) -> int:
        self.fs.release(fh)
        return 0

    # --- everything that would change the tree ----------------------------------------------------------

    @_translated
    def _refuse(self, operation: str, path: str) -> int:
        self.fs.refuse_write(operation, path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        return self._refuse("chmod", path)

    def chown(self, path: str, uid: int, gid: int) -> int:
        return self._refuse("chown", path)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._refuse("create", path)

    def link(self, target: str, source: str) -> int:
        return self._refuse("link", target)

    def mkdir(self, path: str, mode: int) -> int:
        return self._refuse("mkdir", path)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        return self._refuse("mknod", path)

    def removexattr(self, path: str, name: str) -> int:
        return self._refuse("removexattr", path)

    def rename(self, old: str, new: str) -> int:
        return self._refuse("rename", old)

    def rmdir(self, path: str) -> int:
        return self._refuse("rmdir", path)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        return self._refuse("setxattr", path)

    def symlink(self, target: str, source: str) -> int:
        return self._refuse("symlink", target)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return self._refuse("truncate", path)

    def unlink(self, path: str) -> int:
        return self._refuse("unlink", path)

    def utimens(self, path: str, times: Any = None) -> int:
        return self._refuse("utimens", path)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self._refuse("write", path)


#: libfuse worker threads answering requests (all kept once started, see ``_keep_python_thread_state``).
MAX_WORKERS = 64

_callback_thread = threading.local()

#: libfuse's ``FUSE_CAP_SPLICE_WRITE`` (fuse_common.h): reply to reads by splicing from a descriptor.
FUSE_CAP_SPLICE_WRITE = 1 << 7
#: ``FUSE_CAP_NO_OPEN_SUPPORT`` (fuse_common.h, kernel 3.14+): an ENOSYS answer to OPEN means "open it yourself".
FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17
#: ``fuse_buf_flags``: the buffer is a descriptor, read at ``pos``.
FUSE_BUF_IS_FD, FUSE_BUF_FD_SEEK = 1 << 1, 1 << 2
#: Largest read request. libfuse splices a reply only through a pipe that holds it whole plus a few pages, and
#: an unprivileged process cannot grow a pipe past ``/proc/sys/fs/pipe-max-size`` (1 MiB by default): 1 MiB
#: reads always fell back to a copy, reads of 1 MiB less 16 KiB fit.
SPLICE_MAX_READ = (1 << 20) - (16 << 10)


def _read_buf_enabled() -> bool:
    """Whether reads are answered through ``read_buf`` (libfuse 3 under mfusepy; ``WANLLMDB_MOUNT_READ_BUF=0``
    turns it off, for A/B measurements)."""
    return FUSE_MAJOR >= 3 and hasattr(fuse, "fuse_bufvec_p") and os.environ.get("WANLLMDB_MOUNT_READ_BUF") != "0"


def _no_open_enabled() -> bool:
    """Whether the mount may ask the kernel to open files itself (needs ``read_buf``, which is given the path;
    off unless ``WANLLMDB_MOUNT_NO_OPEN=1``: see the module docstring)."""
    return _read_buf_enabled() and os.environ.get("WANLLMDB_MOUNT_NO_OPEN") == "1"


class _FuseBuf(ctypes.Structure):
    """``struct fuse_buf`` (fuse_common.h)."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),
    ]


class _FuseBufVec(ctypes.Structure):
    """``struct fuse_bufvec`` with its one buffer inline (``buf[1]`` in C; mfusepy declares it a pointer)."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", _FuseBuf),
    ]


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def _keep_python_thread_state() -> None:
    """Keep the calling libfuse worker thread's Python thread state from one callback to the next.

    ctypes runs a callback from a thread Python did not start between ``PyGILState_Ensure`` and
    ``PyGILState_Release``, so every FUSE request on such a thread created and destroyed a whole thread
    state, its 16 KiB frame stack mmap'd and munmap'd each time (strace: one mmap/munmap pair per request).
    One ``Ensure`` never released keeps it for the thread's life. A worker that exited would leave its
    state behind, so ``run_fuse`` has libfuse keep every worker (``max_idle_threads`` = ``max_threads``):
    at most ``MAX_WORKERS`` small thread states.
    """
    ctypes.pythonapi.PyGILState_Ensure()
    _callback_thread.kept = True


def reply_with_fd(bufpp: Any, fd: int, offset: int, count: int) -> int:
    """Fill ``read_buf``'s answer: ``count`` bytes of ``fd`` from ``offset`` (none when ``count`` <= 0), which
    libfuse splices into /dev/fuse. libfuse frees the vector with ``free`` after the reply, so it comes from
    ``malloc``. Returns 0, or -ENOMEM."""
    address = _libc.malloc(ctypes.sizeof(_FuseBufVec))
    if not address:
        return -errno.ENOMEM
    vec = _FuseBufVec.from_address(address)
    vec.count, vec.idx, vec.off = 1, 0, 0
    buf = vec.buf
    buf.size, buf.mem, buf.fd, buf.pos = max(count, 0), None, fd, offset
    buf.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK if count > 0 else 0
    bufpp[0] = ctypes.cast(address, fuse.fuse_bufvec_p)
    return 0


class _KernelFUSE(fuse.FUSE):  # type: ignore[misc, name-defined]
    """mfusepy's FUSE with the zero-copy read and the READDIRPLUS listing described in the module docstring."""

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(_callback_thread, "kept", False):
            _keep_python_thread_state()
        if self.operations.no_open:  # only by-path handles need to know when a thread's last answer went out
            self.operations.request_started()
        return super()._wrapper(func, *args, **kwargs)

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        """Answer a read with the cache file's descriptor: libfuse splices the bytes from it into /dev/fuse, no
        Python copy."""
        fh = fip.contents.fh
        if fh:
            fd, pos, count = self.operations.read_buf(fh, offset, size)
        else:  # the kernel opened the file itself (no-open mode): found by path
            fd, pos, count = self.operations.read_buf_path(path.decode("utf-8", "surrogateescape"), offset, size)
        return reply_with_fd(bufpp, fd, pos, count)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        if size == 0:
            return 0
        address = ctypes.cast(buf, ctypes.c_void_p).value
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        return self.operations.read_into(view, offset, fip.contents.fh)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        entries = self.operations.listing(fip.contents.fh)
        plus = flags & _READDIR_PLUS
        # libfuse copies the stat it is given, so entries sharing one attribute dict (see opendir) share
        # one C stat, built once per request instead of once per entry.
        built: dict[int, Any] = {}
        for index in range(offset, len(entries)):
            name, attrs, complete = entries[index]
            st = built.get(id(attrs))
            if st is None:
                st = built[id(attrs)] = fuse.c_stat()
                fuse.set_st_attrs(st, attrs, use_ns=True)
            fill = _FILL_DIR_PLUS if plus and complete else 0
            if filler(buf, name, st, index + 1, fill) != 0:
                break
        return 0


def run_fuse(
    operations: FuseOperations,
    mountpoint: str,
    *,
    fsname: str,
    allow_other: bool = False,
    debug: bool = False,
) -> None:
    """Mount and serve until unmounted (blocks the calling thread, which must be the main thread).

    Raises:
        MountError: libfuse could not mount (its own message went to stderr/the log).
    """
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "fsname": fsname.replace(",", "_"),
        "subtype": "wanllmdb",
        "default_permissions": True,
        "max_threads": MAX_WORKERS,
        # workers are never torn down, so the thread states they keep (_keep_python_thread_state) stay bounded
        "max_idle_threads": MAX_WORKERS,
        "entry_timeout": operations.metadata_ttl,
        "attr_timeout": operations.metadata_ttl,
        "negative_timeout": 0,
    }
    if _read_buf_enabled():
        options["max_read"] = SPLICE_MAX_READ
    else:
        # libfuse answers reads through read(), not read_buf(): mfusepy wires every operation that exists
        operations.read_buf = None  # type: ignore[method-assign]
    if FUSE_MAJOR < 3:
        options["kernel_cache"] = True
        options["max_read"] = 1 << 20
        del options["max_threads"], options["max_idle_threads"]
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    fuse_class = _KernelFUSE if hasattr(fuse, "c_stat") else fuse.FUSE
    try:
        fuse_class(operations, mountpoint, **options)
    except RuntimeError as exc:
        raise MountError(f"could not mount {mountpoint} (libfuse error {exc}); see the log for its message") from None


def fuse_library() -> str:
    """Which binding and libfuse major version serve mounts (for logs and ``--version``-style reports)."""
    return f"{fuse.__name__} on libfuse {FUSE_MAJOR}"
