"""Faults a healthy server never produces, injected with ``responses``: 5xx and 429 answers, connections
reset mid-body, truncated and corrupt bodies, expired URLs, refused keys. The HTTP registry must retry what
is safe to retry, resume what broke off, re-request expired URLs, and never let bad bytes into the cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket

import pytest
import responses

from tests.support.data import read_range
from wanllmdb.api_client import ApiClient
from wanllmdb.cache.store import BlobCache
from wanllmdb.errors import (
    AuthenticationError,
    ChecksumError,
    ForbiddenError,
    IncompleteDraftError,
    NotFoundError,
    ServerError,
    ServerUnreachableError,
    TransportError,
    VersionNotFoundError,
)
from wanllmdb.registry.base import BlobTarget, Draft
from wanllmdb.registry.http import HttpRegistry

BASE = "http://wanllmdb.test"
API = BASE + "/api/v1"
MIB = 1 << 20


@pytest.fixture
def registry():
    reg = HttpRegistry(BASE, api_key="k", retries=3, backoff=0.0)
    yield reg
    reg.close()


@pytest.fixture
def blob():
    data = os.urandom(3 * MIB + 123)
    return data, hashlib.sha256(data).hexdigest()


def _error(code: str, message: str = "refused", **extra) -> str:
    return json.dumps({"error": {"code": code, "message": message, **extra}})


def _blob_url(sha: str, n: int = 1) -> str:
    return f"{API}/blobs/{sha}?expires=9999999999&sig=s{n}"


def _presign(sha: str, size: int, *urls: str) -> None:
    """POST /blob-urls answers with each of ``urls`` in turn."""
    for url in urls:
        responses.add(
            responses.POST,
            f"{API}/blob-urls",
            json={"urls": {sha: {"url": url, "size": size, "expires_at": 9999999999}}, "missing": []},
        )


class _BreakingRaw(io.RawIOBase):
    """A body that delivers ``data`` and then fails like a reset connection."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._data.readinto(buf)
        if n == 0:
            raise ConnectionResetError(104, "Connection reset by peer")
        return n


def _fetch_into_cache(registry: HttpRegistry, cache: BlobCache, sha: str, size: int) -> str:
    return cache.ensure(sha, size, lambda writer: registry.fetch_blob(sha, size, writer))


def _cache_is_clean(cache: BlobCache, sha: str) -> bool:
    return cache.lookup(sha) is None and os.listdir(os.path.join(cache.root, "tmp")) == []


@responses.activate
def test_get_is_retried_after_500_and_429_then_succeeds(registry):
    responses.add(responses.GET, f"{API}/projects", status=500, body=_error("server_error"))
    responses.add(responses.GET, f"{API}/projects", status=429, headers={"Retry-After": "0"})
    responses.add(responses.GET, f"{API}/projects", json={"projects": ["vision"]})

    assert registry.list_projects() == ["vision"]
    assert len(responses.calls) == 3


@responses.activate
def test_finalize_is_never_repeated_after_a_500(registry):
    responses.add(responses.POST, f"{API}/drafts/d1/finalize", status=500, body=_error("server_error"))

    with pytest.raises(ServerError):
        registry.finalize_draft("d1", ["best"])
    assert len(responses.calls) == 1


@responses.activate
def test_draft_creation_is_repeated_after_a_503(registry):
    from wanllmdb.manifest import Manifest, ManifestEntry
    from wanllmdb.registry.base import DraftSpec

    entry = ManifestEntry("a.txt", 1, "0" * 32, "a" * 64)
    responses.add(responses.POST, f"{API}/drafts", status=503, body="upstream down")
    responses.add(responses.POST, f"{API}/drafts", status=201, json={"id": "d9", "digest": "x", "missing": []})

    draft = registry.create_draft(DraftSpec("p", "n", "dataset", Manifest.from_entries([entry])))

    assert draft.id == "d9" and draft.missing == ()
    assert len(responses.calls) == 2


