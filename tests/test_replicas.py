"""Stateless replicas: two ``wanllmdb server`` processes on one PostgreSQL database and one S3 bucket.

Everything is real: a private PostgreSQL cluster, SeaweedFS, two servers, a TCP load balancer in front
(tests/support/balancer.py), SDK loggers in their own processes, and a FUSE mount.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.balancer import Balancer
from tests.support.mount import wait_until
from tests.support.s3 import start_s3_server
from tests.support.server import log_version

MiB = 1 << 20


class Replicas:
    def __init__(self, a, b, bucket: str) -> None:
        self.a, self.b, self.bucket = a, b, bucket
        self.balancer = Balancer([urlsplit(a.url).port, urlsplit(b.url).port])

    def stop(self) -> None:
        self.balancer.stop()
        for server in (self.a, self.b):
            server.stop()


@pytest.fixture
def replicas(tmp_path_factory, seaweed, pg_url):
    secret = secrets.token_hex(32)
    bucket = seaweed.new_bucket()
    key = f"k-{secrets.token_hex(6)}"
    common = {
        "bucket": bucket,
        "api_key": key,
        "extra_args": ("--db", pg_url),
        "extra_env": {"WANLLMDB_SERVER_SECRET": secret},
    }
    a = start_s3_server(tmp_path_factory.mktemp("replica-a"), seaweed, **common)
    b = start_s3_server(tmp_path_factory.mktemp("replica-b"), seaweed, **common)
    pair = Replicas(a, b, bucket)
    yield pair
    pair.stop()


_LOGGER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {repo!r})
    import wanllmdb
    out = []
    run = wanllmdb.init(project={project!r})
    for i in range({count}):
        path = os.path.join({work!r}, f"w{{os.getpid()}}-{{i}}.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(2048))
        art = wanllmdb.Artifact("shared", type="model")
        art.add_file(path, name="weights.bin")
        run.log_artifact(art)
        art.wait()
        out.append(art.version)
    wanllmdb.finish()
    print(json.dumps(out))
    """
)


def test_eight_processes_logging_through_both_replicas_get_dense_unique_numbers(replicas, project, tmp_path):
    work = tmp_path / "logged"
    work.mkdir()
    script = _LOGGER.format(repo=str(Path(__file__).resolve().parents[1]), project=project, count=3, work=str(work))
    procs = []
    for i in range(8):
        server = replicas.a if i % 2 == 0 else replicas.b
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANLLMDB_")}
        env.update(
            WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key, HOME=str(tmp_path),
            WANLLMDB_CACHE_DIR=str(tmp_path / f"cache{i}"), WANLLMDB_DIR=str(tmp_path / f"data{i}"),
        )  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    numbers = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        numbers += [int(v[1:]) for v in json.loads(out.strip().splitlines()[-1])]
    assert sorted(numbers) == list(range(1, 25))
    for server in (replicas.a, replicas.b):
        with server.registry() as registry:
            info = registry.get_artifact(project, "shared")
            assert [v.version for v in info.versions] == list(range(1, 25))
            assert info.aliases["latest"] == 24


def test_what_one_replica_logs_the_other_serves_at_once_and_its_mount_sees_within_the_ttl(
    replicas, project, tmp_path, monkeypatch, mounter
):
    first = tmp_path / "v1.bin"
    first.write_bytes(os.urandom(3 * MiB + 5))
    with replicas.a.registry() as a:
        log_version(a, project, "m", {"f.bin": str(first)})
    with replicas.b.registry() as b:
        version = b.resolve(project, "m")
        assert version.version == 1
        (entry,) = list(version.manifest)
        assert b._download_url(entry.sha256)  # presigned by B for a blob uploaded through A
    monkeypatch.setenv("WANLLMDB_BASE_URL", replicas.b.url)
    monkeypatch.setenv("WANLLMDB_API_KEY", replicas.b.api_key)
    mounted = mounter("--metadata-ttl", "1")
    base = Path(mounted.path) / project / "m"
    assert (base / "v1" / "f.bin").read_bytes() == first.read_bytes()
    second = tmp_path / "v2.bin"
    second.write_bytes(os.urandom(MiB))
    logged_at = time.monotonic()
    with replicas.a.registry() as a:
        log_version(a, project, "m", {"f.bin": str(second)})
    wait_until(lambda: (base / "v2").exists(), 10, "v2 to appear in the mount through replica B")
    assert time.monotonic() - logged_at < 5
    assert os.readlink(base / "latest") == "v2"
    assert (base / "v2" / "f.bin").read_bytes() == second.read_bytes()


