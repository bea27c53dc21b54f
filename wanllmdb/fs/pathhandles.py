"""Open files by path, for a mount the kernel no longer sends OPEN and RELEASE to ("no open" mode).

When the filesystem answers the kernel's first OPEN with ENOSYS (and the kernel supports it, Linux 3.14+),
the kernel opens every file itself from then on: it sends no OPEN and no RELEASE, and every READ comes
with file handle 0. Two FUSE requests (each a round trip and a Python callback) fewer per file read. Reads
then find their reader state by path here: an LRU of ``path -> Handle`` holding at most ``size`` handles.

The one subtlety is the descriptor's lifetime. A read answered through ``read_buf`` returns a descriptor
that libfuse splices from *after* the callback returned, on the same worker thread, before that thread
takes its next request. A handle pushed out of the LRU is therefore not released while any worker thread's
last answer came from it: each thread records the handle it served last (:meth:`take`, :meth:`put`) and
clears the record when it starts its next callback (:meth:`idle`); retired handles are released once no
record names them. So a descriptor is never closed, and its number never reused for another file, while
libfuse may still read from it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from .reader import Handle

logger = logging.getLogger(__name__)

#: Handles kept open by path (each holds a descriptor of a cached blob, or a share of a partial file).
PATH_HANDLES = 128
#: Of those, handles of files still being filled (partial files of large blobs) kept at most: the kernel never
#: says when a file is closed, and a partial held open cannot be dropped when the cache is over its limit, so
#: they are bounded like the idle partials a mount keeps otherwise (``ChunkReader``'s ``idle_partials``).
PATH_PARTIALS = 8


class PathHandles:
    """An LRU of open handles by path whose evicted handles are released only when no thread still serves them.

    Args:
        release: closes a handle (``ChunkReader.release``).
        size: handles kept at most (retired ones still in use by a thread come on top, at most one per thread).
    """

    def __init__(
        self, release: Callable[[Handle], None], size: int = PATH_HANDLES, partials: int = PATH_PARTIALS
    ) -> None:
        self._release = release
        self._size = max(1, size)
        self._partials = max(1, partials)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Handle] = OrderedDict()
        self._retired: list[Handle] = []
        self._serving: dict[int, Handle] = {}  # thread ident -> the handle its last answer came from

    def __len__(self) -> int:
        with self._lock:
            return len(self._open) + len(self._retired)

    def take(self, path: str) -> Handle | None:
        """The handle open for ``path`` (now the most recently used), recorded as served by this thread."""
        with self._lock:
            handle = self._open.get(path)
            if handle is not None:
                self._open.move_to_end(path)
                self._serving[threading.get_ident()] = handle
            return handle

    def put(self, path: str, handle: Handle) -> Handle:
        """Keep ``handle`` for ``path``; returns the handle to use (another thread's, if it opened the path
        first, in which case ``handle`` is released). Recorded as served by this thread."""
        with self._lock:
            kept = self._open.get(path)
            if kept is not None:
                self._retired.append(handle)
            else:
                kept = self._open[path] = handle
                while len(self._open) > self._size:
                    self._retired.append(self._open.popitem(last=False)[1])
                if _filling(handle):
                    self._bound_partials()
            self._open.move_to_end(path)
            self._serving[threading.get_ident()] = kept
            free = self._free_retired()
        self._close(free)
        return kept

    def idle(self) -> None:
        """This thread is starting another request: whatever it answered before has been sent."""
        if self._serving.pop(threading.get_ident(), None) is not None and self._retired:
            with self._lock:
                free = self._free_retired()
            self._close(free)

    def close(self) -> None:
        """Release every handle (the FUSE loop has ended: no thread serves any more)."""
        with self._lock:
            handles = list(self._open.values()) + self._retired
            self._open.clear()
            self._retired = []
            self._serving.clear()
        self._close(handles)

    def _bound_partials(self) -> None:
        """Retire the least recently used handles of files still being filled beyond ``partials`` (lock held)."""
        filling = [path for path, handle in self._open.items() if _filling(handle)]
        for path in filling[: max(0, len(filling) - self._partials)]:
            self._retired.append(self._open.pop(path))

    def _free_retired(self) -> list[Handle]:
        """Retired handles no thread's last answer came from (caller holds the lock)."""
        if not self._retired:
            return []
        busy = {id(handle) for handle in list(self._serving.values())}
        free = [handle for handle in self._retired if id(handle) not in busy]
        if free:
            self._retired = [handle for handle in self._retired if id(handle) in busy]
        return free

    def _close(self, handles: list[Handle]) -> None:
        for handle in handles:
            try:
                self._release(handle)
            except Exception as exc:  # a close that fails must not fail the read that retired it
                logger.warning("could not release %s: %s", handle.label, exc)


def _filling(handle: Handle) -> bool:
    part = handle.partial
    return part is not None and not part.done
