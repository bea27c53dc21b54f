"""Running a mount as a process: checks, serving in the foreground, starting in the background, unmounting.

**Serving** (:func:`serve`, what ``wanllmdb mount --foreground`` runs). SIGINT, SIGTERM and SIGHUP are
blocked in every thread before any thread starts, and one watcher thread takes them with ``sigwait``: the
main thread sits inside libfuse and would never run a Python signal handler, and libfuse's own handlers
would end the loop without telling in-flight reads to give up. On a signal the watcher makes every pending
wait fail at once, unmounts (``fusermount3 -u``, lazily with ``-z`` if busy), and if the FUSE loop has not
ended a moment later (files still open elsewhere) aborts the connection through
``/sys/fs/fuse/connections/<dev>/abort``, as a last resort by leaving the process.

**Background** (:func:`start_background`, plain ``wanllmdb mount``). Forking a process that already runs
threads is fragile, so the parent starts a fresh ``wanllmdb mount --foreground`` in its own session with a
pipe on which the child writes ``ready`` once the kernel lists the mount; the parent returns 0 then, or
relays the child's one-line error and leaves no process behind. The child logs to a file it names.

**Unmounting** (:func:`unmount`). SIGTERM to the recorded process, then, if the mount is still there after
the grace period: abort the connection, lazy unmount, SIGKILL. The mount table is read from
``/proc/self/mountinfo``, never by touching the mount, so a wedged or dead daemon cannot hang the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import platformdirs

from ..errors import MountError, NotFoundError, WanllmdbError
from ..settings import Settings
from ..tmpfiles import pid_alive
from .catalog import DEFAULT_TREE_ENTRIES
from .index import INDEX_MIN

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How long the daemon waits for its FUSE loop to end after unmounting before it aborts the connection.
LOOP_EXIT_GRACE = 2.0
M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -8, -3, -1  # glibc mallopt parameters
#: Bytes of kernel read-ahead asked for on the mount's device (one FUSE request is at most 1 MiB).
READ_AHEAD_KB = 4096
#: Retries of a request by the mount's HTTP transport: one, at once. A refused connection must reach the
#: catalog's circuit breaker in milliseconds (it then leaves the server alone and serves what it has), not
#: after the transport's default ~8 s of backoff (twice that for a presign), during which uncached reads wait.
MOUNT_RETRIES = 1
#: How long the check that a mount lost its process waits for an answer; a mount that takes longer is alive.
DEAD_PROBE_TIMEOUT = 2.0


# --- the mount table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    device: str  # "major:minor"
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def mount_entry(mountpoint: str) -> MountEntry | None:
    """The mount table entry of ``mountpoint`` (read from /proc, never touching the mount itself)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2 and _unescape(fields[4]) == mountpoint:
            found = MountEntry(mountpoint, fields[2], tail[0], _unescape(tail[1]))
    return found


def mounts_under(root: str) -> list[MountEntry]:
    """Every FUSE mount at or below ``root`` (for test cleanup)."""
    root = root.rstrip("/")
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                point = _unescape(fields[4]) if len(fields) >= 5 else ""
                if tail and tail[0].startswith("fuse") and (point == root or point.startswith(root + "/")):
                    found.append(MountEntry(point, fields[2], tail[0], _unescape(tail[1]) if len(tail) > 1 else ""))
    except OSError:
        pass
    return found


def canonical_mountpoint(path: str) -> str:
    """Absolute path with the parent resolved, without ever stat-ing ``path`` itself (it may be a hung mount)."""
    absolute = os.path.abspath(os.path.expanduser(path))
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


# --- checks ---------------------------------------------------------------------------------------------


