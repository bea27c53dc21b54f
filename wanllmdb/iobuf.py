"""Read buffers sized to the data, and writes into files in pieces the kernel takes cheaply.

Allocating (and zeroing) a full-size buffer per small file was the dominant cost of logging and downloading
thousands of small files; every streaming loop takes its buffer from here. The blob stores write files in
``WRITE_STEP`` pieces (see there).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

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


#: Most bytes one ``write``/``pwrite`` call puts into a blob store's file (``step`` of :func:`pwrite_all`,
#: :func:`write_all`). On the benchmark VMs (Linux 6.18, ext4, a guest whose memory the host takes back when
#: freed) a 1 MiB write into new page cache cost 1.0-3.3 system CPU-s per GiB, the same bytes in 16 KiB calls
#: 0.46-0.92, in every interleaved series (26 pairs; 64-256 KiB calls were as cheap in most series, not in
#: all). The file's page cache then holds small folios, which read back slower (`cat` of it from page cache
#: 6.8-7.5 GB/s against 8.3-8.5, interleaved). So the stores, written once and rarely read at once, write in
#: steps; the mount's cache, read as soon as it is written, does not (not measured through the mount: the
#: runs that seemed to show it were the machine's drift, see docs/ARCHITECTURE.md, round 8).
WRITE_STEP = 16 * 1024


def pwrite_all(fd: int, data: bytes | memoryview, offset: int, step: int | None = None) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less than asked), at most ``step``
    bytes a call if given (see :data:`WRITE_STEP`)."""
    view = memoryview(data)
    step = step or len(view)
    while view:
        n = os.pwrite(fd, view[:step], offset)
        view = view[n:]
        offset += n


def write_all(file: BinaryIO, data: bytes | memoryview, step: int = WRITE_STEP) -> None:
    """Write all of ``data`` to ``file`` at its position, at most ``step`` bytes a call (see :data:`WRITE_STEP`)."""
    view = memoryview(data)
    while view:
        n = file.write(view[:step])
        view = view[n:]


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
