"""Temporary files of dead writers: found by the PID in their names and reclaimed by the next writer.

Every temporary file wanllmdb writes names its writer: ``<what>.<pid>.<random>[.<suffix>]`` (registry
``tmp/``, cache ``tmp/`` and ``partial/``). A writer killed with ``kill -9`` cannot clean up; the next writer
on the same directory removes the files whose PID is no longer running. A file younger than ``min_age`` is
left alone even then: in a directory shared across PID namespaces (containers) a PID that looks dead here
may be alive there, and a live writer keeps its file fresh.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

#: Files of dead writers younger than this are left for a later pass (see the module docstring).
RECLAIM_MIN_AGE = 10.0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def owner_pid(name: str) -> int | None:
    """The writer's PID in a temporary file name (its second dot-separated field), or None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def reclaim_dead(directory: str, min_age: float | None = None) -> tuple[list[str], int]:
    """Remove the files in ``directory`` whose writer is dead; returns the names removed and the bytes freed."""
    min_age = RECLAIM_MIN_AGE if min_age is None else min_age
    cutoff = time.time() - min_age
    removed: list[str] = []
    freed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed, 0
    alive: dict[int, bool] = {}
    for name in names:
        pid = owner_pid(name)
        if pid is None or pid == os.getpid():
            continue
        if pid not in alive:
            alive[pid] = pid_alive(pid)
        if alive[pid]:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
            if st.st_mtime >= cutoff:
                continue
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(name)
        freed += st.st_blocks * 512
    if removed:
        logger.info(
            "reclaimed %d temporary file(s) of dead writers in %s (%d bytes)", len(removed), directory, freed
        )
    return removed, freed
