"""tqdm progress bars that stay quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm

#: Transfers smaller than this get no bar: it would flash and vanish.
MIN_BYTES_FOR_BAR = 32 * 1024 * 1024


class ByteProgress:
    """A thread-safe byte counter with an optional tqdm bar; call it with a byte count."""

    def __init__(self, total: int, desc: str, *, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and total >= MIN_BYTES_FOR_BAR
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = (
            tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
            if enabled
            else None
        )

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
