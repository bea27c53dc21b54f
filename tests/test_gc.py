"""Garbage collection of blobs: mark, grace, sweep, on the directory and S3 stores (registry/gc.py).

The stress test runs loggers, deleters and a collector in separate processes against each registry kind and
then checks that every remaining version is whole and that nothing unreferenced is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.data import log_files
from wanllmdb.errors import AliasProtectedError, VersionNotFoundError
from wanllmdb.registry.gc import manifest_blobs
from wanllmdb.registry.local import LocalRegistry

REPO = str(Path(__file__).resolve().parents[1])


def _referenced(registry: LocalRegistry) -> set[str]:
    with registry.db.read() as conn:
        out: set[str] = set()
        for row in conn.execute("SELECT manifest FROM drafts"):
            out.update(manifest_blobs(row[0]))
        for row in conn.execute("SELECT manifest FROM versions WHERE state = 'COMMITTED'"):
            out.update(manifest_blobs(row[0]))
    return out


def _assert_whole(registry: LocalRegistry) -> int:
    """Every live version's blobs are stored and hash to their names; returns the versions checked."""
    checked = 0
    for project in registry.list_projects():
        for summary in registry.list_artifacts(project):
            for version in registry.get_artifact(project, summary.name).versions:
                manifest = registry.resolve(project, summary.name, f"v{version.version}").manifest
                stored = registry.stored_sizes(manifest.blobs())
                for sha, size in manifest.blobs().items():
                    assert stored.get(sha) == size, f"{project}/{summary.name}:v{version.version} lost {sha[:12]}"
                    digest = hashlib.sha256()
                    registry.blobs.read_range_into(sha, 0, size, _Hasher(digest))
                    assert digest.hexdigest() == sha, f"blob {sha[:12]} holds other bytes"
                checked += 1
    return checked


class _Hasher:
    def __init__(self, digest) -> None:
        self.digest = digest

    def write(self, data) -> int:
        self.digest.update(data)
        return len(data)


def test_only_blobs_unreferenced_for_the_grace_period_are_collected(tmp_path):
    registry = LocalRegistry(str(tmp_path / "reg"))
    try:
        shared = os.urandom(5000)
        versions = [
            log_files(registry, str(tmp_path / f"w{i}"), "p", "m", {"shared.bin": shared, "own.bin": os.urandom(99)})
            for i in range(3)
        ]
        own = [next(e.sha256 for e in v.version.manifest if e.path == "own.bin") for v in versions]
        registry.delete_version("p", "m", 1)
        registry.delete_version("p", "m", 2)
        now = time.time()
        dry = registry.collect_garbage(grace=3600, now=now, dry_run=True)
        assert (dry.swept, dry.pending) == (0, 2) and registry.blobs.exists(own[0])
        first = registry.collect_garbage(grace=3600, now=now)
        assert (first.marked, first.swept, first.pending) == (2, 0, 2)
        assert registry.blobs.exists(own[0]) and registry.blobs.exists(own[1])
        early = registry.collect_garbage(grace=3600, now=now + 3599)
        assert early.swept == 0
        later = registry.collect_garbage(grace=3600, now=now + 3601)
        assert (later.swept, later.swept_bytes) == (2, 198)
        assert not registry.blobs.exists(own[0]) and not registry.blobs.exists(own[1])
        assert registry.known_sizes([99, 5000]) == {99, 5000}  # v3's blobs stay recorded
        assert _assert_whole(registry) == 1
        assert registry.collect_garbage(grace=0).swept == 0
    finally:
        registry.close()


def test_a_blob_referenced_again_before_its_grace_ends_is_kept(tmp_path):
    registry = LocalRegistry(str(tmp_path / "reg"))
    try:
        content = os.urandom(1234)
        log_files(registry, str(tmp_path / "a"), "p", "m", {"f.bin": content})
        registry.delete_version("p", "m", 1)
        now = time.time()
        assert registry.collect_garbage(grace=60, now=now).marked == 1
        again = log_files(registry, str(tmp_path / "b"), "p", "other", {"g.bin": content})
        report = registry.collect_garbage(grace=60, now=now + 120)
        assert (report.swept, report.unmarked) == (0, 1)
        assert _assert_whole(registry) == 1 and again.version.version == 1
    finally:
        registry.close()