def test_a_url_presigned_by_one_replica_is_accepted_by_the_other(replicas, project, tmp_path):
    from tests.support.data import manifest_for
    from wanllmdb.registry import DraftSpec

    files = {}
    for i in range(3):
        path = tmp_path / f"s{i}.txt"
        path.write_bytes(os.urandom(100 + i))
        files[f"s{i}.txt"] = str(path)
    manifest = manifest_for(files)
    by_sha = {e.sha256: files[e.path] for e in manifest}
    with replicas.a.registry() as a:
        draft = a.create_draft(DraftSpec(project, "bundled", "dataset", manifest))
        (bundle,) = draft.bundles  # small blobs go through the server, in a bundle signed by A
    port_a, port_b = urlsplit(replicas.a.url).port, urlsplit(replicas.b.url).port
    moved = bundle.url.replace(f":{port_a}/", f":{port_b}/")
    assert moved != bundle.url
    with replicas.b.registry() as b:
        b.upload_bundle(draft, type(bundle)(moved, bundle.targets, bundle.expires_at), by_sha)
        assert b.finalize_draft(draft.id).version.version == 1
        assert b.resolve(project, "bundled").file_count == 3


def test_a_replica_killed_mid_upload_leaves_the_log_to_the_other(replicas, project, tmp_path, monkeypatch):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 5 * MiB + 99))  # 7 parts of 5 MiB
    from wanllmdb.registry.http import HttpRegistry

    with HttpRegistry(replicas.balancer.url, api_key=replicas.a.api_key) as registry:
        original = registry.transport.put_file
        calls = []
        lock = threading.Lock()

        def put_then_kill(url, *args, **kwargs):
            result = original(url, *args, **kwargs)
            with lock:
                calls.append(url)
                if len(calls) == 2:  # a replica dies while parts are being sent
                    replicas.a.process.kill()
                    replicas.a.process.wait()
            return result

        monkeypatch.setattr(registry.transport, "put_file", put_then_kill)
        result = log_version(registry, project, "survivor", {"big.bin": str(big)}, threads=1)
        assert result.version.version == 1
        assert replicas.a.process.poll() is not None
    assert replicas.balancer.served[urlsplit(replicas.b.url).port] > 0
    with replicas.b.registry() as b:
        (entry,) = list(b.resolve(project, "survivor").manifest)
        from tests.support.data import read_range

        assert read_range(b, entry.sha256, entry.size - 100, 100) == big.read_bytes()[-100:]


def test_background_sweeps_run_on_one_replica_at_a_time(pg_url, tmp_path):
    from wanllmdb.registry.local import LocalRegistry
    from wanllmdb.registry.pgdb import PostgresDatabase

    first, second = PostgresDatabase(pg_url), PostgresDatabase(pg_url)
    registry = LocalRegistry(str(tmp_path / "r"), database=second)
    try:
        with first.exclusive("sweep") as mine:
            assert mine
            with second.exclusive("sweep") as theirs:
                assert not theirs
            assert registry.sweep() is None  # another replica is sweeping
        with second.exclusive("sweep") as theirs:
            assert theirs
        assert registry.sweep() == 0
    finally:
        first.close()
        registry.close()


def test_replicas_on_postgresql_and_s3_need_a_shared_secret(seaweed, pg_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANLLMDB_"))}
    cmd = [sys.executable, "-m", "wanllmdb.cli.main", "server", "--port", "0", "--root", str(tmp_path / "r"),
           "--db", pg_url, "--blobs", f"s3://{seaweed.new_bucket()}/reg"]  # fmt: skip
    done = subprocess.run(cmd, env={**env, **seaweed.env}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "WANLLMDB_SERVER_SECRET" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
