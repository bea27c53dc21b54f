"""Security of ``wanllmdb server`` (real processes on 127.0.0.1): API keys on every route, presigned URLs
that only work for their method, blob and time, uploads that store nothing unless they match, path
traversal refused everywhere, huge declared bodies refused before they are read, nothing served from
outside the root, and no unauthenticated server on a network address."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from urllib.parse import quote, urlsplit

import pytest
import requests

from tests.support.server import log_version, write_files
from wanllmdb.server import ServerConfig
from wanllmdb.server.run import is_loopback
from wanllmdb.server.signing import SECRET_FILE, URLSigner

pytestmark = pytest.mark.server

HUGE = 10**13
_PARAM_VALUES = {"sha256": "a" * 64, "selector": "v1", "alias": "best", "draft_id": "d0", "run_id": "r0"}


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture
def stored(server, project, tmp_path):
    """A logged version with two blobs: (sha256 -> bytes)."""
    files = write_files(tmp_path / "src", 2, size=4096)
    reg = server.registry()
    try:
        log_version(reg, project, "secret-data", files)
    finally:
        reg.close()
    blobs = {}
    for local in files.values():
        data = open(local, "rb").read()
        blobs[hashlib.sha256(data).hexdigest()] = data
    return blobs


def _signer(server, ttl: float = 3600) -> URLSigner:
    with open(os.path.join(server.root, SECRET_FILE), "rb") as f:
        return URLSigner(f.read().strip(), ttl)


def _download_url(server, sha: str) -> str:
    answer = requests.post(server.url + "/api/v1/blob-urls", json={"sha256s": [sha]}, headers=server.headers)
    return answer.json()["urls"][sha]["url"]


def _code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def _stored_files(server) -> list[str]:
    found = []
    for directory in ("blobs", "tmp"):
        for dirpath, _, names in os.walk(os.path.join(server.root, directory)):
            found += [os.path.join(dirpath, n) for n in names]
    return sorted(found)


def _draft_count(server) -> int:
    with sqlite3.connect(os.path.join(server.root, "registry.sqlite")) as conn:
        return conn.execute("SELECT COUNT(*) FROM drafts").fetchone()[0]


def _all_routes(tmp_path) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves: its FastAPI routes and every documented operation."""
    from fastapi.routing import APIRoute

    from wanllmdb.server.app import create_app

    app = create_app(ServerConfig(root=str(tmp_path / "enumerate")))
    try:
        routes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
        for path, operations in app.openapi()["paths"].items():
            routes |= {(method.upper(), path) for method in operations}
    finally:
        app.state.server.close()
    return sorted(routes)


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _PARAM_VALUES.get(m.group(1), m.group(1) + "0"), path)


# --- API keys ------------------------------------------------------------------------------------------------


def test_every_api_route_refuses_requests_without_a_valid_key(server, tmp_path):
    routes = [(m, p) for m, p in _all_routes(tmp_path) if p.startswith("/api/v1/") and p != "/api/v1/health"]
    assert len(routes) >= 18 and ("PUT", "/api/v1/blobs/{sha256}") in routes  # the enumeration is real

    for method, path in routes:
        url = server.url + _fill(path)
        body = {} if method in ("POST", "PUT", "PATCH") else None
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": server.api_key}):
            answer = requests.request(method, url, json=body, headers=headers)
            assert answer.status_code == 401, f"{method} {path} with {headers} -> {answer.status_code}"
            assert _code(answer) == "unauthorized"


def test_the_right_key_opens_the_api_and_health_needs_none(server):
    assert requests.get(server.url + "/api/v1/health").status_code == 200
    assert requests.get(server.url + "/api/v1/projects", headers=server.headers).status_code == 200
    answer = requests.get(server.url + "/api/v1/projects", headers={"Authorization": "Bearer " + server.api_key[:-1]})
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"


# --- presigned URLs ------------------------------------------------------------------------------------------