def test_a_live_draft_protects_its_blobs_and_an_aborted_one_does_not(tmp_path):
    from tests.support.data import manifest_for, write_files
    from wanllmdb.registry import DraftSpec

    registry = LocalRegistry(str(tmp_path / "reg"))
    try:
        paths = write_files(str(tmp_path / "src"), {"x.bin": os.urandom(3000)})
        manifest = manifest_for(paths)
        draft = registry.create_draft(DraftSpec("p", "d", "dataset", manifest))
        for target in draft.missing:
            registry.upload_blob(draft, target, paths["x.bin"])
        assert registry.collect_garbage(grace=0).swept == 0  # the draft names it
        registry.abort_draft(draft.id)
        assert registry.collect_garbage(grace=0).swept == 1
    finally:
        registry.close()


def test_a_log_whose_stored_blob_is_collected_under_its_draft_uploads_it_again(tmp_path, monkeypatch):
    """GC may take a blob between a draft that counted on it and the finalize (PostgreSQL's window): the
    finalize answers IncompleteDraftError and the SDK uploads the blob again."""
    import wanllmdb
    from wanllmdb.registry import local

    data_dir = tmp_path / "data"
    monkeypatch.setenv("WANLLMDB_DIR", str(data_dir))
    content = os.urandom(4321)
    (tmp_path / "f.bin").write_bytes(content)
    run = wanllmdb.init(project="p")
    first = wanllmdb.Artifact("m", type="model")
    first.add_file(str(tmp_path / "f.bin"))
    run.log_artifact(first)
    first.wait()
    sha = hashlib.sha256(content).hexdigest()
    original = local.LocalRegistry.create_draft
    collected = []

    def create_then_collect(self, spec):
        draft = original(self, spec)
        if sha not in {t.sha256 for t in draft.missing} and not collected:
            self.blobs.delete_blobs([sha])  # what a sweep committing right now would do
            with self.db.write() as conn:
                conn.execute("DELETE FROM blob_sizes WHERE sha256 = ?", (sha,))
            collected.append(sha)
        return draft

    monkeypatch.setattr(local.LocalRegistry, "create_draft", create_then_collect)
    second = wanllmdb.Artifact("n", type="model")
    second.add_file(str(tmp_path / "f.bin"))
    run.log_artifact(second)
    second.wait()
    wanllmdb.finish()
    assert collected == [sha]
    registry = LocalRegistry(str(data_dir))
    try:
        assert registry.blobs.exists(sha) and _assert_whole(registry) == 2
    finally:
        registry.close()


