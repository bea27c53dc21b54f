"""Blob bodies sent with ``sendfile`` (``server/zerocopy.py``): a real uvicorn on loopback, both of its HTTP
protocols, whole bodies, ranges, and a client that goes away mid-body.

The claims attacked: over the httptools protocol the zero-copy extension is offered and the bytes that
arrive are the file's, whole or ranged; over h11 it is not offered and the body still arrives by the
ordinary path; a client that hangs up in the middle of a sendfile leaves the server serving the next
request, with nothing logged as an application error.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import pytest
import requests
import uvicorn

from wanllmdb.server.responses import BLOB_CHUNK, BlobResponse
from wanllmdb.server.zerocopy import EXTENSION, ZeroCopySend


class FileApp:
    """Serves one file at every path, with ``Range`` support, as the blob endpoint does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offered: list[bool] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.offered.append(EXTENSION in (scope.get("extensions") or {}))
        size = os.path.getsize(self.path)
        start, stop, partial = 0, size, False
        ranged = dict(scope["headers"]).get(b"range")
        if ranged:
            first, last = ranged.decode().split("=")[1].split("-")
            start, stop, partial = int(first), int(last) + 1, True
        fd = os.open(self.path, os.O_RDONLY)
        await BlobResponse(fd, start, stop, size, partial=partial, etag="e")(scope, receive, send)


class Served:
    def __init__(self, app, protocol: str) -> None:
        config = uvicorn.Config(ZeroCopySend(app), host="127.0.0.1", port=0, http=protocol, log_config=None,
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def big_file(tmp_path) -> tuple[str, bytes]:
    data = os.urandom(5 * BLOB_CHUNK + 3)  # over one piece: the sendfile path
    path = tmp_path / "blob"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.parametrize("protocol, offered", [("httptools", True), ("h11", False)])
def test_whole_and_ranged_bodies_arrive_intact_on_either_protocol(big_file, protocol, offered):
    path, data = big_file
    app = FileApp(path)
    with Served(app, protocol) as url:
        whole = requests.get(f"{url}/b", timeout=30)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-length"] == str(len(data))
        part = requests.get(f"{url}/b", headers={"Range": f"bytes=1000-{3 * BLOB_CHUNK + 7}"}, timeout=30)
        assert part.status_code == 206 and part.content == data[1000 : 3 * BLOB_CHUNK + 8]
        with requests.Session() as session:  # keep-alive: the next response on the connection is whole too
            assert [session.get(f"{url}/b", timeout=30).content == data for _ in range(3)] == [True] * 3
    assert set(app.offered) == {offered}


def test_a_client_that_hangs_up_mid_body_leaves_the_server_serving(tmp_path, caplog):
    data = os.urandom(256 * BLOB_CHUNK)  # more than loopback's socket buffers take at once
    path = tmp_path / "blob"
    path.write_bytes(data)
    caplog.set_level(logging.DEBUG)
    with Served(FileApp(str(path)), "httptools") as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            # closed with most of the body unread
        time.sleep(0.5)
        assert requests.get(f"{url}/b", timeout=60).content == data
    assert any("sendfile ended early" in r.getMessage() for r in caplog.records), "the hang-ups hit a sendfile"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
