"""Deduplicated, deadline-bounded calls on worker threads: what keeps the mount from ever wedging.

A FUSE request thread never performs network I/O itself. It starts the work on a pool through
:meth:`Flights.start` (a second request for the same key joins the call already in flight instead of
starting another) and waits with :meth:`Flights.wait`, which gives up with :class:`~wanllmdb.errors.FetchError`
after the timeout or as soon as the filesystem shuts down. No lock is held while waiting, so a stalled
download costs its waiters at most the timeout and never blocks anybody else; the stalled worker itself is
freed by the transport's own socket timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from ..errors import FetchError

T = TypeVar("T")


class Stopped(FetchError):
    """The filesystem is shutting down; the wait was abandoned."""


class Flights:
    """Calls keyed by what they fetch, run on ``pool``, waited for with a deadline.

    Args:
        pool: where calls run.
        stop: a future that is completed when the filesystem shuts down (shared by every Flights).
    """

    def __init__(self, pool: ThreadPoolExecutor, stop: Future[None]) -> None:
        self._pool = pool
        self._stop = stop
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future] = {}
        self._started: dict[Future, float] = {}

    def start(
        self,
        key: Hashable,
        fn: Callable[[], T],
    ) -> tuple[Future[T], bool]:
        """The in-flight call for ``key``, or a new one running ``fn`` on the pool.

        Returns:
            the future, and whether this call created it. A finished call is forgotten, so the next
            ``start`` after a failure tries again.

        Raises:
            Stopped: the filesystem is shutting down.
        """
        with self._lock:
            future = self._inflight.get(key)
            if future is not None:
                return future, False
            if self._stop.done():
                raise Stopped("the filesystem is shutting down")
            future = Future()
            self._inflight[key] = future
            self._started[future] = time.monotonic()
        future.add_done_callback(lambda f, key=key: self._forget(key, f))

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        try:
            self._pool.submit(run)
        except RuntimeError:  # the pool is shut down
            future.cancel()
            raise Stopped("the filesystem is shutting down") from None
        return future, True

    def _forget(self, key: Hashable, future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            self._started.pop(future, None)

    def wait(
        self, future: Future[T], timeout: float, what: str, progress: Callable[[], int] | None = None
    ) -> T:
        """The result of ``future``; its exception is re-raised.

        The deadline runs from when the call *started*, not from when this caller began waiting: a reader
        joining a call that is already stalled fails at once instead of waiting a whole timeout more (the
        kernel retries a failed read page by page, and each retry would otherwise cost a full timeout).

        Args:
            progress: a counter the call advances while it works (bytes received); as long as it moves,
                the call is not stalled and the deadline moves with it.

        Raises:
            FetchError: no result (or no progress) within ``timeout`` seconds, or the filesystem shut down.
        """
        seen = progress() if progress else 0
        deadline = self._started.get(future, time.monotonic()) + timeout
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                now = progress() if progress else seen
                if now == seen:
                    raise FetchError(f"{what}: no answer within {timeout:g}s (timeout)")
                seen, deadline = now, time.monotonic() + timeout
                continue
            wait((future, self._stop), remaining, return_when=FIRST_COMPLETED)
            if self._stop.done() and not future.done():
                raise Stopped(f"{what}: abandoned, the filesystem is shutting down")
        if future.cancelled():
            raise Stopped(f"{what}: abandoned, the fetch was cancelled")
        return future.result()

    def call(self, key: Hashable, fn: Callable[[], T], timeout: float, what: str) -> T:
        """``wait(start(key, fn)[0], timeout, what)``."""
        return self.wait(self.start(key, fn)[0], timeout, what)

    def __len__(self) -> int:
        return len(self._inflight)

