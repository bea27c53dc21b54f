"""Bad options and an unreachable server give a short error naming what is wrong, never a traceback, and
retries say once what they do (issue 10, point 8)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.support.mount import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "99999"], "port must be 0 to 65535"),
        (["--port", "eighty"], "not a port number"),
        (["--url-ttl", "-5"], "--url-ttl must be a positive duration"),
        (["--draft-max-age", "0"], "--draft-max-age must be a positive duration"),
        (["--url-ttl", "2h", "--draft-max-age", "1h"], "--draft-max-age (1h) must be at least --url-ttl"),
        (["--index-cache", "lots"], "--index-cache: not a size: 'lots'"),
    ],
)
def test_bad_server_options_are_refused_in_one_line(tmp_path, args, named):
    result = run_cli("server", "--root", str(tmp_path / "root"), *args, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert named in result.stderr
    assert len([line for line in _lines(result.stderr) if not line.startswith((" ", "usage:"))]) == 1


def test_a_busy_port_is_one_line_naming_it(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("server", "--root", str(tmp_path / "root"), "--port", str(port), timeout=30)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_an_unreachable_server_is_retried_quietly_then_named(tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("data")
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    env = {**os.environ, "WANLLMDB_BASE_URL": url}
    result = run_cli("artifact", "put", str(src), "-p", "p", "-n", "n", "-t", "dataset", env=env, timeout=60)
    took = time.monotonic() - started
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = _lines(result.stderr)
    assert len(lines) <= 2, lines  # before: ~30 urllib3 warnings over ~50 s
    assert any("retrying for up to" in line for line in lines)
    assert url in lines[-1] and "unreachable" in lines[-1]
    assert took < 30  # a hang bound: the documented retry window is about 8 s
