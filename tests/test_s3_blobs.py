"""A server on S3 blobs (SeaweedFS): bytes move between clients and the store, checked by the store.

Every test runs a real ``weed mini`` and real ``wanllmdb server`` processes on loopback (tests/support/s3.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.data import manifest_for, read_range
from tests.support.server import RequestLog, log_version, start_server
from wanllmdb.errors import ChecksumError, IncompleteDraftError, ServerUnreachableError
from wanllmdb.registry import DraftSpec
from wanllmdb.registry.s3blobs import b64_sha256

MiB = 1 << 20


def _blob_key(sha256: str) -> str:
    return f"reg/blobs/sha256/{sha256[:2]}/{sha256}"


def _files(tmp_path: Path, sizes: dict[str, int]) -> dict[str, str]:
    out = {}
    for name, size in sizes.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        out[name] = str(path)
    return out


def test_uploads_and_downloads_go_straight_to_the_store(s3_server, seaweed, project, tmp_path):
    files = _files(tmp_path, {"a.bin": 300_000, "b.bin": 2 * MiB, "big.bin": 30 * MiB + 123, "s.txt": 10})
    store_host = urlsplit(seaweed.endpoint).netloc
    with s3_server.registry() as registry:
        requests_seen = RequestLog(registry)
        manifest, by_sha = manifest_for(files), {}
        for entry in manifest:
            by_sha[entry.sha256] = files[entry.path]
        draft = registry.create_draft(DraftSpec(project, "ds", "dataset", manifest))
        targets = {t.sha256: t for t in draft.missing}
        big = next(e.sha256 for e in manifest if e.path == "big.bin")
        assert targets[big].part_size == 5 * MiB and targets[big].url is None  # multipart, no single URL
        single = next(e for e in manifest if e.path == "b.bin")
        put = targets[single.sha256]
        assert urlsplit(put.url).netloc == store_host
        assert dict(put.headers)["x-amz-checksum-sha256"] == b64_sha256(single.sha256)
        assert "Content-MD5" in dict(put.headers)
        for target in draft.missing:
            registry.upload_blob(draft, target, by_sha[target.sha256])
        result = registry.finalize_draft(draft.id)
        assert result.version.version == 1
        # Blob bytes went to the store, never to the server's blob endpoint.
        assert not any(path.startswith("/api/v1/blobs/") for method, path in requests_seen.calls if method == "PUT")
        assert requests_seen.count("PUT", "/reg/blobs/sha256/") >= 2 + 7  # single PUTs and 7 parts
        for entry in manifest:
            head = seaweed.client().head_object(Bucket=s3_server.bucket, Key=_blob_key(entry.sha256))
            assert head["ContentLength"] == entry.size
        # Downloads: presigned GETs of the store, ranged where asked.
        requests_seen.clear()
        data = Path(files["big.bin"]).read_bytes()
        assert read_range(registry, big, 5 * MiB - 10, 20) == data[5 * MiB - 10 : 5 * MiB + 10]
        assert any(urlsplit(u).netloc == store_host for u in [registry._download_url(big)])
        assert requests_seen.count("HEAD") == 0


def test_sdk_log_download_verify_and_unchanged_relog(s3_server, project, tmp_path, monkeypatch):
    import wanllmdb

    monkeypatch.setenv("WANLLMDB_BASE_URL", s3_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", s3_server.api_key)
    files = _files(tmp_path, {f"d/{i}.txt": 100 + i for i in range(30)} | {"w.bin": 20 * MiB})
    run = wanllmdb.init(project=project)
    art = wanllmdb.Artifact("mix", type="dataset")
    art.add_dir(str(tmp_path / "src"))
    run.log_artifact(art, aliases=["best"])
    art.wait()
    again = wanllmdb.Artifact("mix", type="dataset")
    again.add_dir(str(tmp_path / "src"))
    run.log_artifact(again)
    again.wait()
    assert again.version == "v1"  # nothing new: no second version, nothing uploaded
    got = run.use_artifact("mix:best")
    root = got.download(root=str(tmp_path / "dl"))
    for rel, local in files.items():
        assert Path(root, rel).read_bytes() == Path(local).read_bytes()
    got.verify(root=root)
    wanllmdb.finish()


def test_the_store_refuses_bytes_that_are_not_the_manifests(s3_server, seaweed, project, tmp_path):
    files = _files(tmp_path, {"x.bin": 1 * MiB})
    manifest = manifest_for(files)
    (entry,) = list(manifest)
    with s3_server.registry() as registry:
        draft = registry.create_draft(DraftSpec(project, "bad", "dataset", manifest))
        (target,) = draft.missing
        other = tmp_path / "other.bin"
        other.write_bytes(os.urandom(entry.size))  # same length, other bytes
        with pytest.raises(ChecksumError, match="BadDigest|checksum|object store"):
            registry.transport.put_file(target.url, str(other), entry.size, headers=dict(target.headers))
        with pytest.raises(IncompleteDraftError):
            registry.finalize_draft(draft.id)
        with pytest.raises(ClientError):
            seaweed.client().head_object(Bucket=s3_server.bucket, Key=_blob_key(entry.sha256))
        # The right bytes through the same URL are accepted, and the draft finalizes.
        registry.transport.put_file(target.url, files["x.bin"], entry.size, headers=dict(target.headers))
        assert registry.finalize_draft(draft.id).version.version == 1


def test_a_lying_md5_is_refused_by_the_store(s3_server, project, tmp_path):
    from wanllmdb.manifest import Manifest, ManifestEntry

    files = _files(tmp_path, {"y.bin": 4096})
    (entry,) = list(manifest_for(files))
    lying = Manifest.from_entries(
        [ManifestEntry(entry.path, entry.size, "0" * 32, entry.sha256, entry.chunk_size, entry.chunks)]
    )
    with s3_server.registry() as registry:
        draft = registry.create_draft(DraftSpec(project, "liar", "dataset", lying))
        (target,) = draft.missing
        assert dict(target.headers)["Content-MD5"] == base64.b64encode(bytes(16)).decode()
        with pytest.raises(ChecksumError):
            registry.upload_blob(draft, target, files["y.bin"])
        with pytest.raises(IncompleteDraftError):
            registry.finalize_draft(draft.id)


def test_an_object_put_behind_the_servers_back_is_checked_before_it_counts(s3_server, seaweed, project, tmp_path):
    """Finalize records a blob only once the store reports its SHA-256: wrong bytes at the key are deleted."""
    files = _files(tmp_path, {"z.bin": 70_000})
    (entry,) = list(manifest_for(files))
    key = _blob_key(entry.sha256)
    seaweed.client().put_object(Bucket=s3_server.bucket, Key=key, Body=os.urandom(entry.size))  # no checksum
    with s3_server.registry() as registry:
        draft = registry.create_draft(DraftSpec(project, "sneaky", "dataset", manifest_for(files)))
        assert [t.sha256 for t in draft.missing] == [entry.sha256]
        with pytest.raises(IncompleteDraftError):
            registry.finalize_draft(draft.id)
        with pytest.raises(ClientError):
            seaweed.client().head_object(Bucket=s3_server.bucket, Key=key)  # deleted: it was not the blob
        registry.upload_blob(draft, draft.missing[0], files["z.bin"])
        assert registry.finalize_draft(draft.id).created


_KILLED_LOGGER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from tests.support.server import log_version
    from wanllmdb.registry import http
    from wanllmdb.registry.http import HttpRegistry
    http.MULTIPART_THREADS = 1  # one part at a time: none is in flight when the process is killed
    registry = HttpRegistry({url!r}, api_key={key!r})
    log_version(registry, {project!r}, "ckpt", {{"big.bin": {path!r}}}, threads=1)
    """
)