def check_mountpoint(path: str) -> str:
    """The canonical mountpoint, if it can be mounted on.

    Raises:
        MountError: missing, not a directory, not empty, or already a mount.
    """
    mountpoint = canonical_mountpoint(path)
    entry = mount_entry(mountpoint)
    if entry is not None and not recover_dead_mount(mountpoint, entry):
        raise MountError(f"{mountpoint} is already a mount point (wanllmdb unmount {mountpoint} first?)")
    if not os.path.exists(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist (create the directory first)")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    try:
        if os.listdir(mountpoint):
            raise MountError(f"mountpoint {mountpoint} is not empty")
    except PermissionError:
        raise MountError(f"mountpoint {mountpoint} is not readable") from None
    return mountpoint


def recover_dead_mount(mountpoint: str, entry: MountEntry) -> bool:
    """Detach a mount of ours whose process is gone (every access gives ENOTCONN); True if it was one.

    A crashed or killed mount leaves its entry in the mount table; mounting again on it must not need a
    manual ``wanllmdb unmount`` (nor must the systemd unit's restart). Dead means both: no mount process
    of ours is found, and the mount itself answers ENOTCONN (a process in another PID namespace, or hidden
    by ``hidepid``, cannot be found). A live mount, or anyone else's, is left alone.
    """
    if entry.fstype != "fuse.wanllmdb" or find_mount_process(mountpoint) is not None:
        return False
    if not connection_lost(mountpoint):  # served by a process we cannot see (another PID namespace, hidepid)
        return False
    logger.warning("%s is a mount of wanllmdb whose process is gone: detaching it", mountpoint)
    abort_connection(entry.device)
    detach(mountpoint, lazy=True)
    remove_state(mountpoint)
    if mount_entry(mountpoint) is not None:
        raise MountError(f"{mountpoint} is a dead wanllmdb mount that could not be detached (try: umount -l)")
    return True


def connection_lost(mountpoint: str, timeout: float = DEAD_PROBE_TIMEOUT) -> bool:
    """Whether the FUSE mount at ``mountpoint`` has no process behind it: opening its root gives ENOTCONN
    (ECONNABORTED once aborted).

    ``stat`` cannot tell, the kernel answers it from cached attributes; an open always asks the process.
    The open runs on a daemon thread, so a live but hung mount costs ``timeout`` and counts as alive.
    """
    failure: list[int | None] = []

    def probe() -> None:
        try:
            os.close(os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY))
            failure.append(None)
        except OSError as exc:
            failure.append(exc.errno)

    thread = threading.Thread(target=probe, name="dead-mount-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(failure) and failure[0] in (errno.ENOTCONN, errno.ECONNABORTED)


def check_fuse() -> str:
    """A description of the FUSE binding, if mounting can work on this machine.

    Raises:
        MountError: no /dev/fuse, no permission to use it, or no libfuse.
    """
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available on this machine: /dev/fuse is missing (load the fuse module)")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        if os.geteuid() == 0 or not _fusermount():
            raise MountError(f"FUSE is not available on this machine: cannot open /dev/fuse ({exc.strerror})") from None
    if os.geteuid() != 0 and not _fusermount():
        raise MountError("FUSE is not available on this machine: fusermount3 is not installed (install fuse3)")
    from .fuse_ops import fuse_library  # loads libfuse: fails with MountError when it is missing

    return fuse_library()


def check_registry(settings: Settings, project: str | None) -> str:
    """Open the registry and make one request, so a wrong URL or key fails here with a clear message.

    Returns:
        the registry's description.
    Raises:
        MountError: the registry cannot be used.
    """
    from ..registry import open_registry

    try:
        registry = open_registry(settings)
    except WanllmdbError as exc:
        raise MountError(f"cannot open the registry: {exc}") from None
    # The transport's retries would each log a warning; the one line that matters is the final error.
    retries_logger = logging.getLogger("urllib3")
    level = retries_logger.level
    retries_logger.setLevel(max(level, logging.ERROR))
    try:
        if project:
            with contextlib.suppress(NotFoundError):
                registry.list_artifacts(project)
        else:
            registry.list_projects()
        return registry.description
    except WanllmdbError as exc:
        raise MountError(f"cannot use the {registry.description}: {exc}") from None
    finally:
        retries_logger.setLevel(level)
        registry.close()


# --- state files ----------------------------------------------------------------------------------------


def state_dir() -> str:
    return os.path.join(platformdirs.user_state_dir("wanllmdb"), "mounts")


def _state_path(mountpoint: str) -> str:
    return os.path.join(state_dir(), hashlib.sha256(mountpoint.encode()).hexdigest()[:16] + ".json")


def default_log_file(mountpoint: str) -> str:
    name = os.path.basename(mountpoint.rstrip("/")) or "root"
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:8]
    return os.path.join(platformdirs.user_state_dir("wanllmdb"), "logs", f"mount-{name}-{digest}.log")


