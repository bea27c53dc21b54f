"""kill -9 at named steps of logging, uploading, finalizing and downloading, then a full consistency scan.

Each trial runs a real process (an SDK logger on the embedded registry, an SDK logger against a server,
a server being logged to, or a downloader) with ``WANLLMDB_TEST_KILL_AT=<step>:<count>`` (see
:mod:`wanllmdb.killpoints`), so the process SIGKILLs itself at exactly that point. The trials are drawn
from a fixed seed and recorded in the failure message. Every kill point comes before a version's commit,
so a killed logger must leave the version count unchanged, and a logger that lived must have made its
version. After all trials, :func:`tests.support.consistency.scan_registry` downloads and verifies every
version of every artifact and checks that numbers are dense.

``WANLLMDB_LONG_TESTS=1`` runs 120 trials per matrix instead of 12. Garbage collection (issue 13) has no
steps yet: its kill points join :data:`GC_STEPS` and the trials below once it exists.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from tests.support.consistency import assert_cache_sound, orphan_temp_files, scan_registry
from tests.support.mount import wait_until
from tests.support.server import ServerProcess, start_server
from wanllmdb.errors import NotFoundError
from wanllmdb.killpoints import ENV as KILL_ENV
from wanllmdb.registry import open_registry
from wanllmdb.settings import load_settings

LONG = os.environ.get("WANLLMDB_LONG_TESTS") == "1"
TRIALS = 120 if LONG else 12
SEED = 20261128
CHILD_TIMEOUT = 60

#: Client-side steps of a log (the SDK), and the registry's own (embedded, or inside a server).
LOG_STEPS = ("log.draft", "log.upload", "log.finalize")
STORE_STEPS = ("blob.write", "finalize.commit")
DOWNLOAD_STEPS = ("cache.write", "download.place")
#: Steps of garbage collection (issue 13), to be drawn like the others once GC exists.
GC_STEPS: tuple[str, ...] = ()

LOGGER = r"""
import sys, wanllmdb
project, name, src = sys.argv[1:4]
with wanllmdb.init(project=project, name="kill-matrix") as run:
    art = wanllmdb.Artifact(name, "dataset")
    art.add_dir(src)
    run.log_artifact(art)
    print(art.version, flush=True)
"""

DOWNLOADER = r"""
import sys, wanllmdb
ref, root = sys.argv[1:3]
wanllmdb.Api().artifact(ref).download(root)
print("ok", flush=True)
"""


@dataclass
class Trial:
    number: int
    what: str
    step: str
    count: int
    outcome: str = ""

    def __str__(self) -> str:
        return f"#{self.number} {self.what} kill at {self.step}:{self.count} -> {self.outcome}"


def _child_env(kill_at: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(extra)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def _run(script: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr


def _make_tree(root, rnd: random.Random, shared: bytes) -> None:
    """Six small files of their own, one shared with every other tree, and a 2.5 MiB file of three chunks."""
    root.mkdir(parents=True)
    for i in range(6):
        (root / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randint(1, 20_000)))
    (root / "shared.bin").write_bytes(shared)
    (root / "sub").mkdir()
    (root / "sub" / "big.bin").write_bytes(rnd.randbytes(5 * 512 * 1024))


def _version_count(registry, project: str, name: str) -> int:
    try:
        return len(registry.get_artifact(project, name).versions)
    except NotFoundError:
        return 0


def _log_trial(trial: Trial, registry, project: str, tmp_path, rnd: random.Random, env: dict[str, str]) -> None:
    """One logger run killed at ``trial``'s step; asserts the version count moved only if it lived."""
    name = rnd.choice(("alpha", "beta"))
    src = tmp_path / f"src-{trial.number}"
    _make_tree(src, rnd, shared=b"shared by every tree\n" * 100)
    before = _version_count(registry, project, name)
    code, out, err = _run(LOGGER, [project, name, str(src)], env)
    after = _version_count(registry, project, name)
    if code == -signal.SIGKILL:
        trial.outcome = "killed"
        assert after == before, f"{trial}: a killed logger changed {name} from {before} to {after} versions"
    else:
        trial.outcome = f"lived ({out or err.strip()[-200:]})"
        assert code == 0 and out == f"v{before + 1}" and after == before + 1, f"{trial}: {err[-2000:]}"


