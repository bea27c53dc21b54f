"""The HTTP registry against a real ``wanllmdb server``: the batched write workflow and its request counts,
interrupted logs, stale drafts, the reader side (one request per resolve, one presign for a whole plan, no
blob request for cached content), ranged downloads, expired URLs, the seed's ApiClient and the request log."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from tests.support.data import read_range
from tests.support.server import RequestLog, log_version, manifest_of, write_files
from wanllmdb.api_client import ApiClient
from wanllmdb.cache.store import BlobCache
from wanllmdb.errors import ArtifactNotFoundError, DraftNotFoundError, ProjectNotFoundError
from wanllmdb.registry.base import DraftSpec

pytestmark = pytest.mark.server


@pytest.fixture
def http_registry(live_server):
    reg = live_server.registry()
    yield reg
    reg.close()


def _wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_logging_1000_files_costs_two_api_requests_and_one_put_per_blob(http_registry, project, tmp_path):
    files = write_files(tmp_path / "src", 1000, size=64)
    log = RequestLog(http_registry)

    first = log_version(http_registry, project, "many", files)

    assert first.created and first.version.version == 1 and first.version.file_count == 1000
    assert log.count("PUT", "/blobs/") == 1000
    assert log.count() - log.count("PUT", "/blobs/") == 2  # create the draft, finalize it

    log.clear()
    again = log_version(http_registry, project, "many", files, aliases=["again"])

    assert not again.created and again.version.version == 1 and "again" in again.version.aliases
    assert [method for method, _ in log.calls] == ["POST", "POST"]  # nothing uploaded
    assert log.calls[0][1] == "/api/v1/drafts" and log.calls[1][1].endswith("/finalize")


def test_client_killed_mid_log_leaves_no_version_and_relog_uploads_only_the_rest(live_server, project, tmp_path):
    files = write_files(tmp_path / "src", 20, size=5000)
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {repo_root!r})
        from tests.support.server import manifest_of
        from wanllmdb.registry.base import DraftSpec
        from wanllmdb.registry.http import HttpRegistry
        files = {files!r}
        manifest, by_sha = manifest_of(files)
        reg = HttpRegistry({live_server.url!r}, api_key={live_server.api_key!r})
        draft = reg.create_draft(DraftSpec({project!r}, "interrupted", "dataset", manifest))
        for target in draft.missing[:10]:
            reg.upload_blob(draft, target, by_sha[target.sha256])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert killed.returncode == -signal.SIGKILL

    reg = live_server.registry()
    try:
        with pytest.raises((ProjectNotFoundError, ArtifactNotFoundError)):
            reg.get_artifact(project, "interrupted")
        assert project not in reg.list_projects()

        log = RequestLog(reg)
        result = log_version(reg, project, "interrupted", files)
    finally:
        reg.close()

    assert result.created and result.version.version == 1
    assert log.count("PUT", "/blobs/") == 10  # the ten stored before the kill are not sent again


def test_drafts_left_behind_are_removed_after_draft_max_age(make_server, project, tmp_path):
    server = make_server(draft_max_age="1s", url_ttl="1s")
    reg = server.registry()
    try:
        manifest, _ = manifest_of(write_files(tmp_path / "src", 3))
        draft = reg.create_draft(DraftSpec(project, "abandoned", "dataset", manifest))
        assert len(draft.missing) == 3

        def gone() -> bool:
            try:
                reg._refresh_upload_urls(draft.id)
            except DraftNotFoundError:
                return True
            return False

        _wait_for(gone, timeout=15, what="the stale draft to be removed")
    finally:
        reg.close()


def test_reader_resolves_in_one_request_and_presigns_a_whole_plan_in_one(http_registry, project, tmp_path):
    files = write_files(tmp_path / "src", 50, size=3000)
    log_version(http_registry, project, "reads", files, aliases=["best"])
    cache = BlobCache(str(tmp_path / "cache"))
    log = RequestLog(http_registry)

    version = http_registry.resolve(project, "reads", "best")
    assert log.calls == [("GET", f"/api/v1/projects/{project}/artifacts/reads/versions/best")]
    assert version.manifest is not None and len(version.manifest) == 50

    def download() -> None:
        entries = list(version.manifest)
        missing = [e for e in entries if cache.lookup(e.sha256) is None]
        http_registry.prepare_fetch(e.sha256 for e in missing)
        for e in missing:
            cache.ensure(e.sha256, e.size, lambda w, e=e: http_registry.fetch_blob(e.sha256, e.size, w))

    log.clear()
    download()
    assert log.count("POST", "/blob-urls") == 1
    assert log.count("POST", "/blobs/bundle") == 1  # 50 small blobs come in one bundle
    assert len(log.calls) == 2

    log.clear()
    download()  # everything cached: nothing at all is asked of the server
    assert log.calls == []
    for entry in version.manifest:
        with open(cache.lookup(entry.sha256), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == entry.sha256


def test_blobs_fetched_without_a_plan_cost_one_presign_and_one_get_each(http_registry, project, tmp_path):
    files = write_files(tmp_path / "src", 3, size=1000)
    log_version(http_registry, project, "unplanned", files)
    version = http_registry.resolve(project, "unplanned")
    log = RequestLog(http_registry)

    for entry in version.manifest:
        sink = _Sink()
        http_registry.fetch_blob(entry.sha256, entry.size, sink)
        assert hashlib.sha256(sink.data).hexdigest() == entry.sha256

    assert log.count("POST", "/blob-urls") == 3 and log.count("GET", "/blobs/") == 3 and len(log.calls) == 6


def test_resolve_for_reading_carries_the_large_files_urls_so_a_first_range_needs_no_presign(
    http_registry, project, tmp_path
):
    files = write_files(tmp_path / "src", 2, size=3 * 1024 * 1024 + 5)
    files.update(write_files(tmp_path / "small", 2, size=100, prefix="s"))
    log_version(http_registry, project, "forreading", files, aliases=["best"])
    plain = http_registry.resolve(project, "forreading", "best")
    log = RequestLog(http_registry)

    version = http_registry.resolve_for_reading(project, "forreading", "best")

    assert log.calls == [("GET", f"/api/v1/projects/{project}/artifacts/forreading/versions/best")]
    assert version.manifest is not None and version.manifest.digest == plain.manifest.digest
    assert version.version == plain.version and version.created_at == plain.created_at
    log.clear()
    for entry in version.manifest:
        if entry.is_chunked:  # its URL came with the resolve: only the ranged GET itself
            sink = _Sink()
            assert http_registry.fetch_range_into(entry.sha256, 0, 1000, sink) == 1000
            with open(files[entry.path], "rb") as f:
                assert sink.data == f.read(1000)
    assert log.count("POST", "/blob-urls") == 0 and log.count("GET", "/blobs/") == 2

    # The server lists URLs of large blobs only, and only when asked (old clients get the old answer).
    path = f"/projects/{project}/artifacts/forreading/versions/best"
    asked = http_registry.transport.request_json("GET", path + "?urls=large")
    unasked = http_registry.transport.request_json("GET", path)
    large = {e.sha256 for e in version.manifest if e.is_chunked}
    assert set(asked["blob_urls"]) == large and "blob_urls" not in unasked


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data) -> int:
        self.data += bytes(data)
        return len(data)


def test_blob_downloads_honour_range(http_registry, project, tmp_path):
    files = write_files(tmp_path / "src", 1, size=3 * 1024 * 1024 + 5)
    data = open(next(iter(files.values())), "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    log_version(http_registry, project, "ranged", files)
    url = http_registry._download_url(sha)
    size = len(data)

    whole = requests.get(url)
    middle = requests.get(url, headers={"Range": "bytes=1048570-2097160"})
    tail = requests.get(url, headers={"Range": "bytes=-5"})
    beyond = requests.get(url, headers={"Range": f"bytes={size}-"})
    several = requests.get(url, headers={"Range": "bytes=0-1,5-6"})
    head = requests.head(url)

    assert whole.status_code == 200 and whole.content == data and whole.headers["Accept-Ranges"] == "bytes"
    assert middle.status_code == 206 and middle.content == data[1048570:2097161]
    assert middle.headers["Content-Range"] == f"bytes 1048570-2097160/{size}"
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    assert several.status_code == 416
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size) and head.content == b""
    assert read_range(http_registry, sha, 3 * 1024 * 1024, 100) == data[3 * 1024 * 1024 :]


def test_ranged_reads_arrive_whole_and_reuse_one_connection(http_registry, project, tmp_path):
    """Bodies are read with ``readinto`` into one reused buffer: every range must still arrive byte-exact (pieces
    straddling the 1 MiB buffer), and each fully read body must hand its connection back to the pool."""
    files = write_files(tmp_path / "src", 1, size=3 * 1024 * 1024 + 5)
    data = open(next(iter(files.values())), "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    log_version(http_registry, project, "reuse", files)
    ranges = [(0, len(data)), (1, 2 * 1024 * 1024 + 3), (1024 * 1024 - 1, 1024 * 1024 + 2), (len(data) - 7, 7)]

    pools = http_registry.transport.session.get_adapter(http_registry.base_url).poolmanager.pools
    local_ports = []
    for start, length in ranges:
        assert read_range(http_registry, sha, start, length) == data[start : start + length]
        idle = [conn for key in pools.keys() for conn in pools[key].pool.queue if conn is not None]
        local_ports.append(sorted(conn.sock.getsockname()[1] for conn in idle if conn.sock is not None))
    assert local_ports[0] and all(ports == local_ports[0] for ports in local_ports), local_ports


def test_expired_urls_are_requested_again_on_a_real_server(make_server, project, tmp_path):
    server = make_server(url_ttl="1")
    reg = server.registry()
    try:
        files = write_files(tmp_path / "src", 3, size=2000)
        log_version(reg, project, "short", files)
        version = reg.resolve(project, "short")
        entries = list(version.manifest)
        response = requests.post(
            server.url + "/api/v1/blob-urls", json={"sha256s": [entries[0].sha256]}, headers=server.headers
        )
        stale_url = response.json()["urls"][entries[0].sha256]["url"]
        expires_at = response.json()["urls"][entries[0].sha256]["expires_at"]
        reg.prepare_fetch(e.sha256 for e in entries)
        _wait_for(lambda: time.time() > expires_at + 0.5, timeout=5, what="the URLs to expire")

        refused = requests.get(stale_url)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "url_expired"
        cache = BlobCache(str(tmp_path / "cache"))
        for e in entries:
            cache.ensure(e.sha256, e.size, lambda w, e=e: reg.fetch_blob(e.sha256, e.size, w))
        assert all(cache.lookup(e.sha256) for e in entries)
    finally:
        reg.close()


def test_api_client_json_calls_and_streamed_files(live_server, project, tmp_path):
    files = write_files(tmp_path / "src", 2, size=200_000)
    manifest, by_sha = manifest_of(files)
    client = ApiClient(live_server.url, api_key=live_server.api_key)
    try:
        draft = client.post(
            "drafts", {"project": project, "name": "seed", "type": "model", "manifest": manifest.to_dict()}
        )
        assert len(draft["missing"]) == 2
        for target in draft["missing"]:
            answer = client.upload_file(by_sha[target["sha256"]], target["url"])
            assert answer["stored"] is True
        version = client.post(f"/drafts/{draft['id']}/finalize", {"aliases": ["prod"]})["version"]
        assert version["version"] == 1 and "prod" in version["aliases"]
        assert project in client.get("/api/v1/projects")["projects"]
        assert client.put(f"projects/{project}/artifacts/seed/aliases/stable", {"version": 1}) is None
        assert client.delete(f"projects/{project}/artifacts/seed/aliases/stable") is None

        sha = next(iter(by_sha))
        url = client.post("blob-urls", {"sha256s": [sha]})["urls"][sha]["url"]
        target = tmp_path / "down" / "file.bin"
        client.download_file(url, str(target), sha256=sha)
        assert target.read_bytes() == open(by_sha[sha], "rb").read()
    finally:
        client.close()


def test_api_client_reads_the_server_from_the_environment(live_server, monkeypatch):
    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url + "/")
    monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
    with ApiClient() as client:
        assert client.base_url == live_server.url
        assert client.get("health")["status"] == "ok"
        assert isinstance(client.get("projects")["projects"], list)


def test_server_logs_one_line_per_request_without_signatures(make_server):
    server = make_server()
    for _ in range(3):
        requests.get(server.url + "/api/v1/projects", headers=server.headers)
    requests.get(server.url + "/api/v1/blobs/" + "a" * 64 + "?expires=1&sig=secret-looking")

    lines = _wait_for(
        lambda: (
            [line for line in server.log().splitlines() if "wanllmdb.server.access" in line]
            if server.log().count("GET /api/v1/blobs/")
            else None
        ),
        what="the access log lines",
    )
    assert sum("GET /api/v1/projects 200" in line for line in lines) == 3
    assert sum("GET /api/v1/blobs/" in line and " 403 " in line for line in lines) == 1
    assert "secret-looking" not in server.log()


def test_health_and_openapi_docs_are_served(live_server):
    health = requests.get(live_server.url + "/api/v1/health")
    docs = requests.get(live_server.url + "/docs")
    schema = requests.get(live_server.url + "/openapi.json").json()

    assert health.json()["status"] == "ok" and health.json()["auth"] is True
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/api/v1/drafts" in schema["paths"] and "/api/v1/blobs/{sha256}" in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def _sdk_on(live_server, monkeypatch, tmp_path, texts: dict[str, str]):
    """Point the SDK at ``live_server`` and write ``texts`` (name -> content) into a new folder; returns it."""
    monkeypatch.setenv("WANLLMDB_BASE_URL", live_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", live_server.api_key)
    src = tmp_path / "many"
    src.mkdir()
    for name, text in texts.items():
        (src / name).write_text(text)
    return src


def test_sdk_uploads_many_small_files_in_a_few_bundles(live_server, project, tmp_path, monkeypatch):
    import wanllmdb
    from wanllmdb.sdk.client import get_client

    texts = {f"f{i:04d}.txt": f"file {i} " + "x" * (i % 50) for i in range(1500)}
    src = _sdk_on(live_server, monkeypatch, tmp_path, texts)
    log = RequestLog(get_client().registry)
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("bundled", type="dataset")
        art.add_dir(str(src))
        run.log_artifact(art)
    assert art.version == "v1" and art.file_count == 1500
    bundles = log.count("POST", "/blobs/bundle-upload")
    assert 2 <= bundles <= 3, log.calls  # at most 1,000 blobs per bundle
    assert log.count("PUT", "/blobs/") == 0
    assert log.count() - bundles <= 5  # run, draft, finalize, run update
    root = wanllmdb.Api().artifact(f"{project}/bundled:v1").download(str(tmp_path / "out"))
    assert open(os.path.join(root, "f0777.txt")).read() == "file 777 " + "x" * (777 % 50)


def test_upload_bundle_with_a_tampered_listing_is_refused(http_registry, live_server, project, tmp_path):
    files = write_files(tmp_path / "src", 3, size=100)
    manifest, by_sha = manifest_of(files)
    draft = http_registry.create_draft(DraftSpec(project, "tamper", "dataset", manifest))
    (bundle,) = draft.bundles
    listing = "".join(f"{t.sha256} {t.size}\n" for t in bundle.targets[:2]).encode()
    response = requests.post(
        http_registry.transport.absolute(bundle.url),
        data=listing + b"x" * 200,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert not any(os.path.exists(os.path.join(live_server.root, "blobs", s[:2], s)) for s in by_sha)


def test_drafts_sign_no_url_for_bundled_blobs_when_asked_and_bundles_that_fail_still_upload(
    http_registry, live_server, project, tmp_path, monkeypatch
):
    files = write_files(tmp_path / "src", 5, size=100)
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(os.urandom(300 * 1024))  # over the bundle limit: always its own URL
    files["big.bin"] = str(big)
    manifest, by_sha = manifest_of(files)
    body = {"project": project, "name": "urls", "type": "dataset", "manifest": manifest.to_dict()}
    url = live_server.url + "/api/v1/drafts"
    signed_all = requests.post(url, json=body, headers=live_server.headers, timeout=30).json()
    assert all("url" in item for item in signed_all["missing"])  # the default: every blob signed
    unbundled = requests.post(url + "?urls=unbundled", json=body, headers=live_server.headers, timeout=30).json()
    (bundle,) = unbundled["bundles"]
    with_url = {item["sha256"] for item in unbundled["missing"] if "url" in item}
    assert len(bundle["sha256s"]) == 5 and with_url == {manifest.get("big.bin").sha256}
    bad = requests.post(url + "?urls=some", json=body, headers=live_server.headers, timeout=30)
    assert bad.status_code == 400

    # The client asks for unbundled URLs in large drafts (here: any); when its bundle cannot be used (here:
    # refused as expired), each blob goes alone with a URL fetched then.
    import wanllmdb.registry.http as http_module

    monkeypatch.setattr(http_module, "UNBUNDLED_URLS_MIN", 1)
    log = RequestLog(http_registry)
    draft = http_registry.create_draft(DraftSpec(project, "urls", "dataset", manifest))
    assert [t.url is None for t in draft.missing].count(True) == 5
    (upload,) = draft.bundles
    expired = type(upload)(upload.url.replace("expires=", "expires=1&was="), upload.targets, upload.expires_at)
    http_registry.upload_bundle(draft, expired, {sha: path for sha, path in by_sha.items()})
    http_registry.upload_blob(draft, next(t for t in draft.missing if t.url), by_sha[manifest.get("big.bin").sha256])
    result = http_registry.finalize_draft(draft.id)
    assert result.created and result.version.file_count == 6
    assert log.count("POST", "/upload-urls") == 1  # one refresh served all five
    assert log.count("PUT", "/blobs/") == 6


def test_a_large_manifest_is_streamed_and_reads_back_whole(http_registry, live_server, project, tmp_path):
    files = write_files(tmp_path / "src", 1500, size=16)
    manifest, _ = manifest_of(files)
    log_version(http_registry, project, "streamed", files)
    url = f"{live_server.url}/api/v1/projects/{project}/artifacts/streamed/versions/v1"
    answer = requests.get(url, headers=live_server.headers, timeout=30)
    assert answer.status_code == 200 and answer.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in answer.headers  # sent as it was encoded, not built whole first
    assert answer.json()["manifest"] == manifest.to_dict() and answer.json()["file_count"] == 1500
    assert http_registry.resolve(project, "streamed", "v1").manifest == manifest


def test_a_download_presigns_and_fetches_a_window_of_blobs_at_a_time(live_server, project, tmp_path, monkeypatch):
    import wanllmdb
    import wanllmdb.sdk.transfer as transfer
    from wanllmdb.sdk.client import get_client

    src = _sdk_on(live_server, monkeypatch, tmp_path, {f"f{i:02d}.txt": f"windowed {i}" for i in range(20)})
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("windowed", type="dataset")
        art.add_dir(str(src))
        run.log_artifact(art)
    monkeypatch.setattr(transfer, "FETCH_WINDOW", 7)
    log = RequestLog(get_client().registry)
    root = wanllmdb.Api().artifact(f"{project}/windowed:v1").download(str(tmp_path / "out"))
    assert log.count("POST", "/blob-urls") == 3  # 7 + 7 + 6 blobs
    for i in range(20):
        assert open(os.path.join(root, f"f{i:02d}.txt")).read() == f"windowed {i}"


def test_download_plans_sign_no_url_for_bundled_blobs_when_asked_and_failed_bundles_still_download(
    live_server, project, tmp_path, monkeypatch
):
    import wanllmdb
    import wanllmdb.registry.http as http_module
    from wanllmdb.sdk.client import get_client

    texts = {f"f{i:02d}.txt": f"unbundled {i}" for i in range(30)}
    src = _sdk_on(live_server, monkeypatch, tmp_path, texts)
    (src / "big.bin").write_bytes(os.urandom(600 * 1024))  # above the bundles' 256 KiB: a URL of its own
    with wanllmdb.init(project=project) as run:
        art = wanllmdb.Artifact("plan", type="dataset")
        art.add_dir(str(src))
        run.log_artifact(art)
    manifest = wanllmdb.Api().artifact(f"{project}/plan:v1").manifest
    shas = sorted({e.sha256 for e in manifest})
    big = manifest.get("big.bin").sha256

    url = live_server.url + "/api/v1/blob-urls"
    body = {"sha256s": shas, "bundle": True}
    signed_all = requests.post(url, json=body, headers=live_server.headers, timeout=30).json()
    assert set(signed_all["urls"]) == set(shas)  # the default: every stored blob signed
    unbundled = requests.post(url + "?urls=unbundled", json=body, headers=live_server.headers, timeout=30).json()
    in_bundles = {sha for bundle in unbundled["bundles"] for sha in bundle["sha256s"]}
    assert in_bundles == set(shas) - {big} and set(unbundled["urls"]) == {big}
    assert requests.post(url + "?urls=some", json=body, headers=live_server.headers, timeout=30).status_code == 400

    # The SDK asks for unbundled plans (here: any); every file arrives, in one presign request.
    monkeypatch.setattr(http_module, "UNBUNDLED_URLS_MIN", 1)
    log = RequestLog(get_client().registry)
    root = wanllmdb.Api().artifact(f"{project}/plan:v1").download(str(tmp_path / "out"))
    assert log.count("POST", "/blob-urls") == 1 and log.count("POST", "/blobs/bundle") >= 1
    for name, text in texts.items():
        assert open(os.path.join(root, name)).read() == text

    # Bundles that cannot be used (failed or expired: here none gives its blobs): the blobs of each are
    # presigned together, in one more request per bundle, and every blob still arrives whole.
    registry = get_client().registry
    monkeypatch.setattr(http_module._Bundles, "take", lambda self, sha256: None)
    log = RequestLog(registry)
    registry._presign_downloads(shas, bundle=True)
    assert log.count("POST", "/blob-urls") == 1
    sizes = {e.sha256: e.size for e in manifest}
    fetched = {}
    for sha in shas:
        sink = _Sink()
        registry.fetch_blob(sha, sizes[sha], sink)
        fetched[sha] = sink.data
        assert hashlib.sha256(sink.data).hexdigest() == sha
    bundle_count = len(unbundled["bundles"])
    assert log.count("POST", "/blob-urls") == 1 + bundle_count  # one per failed bundle, not one per blob
    assert b"unbundled 7" in fetched.values()


def test_a_new_version_is_answered_without_the_manifest_its_client_sent(http_registry, live_server, project, tmp_path):
    """A finalize that creates the version does not send back the manifest the client just sent (a million
    entries parsed again would double a large log's memory at its very end): the client keeps its own, which
    is the version's, as its digest shows. A version found by its digest (nothing new) is answered whole, and
    an answer without a manifest that the client cannot vouch for is refused, naming the version."""
    import json as _json

    from wanllmdb.errors import ServerError

    answers: list[tuple[bytes, dict]] = []

    def record(response, *args, **kwargs):
        if response.request.url.endswith("/finalize"):
            answers.append((response.request.body, response.json()))

    http_registry.transport.session.hooks["response"].append(record)
    files = write_files(tmp_path / "src", 3, size=300)
    manifest, _ = manifest_of(files)
    first = log_version(http_registry, project, "lean", files)
    ((sent, answer),) = answers
    assert _json.loads(sent)["manifest"] is False and answer["created"] is True
    assert "manifest" not in answer["version"], "the manifest was answered back"
    assert first.created and first.version.manifest == manifest and first.version.digest == manifest.digest
    assert http_registry.resolve(project, "lean", "v1").manifest == manifest

    again = log_version(http_registry, project, "lean", files)  # the same content: the existing version
    assert not again.created and "manifest" in answers[-1][1]["version"]
    assert again.version.manifest == manifest

    other = write_files(tmp_path / "other", 2, size=100)
    other_manifest, by_sha = manifest_of(other)
    draft = http_registry.create_draft(DraftSpec(project, "lean", "dataset", other_manifest))
    for target in draft.missing:
        http_registry.upload_blob(draft, target, by_sha[target.sha256])
    kept, _digest = http_registry._draft_manifests[draft.id]
    http_registry._draft_manifests[draft.id] = (kept, "0" * 64)  # as if the server made another version of it
    with pytest.raises(ServerError, match=f"{project}/lean:v2 without its manifest"):
        http_registry.finalize_draft(draft.id)