def test_gc_cli_embedded_reports_and_refuses_a_server(tmp_path, monkeypatch):
    from tests.support.mount import run_cli

    registry = LocalRegistry(os.environ["WANLLMDB_DIR"])
    try:
        log_files(registry, str(tmp_path / "a"), "p", "m", {"f.bin": b"a" * 700})
        log_files(registry, str(tmp_path / "b"), "p", "m", {"f.bin": b"b" * 300})
        registry.delete_version("p", "m", 1)
    finally:
        registry.close()
    dry = run_cli("gc", "--grace", "0", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["swept_bytes"] == 700
    done = run_cli("gc", "--grace", "0")
    assert done.returncode == 0 and "reclaimed 1 blob(s), 700 bytes" in done.stdout
    bad = run_cli("gc", "--grace", "soon")
    assert bad.returncode != 0 and "--grace" in bad.stderr and "Traceback" not in bad.stderr
    remote = run_cli("gc", env={**os.environ, "WANLLMDB_BASE_URL": "http://127.0.0.1:9"})
    assert remote.returncode != 0 and "server gc" in remote.stderr


def test_deleting_bad_refs_is_a_clear_error_and_changes_nothing(tmp_path):
    registry = LocalRegistry(str(tmp_path / "reg"))
    try:
        log_files(registry, str(tmp_path / "a"), "p", "m", {"f.bin": b"1"})
        registry.set_alias("p", "m", "prod", 1)
        with pytest.raises(VersionNotFoundError):
            registry.delete_version("p", "m", 7)
        with pytest.raises(AliasProtectedError, match="prod"):
            registry.delete_version("p", "m", 1)
        assert registry.resolve("p", "m").version == 1
        assert registry.collect_garbage(grace=0).swept == 0
    finally:
        registry.close()


# --- GC killed at each step ---------------------------------------------------------------------------------

_GC = "from wanllmdb.registry.local import LocalRegistry; import sys; LocalRegistry(sys.argv[1]).maintain(grace=0)"


@pytest.mark.parametrize("step", ["gc.mark:1", "gc.sweep:1"])
def test_gc_killed_at_each_step_loses_nothing_referenced_and_a_rerun_finishes(tmp_path, step):
    root = str(tmp_path / "reg")
    registry = LocalRegistry(root)
    try:
        for i in range(4):
            log_files(registry, str(tmp_path / f"w{i}"), "p", "m", {"a.bin": os.urandom(2000), "s.bin": b"s" * 50})
        for number in (1, 2, 3):
            registry.delete_version("p", "m", number)
    finally:
        registry.close()
    env = {**os.environ, "WANLLMDB_TEST_KILL_AT": step, "PYTHONPATH": REPO}
    killed = subprocess.run([sys.executable, "-c", _GC, root], env=env, capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    registry = LocalRegistry(root)
    try:
        assert _assert_whole(registry) == 1
        registry.collect_garbage(grace=0)
        leftover = {sha for sha, _, _ in registry.blobs.list_blobs()} - _referenced(registry)
        assert leftover == set()
        with registry.db.read() as conn:
            rows = {r[0] for r in conn.execute("SELECT sha256 FROM blob_sizes")}
        assert rows == _referenced(registry)
        assert _assert_whole(registry) == 1
    finally:
        registry.close()


# --- the stress test: loggers, deleters and a collector at once -----------------------------------------------

_LOGGER = textwrap.dedent(
    """
    import os, random, sys
    sys.path.insert(0, {repo!r})
    import wanllmdb
    rnd = random.Random({seed})
    pool = [bytes([i]) * (3000 + i) for i in range(8)]   # contents every logger shares
    run = wanllmdb.init(project="stress")
    for i in range({versions}):
        art = wanllmdb.Artifact(f"a{{rnd.randrange(3)}}", type="dataset")
        for j in rnd.sample(range(8), 3):
            path = os.path.join({work!r}, f"{seed}-{{i}}-{{j}}.bin")
            open(path, "wb").write(pool[j])
            art.add_file(path, name=f"shared{{j}}.bin")
        path = os.path.join({work!r}, f"{seed}-{{i}}-own.bin")
        open(path, "wb").write(os.urandom(500))
        art.add_file(path, name="own.bin")
        run.log_artifact(art)
        art.wait()
    wanllmdb.finish()
    """
)

_DELETER = textwrap.dedent(
    """
    import json, random, sys, time
    sys.path.insert(0, {repo!r})
    from wanllmdb.registry import open_registry
    from wanllmdb.settings import load_settings
    from wanllmdb.errors import WanllmdbError
    registry = open_registry(load_settings())
    rnd, deleted, stop = random.Random(7), 0, time.monotonic() + {seconds}
    while time.monotonic() < stop:
        try:
            for summary in registry.list_artifacts("stress"):
                versions = [v.version for v in registry.get_artifact("stress", summary.name).versions]
                even = [n for n in versions[:-1] if n % 2 == 0]  # odd numbers stay: versions to verify
                if even and rnd.random() < 0.6:
                    registry.delete_version("stress", summary.name, rnd.choice(even))
                    deleted += 1
        except WanllmdbError:
            pass  # a version deleted by a race, a project not there yet
        time.sleep(0.05)
    print(json.dumps({{"deleted": deleted}}))
    """
)

_COLLECTOR = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    {open_registry}
    rounds = swept = 0
    stop = time.monotonic() + {seconds}
    while time.monotonic() < stop:
        report = registry.maintain(grace=0.3)
        rounds += 1
        swept += report.swept if report else 0
        time.sleep(0.1)
    print(json.dumps({{"rounds": rounds, "swept": swept}}))
    """
)

_OPEN_EMBEDDED = "from wanllmdb.registry.local import LocalRegistry; registry = LocalRegistry({root!r})"
_OPEN_SERVER = (
    "from wanllmdb.server.context import ServerConfig, open_server_registry; "
    "registry = open_server_registry(ServerConfig(root={root!r}, db={db!r}, blobs={blobs!r}))"
)


@pytest.mark.parametrize("kind", ["local", "http", "pg-s3"])
def test_stress_loggers_deleters_and_gc_at_once(kind, request, tmp_path, monkeypatch):
    work = tmp_path / "files"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANLLMDB_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=REPO, WANLLMDB_CACHE_DIR=str(tmp_path / "cache"))
    if kind == "local":
        env["WANLLMDB_DIR"] = str(tmp_path / "data")
        LocalRegistry(env["WANLLMDB_DIR"]).close()
        opener = _OPEN_EMBEDDED.format(root=env["WANLLMDB_DIR"])
        collector_env = env
    else:
        if kind == "http":
            server = request.getfixturevalue("make_server")()
            db = blobs = None
        else:
            seaweed = request.getfixturevalue("seaweed")
            url = request.getfixturevalue("pg_url")
            from tests.support.s3 import start_s3_server

            blobs_bucket = seaweed.new_bucket()
            server = start_s3_server(tmp_path / "srv", seaweed, bucket=blobs_bucket, extra_args=("--db", url))
            request.addfinalizer(server.stop)
            db, blobs = url, f"s3://{blobs_bucket}/reg"
            env.update(seaweed.env)
        env.update(WANLLMDB_BASE_URL=server.url, WANLLMDB_API_KEY=server.api_key)
        opener = _OPEN_SERVER.format(root=server.root, db=db, blobs=blobs)
        collector_env = env
    loggers = [
        subprocess.Popen(
            [sys.executable, "-c", _LOGGER.format(repo=REPO, seed=seed, versions=10, work=str(work))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for seed in range(3)
    ]
    seconds = 18
    deleter = subprocess.Popen([sys.executable, "-c", _DELETER.format(repo=REPO, seconds=seconds)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    collector = subprocess.Popen(
        [sys.executable, "-c", _COLLECTOR.format(repo=REPO, open_registry=opener, seconds=seconds)],
        env=collector_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for proc in loggers:
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    deleted = json.loads(deleter.communicate(timeout=120)[0].strip().splitlines()[-1])["deleted"]
    out, err = collector.communicate(timeout=120)
    assert collector.returncode == 0, err[-3000:]
    gc = json.loads(out.strip().splitlines()[-1])

    if kind == "local":
        registry = LocalRegistry(env["WANLLMDB_DIR"])
    else:
        from wanllmdb.server.context import ServerConfig, open_server_registry

        for key, value in env.items():
            if key.startswith("AWS_"):
                monkeypatch.setenv(key, value)
        registry = open_server_registry(ServerConfig(root=server.root, db=db, blobs=blobs))
    try:
        versions = _assert_whole(registry)
        final = registry.collect_garbage(grace=0)
        leftover = {sha for sha, _, _ in registry.blobs.list_blobs()} - _referenced(registry)
        assert leftover == set()
        assert _assert_whole(registry) == versions
        names = [s.name for s in registry.list_artifacts("stress")]
        logged = sum(registry.get_artifact("stress", name).versions[-1].version for name in names)
    finally:
        registry.close()
    print(f"\n[{kind}] logged {logged} versions, {deleted} deleted, {versions} remain whole; "
          f"{gc['rounds']} GC rounds swept {gc['swept']} blobs, final GC {final.swept}; 0 missing")  # fmt: skip
    assert logged == 30 and deleted > 5 and versions >= 13 and gc["rounds"] > 3 and gc["swept"] > 0


def test_storage_usage_counts_shared_blobs_once_and_exclusive_bytes_alone(registry, project, tmp_path):
    shared, a_only, b_only = os.urandom(1000), os.urandom(300), os.urandom(20)
    log_files(registry, str(tmp_path / "1"), project, "a", {"s.bin": shared, "x.bin": a_only})
    log_files(registry, str(tmp_path / "2"), project, "a", {"s.bin": shared, "y.bin": a_only})  # same blobs
    log_files(registry, str(tmp_path / "3"), project, "b", {"s.bin": shared, "z.bin": b_only})
    usage = {u.name: u for u in registry.storage_usage(project)}
    assert (usage["a"].versions, usage["a"].logical_bytes) == (2, 2600)
    assert (usage["a"].stored_bytes, usage["a"].exclusive_bytes) == (1300, 300)
    assert (usage["b"].stored_bytes, usage["b"].exclusive_bytes) == (1020, 20)
    registry.delete_artifact(project, "b")
    usage = {u.name: u for u in registry.storage_usage(project)}
    assert set(usage) == {"a"} and usage["a"].exclusive_bytes == 1300


def test_artifact_ls_size_cli(tmp_path):
    from tests.support.mount import run_cli

    registry = LocalRegistry(os.environ["WANLLMDB_DIR"])
    try:
        log_files(registry, str(tmp_path / "a"), "p", "m", {"f.bin": b"a" * 2048})
    finally:
        registry.close()
    shown = run_cli("artifact", "ls", "p", "--size")
    assert shown.returncode == 0 and "EXCLUSIVE" in shown.stdout and "2.0 KB" in shown.stdout
    as_json = run_cli("artifact", "ls", "p/m", "--size", "--json")
    assert json.loads(as_json.stdout)[0]["exclusive_bytes"] == 2048
    missing = run_cli("artifact", "ls", "p/nope", "--size")
    assert missing.returncode != 0 and "nope" in missing.stderr


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["local", "http"])
def test_an_open_mount_file_of_a_deleted_and_collected_version_serves_cached_bytes_then_eio(
    kind, request, tmp_path, monkeypatch
):
    from tests.support.mount import log_version, wait_until
    from wanllmdb.registry.http import HttpRegistry

    MiB = 1 << 20
    if kind == "local":
        registry = LocalRegistry(os.environ["WANLLMDB_DIR"])
        storage = registry
    else:
        server = request.getfixturevalue("make_server")()
        monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
        monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key)
        registry = HttpRegistry(server.url, api_key=server.api_key)
        storage = LocalRegistry(server.root)
    data = os.urandom(6 * MiB)
    try:
        log_version(registry, tmp_path, "p", "m", {"big.bin": data})
        log_version(registry, tmp_path, "p", "m", {"big.bin": b"newer"})
        mounted = request.getfixturevalue("mounter")("--metadata-ttl", "1", "--timeout", "5")
        path = mounted.path / "p" / "m" / "v1" / "big.bin"
        with open(path, "rb", buffering=0) as f:
            assert f.read(4096) == data[:4096]  # its first chunk is now in the cache
            registry.delete_version("p", "m", 1)
            assert storage.collect_garbage(grace=0).swept == 1
            wait_until(lambda: not (mounted.path / "p" / "m" / "v1").exists(), 10, "v1 to leave the listing")
            f.seek(0)
            assert f.read(4096) == data[:4096]  # cached bytes are still served
            f.seek(5 * MiB)
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                f.read(4096)
            assert failure.value.errno == 5 and time.monotonic() - started < 10  # EIO, never a hang
    finally:
        registry.close()
        if storage is not registry:
            storage.close()
    with pytest.raises(VersionNotFoundError):
        import wanllmdb

        wanllmdb.Api().artifact("p/m:v1")


def test_gc_applies_retention_first_then_reclaims_what_it_freed(tmp_path):
    from tests.support.mount import run_cli
    from wanllmdb.registry.base import RetentionPolicy

    registry = LocalRegistry(os.environ["WANLLMDB_DIR"])
    try:
        for i in range(4):
            log_files(registry, str(tmp_path / f"w{i}"), "p", "m", {"f.bin": bytes([i]) * 1000})
        registry.set_alias("p", "m", "keep", 1)
        registry.set_retention("p", "m", RetentionPolicy(keep_last=2, keep_aliased=True))
    finally:
        registry.close()
    dry = run_cli("gc", "--grace", "0", "--dry-run", "--json")
    assert json.loads(dry.stdout)["expired"] == 1
    done = run_cli("gc", "--grace", "0", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["expired"], report["swept"], report["swept_bytes"]) == (1, 1, 1000)
    registry = LocalRegistry(os.environ["WANLLMDB_DIR"])
    try:
        assert [v.version for v in registry.get_artifact("p", "m").versions] == [1, 3, 4]  # v1 kept by its alias
        assert _assert_whole(registry) == 3
    finally:
        registry.close()


def test_server_gc_cli_and_the_servers_own_periodic_collection(make_s3_server, seaweed, pg_url, tmp_path):
    """`wanllmdb server gc` on a server's PostgreSQL + S3 storage, and a server collecting by itself."""
    from tests.support.mount import run_cli
    from tests.support.server import log_version

    server = make_s3_server(
        extra_args=("--db", pg_url, "--url-ttl", "1s", "--draft-max-age", "1s", "--gc-interval", "1s",
                    "--gc-grace", "2s"),
    )  # fmt: skip
    files = {}
    for i in range(2):
        path = tmp_path / f"v{i}.bin"
        path.write_bytes(os.urandom(777 + i))
        files[i] = {"f.bin": str(path)}
    with server.registry() as registry:
        log_version(registry, "p", "m", files[0])
        log_version(registry, "p", "m", files[1])
        (entry,) = list(registry.resolve("p", "m", "v1").manifest)
        registry.delete_version("p", "m", 1)
    key = f"reg/blobs/sha256/{entry.sha256[:2]}/{entry.sha256}"
    storage = ("--root", server.root, "--db", pg_url, "--blobs", f"s3://{server.bucket}/reg")
    env = {**os.environ, **seaweed.env}

    def cli_gc(*args: str):
        # The server collects every second: a CLI run that meets one of its runs says so and does nothing
        # (it is asked again until it gets its turn; that answer is not JSON).
        for _ in range(100):
            got = run_cli("server", "gc", *storage, *args, env=env)
            if "another garbage collection is running" not in got.stdout:
                return got
            time.sleep(0.1)
        raise AssertionError("the server's own collection never left the CLI a turn in 10 s")

    dry = cli_gc("--grace", "0", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["swept_bytes"] in (0, 777)  # 0 if the server's own collection came first

    def collected() -> bool:
        objects = seaweed.client().list_objects_v2(Bucket=server.bucket, Prefix=key).get("KeyCount", 0)
        return objects == 0

    from tests.support.mount import wait_until

    wait_until(collected, 20, "the server's periodic collection to delete v1's blob")
    again = cli_gc("--grace", "0", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["swept"] == 0
    with server.registry() as registry:
        assert registry.resolve("p", "m").version == 2
        (kept,) = list(registry.resolve("p", "m").manifest)
        from tests.support.data import read_range

        assert read_range(registry, kept.sha256, 0, 778) == Path(files[1]["f.bin"]).read_bytes()
    bad = run_cli("server", "--gc-grace", "1s", "--url-ttl", "1h")
    assert bad.returncode != 0 and "--gc-grace" in bad.stderr
