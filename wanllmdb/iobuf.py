"""Read buffers sized to the data: a 4 KB file must not pay for zeroing an 8 MiB buffer.

Allocating (and zeroing) a full-size buffer per small file was the dominant cost of logging and downloading
thousands of small files; every streaming loop takes its buffer from here.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

#: Largest buffer a streaming loop uses.
MAX_BUFFER = 8 * 1024 * 1024
#: Smallest buffer worth allocating, so that an empty or tiny file still reads to EOF in one call.
MIN_BUFFER = 64 * 1024


def buffer_for(size: int | None, cap: int = MAX_BUFFER) -> bytearray:
    """A buffer for streaming ``size`` bytes: just big enough, at most ``cap``."""
    if size is None:
        return bytearray(cap)
    return bytearray(max(MIN_BUFFER, min(cap, size + 1)))


def read_full(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` unless EOF comes first; returns the byte count."""
    total = 0
    while total < len(view):
        n = os.readv(fd, [view[total:]])
        if n == 0:
            break
        total += n
    return total


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class Drain:
    """Feeds pieces to ``consume`` on a worker thread through a queue of at most ``depth`` pieces.

    The feeding thread goes on at once (memory stays at ``depth`` pieces however long the stream); the
    worker's first error is raised to it at its next :meth:`put` or :meth:`check`. Pieces that are not
    immutable ``bytes`` are copied, since the caller may reuse its buffer. With ``reuse`` they are copied into
    buffers the worker hands back once consumed (no new allocation per piece); only for a ``consume`` that
    keeps no reference to its piece after it returns.
    """

    def __init__(
        self, consume: Callable[[bytes | memoryview], object], depth: int, name: str, *, reuse: bool = False
    ) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=depth)
        self._spare: list[bytearray] | None = [] if reuse else None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._consume(piece)
                except BaseException as exc:  # handed to the feeding thread
                    self.error = exc
            if self._spare is not None and isinstance(piece, memoryview):
                self._spare.append(piece.obj)  # list.append/pop are atomic: no lock needed

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, data: bytes | memoryview) -> None:
        self.check()
        if isinstance(data, bytes):
            self._queue.put(data)
        elif self._spare is None:
            self._queue.put(bytes(data))
        else:
            source = memoryview(data).cast("B")
            n = len(source)
            buf = self._spare.pop() if self._spare else None
            if buf is None or len(buf) < n:
                buf = bytearray(n)
            piece = memoryview(buf)[:n]
            piece[:] = source
            self._queue.put(piece)

    def close(self) -> None:
        """Wait until every queued piece is consumed and stop the worker (idempotent; raises nothing)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