#: Drawn like a step: a trial that is not killed (the registry grows, and the next writer must work).
NO_KILL = "none"


def _draw(rnd: random.Random, steps: tuple[str, ...], max_count: int = 4) -> tuple[str, int]:
    step = rnd.choice((*steps, NO_KILL))
    return step, 1 if step in ("log.draft", "log.finalize", "finalize.commit") else rnd.randint(1, max_count)


def test_killed_embedded_loggers_leave_whole_versions(project, tmp_path):
    rnd = random.Random(SEED)
    registry = open_registry(load_settings())
    trials = []
    try:
        for number in range(TRIALS):
            step, count = _draw(rnd, LOG_STEPS + STORE_STEPS, max_count=8)
            trial = Trial(number, "embedded logger", step, count)
            trials.append(trial)
            _log_trial(trial, registry, project, tmp_path, rnd, _child_env(f"{step}:{count}"))
        assert any(t.outcome == "killed" for t in trials), [str(t) for t in trials]
        report = scan_registry(registry, str(tmp_path))
    finally:
        registry.close()
    assert report.versions == sum(t.outcome.startswith("lived") for t in trials), [str(t) for t in trials]


@pytest.fixture(scope="module")
def kill_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("kill-server"), quiet=True)
    yield server
    server.stop()


def _http_env(server: ServerProcess, kill_at: str | None = None) -> dict[str, str]:
    return _child_env(kill_at, WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key or "")


def test_killed_http_loggers_leave_whole_versions(kill_server, project, tmp_path, monkeypatch):
    rnd = random.Random(SEED + 1)
    registry = kill_server.registry()
    trials = []
    try:
        for number in range(TRIALS):
            step, count = _draw(rnd, LOG_STEPS)
            trial = Trial(number, "logger over HTTP", step, count)
            trials.append(trial)
            _log_trial(trial, registry, project, tmp_path, rnd, _http_env(kill_server, f"{step}:{count}"))
        monkeypatch.setenv("WANLLMDB_BASE_URL", kill_server.url)
        monkeypatch.setenv("WANLLMDB_API_KEY", kill_server.api_key)
        report = scan_registry(registry, str(tmp_path))
    finally:
        registry.close()
    assert report.versions == sum(t.outcome.startswith("lived") for t in trials), [str(t) for t in trials]


