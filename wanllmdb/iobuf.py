"""Read buffers sized to the data: a 4 KB file must not pay for zeroing an 8 MiB buffer.

Allocating (and zeroing) a full-size buffer per small file was the dominant cost of logging and downloading
thousands of small files; every streaming loop takes its buffer from here.
"""

from __future__ import annotations

#: Largest buffer a streaming loop uses.
MAX_BUFFER = 8 * 1024 * 1024
#: Smallest buffer worth allocating, so that an empty or tiny file still reads to EOF in one call.
MIN_BUFFER = 64 * 1024


def buffer_for(size: int | None, cap: int = MAX_BUFFER) -> bytearray:
    """A buffer for streaming ``size`` bytes: just big enough, at most ``cap``."""
    if size is None:
        return bytearray(cap)
    return bytearray(max(MIN_BUFFER, min(cap, size + 1)))
