"""Damaged database files give one line naming the file, and servers started together on one root both
come up (issue 10, point 8)."""

from __future__ import annotations

import os
import threading

import pytest

from tests.support.mount import run_cli
from tests.support.server import start_server


def _one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "wanllmdb server: root" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _damage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(8192))


def test_a_damaged_registry_database_is_one_line_naming_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _damage(str(data / "registry.sqlite"))
    env = {**os.environ, "WANLLMDB_DIR": str(data)}
    line = _one_error_line(run_cli("artifact", "ls", env=env))
    assert str(data / "registry.sqlite") in line and "damaged" in line
    line = _one_error_line(run_cli("server", "--root", str(data), "--port", "0", timeout=60))
    assert str(data / "registry.sqlite") in line


def test_a_damaged_cache_index_is_one_line_naming_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _damage(str(cache / "index.sqlite"))
    line = _one_error_line(run_cli("cache", "--cache-dir", str(cache), "ls"))
    assert str(cache / "index.sqlite") in line


@pytest.mark.server
def test_servers_started_together_on_one_root_both_come_up(tmp_path):
    for round_ in range(3):
        root = tmp_path / f"root{round_}"
        root.mkdir()
        started, errors = [], []

        def start(root=root, started=started, errors=errors) -> None:
            try:
                started.append(start_server(str(root)))
            except Exception as exc:  # reported below, with the server's log
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        try:
            assert errors == [] and len(started) == 2
            for server in started:
                registry = server.registry()
                try:
                    assert registry.list_projects() == []
                finally:
                    registry.close()
        finally:
            for server in started:
                server.stop()