def write_state(mountpoint: str, **data: object) -> None:
    os.makedirs(state_dir(), exist_ok=True)
    tmp = _state_path(mountpoint) + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"mountpoint": mountpoint, **data}, f)
    os.replace(tmp, _state_path(mountpoint))


def read_state(mountpoint: str) -> dict:
    try:
        with open(_state_path(mountpoint), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) and data.get("mountpoint") == mountpoint else {}
    except (OSError, ValueError):
        return {}


def remove_state(mountpoint: str, pid: int | None = None) -> None:
    if pid is not None and read_state(mountpoint).get("pid") not in (None, pid):
        return  # a newer mount of the same directory owns the file
    with contextlib.suppress(OSError):
        os.unlink(_state_path(mountpoint))


# --- processes ------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _is_mount_process(pid: int, mountpoint: str) -> bool:
    args = _cmdline(pid)
    return "mount" in args and mountpoint in args and any("wanllmdb" in a for a in args)


def find_mount_process(mountpoint: str) -> int | None:
    """The pid serving ``mountpoint``: from its state file, else by scanning process command lines."""
    pid = read_state(mountpoint).get("pid")
    if isinstance(pid, int) and pid_alive(pid) and _is_mount_process(pid, mountpoint):
        return pid
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and _is_mount_process(int(name), mountpoint):
            if pid_alive(int(name)):
                return int(name)
    return None


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` (backing off to 0.1 s) until it holds or ``timeout`` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --- unmounting -----------------------------------------------------------------------------------------


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _run_quietly(cmd: Sequence[str], timeout: float = 10.0) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("%s failed: %s", " ".join(cmd), exc)
        return False


def detach(mountpoint: str, lazy: bool) -> bool:
    """Unmount ``mountpoint`` (``lazy``: detach it even while busy); True when it is gone."""
    tool = _fusermount()
    if tool:
        _run_quietly([tool, "-u", *(["-z"] if lazy else []), "-q", mountpoint])
    if mount_entry(mountpoint) is not None and os.geteuid() == 0 and shutil.which("umount"):
        _run_quietly(["umount", *(["-l"] if lazy else []), mountpoint])
    return mount_entry(mountpoint) is None


def abort_connection(device: str) -> bool:
    """Abort the FUSE connection of a mount (``major:minor``): every request to it fails at once."""
    major, _, minor = device.partition(":")
    if major != "0" or not minor.isdigit():
        return False
    path = f"/sys/fs/fuse/connections/{int(minor)}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
        return True
    except OSError as exc:
        logger.debug("cannot abort FUSE connection %s: %s", device, exc)
        return False


def unmount(path: str, timeout: float = 10.0) -> str:
    """End the mount at ``path`` and its process, within about ``timeout`` seconds whatever their state.

    Returns:
        a one-line summary.
    Raises:
        MountError: nothing is mounted there and no mount process serves it.
    """
    mountpoint = canonical_mountpoint(path)
    entry = mount_entry(mountpoint)
    pid = find_mount_process(mountpoint)
    if entry is None and pid is None:
        remove_state(mountpoint)
        raise MountError(f"{mountpoint} is not mounted")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid) and mount_entry(mountpoint) is None, timeout * 0.6)
    entry = mount_entry(mountpoint)
    if entry is not None:
        logger.info("%s still mounted: aborting its connection and detaching it", mountpoint)
        abort_connection(entry.device)
        detach(mountpoint, lazy=True)
    if pid is not None and pid_alive(pid):
        logger.info("mount process %d still running: killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), timeout * 0.3)
    if mount_entry(mountpoint) is not None:
        detach(mountpoint, lazy=True)
    if mount_entry(mountpoint) is not None:
        raise MountError(f"could not unmount {mountpoint}")
    remove_state(mountpoint)
    return f"unmounted {mountpoint}" + (f" (process {pid} ended)" if pid is not None else "")


# --- serving --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOptions:
    """What ``wanllmdb mount --foreground`` was asked for."""

    mountpoint: str
    settings: Settings
    project: str | None = None
    metadata_ttl: float = 5.0
    max_tree_entries: int = DEFAULT_TREE_ENTRIES
    index_min: int = INDEX_MIN
    allow_other: bool = False
    log_file: str | None = None
    ready_fd: int | None = None
    debug_fuse: bool = False


class _Daemon:
    """The running mount: builds the filesystem, serves it, and takes it down on a signal."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.mountpoint = options.mountpoint
        self.fs = None
        self.cache = None
        self.registry = None
        self.serving = threading.Event()
        self.loop_ended = threading.Event()
        self._stopping = threading.Lock()

    def build(self) -> Callable[[], None]:
        from ..cache import open_cache
        from ..registry import open_registry
        from .core import open_filesystem
        from .fuse_ops import FuseOperations

        options = self.options
        settings = options.settings
        self.registry = registry = open_registry(settings, retries=MOUNT_RETRIES)
        self.cache = cache = open_cache(settings)
        self.fs = open_filesystem(
            registry, cache, project=options.project, metadata_ttl=options.metadata_ttl, timeout=settings.timeout,
            max_tree_entries=options.max_tree_entries, index_min=options.index_min,
        )
        operations = FuseOperations(self.fs, metadata_ttl=options.metadata_ttl, on_init=self._on_init)
        return lambda: self._run(operations, registry.description)

    def _run(self, operations, description: str) -> None:
        from .fuse_ops import run_fuse

        fsname = self.options.settings.base_url or "wanllmdb"
        self.serving.set()
        try:
            run_fuse(
                operations, self.mountpoint, fsname=fsname, allow_other=self.options.allow_other,
                debug=self.options.debug_fuse,
            )
        finally:
            self.loop_ended.set()

    def _on_init(self) -> None:
        assert self.fs is not None
        self.fs.catalog.warm(self.options.project)
        threading.Thread(target=self._announce, name="wanllmdb-ready", daemon=True).start()

    def _announce(self) -> None:
        """Once the kernel lists the mount: tune read-ahead, record the state, tell whoever waits."""
        if not wait_for(lambda: mount_entry(self.mountpoint) is not None, 30.0):
            logger.error("the kernel never listed %s as mounted", self.mountpoint)
            return
        entry = mount_entry(self.mountpoint)
        device = entry.device if entry else ""
        _raise_read_ahead(device)
        write_state(
            self.mountpoint, pid=os.getpid(), device=device, log_file=self.options.log_file,
            base_url=self.options.settings.base_url, project=self.options.project, started_at=time.time(),
            # what `wanllmdb prefetch <path in this mount>` needs to warm the cache this mount reads
            data_dir=None if self.options.settings.base_url else self.options.settings.data_dir,
            cache_dir=self.options.settings.cache_dir,
        )
        logger.info("mounted %s at %s (pid %d)", self.registry.description, self.mountpoint, os.getpid())
        _notify_systemd("READY=1")
        if self.options.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.options.ready_fd, b"ready\n")
                os.close(self.options.ready_fd)
            # The parent has returned; from now on our stderr (libfuse's messages too) goes to the log.
            if self.options.log_file:
                with contextlib.suppress(OSError):
                    fd = os.open(self.options.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    os.dup2(fd, 2)
                    os.close(fd)

    def stop(self, reason: str) -> None:
        """Take the mount down (from the signal watcher): give up waits, unmount, end the loop."""
        if not self._stopping.acquire(blocking=False):
            return
        if not self.serving.is_set():
            logger.warning("%s before the mount was up: exiting", reason)
            exit_now(130)
        logger.info("%s: unmounting %s", reason, self.mountpoint)
        if self.fs is not None:
            self.fs.shutdown()
        entry = mount_entry(self.mountpoint)
        if not detach(self.mountpoint, lazy=False):
            logger.warning("%s is busy: detaching it lazily", self.mountpoint)
            detach(self.mountpoint, lazy=True)
        if self.loop_ended.wait(LOOP_EXIT_GRACE):
            return
        if entry is not None and abort_connection(entry.device) and self.loop_ended.wait(LOOP_EXIT_GRACE):
            return
        logger.warning("the FUSE loop did not end; leaving the process (the kernel closes the connection)")
        self.cleanup()
        exit_now(0)

    def cleanup(self) -> None:
        for closer in (self.fs, self.cache, self.registry):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        remove_state(self.mountpoint, os.getpid())


def serve(options: ServeOptions) -> int:
    """Mount and serve in this process until unmounted or signalled; returns the exit status.

    Call :func:`exit_now` with the status afterwards: worker threads may still sit in network calls that
    only their socket timeout would end, and a normal interpreter exit would wait for them.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    _return_big_buffers_to_the_system()
    daemon = _Daemon(options)
    threading.Thread(target=_watch_signals, args=(daemon,), name="wanllmdb-signals", daemon=True).start()
    run = daemon.build()
    logger.info("serving %s at %s", daemon.registry.description, options.mountpoint)
    try:
        run()
    finally:
        daemon.cleanup()
    logger.info("unmounted %s", options.mountpoint)
    return 0


def _watch_signals(daemon: _Daemon) -> None:
    while True:
        number = signal.sigwait(SIGNALS)
        try:
            daemon.stop(f"received {signal.Signals(number).name}")
        except Exception:  # the watcher must survive to handle the next signal
            logger.exception("error while stopping the mount")


def exit_now(status: int) -> None:
    """Flush logs and end the process without waiting for worker threads."""
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def _return_big_buffers_to_the_system() -> None:
    """Keep the mount's resident memory flat.

    Every worker thread would otherwise get a malloc arena of its own, each keeping the high-water mark of
    what passed through it, and glibc's adaptive mmap threshold would move any large buffer into those
    heaps for good. Two arenas, and buffers of 4 MiB or more always mapped (unmapped when freed); the 1 MiB
    network pieces and FUSE request buffers stay below the threshold and are reused from the heap, which
    keeps up to 32 MiB free at its top instead of trimming it after every piece.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None)
        if hasattr(libc, "mallopt"):
            libc.mallopt(M_ARENA_MAX, 2)
            libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
            # glibc returns the top of a heap to the system once 128 KiB are free there: every freed 1 MiB
            # network piece was unmapped and the next one page-faulted in afresh (perf: page faults and page
            # clearing in the cold read's profile)
            libc.mallopt(M_TRIM_THRESHOLD, 32 << 20)


def _raise_read_ahead(device: str) -> None:
    path = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
        logger.debug("kernel read-ahead of %s set to %d KB", device, READ_AHEAD_KB)
    except OSError as exc:  # only root may; the kernel default (128 KB) still works, in smaller requests
        logger.debug("kernel read-ahead left at its default (%s)", exc)


def _notify_systemd(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


# --- starting in the background -------------------------------------------------------------------------


def start_background(child_args: Sequence[str], mountpoint: str, log_file: str, timeout: float) -> int:
    """Run ``wanllmdb <child_args>`` (a foreground mount) detached, and return its pid once mounted.

    Raises:
        MountError: the child failed (with its own one-line message) or was not ready in ``timeout``.
    """
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    read_end, write_end = os.pipe()
    cmd = [sys.executable, "-m", "wanllmdb.cli.main", *child_args, "--ready-fd", str(write_end)]
    with open(log_file, "ab") as log:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE, pass_fds=(write_end,),
            start_new_session=True, close_fds=True,
        )
    os.close(write_end)
    try:
        ready = _wait_ready(read_end, child, timeout)
    finally:
        os.close(read_end)
    if ready and wait_for(lambda: mount_entry(mountpoint) is not None, 5.0):
        child.stderr.close()
        return child.pid
    message = _child_failure(child, mountpoint, ready, timeout, log_file)
    raise MountError(message)


def _wait_ready(read_end: int, child: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    received = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], min(0.2, max(0.0, deadline - time.monotonic())))
        if readable:
            chunk = os.read(read_end, 64)
            if not chunk:
                return b"ready" in received
            received += chunk
            if b"ready" in received:
                return True
        elif child.poll() is not None:
            return False
    return False


def _child_failure(child: subprocess.Popen, mountpoint: str, ready: bool, timeout: float, log_file: str) -> str:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
        entry = mount_entry(mountpoint)
        if entry is not None:
            abort_connection(entry.device)
            detach(mountpoint, lazy=True)
        remove_state(mountpoint)
        what = "mounted but not listed by the kernel" if ready else f"not ready within {timeout:g}s"
        return f"the mount process was {what}; see {log_file}"
    err = child.stderr.read().decode("utf-8", "replace") if child.stderr else ""
    child.stderr.close()
    with contextlib.suppress(OSError), open(log_file, "a", encoding="utf-8") as log:
        log.write(err)
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else f"the mount process exited with status {child.returncode}; see {log_file}"
    return last.removeprefix("wanllmdb: error: ")