@responses.activate
def test_download_resumes_after_a_connection_reset_mid_body(registry, blob, tmp_path):
    data, sha = blob
    cut = MIB + 17
    _presign(sha, len(data), _blob_url(sha))
    ranges = []

    def answer(request):
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            body = io.BufferedReader(_BreakingRaw(data[:cut]))
            return 200, {"Content-Length": str(len(data))}, body
        start = int(ranges[-1][len("bytes=") : -1])
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return 206, headers, data[start:]

    responses.add_callback(responses.GET, _blob_url(sha), callback=answer)
    cache = BlobCache(str(tmp_path / "cache"))

    path = _fetch_into_cache(registry, cache, sha, len(data))

    # resumed from what had arrived before the reset (bytes still buffered when it broke are asked again)
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < int(ranges[1][len("bytes=") : -1]) <= cut
    with open(path, "rb") as f:
        assert f.read() == data


@responses.activate
def test_truncated_body_is_resumed_from_the_first_missing_byte(registry, blob, tmp_path):
    data, sha = blob
    cut = 2 * MIB
    _presign(sha, len(data), _blob_url(sha))
    ranges = []

    def answer(request):
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:  # declares the whole blob, sends part of it
            return 200, {"Content-Length": str(len(data))}, data[:cut]
        return 206, {"Content-Range": f"bytes {cut}-{len(data) - 1}/{len(data)}"}, data[cut:]

    responses.add_callback(responses.GET, _blob_url(sha), callback=answer)
    cache = BlobCache(str(tmp_path / "cache"))

    path = _fetch_into_cache(registry, cache, sha, len(data))

    assert ranges == [None, f"bytes={cut}-"]
    assert os.path.getsize(path) == len(data)