def _log_until_server_dies(server: ServerProcess, project: str, name: str, src) -> tuple[int | None, str]:
    """Run a logger against ``server``; returns (its exit code, or None if the server died first; its output)."""
    output = src.parent / f"{src.name}.out"
    with open(output, "w") as out:
        logger = subprocess.Popen([sys.executable, "-c", LOGGER, project, name, str(src)], env=_http_env(server),
                                  stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_until(lambda: logger.poll() is not None or server.process.poll() is not None, CHILD_TIMEOUT, "log")
        if logger.poll() is None:  # the server is gone: its retries would only make the logger slow to fail
            return None, ""
        return logger.returncode, output.read_text().strip()[-2000:]
    finally:
        if logger.poll() is None:
            logger.kill()
            logger.wait(CHILD_TIMEOUT)


def test_a_server_killed_while_storing_or_finalizing_leaves_whole_versions(tmp_path_factory, project, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    """The server SIGKILLs itself mid-upload or inside the finalize transaction; the next one goes on."""
    rnd = random.Random(SEED + 2)
    root = tmp_path_factory.mktemp("killed-server")
    trials = []
    expected = {"alpha": 0, "beta": 0}
    for number in range(max(3, TRIALS // 4)):
        step, count = _draw(rnd, STORE_STEPS, max_count=3)
        trial = Trial(number, "server", step, count)
        trials.append(trial)
        server = start_server(root, api_key="kill-key", extra_env={KILL_ENV: f"{step}:{count}"}, quiet=True)
        try:
            registry = server.registry()
            try:
                counts = {name: _version_count(registry, project, name) for name in expected}
            finally:
                registry.close()
            assert counts == expected, f"{trial}: versions {counts}, expected {expected}"
            name = rnd.choice(sorted(expected))
            src = tmp_path / f"src-{number}"
            _make_tree(src, rnd, shared=b"shared by every tree\n" * 100)
            code, out = _log_until_server_dies(server, project, name, src)
            if server.process.poll() == -signal.SIGKILL:
                trial.outcome = "server killed"
            else:
                trial.outcome = f"lived ({code}, {out})"
                assert code == 0 and out.splitlines()[-1:] == [f"v{expected[name] + 1}"], f"{trial}: {out}"
                expected[name] += 1
        finally:
            server.stop()
    assert any(t.outcome == "server killed" for t in trials), [str(t) for t in trials]
    server = start_server(root, api_key="kill-key", quiet=True)
    try:
        monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
        monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key)
        registry = server.registry()
        try:
            report = scan_registry(registry, str(tmp_path))
            assert {name: _version_count(registry, project, name) for name in expected} == expected
        finally:
            registry.close()
    finally:
        server.stop()
    assert report.versions == sum(expected.values()), [str(t) for t in trials]


def test_killed_downloaders_leave_the_cache_sound(project, tmp_path):
    rnd = random.Random(SEED + 3)
    registry = open_registry(load_settings())
    try:
        for i in range(3):
            src = tmp_path / f"src-{i}"
            _make_tree(src, rnd, shared=b"shared\n" * 1000)
            code, out, err = _run(LOGGER, [project, "data", str(src)], _child_env(None))
            assert code == 0, err
        trials = []
        for number in range(TRIALS):
            step, count = _draw(rnd, DOWNLOAD_STEPS, max_count=8)
            trial = Trial(number, "downloader", step, count)
            trials.append(trial)
            ref = f"{project}/data:v{rnd.randint(1, 3)}"
            code, out, err = _run(
                DOWNLOADER, [ref, str(tmp_path / f"dl-{uuid.uuid4().hex[:8]}")], _child_env(f"{step}:{count}")
            )
            trial.outcome = "killed" if code == -signal.SIGKILL else f"lived ({code}, {err.strip()[-200:]})"
            assert code in (0, -signal.SIGKILL), str(trial)
        assert any(t.outcome == "killed" for t in trials), [str(t) for t in trials]
        assert_cache_sound(load_settings().cache_dir)
        report = scan_registry(registry, str(tmp_path))
    finally:
        registry.close()
    assert report.versions == 3
    assert_cache_sound(load_settings().cache_dir)


def test_temporary_files_of_killed_embedded_loggers_are_reclaimed_by_the_next_writer(project, tmp_path):
    rnd = random.Random(SEED + 4)
    for number, count in enumerate((1, 3, 5)):
        src = tmp_path / f"src-{number}"
        _make_tree(src, rnd, shared=b"x")
        code, _out, err = _run(LOGGER, [project, "data", str(src)], _child_env(f"blob.write:{count}"))
        assert code == -signal.SIGKILL, err
    data_dir = load_settings().data_dir
    assert orphan_temp_files(data_dir), "the kills left nothing to reclaim: the test proves nothing"
    src = tmp_path / "next"
    _make_tree(src, rnd, shared=b"x")
    code, out, err = _run(LOGGER, [project, "data", str(src)], _child_env(None))
    assert code == 0 and out == "v1", err
    assert orphan_temp_files(data_dir) == []


def test_temporary_files_of_killed_downloaders_are_reclaimed_by_the_next_download(project, tmp_path):
    rnd = random.Random(SEED + 5)
    src = tmp_path / "src"
    _make_tree(src, rnd, shared=b"y")
    code, out, err = _run(LOGGER, [project, "data", str(src)], _child_env(None))
    assert code == 0, err
    for number in range(2):
        target = str(tmp_path / f"killed-{number}")
        code, _out, err = _run(DOWNLOADER, [f"{project}/data:v1", target], _child_env("cache.write:1"))
        assert code == -signal.SIGKILL, err
    cache_dir = load_settings().cache_dir
    assert orphan_temp_files(cache_dir), "the kills left nothing to reclaim: the test proves nothing"
    code, out, err = _run(DOWNLOADER, [f"{project}/data:v1", str(tmp_path / "next")], _child_env(None))
    assert code == 0, err
    assert orphan_temp_files(cache_dir) == []
