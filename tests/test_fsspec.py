"""``wanllmdb://`` through fsspec, pandas, pyarrow and DuckDB, against the embedded registry and a real server."""

from __future__ import annotations

import glob
import os
import random
import subprocess
import sys
import time

import fsspec
import pytest

import wanllmdb as wandb
import wanllmdb.fsspec as wfs
from wanllmdb.errors import ChecksumError
from wanllmdb.registry.http import HttpRegistry
from wanllmdb.registry.local import LocalRegistry

MIB = 1 << 20
BIG = 6 * MIB + 12345  # seven 1 MiB chunks, the last one short


def _registered() -> bool:
    try:
        return fsspec.get_filesystem_class("wanllmdb") is wfs.WanllmdbFileSystem
    except ValueError:
        return False


if not _registered():
    # The entry point (pyproject) is only visible once this checkout's metadata is installed; the test of
    # the declaration itself is test_the_entry_point_is_declared.
    fsspec.register_implementation("wanllmdb", wfs.WanllmdbFileSystem)


@pytest.fixture(autouse=True)
def fresh_backends():
    wfs.close_all()
    fsspec.AbstractFileSystem.clear_instance_cache()
    yield
    wfs.close_all()


@pytest.fixture
def fetches(monkeypatch):
    """Counts blob reads of both registries (whole blobs and ranges)."""
    counts = {"blob": 0, "range": 0}
    for cls in (LocalRegistry, HttpRegistry):
        for method, key in (("fetch_blob", "blob"), ("fetch_range_into", "range")):
            original = getattr(cls, method)

            def counting(self, *args, _original=original, _key=key, **kwargs):
                counts[_key] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, method, counting)
    return counts