def test_presigned_urls_work_only_for_their_method_blob_and_time(server, stored):
    sha, other = sorted(stored)
    good = _download_url(server, sha)
    parts = urlsplit(good)
    query = dict(p.split("=", 1) for p in parts.query.split("&"))
    flipped = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
    expired = _signer(server, ttl=-10).presign(server.url, "GET", sha).url

    assert requests.get(good).content == stored[sha]
    tampered = requests.get(good.replace(query["sig"], flipped))
    assert tampered.status_code == 403 and _code(tampered) == "forbidden"
    later = requests.get(good.replace(f"expires={query['expires']}", f"expires={int(query['expires']) + 3600}"))
    assert later.status_code == 403 and _code(later) == "forbidden"
    other_blob = requests.get(good.replace(sha, other))
    assert other_blob.status_code == 403 and _code(other_blob) == "forbidden"
    old = requests.get(expired)
    assert old.status_code == 403 and _code(old) == "url_expired"
    as_upload = requests.put(good + "&size=4096", data=stored[sha])
    assert as_upload.status_code == 403
    unsigned = requests.get(f"{server.url}/api/v1/blobs/{sha}")
    assert unsigned.status_code == 401


def test_upload_urls_bind_the_size_and_bundles_bind_their_list(server, stored):
    sha, other = sorted(stored)
    signer = _signer(server)
    put_url = signer.presign(server.url, "PUT", "b" * 64, 10).url

    resized = requests.put(put_url.replace("size=10", "size=11"), data=b"x" * 11)
    assert resized.status_code == 403

    bundle = signer.presign_bundle(server.url, [sha, other]).url
    assert requests.post(bundle, data=f"{sha}\n{other}").content == stored[sha] + stored[other]
    swapped = requests.post(bundle, data=f"{other}\n{sha}")
    assert swapped.status_code == 403 and _code(swapped) == "forbidden"


# --- uploads that do not match store nothing -----------------------------------------------------------------


