"""Named crash points for the kill -9 test matrix (``tests/test_kill_matrix.py``); inert unless asked for.

``WANLLMDB_TEST_KILL_AT=<step>:<count>`` makes the process SIGKILL itself the ``count``-th time it reaches
``kill_point("<step>")``, so that a test can crash a logger, a downloader or a server at an exact step
instead of at a random moment. The variable is read once, at import; unset, a call is one comparison.

Steps: ``log.draft`` (draft created), ``log.upload`` (one blob or bundle uploaded), ``log.part`` (one part of a
multipart upload sent to the object store), ``log.finalize``
(about to finalize), ``blob.write`` (a piece of an incoming blob written to the store's ``tmp/``),
``finalize.commit`` (new version inserted, transaction not committed), ``cache.write`` (a piece of a
fetched blob written to the cache's ``tmp/``), ``cache.pack_written`` (a pack of small blobs written to the
cache's ``tmp/``), ``cache.pack_renamed`` (that pack renamed into ``packs/``, not indexed yet),
``download.place`` (one downloaded file placed).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "WANLLMDB_TEST_KILL_AT"


def _parse(raw: str | None) -> tuple[str | None, int]:
    if not raw:
        return None, 0
    step, _, count = raw.rpartition(":")
    return step, int(count)


_STEP, _COUNT = _parse(os.environ.get(ENV))
_reached = 0
_lock = threading.Lock()


def kill_point(step: str) -> None:
    """SIGKILL this process if ``step`` is the step asked for and this is its asked-for occurrence."""
    global _reached
    if step != _STEP:
        return
    with _lock:
        _reached += 1
        if _reached == _COUNT:
            os.kill(os.getpid(), signal.SIGKILL)