@pytest.fixture
def source(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "src"
    (root / "images" / "nested").mkdir(parents=True)
    (root / "train.csv").write_text("x,y\n1,2\n3,4\n5,6\n")
    (root / "test.csv").write_text("x,y\n7,8\n")
    for i in range(3):
        (root / "images" / f"{i}.png").write_bytes(os.urandom(1000 + i))
    (root / "images" / "nested" / "deep.bin").write_bytes(b"deep")
    (root / "big.bin").write_bytes(random.Random(7).randbytes(BIG))
    table = pa.table({"a": list(range(1000)), "b": [f"row{i}" for i in range(1000)]})
    pq.write_table(table, root / "data.parquet")
    pd.DataFrame({"a": [1, 2, 3]})  # pandas imported here so a missing one fails this fixture, not a test
    return root


def wait_for(probe, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def log(project, root, name="ds", aliases=None, files=None):
    with wandb.init(project=project) as run:
        art = wandb.Artifact(name, type="dataset")
        for rel in files or ["train.csv", "test.csv", "big.bin", "data.parquet"]:
            art.add_file(str(root / rel), name=rel)
        if files is None:
            art.add_dir(str(root / "images"), name="images")
        run.log_artifact(art, aliases=aliases)
    return art


def test_the_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["fsspec.specs"]["wanllmdb"] == "wanllmdb.fsspec:WanllmdbFileSystem"
    assert any(dep.startswith("fsspec") for dep in project["dependencies"])


def test_listings_and_info_come_from_manifests(backend, project, source, fetches):
    art = log(project, source, aliases=["best"])
    log(project, source, name="other", files=["test.csv"])
    fs = fsspec.filesystem("wanllmdb")
    assert project in fs.ls("", detail=False)
    assert sorted(fs.ls(project, detail=False)) == [f"{project}/ds", f"{project}/other"]
    listing = {item["name"]: item for item in fs.ls(f"wanllmdb://{project}/ds")}
    assert set(listing) == {f"{project}/ds/{n}" for n in ("v1", "latest", "best")}
    assert listing[f"{project}/ds/best"]["destination"] == "v1" and listing[f"{project}/ds/best"]["islink"]
    assert all(item["type"] == "directory" for item in listing.values())

    for version in (f"{project}/ds:latest", f"{project}/ds:v1", f"{project}/ds/v1", f"{project}/ds/best"):
        assert sorted(fs.ls(version, detail=False)) == sorted(
            f"{version}/{n}" for n in ("train.csv", "test.csv", "big.bin", "data.parquet", "images")
        )
    info = fs.info(f"wanllmdb://{project}/ds:latest/big.bin")
    entry = art.get_entry("big.bin")
    assert info["type"] == "file" and info["size"] == BIG
    assert info["sha256"] == entry.sha256 and info["md5"] == entry.md5
    assert fs.info(f"{project}/ds:best/images")["type"] == "directory"
    assert fs.isdir(f"{project}/ds/latest") and fs.info(f"{project}/ds/latest")["destination"] == "v1"
    assert fs.exists(f"{project}/ds:v1/images/nested/deep.bin")
    assert not fs.exists(f"{project}/ds:v1/images/nested/nope.bin")
    assert fs.isfile(f"{project}/ds:v1/train.csv") and not fs.isfile(f"{project}/ds:v1/images")
    assert sorted(fs.glob(f"wanllmdb://{project}/ds:latest/*.csv")) == [
        f"{project}/ds:latest/test.csv", f"{project}/ds:latest/train.csv"
    ]
    assert sorted(fs.glob(f"{project}/ds:v1/images/**/*.bin")) == [f"{project}/ds:v1/images/nested/deep.bin"]
    found = fs.find(f"{project}/ds:v1")
    assert len(found) == 8 and f"{project}/ds:v1/images/nested/deep.bin" in found
    assert fs.du(f"{project}/ds:v1") == art.size
    assert fetches == {"blob": 0, "range": 0}


def test_pandas_reads_a_url_with_no_registration(backend, project, source):
    import pandas as pd

    log(project, source)
    frame = pd.read_csv(f"wanllmdb://{project}/ds:latest/train.csv")
    assert frame.to_dict("list") == {"x": [1, 3, 5], "y": [2, 4, 6]}
    frame = pd.read_csv(f"wanllmdb://{project}/ds/v1/test.csv")
    assert frame.to_dict("list") == {"x": [7], "y": [8]}
    assert pd.read_parquet(f"wanllmdb://{project}/ds:latest/data.parquet")["a"].sum() == sum(range(1000))


def test_a_fresh_process_finds_the_filesystem_by_its_entry_point(backend, project, source):
    from importlib.metadata import entry_points

    if not any(ep.name == "wanllmdb" for ep in entry_points(group="fsspec.specs")):
        pytest.skip("this checkout's package metadata is not installed (pip install -e .)")
    log(project, source)
    code = f"import pandas; print(pandas.read_csv('wanllmdb://{project}/ds:latest/train.csv')['x'].sum())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "9"


def test_pyarrow_parquet_and_dataset(backend, project, source):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    log(project, source)
    fs = fsspec.filesystem("wanllmdb")
    table = pq.read_table(f"{project}/ds:latest/data.parquet", filesystem=fs)
    assert table.num_rows == 1000 and table.column("b")[999].as_py() == "row999"
    with fsspec.open(f"wanllmdb://{project}/ds:v1/data.parquet") as f:
        assert pq.read_table(f).equals(table)
    dataset = ds.dataset(f"{project}/ds:v1/data.parquet", filesystem=fs, format="parquet")
    assert dataset.to_table(filter=ds.field("a") >= 990).num_rows == 10

    parts = source / "parts"
    parts.mkdir()
    for i in range(3):
        pq.write_table(table.slice(i * 100, 100), parts / f"part-{i}.parquet")
    with wandb.init(project=project) as run:
        art = wandb.Artifact("parts", type="dataset")
        art.add_dir(str(parts), name="parquet")
        run.log_artifact(art)
    dataset = ds.dataset(f"{project}/parts:latest/parquet", filesystem=fs, format="parquet")
    assert len(dataset.files) == 3
    assert sorted(dataset.to_table().column("a").to_pylist()) == list(range(300))


def test_duckdb_reads_csv_and_parquet(backend, project, source):
    import duckdb

    log(project, source)
    con = duckdb.connect()
    con.register_filesystem(fsspec.filesystem("wanllmdb"))
    rows = con.sql(f"SELECT sum(x), sum(y) FROM read_csv('wanllmdb://{project}/ds:latest/train.csv')").fetchall()
    assert rows == [(9, 12)]
    rows = con.sql(f"SELECT count(*), max(a) FROM read_parquet('wanllmdb://{project}/ds/v1/data.parquet')").fetchall()
    assert rows == [(1000, 999)]


def test_random_seeks_match_the_source_cold_and_warm(backend, project, source):
    log(project, source)
    data = (source / "big.bin").read_bytes()
    fs = fsspec.filesystem("wanllmdb")
    rng = random.Random(3)
    probes = [(MIB - 10, 20), (0, 1), (BIG - 5, 100), (3 * MIB - 1, 2 * MIB + 2), (5 * MIB, MIB)]
    probes += [(rng.randrange(BIG), rng.randrange(1, 3 * MIB)) for _ in range(40)]
    for _round in ("cold", "warm"):
        with fs.open(f"{project}/ds:latest/big.bin", "rb") as f:
            assert f.size == BIG and f.seekable()
            for offset, length in probes:
                f.seek(offset)
                assert f.read(length) == data[offset : offset + length], (offset, length)
            f.seek(-100, 2)
            assert f.read() == data[-100:]
            f.seek(10)
            buf = bytearray(3 * MIB)
            assert f.readinto(buf) == 3 * MIB and bytes(buf) == data[10 : 10 + 3 * MIB]
        assert fs.cat_file(f"{project}/ds:v1/big.bin", start=MIB - 3, end=MIB + 3) == data[MIB - 3 : MIB + 3]
    assert fs.cat(f"wanllmdb://{project}/ds:v1/big.bin") == data
    # read whole once: the file is in the shared cache now
    assert wait_for(lambda: fs.backend.client.cache.lookup(fs.info(f"{project}/ds:v1/big.bin")["sha256"]))
    assert fs.backend.afs.reader.stats.promoted == 1


def test_a_corrupt_stored_chunk_raises_instead_of_returning_bytes(backend, project, source, request):
    art = log(project, source)
    sha = art.get_entry("big.bin").sha256
    data_root = os.environ["WANLLMDB_DIR"] if backend == "local" else request.getfixturevalue("live_server").root
    (stored,) = glob.glob(os.path.join(data_root, "**", "blobs", sha[:2], sha), recursive=True)
    original = open(stored, "rb").read()
    try:
        with open(stored, "r+b") as f:
            f.seek(2 * MIB + 100)
            f.write(b"\x00" if original[2 * MIB + 100] else b"\x01")
        fs = fsspec.filesystem("wanllmdb")
        with fs.open(f"{project}/ds:v1/big.bin") as f:
            assert f.read(1000) == original[:1000]  # chunk 0 is intact
            f.seek(2 * MIB + 50)
            with pytest.raises(ChecksumError, match="chunk 2"):
                f.read(100)
            f.seek(4 * MIB)
            assert f.read(10) == original[4 * MIB : 4 * MIB + 10]
        with pytest.raises(ChecksumError):
            fs.cat(f"{project}/ds:v1/big.bin")
        assert fs.backend.client.cache.lookup(sha) is None  # nothing corrupt was cached
    finally:
        with open(stored, "wb") as f:
            f.write(original)


def test_a_cached_blob_changed_under_an_open_file_fails_its_reads(backend, project, source):
    art = log(project, source)
    entry = art.get_entry("big.bin")
    fs = fsspec.filesystem("wanllmdb")
    fs.cat(f"{project}/ds:v1/big.bin")  # now a complete cached blob (promoted by the last fetch's worker)
    cached = wait_for(lambda: fs.backend.client.cache.lookup(entry.sha256))
    with fs.open(f"{project}/ds:v1/big.bin") as f:
        assert len(f.read(10)) == 10
        with open(cached, "r+b") as blob:
            blob.seek(MIB)
            blob.write(b"garbage")
        with pytest.raises(ChecksumError, match="changed"):
            f.read(2 * MIB)
    # A new open fetches the right bytes again.
    assert fs.cat(f"{project}/ds:v1/big.bin") == (source / "big.bin").read_bytes()


def test_missing_refs_and_paths_are_file_not_found(backend, project, source):
    log(project, source, aliases=["best"])
    fs = fsspec.filesystem("wanllmdb")
    for missing in (
        "no-such-project",
        f"{project}/nope",
        f"{project}/ds:v9/train.csv",
        f"{project}/ds:v9",
        f"{project}/ds:nosuchalias/train.csv",
        f"{project}/ds/v9/train.csv",
        f"{project}/ds:latest/missing.csv",
        f"{project}/ds:latest/images/missing/deeper",
        f"{project}/bad name:v1",
    ):
        with pytest.raises(FileNotFoundError, match="not found"):
            fs.info(missing)
        with pytest.raises(FileNotFoundError) as caught:
            fs.open(f"wanllmdb://{missing}")
        assert missing in str(caught.value)
        assert not fs.exists(missing)
    with pytest.raises(IsADirectoryError):
        fs.open(f"{project}/ds:v1/images")


def test_writes_are_refused(backend, project, source, tmp_path):
    log(project, source)
    fs = fsspec.filesystem("wanllmdb")
    target = f"{project}/ds:v1/new.csv"
    local = tmp_path / "local.txt"
    local.write_text("x")
    for attempt in (
        lambda: fs.open(target, "wb"),
        lambda: fs.open(target, "w"),
        lambda: fs.open(f"{project}/ds:v1/train.csv", "ab"),
        lambda: fs.put(str(local), target),
        lambda: fs.put_file(str(local), target),
        lambda: fs.pipe(target, b"x"),
        lambda: fs.rm(f"{project}/ds:v1/train.csv"),
        lambda: fs.rm_file(f"{project}/ds:v1/train.csv"),
        lambda: fs.mkdir(f"{project}/ds:v1/d"),
        lambda: fs.makedirs(f"{project}/new"),
        lambda: fs.touch(target),
        lambda: fs.mv(f"{project}/ds:v1/train.csv", target),
        lambda: fs.copy(f"{project}/ds:v1/train.csv", target),
    ):
        with pytest.raises(PermissionError, match="read-only filesystem"):
            attempt()
    assert fs.cat(f"{project}/ds:v1/train.csv") == (source / "train.csv").read_bytes()


def test_get_places_files_from_the_cache(backend, project, source, tmp_path, fetches):
    log(project, source)
    fs = fsspec.filesystem("wanllmdb")
    out = tmp_path / "out"
    fs.get(f"wanllmdb://{project}/ds:latest/", str(out), recursive=True)
    for rel in ("train.csv", "big.bin", "images/1.png", "images/nested/deep.bin"):
        assert (out / rel).read_bytes() == (source / rel).read_bytes()
    first = dict(fetches)
    assert first["blob"] >= 1 and first["range"] == 0  # whole blobs, as download() fetches them
    single = tmp_path / "single.csv"
    fs.get_file(f"{project}/ds:v1/train.csv", str(single))
    assert single.read_text() == (source / "train.csv").read_text()
    cache = fs.backend.client.cache
    sha = fs.info(f"{project}/ds:v1/big.bin")["sha256"]
    assert os.path.samefile(cache.lookup(sha), out / "big.bin")  # a link to the cached blob, not a copy
    assert fetches == first  # the second get was served from the cache


def test_open_counts_no_fetch_when_cached(backend, project, source, fetches):
    log(project, source)
    fs = fsspec.filesystem("wanllmdb")
    with fs.open(f"{project}/ds:v1/train.csv") as f:
        assert f.read() == (source / "train.csv").read_bytes()
    assert fetches["blob"] == 1
    with fs.open(f"{project}/ds:latest/train.csv") as f:
        assert f.read() == (source / "train.csv").read_bytes()
    assert fetches["blob"] == 1


def test_an_alias_moved_is_seen_after_the_ttl(backend, project, source, monkeypatch):
    log(project, source, files=["train.csv"])
    fs = fsspec.filesystem("wanllmdb", metadata_ttl=0.01)
    assert fs.cat(f"{project}/ds:latest/train.csv") == (source / "train.csv").read_bytes()
    log(project, source, files=["test.csv"])
    time.sleep(0.3)
    fs.ls(f"{project}/ds")  # a refresh in the background, then the new listing
    time.sleep(0.3)
    assert fs.ls(f"{project}/ds:latest", detail=False) == [f"{project}/ds:latest/test.csv"]


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
def test_torch_style_reads_through_fsspec_open(backend, project, source):
    import pickle

    payload = {"weights": list(range(100))}
    (source / "model.pkl").write_bytes(pickle.dumps(payload))
    log(project, source, name="model", files=["model.pkl"])
    with fsspec.open(f"wanllmdb://{project}/model:latest/model.pkl") as f:
        assert pickle.load(f) == payload


def test_link_collections_and_aliases_are_followed(backend, project, source):
    art = log(project, source, files=["train.csv"], aliases=["best"])
    art.link(f"{project}/registry")
    fs = fsspec.filesystem("wanllmdb")
    listing = {item["name"]: item for item in fs.ls(f"{project}/registry")}
    assert listing[f"{project}/registry/v1"]["destination"] == f"../../{project}/ds/v1"
    assert fs.info(f"{project}/registry:v1")["destination"] == f"../../{project}/ds/v1"
    assert fs.info(f"{project}/registry/latest")["destination"] == "v1"
    assert "islink" not in fs.info(f"{project}/ds:v1")
    expected = (source / "train.csv").read_bytes()
    for path in (f"{project}/registry:v1/train.csv", f"{project}/registry/latest/train.csv",
                 f"{project}/ds:best/train.csv", f"{project}/ds/best/train.csv"):
        assert fs.cat(path) == expected
        assert fs.info(path)["sha256"] == art.get_entry("train.csv").sha256
