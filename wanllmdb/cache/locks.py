"""Per-blob locks shared by threads and processes, without a lock file per blob.

Each blob owns one byte of a single sparse lock file (at an offset taken from its SHA-256), locked with an
open-file-description lock (``F_OFD_SETLK``, Linux 3.15+): like ``flock`` it excludes other threads of the
same process as well as other processes, and is released when its descriptor closes, so a killed holder
never leaves a lock behind. (Creating a lock file per blob cost as much as writing a small blob itself.)
Where OFD locks are missing, a ``flock``-ed file per blob does the same job.

Threads of one process first take an in-process lock of the blob, then the file lock: a thread waiting for
another thread of its process (the mount's cache fill and an ``open`` of the same small file) is woken the
moment the holder is done, instead of polling the file lock with sleeps of 2-100 ms. Only waits on other
processes poll.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import CacheError

_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)


class HeldLock:
    """A lock taken by :meth:`BlobLocks.acquire`; closing its descriptor releases it (then the in-process one)."""

    def __init__(self, fd: int, release_local: Callable[[], None]) -> None:
        self._fd = fd
        self._release_local: Callable[[], None] | None = release_local

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._release_local is not None:
            release, self._release_local = self._release_local, None
            release()


class _Local:
    """The in-process lock of one blob and how many threads hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class BlobLocks:
    """Exclusive per-blob locks under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, "locks.bin")
        self._local: dict[str, _Local] = {}
        self._local_guard = threading.Lock()
        if _OFD_SETLK is None:
            os.makedirs(os.path.join(root, "locks"), exist_ok=True)

    def _try(self, fd: int, sha256: str) -> bool:
        try:
            if _OFD_SETLK is not None:
                # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (+ pad)
                request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, int(sha256[:15], 16), 1, 0)
                fcntl.fcntl(fd, _OFD_SETLK, request)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def acquire(self, sha256: str, timeout: float | None = None) -> HeldLock:
        """Take the lock of ``sha256``, waiting at most ``timeout`` seconds (forever if None).

        Raises:
            CacheError: the lock stayed taken for longer than ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        release_local = self._acquire_local(sha256, timeout)
        try:
            path = self.path if _OFD_SETLK is not None else os.path.join(self.root, "locks", sha256 + ".lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            release_local()
            raise
        delay = 0.002
        try:
            while not self._try(fd, sha256):
                if deadline is not None and time.monotonic() >= deadline:
                    raise CacheError(f"timed out after {timeout:.1f}s waiting for another fetch of blob {sha256[:12]}")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        except BaseException:
            os.close(fd)
            release_local()
            raise
        return HeldLock(fd, release_local)

    def _acquire_local(self, sha256: str, timeout: float | None) -> Callable[[], None]:
        """Take the in-process lock of ``sha256`` (waiting at most ``timeout``); returns its release.

        Raises:
            CacheError: another thread of this process held it for longer than ``timeout``.
        """
        with self._local_guard:
            local = self._local.get(sha256)
            if local is None:
                local = self._local[sha256] = _Local()
            local.users += 1

        def done() -> None:
            with self._local_guard:
                local.users -= 1
                if not local.users:
                    del self._local[sha256]

        if not local.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            done()
            raise CacheError(f"timed out after {timeout:.1f}s waiting for another fetch of blob {sha256[:12]}")

        def release() -> None:
            local.lock.release()
            done()

        return release

    def try_local(self, sha256: str) -> Callable[[], None] | None:
        """Take the in-process lock of ``sha256`` if no thread holds it; returns its release, else None. (The
        mount's cache fill holds the locks of the blobs it gathers into a pack: readers of them wait for the
        pack instead of fetching them too.)"""
        try:
            return self._acquire_local(sha256, 0.0)
        except CacheError:
            return None

    def wait_local(self, sha256: str, timeout: float) -> bool | None:
        """Wait (at most ``timeout``) until no thread of this process holds the lock of ``sha256``: True once the
        holder is done, False if it kept it past ``timeout``, None at once if no thread held it. (A reader of a
        blob the mount's cache fill is writing waits for it instead of fetching it too.)"""
        with self._local_guard:
            local = self._local.get(sha256)
            if local is None:
                return None
            local.users += 1
        try:
            if not local.lock.acquire(timeout=max(0.0, timeout)):
                return False
            local.lock.release()
            return True
        finally:
            with self._local_guard:
                local.users -= 1
                if not local.users:
                    del self._local[sha256]

    @contextmanager
    def hold(self, sha256: str, timeout: float | None = None) -> Iterator[None]:
        lock = self.acquire(sha256, timeout)
        try:
            yield
        finally:
            lock.release()