def test_a_multipart_upload_killed_midway_resumes_with_the_missing_parts_only(
    s3_server, seaweed, project, tmp_path, monkeypatch
):
    files = _files(tmp_path, {"big.bin": 9 * 5 * MiB + 1234})  # 10 parts
    (entry,) = list(manifest_for(files))
    script = _KILLED_LOGGER.format(
        repo=str(Path(__file__).resolve().parents[1]), url=s3_server.url, key=s3_server.api_key,
        project=project, path=files["big.bin"],
    )  # fmt: skip
    env = {**os.environ, "WANLLMDB_TEST_KILL_AT": "log.part:7"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    client = seaweed.client()
    uploads = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=_blob_key(entry.sha256))["Uploads"]
    (upload,) = uploads

    def stored_parts() -> list:
        return client.list_parts(Bucket=s3_server.bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]

    # A part whose body was on the wire when the logger died may still land: wait until the store settles.
    stored, deadline = stored_parts(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = stored_parts()
        if len(again) == len(stored):
            break
        stored = again
    assert len(stored) == 7
    with s3_server.registry() as registry:
        seen = RequestLog(registry)
        result = log_version(registry, project, "ckpt", {"big.bin": files["big.bin"]})
        assert result.version.version == 1
        assert seen.count("PUT", _blob_key(entry.sha256)) == 10 - len(stored)
    body = client.get_object(Bucket=s3_server.bucket, Key=_blob_key(entry.sha256))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry.sha256
    assert not client.list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads")


def test_an_expired_part_url_is_asked_for_again(make_s3_server, project, tmp_path, monkeypatch):
    # A presigned S3 URL dates itself to the whole second (SigV4), so a TTL of 1 s can leave a fresh URL well
    # under a second: on a loaded machine the asked-again URL expired too. 3 s leaves it 2 s at least.
    server = make_s3_server(url_ttl="3s", draft_max_age="1h")
    files = _files(tmp_path, {"big.bin": 13 * MiB})
    with server.registry() as registry:
        original = registry.transport.put_file
        delayed: list[str] = []

        def late_put(url, *args, **kwargs):
            if "partNumber=1&" in url and not delayed:  # the first URL of part 1 waits until it expired
                delayed.append(url)
                time.sleep(4.5)
            return original(url, *args, **kwargs)

        monkeypatch.setattr(registry.transport, "put_file", late_put)
        result = log_version(registry, project, "slow", files)
        assert delayed and result.version.version == 1
        (entry,) = list(manifest_for(files))
        assert read_range(registry, entry.sha256, 13 * MiB - 5, 5) == Path(files["big.bin"]).read_bytes()[-5:]


def test_an_unreachable_bucket_is_one_clear_line_and_nothing_starts(seaweed, tmp_path):
    for blobs, env, expected in [
        ("s3://no-such-bucket-here/reg", seaweed.env, "no-such-bucket-here"),
        ("s3://b/reg", {**seaweed.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "127.0.0.1:9"),
    ]:
        root = tmp_path / expected.replace(":", "_")
        root.mkdir()
        cmd = [sys.executable, "-m", "wanllmdb.cli.main", "server", "--port", "0", "--root", str(root / "r"),
               "--blobs", blobs]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANLLMDB_"))}
        done = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert not (root / "r" / "registry.sqlite").exists()


def test_a_store_that_goes_away_fails_the_log_clearly_and_leaves_no_version(tmp_path, project):
    from tests.support.s3 import start_s3_server
    from tests.support.seaweed import start_seaweed

    store = start_seaweed(tmp_path / "sw")
    server = start_s3_server(tmp_path / "srv", store)
    try:
        files = _files(tmp_path, {"a.bin": 2 * MiB})
        with server.registry(retries=1, backoff=0.05) as registry:
            assert log_version(registry, project, "ok", files).version.version == 1
            store.stop()
            more = _files(tmp_path / "more", {"b.bin": 2 * MiB})
            with pytest.raises(ServerUnreachableError, match=f"object store {urlsplit(store.endpoint).netloc}"):
                log_version(registry, project, "ok", more)
            assert registry.resolve(project, "ok").version == 1
            urls = registry._call("POST", "/blob-urls", {"sha256s": ["0" * 64]})
            assert urls["missing"] == ["0" * 64]
    finally:
        server.stop()
        store.stop()


def test_the_mount_reads_s3_blobs_ranged(s3_server, project, tmp_path, monkeypatch, mounter):
    files = _files(tmp_path, {"big.bin": 20 * MiB + 17, "small.txt": 77})
    with s3_server.registry() as registry:
        log_version(registry, project, "m", files)
    monkeypatch.setenv("WANLLMDB_BASE_URL", s3_server.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", s3_server.api_key)
    mounted = mounter()
    base = Path(mounted.path) / project / "m" / "v1"
    data = Path(files["big.bin"]).read_bytes()
    with open(base / "big.bin", "rb") as f:
        f.seek(13 * MiB + 5)
        assert f.read(4096) == data[13 * MiB + 5 : 13 * MiB + 5 + 4096]
    assert hashlib.sha256((base / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (base / "small.txt").read_bytes() == Path(files["small.txt"]).read_bytes()


def test_server_without_s3_still_takes_unhashed_uploads(tmp_path, project):
    server = start_server(tmp_path / "plain")
    try:
        with server.registry() as registry:
            answer = registry._call("POST", "/blob-sizes", {"sizes": [1, 2]})
            assert answer["unhashed_uploads"] is True
    finally:
        server.stop()


def test_s3_server_asks_clients_to_hash_first(s3_server):
    with s3_server.registry() as registry:
        assert registry._call("POST", "/blob-sizes", {"sizes": [123456789]})["unhashed_uploads"] is False
        assert registry.known_sizes([123456789]) == {123456789}
    assert requests.get(s3_server.url + "/api/v1/health").status_code == 200
