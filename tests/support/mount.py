"""Real FUSE mounts for tests (a pytest plugin, listed in conftest ``pytest_plugins``).

Fixtures:

- ``mounter`` (function): ``mounter(*args, project=None) -> Mounted`` mounts the registry the test's
  environment selects (``backend``: embedded or ``live_server``) into a fresh temporary directory by running
  the real ``wanllmdb mount`` command, waits for the mount with a deadline, and always unmounts it at the
  end of the test (``wanllmdb unmount``, then a lazy unmount and SIGKILL if anything is left).
- a session finalizer lazily unmounts anything still mounted under the session's temporary directory.

``require_fuse()`` skips a test where FUSE cannot work, and fails it instead when ``WANLLMDB_REQUIRE_FUSE=1``.
``log_version`` logs files straight through a registry, with a chosen chunk size, so that tests can make
many-chunk files of a few megabytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import fuse_required
from tests.support.data import manifest_for, write_files
from wanllmdb.manifest import Manifest, ManifestEntry
from wanllmdb.registry import DraftSpec, FinalizeResult, Registry

MOUNT_TIMEOUT = 30.0
CLI = [sys.executable, "-m", "wanllmdb.cli.main"]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def run_cli(*args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=dict(env) if env else None
    )


def fuse_unusable_reason() -> str | None:
    """Why a FUSE mount cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        if os.geteuid() == 0 or not shutil.which("fusermount3"):
            return f"cannot open /dev/fuse: {exc.strerror}"
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount3 is not installed"
    try:
        from wanllmdb.fs import fuse_ops  # noqa: F401  (loads libfuse)
    except Exception as exc:
        return f"no usable libfuse: {exc}"
    return None


def require_fuse() -> None:
    reason = fuse_unusable_reason()
    if reason:
        if fuse_required():
            pytest.fail(f"WANLLMDB_REQUIRE_FUSE=1 but FUSE is unusable: {reason}")
        pytest.skip(f"FUSE is unusable here: {reason}")


def is_mounted(path: str | os.PathLike[str]) -> bool:
    from wanllmdb.fs.process import mount_entry

    return mount_entry(os.path.abspath(path)) is not None


@dataclass
class Mounted:
    """A live mount made by ``wanllmdb mount``."""

    path: Path
    log_file: Path
    args: tuple[str, ...] = ()
    released: bool = field(default=False, repr=False)

    def stats(self) -> dict[str, int]:
        """The mount's read counters (``user.wanllmdb.stats`` on its root)."""
        return json.loads(os.getxattr(self.path, "user.wanllmdb.stats"))

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def pid(self) -> int | None:
        from wanllmdb.fs.process import find_mount_process

        return find_mount_process(str(self.path))

    def unmount(self, timeout: float = 15.0) -> subprocess.CompletedProcess:
        self.released = True
        return run_cli("unmount", str(self.path), "--timeout", "10", timeout=timeout)


def force_cleanup(mountpoint: str) -> None:
    """Whatever state a mount is in: abort it, detach it, kill its process."""
    from wanllmdb.fs.process import abort_connection, detach, find_mount_process, mount_entry

    pid = find_mount_process(mountpoint)
    entry = mount_entry(mountpoint)
    if entry is not None:
        abort_connection(entry.device)
        detach(mountpoint, lazy=True)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mounter(tmp_path):
    """Factory: ``mounter(*extra_args, project=None) -> Mounted``; every mount is removed after the test."""
    require_fuse()
    made: list[Mounted] = []

    def mount(*extra: str, project: str | None = None) -> Mounted:
        mountpoint = tmp_path / f"mnt-{len(made)}"
        mountpoint.mkdir()
        log_file = tmp_path / f"mount-{len(made)}.log"
        args = [*extra, *(["--project", project] if project else [])]
        result = run_cli("mount", str(mountpoint), "--log-file", str(log_file), *args, timeout=MOUNT_TIMEOUT + 30)
        mounted = Mounted(mountpoint, log_file, tuple(args))
        made.append(mounted)
        assert result.returncode == 0, f"wanllmdb mount failed: {result.stderr}\n{mounted.log()}"
        wait_until(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, f"{mountpoint} to be mounted")
        return mounted

    yield mount
    problems = []
    for mounted in made:
        path = str(mounted.path)
        if is_mounted(path) or mounted.pid() is not None:
            result = mounted.unmount()
            if result.returncode != 0:
                problems.append(f"unmount {path}: {result.stderr}")
        if is_mounted(path) or mounted.pid() is not None:
            force_cleanup(path)
            problems.append(f"{path} needed a forced cleanup")
    assert not problems, "; ".join(problems)


@pytest.fixture
def local_registry():
    """The embedded registry of the test's environment, for tests whose subject does not depend on it."""
    from wanllmdb.registry import open_registry
    from wanllmdb.settings import load_settings

    registry = open_registry(load_settings())
    yield registry
    registry.close()


@pytest.fixture(scope="session", autouse=True)
def _no_stale_mounts(tmp_path_factory):
    """After the session nothing stays mounted under its temporary directory."""
    yield
    from wanllmdb.fs.process import mounts_under

    root = str(tmp_path_factory.getbasetemp())
    for entry in mounts_under(root):
        force_cleanup(entry.mountpoint)


# --- test data ------------------------------------------------------------------------------------------


def log_version(
    registry: Registry,
    tmp_root: str | os.PathLike[str],
    project: str,
    name: str,
    files: Mapping[str, bytes],
    *,
    chunk_size: int | None = None,
    aliases: Sequence[str] = (),
    type: str = "dataset",
) -> FinalizeResult:
    """Log ``files`` as a new version of ``project/name``, large files split into ``chunk_size`` chunks."""
    folder = os.path.join(tmp_root, "src-" + uuid.uuid4().hex[:12])
    local = write_files(folder, files)
    manifest = manifest_for(local, chunk_size)
    draft = registry.create_draft(DraftSpec(project, name, type, manifest))
    by_sha = {manifest.get(rel).sha256: path for rel, path in local.items()}
    for target in draft.missing:
        registry.upload_blob(draft, target, by_sha[target.sha256])
    return registry.finalize_draft(draft.id, aliases)


def log_many_files(
    registry: Registry, tmp_root: str | os.PathLike[str], project: str, name: str, count: int, per_dir: int = 1000
) -> FinalizeResult:
    """A version of ``count`` small files (``d0007/f000123.txt``) sharing one blob: cheap to log, big to list."""
    folder = os.path.join(tmp_root, "src-" + uuid.uuid4().hex[:12])
    local = write_files(folder, {"one.txt": b"same bytes\n"})
    template = manifest_for(local).get("one.txt")
    entries = [
        ManifestEntry(f"d{i // per_dir:04d}/f{i:06d}.txt", template.size, template.md5, template.sha256)
        for i in range(count)
    ]
    draft = registry.create_draft(DraftSpec(project, name, "dataset", Manifest.from_entries(entries)))
    for target in draft.missing:
        registry.upload_blob(draft, target, local["one.txt"])
    return registry.finalize_draft(draft.id, ())
