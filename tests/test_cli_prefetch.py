"""``wanllmdb prefetch``: warm the shared cache from a version, a path prefix of one, or a path in a mount."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_cli import cli
from wanllmdb.cli.main import main
from wanllmdb.cli.prefetch import split_ref

FILES = {"a.txt": b"alpha", "sub/b.txt": b"beta!", "sub/deep/c.txt": b"gamma-gamma", "subx.txt": b"other"}


@pytest.fixture
def version(tmp_path, project):
    """``project/d:v1`` holding FILES (distinct contents), logged through the CLI in this process."""
    src = tmp_path / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert main(["artifact", "put", str(src), "-p", project, "-n", "d", "-t", "dataset"]) == 0
    return f"{project}/d"


@pytest.fixture
def fetches(monkeypatch):
    """Every blob the SDK fetches from the registry (embedded or HTTP): a list of sha256s."""
    from wanllmdb.sdk.client import get_client

    registry = get_client().registry
    calls: list[str] = []
    original = type(registry).fetch_blob

    def counting(self, sha256, *args, **kwargs):
        calls.append(sha256)
        return original(self, sha256, *args, **kwargs)

    monkeypatch.setattr(type(registry), "fetch_blob", counting)
    return calls


def prefetch_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["prefetch", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_split_ref():
    assert split_ref("p/d:v2/images/") == ("p/d:v2", "images/")
    assert split_ref("p/d:latest/a/b.txt") == ("p/d:latest", "a/b.txt")
    assert split_ref("p/d:v2/") == ("p/d:v2", None)
    assert split_ref("p/d") == ("p/d", None)


def test_prefetch_then_download_fetches_nothing(backend, version, fetches, capsys, tmp_path):
    from wanllmdb.sdk import Api
    from wanllmdb.sdk.client import get_client

    log = None
    if backend == "http":
        from tests.support.server import RequestLog

        log = RequestLog(get_client().registry)
    report = prefetch_json(capsys, version)["total"]
    assert report["fetch_files"] == len(FILES) and report["fetch_bytes"] == sum(map(len, FILES.values()))
    assert report["cached_files"] == 0 and not report["dry_run"]
    assert len(fetches) == len(FILES)
    if log is not None:
        assert log.count("POST", "/blob-urls") == 1, log.calls  # every blob presigned in one request
        log.clear()

    fetches.clear()
    root = Api().artifact(f"{version}:latest").download(str(tmp_path / "got"))
    assert open(os.path.join(root, "sub", "deep", "c.txt"), "rb").read() == b"gamma-gamma"
    assert fetches == []
    if log is not None:
        assert log.count("POST", "/blob-urls") == 0, log.calls

    again = prefetch_json(capsys, f"{version}:v1")["total"]
    assert again["fetch_files"] == 0 and again["cached_files"] == len(FILES) and fetches == []
    capsys.readouterr()
    assert main(["prefetch", version]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"prefetched {len(FILES)} file(s): fetched 0 file(s)") and "MB/s" in line


def test_dry_run_fetches_nothing_and_reports_the_bytes(backend, version, fetches, capsys):
    from wanllmdb.sdk.client import get_client

    dry = prefetch_json(capsys, "--dry-run", f"{version}:latest/sub/")
    total = dry["total"]
    assert total["dry_run"] and total["fetch_files"] == 2 and total["fetch_bytes"] == len(b"beta!gamma-gamma")
    assert fetches == []
    cache = get_client().cache
    assert cache.lookup_many(e.sha256 for e in _entries(version).values()) == {}

    prefetch_json(capsys, f"{version}:latest/a.txt")  # one file, by its path
    capsys.readouterr()
    assert main(["prefetch", "--dry-run", version]) == 0
    out = capsys.readouterr().out
    assert f"would fetch {len(FILES) - 1} file(s)" in out and "1 file(s), 5 B already cached" in out


def _entries(version: str):
    from wanllmdb.sdk.client import get_client

    project, name = version.split("/")
    return get_client().registry.resolve(project, name, "latest").manifest.entries


def test_a_prefix_selects_a_directory_or_a_file(backend, version, fetches, capsys):
    from wanllmdb.sdk.client import get_client

    entries = _entries(version)
    # "sub" is the directory sub/, not subx.txt; a trailing slash means the same
    assert prefetch_json(capsys, f"{version}:v1/sub")["total"]["fetch_files"] == 2
    assert sorted(fetches) == sorted(entries[p].sha256 for p in ("sub/b.txt", "sub/deep/c.txt"))
    cached = get_client().cache.lookup_many(e.sha256 for e in entries.values())
    assert set(cached) == set(fetches)
    report = prefetch_json(capsys, f"{version}:v1/sub/deep/")["total"]
    assert report["fetch_files"] == 0 and report["cached_files"] == 1
    report = prefetch_json(capsys, "--threads", "1", f"{version}:v1/subx.txt", f"{version}:v1/a.txt")
    assert [r["fetch_files"] for r in report["refs"]] == [1, 1] and report["total"]["fetch_bytes"] == 10


def test_a_path_in_a_mount(backend, version, mounter, capsys):
    from wanllmdb.sdk.client import get_client

    project, name = version.split("/")
    mounted = mounter()
    target = mounted.path / project / name / "latest" / "sub"
    assert os.path.isdir(target)
    report = prefetch_json(capsys, str(target))
    assert report["refs"][0]["version"] == f"{version}:v1" and report["refs"][0]["prefix"] == "sub"
    assert report["total"]["fetch_files"] == 2
    entries = _entries(version)
    cached = get_client().cache.lookup_many(e.sha256 for e in entries.values())
    assert set(cached) == {entries["sub/b.txt"].sha256, entries["sub/deep/c.txt"].sha256}
    # the mount reads them from the shared cache: no fetch
    assert (target / "deep" / "c.txt").read_bytes() == b"gamma-gamma"
    stats = mounted.stats()
    assert stats["blobs_fetched"] == 0 and stats["chunks_fetched"] == 0, stats
    # one file, the artifact's version directory, and --mount with a registry REF
    assert prefetch_json(capsys, str(mounted.path / project / name / "v1" / "a.txt"))["total"]["fetch_files"] == 1
    assert prefetch_json(capsys, str(mounted.path / project / name / "latest"))["total"]["fetch_files"] == 1
    assert prefetch_json(capsys, "--mount", str(mounted.path), version)["total"]["fetch_files"] == 0
    proc = cli("prefetch", str(mounted.path / project), check=False)
    assert proc.returncode == 2 and "not inside a version" in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["P/nope:v1"], 3, "not found"),
        (["P/d:v7"], 3, "not found"),
        (["P/d:v1/missing/"], 3, "no file under 'missing/'"),
        (["d:v1"], 2, "--project"),
        (["P/d:v1:x"], 2, "more than one ':'"),
        (["/"], 2, "not inside a wanllmdb mount"),
        (["./no/such/path"], 3, "no such file or directory"),
        (["--mount", "/tmp", "P/d"], 2, "not the mountpoint of a wanllmdb mount"),
    ],
)
def test_bad_refs_are_one_line_and_a_nonzero_exit(args, code, expected, version):
    project = version.split("/")[0]
    proc = cli("prefetch", *[a.replace("P/", f"{project}/") for a in args], check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wanllmdb: error:") and expected in lines[0], proc.stderr
    assert proc.stdout == ""


def test_threads_must_be_positive():
    proc = cli("prefetch", "--threads", "0", "p/d", check=False)
    assert proc.returncode == 2 and "must be 1 or more" in proc.stderr
