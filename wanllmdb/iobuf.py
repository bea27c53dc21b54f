"""Read buffers sized to the data: a 4 KB file must not pay for zeroing an 8 MiB buffer.

Allocating (and zeroing) a full-size buffer per small file was the dominant cost of logging and downloading
thousands of small files; every streaming loop takes its buffer from here.
"""

from __future__ import annotations

import os

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
