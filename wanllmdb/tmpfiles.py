"""Temporary files of dead writers: found by the PID in their names and reclaimed by the next writer.

Every temporary file wanllmdb writes names its writer: ``<what>.<pid>-<pid namespace>.<random>[.<suffix>]``
(registry ``tmp/``, cache ``tmp/`` and ``partial/``). A writer killed with ``kill -9`` cannot clean up; the
next writer on the same directory removes the files of writers that are no longer running. Whether a PID
runs can only be told inside its own PID namespace: files of writers in another namespace (a container
sharing the directory), or named the old way (``<what>.<pid>.<random>``), are removed only once they are
``FOREIGN_MIN_AGE`` old.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

#: Files of writers whose liveness cannot be told from here are left this long (see the module docstring).
FOREIGN_MIN_AGE = 3600.0


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


_NAMESPACE = _pid_namespace()


def writer_tag() -> str:
    """What a temporary file's name says of its writer (this process)."""
    return f"{os.getpid()}-{_NAMESPACE}"


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


def owner(name: str) -> tuple[int, int | None] | None:
    """(pid, pid namespace or None for old names) of a temporary file's writer, or None."""
    parts = name.split(".")
    if len(parts) < 3:
        return None
    pid, _, namespace = parts[1].partition("-")
    if not pid.isdigit() or (namespace and not namespace.isdigit()):
        return None
    return int(pid), int(namespace) if namespace else None


def writer_gone(name: str) -> bool:
    """Whether the writer named in a temporary file's name is known to be dead (False when it cannot be told:
    another PID namespace; True for a name that names no writer)."""
    writer = owner(name)
    if writer is None:
        return True
    pid, namespace = writer
    if namespace != _NAMESPACE:
        return False
    return pid != os.getpid() and not pid_alive(pid)


def reclaim_dead(directory: str, foreign_min_age: float | None = None, prefix: str = "") -> tuple[list[str], int]:
    """Remove the files in ``directory`` whose writer is dead; returns the names removed and the bytes freed.

    ``prefix``: only names starting with it (a directory shared with files that are not temporary ones).
    """
    foreign_min_age = FOREIGN_MIN_AGE if foreign_min_age is None else foreign_min_age
    cutoff = time.time() - foreign_min_age
    removed: list[str] = []
    freed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed, 0
    alive: dict[int, bool] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        writer = owner(name)
        if writer is None:
            continue
        pid, namespace = writer
        local = namespace == _NAMESPACE
        if local:
            if pid == os.getpid():
                continue
            if pid not in alive:
                alive[pid] = pid_alive(pid)
            if alive[pid]:
                continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
            if not local and st.st_mtime >= cutoff:
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