def test_uploads_whose_content_or_md5_differ_store_nothing(server):
    data = os.urandom(50_000)
    sha = hashlib.sha256(data).hexdigest()
    url = _signer(server).presign(server.url, "PUT", sha, len(data)).url
    before = _stored_files(server)

    wrong_bytes = requests.put(url, data=os.urandom(len(data)))
    wrong_md5 = requests.put(url, data=data, headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    too_long = requests.put(url, data=data + b"!")
    too_short = requests.put(url, data=data[:-1])
    chunked = requests.put(url, data=iter([data[:10], data[10:]]))

    assert wrong_bytes.status_code == 400 and _code(wrong_bytes) == "checksum_mismatch"
    assert wrong_md5.status_code == 400 and _code(wrong_md5) == "checksum_mismatch"
    assert too_long.status_code == 413 and too_short.status_code == 400
    assert chunked.status_code == 411
    big = os.urandom(3 * 1024 * 1024)  # large enough to be hashed and written on a worker thread
    big_url = _signer(server).presign(server.url, "PUT", hashlib.sha256(big).hexdigest(), len(big)).url
    big_wrong = requests.put(big_url, data=big[:-1] + bytes([big[-1] ^ 0xFF]))  # always differs
    assert big_wrong.status_code == 400 and _code(big_wrong) == "checksum_mismatch"
    assert _stored_files(server) == before

    right = requests.put(url, data=data, headers={"Content-MD5": _b64_md5(data)})
    assert right.status_code == 201 and right.json()["stored"] is True
    assert os.path.exists(os.path.join(server.root, "blobs", sha[:2], sha))


def _b64_md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_chunk_digests_of_an_unknown_or_mixed_algorithm_are_refused_and_write_nothing(server, project):
    before = _draft_count(server)
    b3 = "blake3:" + "a" * 64
    for chunks in (["a" * 64, b3, b3], ["md5:" + "a" * 64] * 3, ["sha256:" + "a" * 64] * 3, ["blake3:" + "A" * 64] * 3):
        entry = {"path": "w.bin", "size": 20, "md5": "0" * 32, "sha256": "c" * 64, "chunk_size": 8, "chunks": chunks}
        body = {"project": project, "name": "n", "type": "t", "manifest": {"entries": [entry]}}
        answer = requests.post(server.url + "/api/v1/drafts", json=body, headers=server.headers)
        assert answer.status_code == 400 and _code(answer) == "invalid_manifest", chunks
        assert "chunk digests" in answer.json()["error"]["message"], chunks
    assert _draft_count(server) == before


# --- path traversal ------------------------------------------------------------------------------------------


def test_traversal_in_manifests_names_and_aliases_is_refused_and_writes_nothing(server, project):
    entry = {"size": 1, "md5": "0" * 32, "sha256": "c" * 64}
    before_files, before_drafts = _stored_files(server), _draft_count(server)

    def draft(**overrides):
        body = {"project": project, "name": "n", "type": "t", "manifest": {"entries": [{"path": "ok", **entry}]}}
        body.update(overrides)
        return requests.post(server.url + "/api/v1/drafts", json=body, headers=server.headers)

    for path in ("../escape", "/etc/passwd", "a/../../b", "a/./b", "a\x00b"):
        answer = draft(manifest={"entries": [{"path": path, **entry}]})
        assert answer.status_code == 400 and _code(answer) == "invalid_manifest", path
    for field, value in (("project", ".."), ("project", "../etc"), ("name", "a/b"), ("name", "..")):
        answer = draft(**{field: value})
        assert answer.status_code == 400 and _code(answer) == "invalid_name", (field, value)

    made = draft().json()
    finalize = requests.post(
        f"{server.url}/api/v1/drafts/{made['id']}/finalize", json={"aliases": ["../x"]}, headers=server.headers
    )
    assert finalize.status_code == 400 and _code(finalize) == "invalid_name"
    for raw in (f"/api/v1/projects/{quote('../..', safe='')}/artifacts", "/api/v1/projects/p/artifacts/..%2F..%2Fx"):
        assert requests.get(server.url + raw, headers=server.headers).status_code in (400, 404)

    assert _stored_files(server) == before_files
    assert _draft_count(server) == before_drafts + 1  # only the one valid draft


def test_blob_urls_cannot_name_any_file_but_a_blob(server, tmp_path):
    secret = open(os.path.join(server.root, SECRET_FILE), "rb").read()
    signer = _signer(server)
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    for name in ("../server.secret", "..%2Fserver.secret", "../../registry/server.secret", "A" * 64):
        signed = signer.presign(server.url, "GET", name)
        answer = requests.get(signed.url)  # requests folds '..': the path leaves /blobs/ and needs a key
        assert answer.status_code in (400, 401, 403, 404) and secret not in answer.content, name
        conn = http.client.HTTPConnection(host, port, timeout=10)  # no client-side normalization of '..'
        conn.request("GET", urlsplit(signed.url).path + "?" + urlsplit(signed.url).query)
        raw = conn.getresponse()
        assert raw.status in (400, 403, 404) and secret not in raw.read(), name
        conn.close()


def test_a_symlink_in_the_blob_store_is_not_followed(server, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside the root")
    sha = hashlib.sha256(b"outside the root").hexdigest()
    os.makedirs(os.path.join(server.root, "blobs", sha[:2]), exist_ok=True)
    os.symlink(outside, os.path.join(server.root, "blobs", sha[:2], sha))

    answer = requests.get(_signer(server).presign(server.url, "GET", sha).url)

    assert answer.status_code == 404 and b"outside the root" not in answer.content


# --- huge declared bodies ------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def _raw_request(server, head: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send only a request head (no body) and read the answer: the server must answer without the body."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        received = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, received


def test_huge_declared_bodies_are_refused_before_reading(server):
    rss_before = _rss_kb(server.process.pid)
    put = urlsplit(_signer(server).presign(server.url, "PUT", "d" * 64, 10).url)
    auth = f"Authorization: Bearer {server.api_key}\r\n"
    heads = {
        "blob": f"PUT {put.path}?{put.query} HTTP/1.1\r\nHost: x\r\nContent-Length: {HUGE}\r\n\r\n",
        "json": f"POST /api/v1/drafts HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {HUGE}\r\n\r\n",
        "unauthenticated": f"POST /api/v1/drafts HTTP/1.1\r\nHost: x\r\nContent-Length: {HUGE}\r\n\r\n",
    }

    statuses = {name: _raw_request(server, head)[0] for name, head in heads.items()}

    assert statuses == {"blob": 413, "json": 413, "unauthenticated": 401}
    assert _rss_kb(server.process.pid) - rss_before < 20_000
    assert requests.get(server.url + "/api/v1/health").status_code == 200


# --- exposure and secrets ------------------------------------------------------------------------------------


def test_a_network_address_without_a_key_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANLLMDB_SERVER")}
    cmd = [sys.executable, "-m", "wanllmdb.cli.main", "server", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(cmd + ["--root", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=60)

    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1
    assert "refusing to serve on 0.0.0.0 without an API key" in done.stderr and "--api-key" in done.stderr


def test_loopback_detection():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1"))


def test_the_signing_secret_is_private_to_the_server_user(server):
    assert os.stat(os.path.join(server.root, SECRET_FILE)).st_mode & 0o777 == 0o600


_CREATE_SECRET_AT = """
import sys, time
from wanllmdb.server.signing import load_or_create_secret
start = float(sys.argv[2])
while time.time() < start:
    pass
sys.stdout.write(load_or_create_secret(sys.argv[1]).decode())
"""


def test_servers_creating_the_secret_at_once_all_read_one_whole_secret(tmp_path):
    # Servers started together on one root used to read the secret file between its creation and its write.
    for round_ in range(8):
        root = str(tmp_path / f"root{round_}")
        start = time.time() + 1.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CREATE_SECRET_AT, root, repr(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outcomes = [(p.wait(60), *p.communicate()) for p in procs]
        assert all(rc == 0 for rc, _, _ in outcomes), [err for _, _, err in outcomes]
        with open(os.path.join(root, SECRET_FILE)) as f:
            kept = f.read()
        assert re.fullmatch(r"[0-9a-f]{64}", kept)
        assert {out for _, out, _ in outcomes} == {kept}
        assert sorted(os.listdir(root)) == [SECRET_FILE]
        assert os.stat(os.path.join(root, SECRET_FILE)).st_mode & 0o777 == 0o600


def test_a_secret_left_half_made_by_a_killed_server_is_removed(tmp_path):
    from wanllmdb.server.signing import load_or_create_secret

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "root"
    root.mkdir()
    (root / f"server-secret.{dead.pid}-{os.stat('/proc/self/ns/pid').st_ino}.ab12.tmp").write_text("")
    live = root / f"server-secret.{os.getpid()}-{os.stat('/proc/self/ns/pid').st_ino}.cd34.tmp"
    live.write_text("")
    (root / "server-secret.notes").write_text("not a temporary file")
    secret = load_or_create_secret(str(root))
    assert len(secret) == 64
    assert sorted(os.listdir(root)) == sorted([SECRET_FILE, live.name, "server-secret.notes"])
    assert load_or_create_secret(str(root)) == secret


def test_a_root_on_a_filesystem_without_hard_links_still_gets_a_secret(tmp_path, monkeypatch):
    from wanllmdb.server import signing

    def no_links(src, dst, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", src)

    monkeypatch.setattr(signing.os, "link", no_links)
    root = tmp_path / "root"
    secret = signing.load_or_create_secret(str(root))
    assert re.fullmatch(rb"[0-9a-f]{64}", secret)
    assert os.listdir(root) == [SECRET_FILE]
    assert os.stat(root / SECRET_FILE).st_mode & 0o777 == 0o600
    assert signing.load_or_create_secret(str(root)) == secret
