"""Faults between real clients and a real server: the SDK's download and log, and a mount's reads, through
:class:`tests.support.faultproxy.FaultProxy` stalling, trickling, resetting, truncating and flipping bytes.

``test_transport_faults.py`` fakes the server with ``responses``; here every byte crosses real sockets to
a real ``wanllmdb server``. Each outcome must come within a bounded time and be either the right bytes
(after retries) or a typed error (EIO through the mount), and never wrong bytes: not in the downloaded
files, not in the shared cache (every cached blob must hash to its name), not in a version.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import time
import uuid

import pytest

import wanllmdb
from tests.support.consistency import assert_cache_sound
from tests.support.data import log_files
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.mount import wait_until
from tests.support.server import start_server
from wanllmdb.errors import ChecksumError, WanllmdbError

pytestmark = pytest.mark.server

MIB = 1 << 20
LONG = os.environ.get("WANLLMDB_LONG_TESTS") == "1"
#: The client's read timeout in these tests: a stall must turn into an error soon after it.
TIMEOUT = 1.0
#: Every outcome, success or error, within this many seconds (retries and backoff included).
BOUND = 45.0
BIG = random.Random(1).randbytes(3 * MIB + 321)
SMALL = b"small file\n"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fault-server"), quiet=True)
    yield server
    server.stop()


@pytest.fixture
def proxy(fault_server, monkeypatch):
    """A proxy in front of the module's server; the SDK's environment points at the proxy."""
    with FaultProxy(int(fault_server.url.rsplit(":", 1)[1])) as px:
        monkeypatch.setenv("WANLLMDB_BASE_URL", px.url)
        monkeypatch.setenv("WANLLMDB_API_KEY", fault_server.api_key)
        monkeypatch.setenv("WANLLMDB_TIMEOUT", str(TIMEOUT))
        yield px
    from wanllmdb.sdk.client import close_clients

    close_clients()


@pytest.fixture
def logged(fault_server, project, tmp_path):
    """``project/data:v1`` (a 3 MiB file and a small one) logged straight to the server, not through the proxy."""
    registry = fault_server.registry()
    try:
        log_files(registry, str(tmp_path), project, "data", {"big.bin": BIG, "small.txt": SMALL})
    finally:
        registry.close()
    return f"{project}/data:v1"


BIG_SHA = hashlib.sha256(BIG).hexdigest()
ON_BIG = {"path": f"/blobs/{BIG_SHA}", "method": "GET"}
#: (fault on the big blob's GETs, what the download must end in): "ok" or the typed error expected.
DOWNLOAD_CASES = {
    "reset-once": (Fault("reset", after=MIB + 17, times=1, **ON_BIG), "ok"),
    "truncate-once": (Fault("truncate", after=2 * MIB + 5, times=1, **ON_BIG), "ok"),
    "stall-once": (Fault("stall", after=MIB, times=1, **ON_BIG), "ok"),
    "trickle": (Fault("trickle", rate=8 * MIB, **ON_BIG), "ok"),
    "flip-once": (Fault("flip", after=MIB + 3, times=1, **ON_BIG), ChecksumError),
    "flip-always": (Fault("flip", after=5, **ON_BIG), ChecksumError),
    "reset-every-mib": (Fault("reset", after=MIB, **ON_BIG), "ok"),  # each resumed range gets further
    "reset-always": (Fault("reset", after=0, **ON_BIG), WanllmdbError),
    "truncate-always": (Fault("truncate", after=10, **ON_BIG), WanllmdbError),
    "stall-always": (Fault("stall", after=0, **ON_BIG), WanllmdbError),
}


def _download(ref: str, root: str) -> tuple[object, float]:
    """(the download's outcome: "ok" or the exception, seconds taken), with a fresh client and cache."""
    from wanllmdb.sdk.client import close_clients

    close_clients()
    started = time.monotonic()
    try:
        wanllmdb.Api().artifact(ref).download(root)
        outcome: object = "ok"
    except WanllmdbError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


def _files_under(root: str) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                found[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
    return found


@pytest.mark.parametrize("case", DOWNLOAD_CASES, ids=str)
def test_download_through_a_faulty_link_gives_right_bytes_or_a_typed_error(proxy, logged, tmp_path, case):
    fault, expected = DOWNLOAD_CASES[case]
    proxy.set_fault(fault)
    root = str(tmp_path / "out")
    outcome, took = _download(logged, root)
    assert took < BOUND, f"{case}: {took:.1f}s"
    assert proxy.hits >= 1, f"{case}: the fault never applied"
    if expected == "ok":
        assert outcome == "ok", f"{case}: {outcome!r}"
        assert _files_under(root) == {"big.bin": BIG, "small.txt": SMALL}
    else:
        assert isinstance(outcome, expected), f"{case}: {outcome!r}"
        assert _files_under(root).get("big.bin", BIG) == BIG, "wrong bytes were placed"
    assert_cache_sound(os.environ["WANLLMDB_CACHE_DIR"])

    proxy.set_fault(None)
    outcome, _ = _download(logged, str(tmp_path / "again"))
    assert outcome == "ok" and _files_under(str(tmp_path / "again"))["big.bin"] == BIG


#: The same faults on a download that comes as parallel ranged spans of 2 MiB, each chunk checked on arrival.
SPAN_CASES = {
    **{case: DOWNLOAD_CASES[case] for case in ("reset-once", "stall-once", "flip-once", "flip-always",
                                                "reset-every-mib", "reset-always")},
    "truncate-once": (Fault("truncate", after=MIB + 5, times=1, **ON_BIG), "ok"),
}


@pytest.mark.parametrize("case", SPAN_CASES, ids=str)
def test_download_in_parallel_spans_through_a_faulty_link_gives_right_bytes_or_a_typed_error(
    proxy, logged, tmp_path, case, monkeypatch
):
    from wanllmdb.cache.store import BlobCache
    from wanllmdb.sdk import transfer

    monkeypatch.setattr(transfer, "SPAN_MIN_BYTES", MIB)
    monkeypatch.setattr(transfer, "SPAN_BYTES", 2 * MIB)
    spans = []
    real = BlobCache.ensure_spans

    def counted(self, *args, **kwargs):
        spans.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlobCache, "ensure_spans", counted)
    fault, expected = SPAN_CASES[case]
    DOWNLOAD_CASES[f"span-{case}"] = (fault, expected)
    try:
        test_download_through_a_faulty_link_gives_right_bytes_or_a_typed_error(proxy, logged, tmp_path, f"span-{case}")
    finally:
        del DOWNLOAD_CASES[f"span-{case}"]
    assert BIG_SHA in spans, "the big blob did not come as spans"
    assert os.listdir(os.path.join(os.environ["WANLLMDB_CACHE_DIR"], "partial")) == []


def _log(project: str, files: dict[str, bytes], tmp_path) -> tuple[object, float]:
    """(outcome: the version label or the exception, seconds taken) of logging ``files`` with the SDK."""
    from wanllmdb.sdk.client import close_clients

    close_clients()
    src = tmp_path / ("src-" + uuid.uuid4().hex[:8])
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    started = time.monotonic()
    try:
        with wanllmdb.init(project=project, name="logger") as run:
            art = wanllmdb.Artifact("model", "model")
            art.add_dir(str(src))
            run.log_artifact(art)
            outcome: object = art.version
    except WanllmdbError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


#: Stands for the path of the big file's upload URL, known once the test has made the file.
BIG_PUT = "<big upload>"
#: The big file's unaddressed upload (``PUT /blobs/new``: sent in the read that hashes it, the server answering
#: MD5 and SHA-256 and the client comparing chunk digests).
NEW_PUT = "/blobs/new"
#: (fault, whether the log must succeed): uploads broken on the way in, and answers lost on the way back.
LOG_CASES = {
    "upload-reset-once": (Fault("reset", after=MIB, side="request", method="PUT", path=BIG_PUT, times=1), True),
    "upload-flip-always": (Fault("flip", after=MIB + 9, side="request", method="PUT", path=BIG_PUT), False),
    "upload-stall-once": (Fault("stall", after=MIB, side="request", method="PUT", path=BIG_PUT, times=1), True),
    "upload-trickle": (Fault("trickle", rate=8 * MIB, side="request", method="PUT", path=BIG_PUT), True),
    "unaddressed-flip-always": (Fault("flip", after=2 * MIB + 3, side="request", method="PUT", path=NEW_PUT), False),
    "unaddressed-flip-last-chunk": (Fault("flip", after=3 * MIB + 1, side="request", method="PUT", path=NEW_PUT),
                                    False),
    "unaddressed-reset-once": (Fault("reset", after=MIB, side="request", method="PUT", path=NEW_PUT, times=1), True),
    "finalize-answer-reset": (Fault("reset", path="/finalize", times=1), None),
    "draft-answer-truncated": (Fault("truncate", after=3, path="/drafts", method="POST", times=1), None),
    "draft-answer-stalled-once": (Fault("stall", path="/drafts", method="POST", times=1), True),
}
if LONG:  # every retry waits out the timeout: ~7 s and ~20 s (the draft is retried with backoff)
    LOG_CASES["upload-stall-always"] = (Fault("stall", after=MIB, side="request", method="PUT"), False)
    LOG_CASES["draft-answer-stalled-always"] = (Fault("stall", path="/drafts", method="POST"), False)


@pytest.mark.parametrize("case", LOG_CASES, ids=str)
def test_log_through_a_faulty_link_makes_a_whole_version_or_none(fault_server, proxy, project, tmp_path, case,
                                                                  monkeypatch):
    fault, must_succeed = LOG_CASES[case]
    files = {"w/big.bin": os.urandom(3 * MIB + 5), "w/small.txt": uuid.uuid4().bytes}
    if fault.path == NEW_PUT:  # a size no stored blob has, so that the file goes up in the read that hashes it
        monkeypatch.setenv("WANLLMDB_SINGLE_PASS_MIN", "1MiB")
        files["w/big.bin"] = os.urandom(3 * MIB + 1000 + random.randrange(1 << 16))
    if fault.path == BIG_PUT:
        fault = dataclasses.replace(fault, path="/blobs/" + hashlib.sha256(files["w/big.bin"]).hexdigest())
    proxy.set_fault(fault)
    outcome, took = _log(project, files, tmp_path)
    assert took < BOUND, f"{case}: {took:.1f}s"
    assert proxy.hits >= 1, f"{case}: the fault never applied"
    if must_succeed is True:
        assert outcome == "v1", f"{case}: {outcome!r}"
    elif must_succeed is False:
        assert isinstance(outcome, WanllmdbError), f"{case}: {outcome!r}"
        if fault.path == NEW_PUT:  # caught by the client's chunk digests against the server's
            assert isinstance(outcome, ChecksumError) and "other bytes" in str(outcome), f"{case}: {outcome!r}"
    else:
        assert outcome == "v1" or isinstance(outcome, WanllmdbError), f"{case}: {outcome!r}"

    proxy.set_fault(None)
    again, _ = _log(project, files, tmp_path)
    assert again == "v1", f"{case}: logging the same files again gave {again!r}"
    assert _download(f"{project}/model:v1", str(tmp_path / "check"))[0] == "ok"
    assert _files_under(str(tmp_path / "check")) == {os.path.join(*k.split("/")): v for k, v in files.items()}


#: (fault on the big blob's GETs, whether reading it through the mount must succeed).
MOUNT_CASES = {
    "reset-once": (Fault("reset", after=MIB // 2, times=1, **ON_BIG), True),
    "truncate-once": (Fault("truncate", after=5, times=1, **ON_BIG), True),
    "flip-always": (Fault("flip", after=5, **ON_BIG), False),
    "stall-always": (Fault("stall", after=0, **ON_BIG), False),
    "reset-always": (Fault("reset", after=0, **ON_BIG), False),
    "trickle": (Fault("trickle", rate=8 * MIB, **ON_BIG), True),
}
if LONG:
    MOUNT_CASES["flip-every-range"] = (Fault("flip", after=MIB // 2 + 1, **ON_BIG), False)


@pytest.mark.fuse
@pytest.mark.parametrize("case", MOUNT_CASES, ids=str)
def test_mount_reads_through_a_faulty_link_give_right_bytes_or_eio(proxy, logged, mounter, project, case):
    fault, must_succeed = MOUNT_CASES[case]
    mounted = mounter("--timeout", str(TIMEOUT), project=project)
    path = mounted.path / "data" / "v1" / "big.bin"
    assert (mounted.path / "data" / "v1" / "small.txt").read_bytes() == SMALL
    proxy.set_fault(fault)
    started = time.monotonic()
    try:
        got: object = path.read_bytes()
    except OSError as exc:
        got = exc
    took = time.monotonic() - started
    assert took < BOUND, f"{case}: {took:.1f}s"
    assert proxy.hits >= 1, f"{case}: the fault never applied"
    if must_succeed:
        assert got == BIG, f"{case}: {got!r:.200}"
    else:
        assert isinstance(got, OSError) and got.errno == errno.EIO, (
            f"{case}: {'right' if got == BIG else 'wrong'} bytes"
        )
    assert_cache_sound(os.environ["WANLLMDB_CACHE_DIR"])

    # Once the link is healthy reads recover (a reader joining a fetch still stuck on the stalled socket
    # fails at once by design, until the transport's own timeout frees that fetch).
    proxy.set_fault(None)
    wait_until(lambda: _read_or_none(path) == BIG, BOUND, f"{case}: reads to recover")


def _read_or_none(path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return None