@responses.activate
def test_body_that_keeps_breaking_off_fails_and_caches_nothing(registry, blob, tmp_path):
    data, sha = blob
    _presign(sha, len(data), _blob_url(sha))

    def answer(request):
        start = int((request.headers.get("Range") or "bytes=0-")[6:].split("-")[0])
        headers = {"Content-Length": str(len(data) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return (206 if start else 200), headers, data[start : min(start + MIB, 2 * MIB)]

    responses.add_callback(responses.GET, _blob_url(sha), callback=answer)
    cache = BlobCache(str(tmp_path / "cache"))

    with pytest.raises(TransportError) as caught:
        _fetch_into_cache(registry, cache, sha, len(data))

    assert isinstance(caught.value, OSError)
    assert "broke off" in str(caught.value)
    assert _cache_is_clean(cache, sha)


@responses.activate
def test_body_with_a_wrong_checksum_raises_and_enters_no_cache(registry, blob, tmp_path):
    data, sha = blob
    corrupt = bytearray(data)
    corrupt[12345] ^= 0xFF
    _presign(sha, len(data), _blob_url(sha))
    responses.add(responses.GET, _blob_url(sha), body=bytes(corrupt))
    cache = BlobCache(str(tmp_path / "cache"))

    with pytest.raises(ChecksumError):
        _fetch_into_cache(registry, cache, sha, len(data))

    assert _cache_is_clean(cache, sha)


@responses.activate
def test_expired_download_url_is_requested_again(registry, blob, tmp_path):
    data, sha = blob
    _presign(sha, len(data), _blob_url(sha, 1), _blob_url(sha, 2))
    responses.add(responses.GET, _blob_url(sha, 1), status=403, body=_error("url_expired", "expired"))
    responses.add(responses.GET, _blob_url(sha, 2), body=data)
    cache = BlobCache(str(tmp_path / "cache"))

    registry.prepare_fetch([sha])
    path = _fetch_into_cache(registry, cache, sha, len(data))

    assert os.path.getsize(path) == len(data)
    presigns = [c for c in responses.calls if c.request.url.endswith("/blob-urls")]
    assert len(presigns) == 2


@responses.activate
def test_url_refused_twice_is_an_error_not_a_loop(registry, blob, tmp_path):
    data, sha = blob
    _presign(sha, len(data), _blob_url(sha, 1), _blob_url(sha, 2))
    for n in (1, 2):
        responses.add(responses.GET, _blob_url(sha, n), status=403, body=_error("forbidden", "bad signature"))

    with pytest.raises(ForbiddenError):
        read_range(registry, sha, 0, 10)
    assert len(responses.calls) == 4


@responses.activate
def test_expired_upload_url_is_requested_again(registry, tmp_path):
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    old_url = f"{API}/blobs/{sha}?size=1000&expires=1&sig=old"
    new_url = f"{API}/blobs/{sha}?size=1000&expires=9999999999&sig=new"
    responses.add(responses.PUT, old_url, status=403, body=_error("url_expired", "expired"))
    responses.add(
        responses.POST,
        f"{API}/drafts/d1/upload-urls",
        json={"missing": [{"sha256": sha, "size": 1000, "url": new_url, "expires_at": 9999999999}]},
    )
    responses.add(responses.PUT, new_url, status=201, json={"stored": True})
    draft = Draft("d1", "digest", (BlobTarget(sha, 1000, old_url, 9999999999),))

    registry.upload_blob(draft, draft.missing[0], str(path))

    assert [c.request.method for c in responses.calls] == ["PUT", "POST", "PUT"]
    assert responses.calls[2].request.headers["Content-Length"] == "1000"


@responses.activate
def test_upload_refused_for_its_checksum_raises_checksum_error(registry, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"y" * 10)
    url = f"{API}/blobs/{'b' * 64}?size=10&expires=9999999999&sig=s"
    responses.add(responses.PUT, url, status=400, body=_error("checksum_mismatch", "content hashes to ..."))
    draft = Draft("d1", "digest", (BlobTarget("b" * 64, 10, url, 9999999999),))

    with pytest.raises(ChecksumError):
        registry.upload_blob(draft, draft.missing[0], str(path))


@responses.activate
def test_401_raises_an_authentication_error_naming_the_server(registry):
    responses.add(responses.GET, f"{API}/projects", status=401, body=_error("unauthorized", "invalid API key"))

    with pytest.raises(AuthenticationError) as caught:
        registry.list_projects()

    assert "wanllmdb.test" in str(caught.value) and "invalid API key" in str(caught.value)
    assert caught.value.status == 401
    assert isinstance(caught.value, OSError)


@responses.activate
def test_error_codes_and_bare_statuses_map_to_typed_errors(registry):
    responses.add(responses.GET, f"{API}/projects/p/artifacts/a/versions/v9", status=404,
                  body=_error("version_not_found", "artifact 'a:v9' not found"))  # fmt: skip
    responses.add(responses.POST, f"{API}/drafts/d1/finalize", status=409,
                  body=_error("incomplete_draft", "2 blobs missing", missing=["a" * 64, "b" * 64]))  # fmt: skip
    responses.add(responses.GET, f"{API}/projects", status=502, body="<html>Bad Gateway</html>")
    responses.add(responses.GET, f"{API}/runs/r1", status=404, body="")
    responses.add(responses.GET, f"{API}/projects/p/artifacts", status=403, body="")

    with pytest.raises(VersionNotFoundError, match="'a:v9' not found"):
        registry.resolve("p", "a", "v9")
    with pytest.raises(IncompleteDraftError) as incomplete:
        registry.finalize_draft("d1")
    assert incomplete.value.missing == ["a" * 64, "b" * 64]
    with pytest.raises(ServerError):
        registry.list_projects()
    with pytest.raises(NotFoundError):
        registry.get_run("r1")
    with pytest.raises(ForbiddenError, match="wanllmdb.test"):
        registry.list_artifacts("p")


def test_unreachable_server_raises_server_unreachable_naming_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reg = HttpRegistry(f"http://127.0.0.1:{port}", retries=1, backoff=0.0)
    try:
        with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{port}"):
            reg.list_projects()
    finally:
        reg.close()


@responses.activate
def test_api_client_download_checks_the_digest_and_leaves_no_partial_file(tmp_path, blob):
    data, sha = blob
    url = _blob_url(sha)
    responses.add(responses.GET, url, body=data[:-1] + bytes([data[-1] ^ 0xFF]))  # always differs
    responses.add(responses.GET, url, body=data)
    client = ApiClient(BASE, api_key="k")
    target = tmp_path / "out" / "model.bin"

    with pytest.raises(ChecksumError):
        client.download_file(url, str(target), sha256=sha)
    assert not target.exists() and os.listdir(target.parent) == []

    assert client.download_file(url, str(target), sha256=sha) == str(target)
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["model.bin"]
    assert "Authorization" not in responses.calls[0].request.headers  # keys never go to blob URLs
    client.close()
