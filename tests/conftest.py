"""Shared fixtures: every test runs with its own data and cache directories and never touches the user's.

``backend`` is parametrized over the registry kinds in ``REGISTRY_KINDS``: tests that take it (directly or
through ``registry``) run once against the embedded registry and once against a real ``wanllmdb server``.
"""

from __future__ import annotations

import os
import uuid

import pytest

pytest_plugins = ["tests.support.server", "tests.support.mount", "tests.support.postgres", "tests.support.s3"]

REGISTRY_KINDS = ["local", "http"]
#: The registry contract suites also run over the scale-out servers: metadata in PostgreSQL ('pg'), blobs in
#: S3 (SeaweedFS, 'http-s3'), and both ('pg-s3').
SCALE_KINDS = ["pg", "http-s3", "pg-s3"]
#: Which session fixture serves each HTTP kind.
SERVER_FIXTURES = {"http": "live_server", "pg": "pg_server", "http-s3": "s3_server", "pg-s3": "pg_s3_server"}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Fresh data/cache dirs, HOME and XDG dirs under tmp, no server configured, cwd in tmp."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANLLMDB_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANLLMDB_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("WANLLMDB_BASE_URL", "WANLLMDB_API_KEY", "WANLLMDB_PROJECT", "WANLLMDB_CACHE_SIZE"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield tmp_path
    import wanllmdb.sdk.run as sdk_run

    sdk_run._reset_for_tests()


@pytest.fixture
def project() -> str:
    """A project name no other test uses (servers are shared within a session)."""
    return "p-" + uuid.uuid4().hex[:10]


def use_backend(request, monkeypatch, kind: str) -> str:
    """Point the SDK at a registry ``kind``: 'local', or a server (``SERVER_FIXTURES``) through the env."""
    if kind != "local":
        server = request.getfixturevalue(SERVER_FIXTURES[kind])
        monkeypatch.setenv("WANLLMDB_BASE_URL", server.url)
        if server.api_key:
            monkeypatch.setenv("WANLLMDB_API_KEY", server.api_key)
    return kind


@pytest.fixture(params=REGISTRY_KINDS)
def backend(request, monkeypatch) -> str:
    """Run the test against each registry kind; for 'http' the env points the SDK at a live server."""
    return use_backend(request, monkeypatch, request.param)


#: Registry kinds of the modules that also run against a server on PostgreSQL (they override ``backend``).
WITH_POSTGRES = [*REGISTRY_KINDS, "pg"]


def select_backend(request, monkeypatch) -> str:
    """``use_backend`` for the kind in ``request.param``."""
    return use_backend(request, monkeypatch, request.param)


@pytest.fixture
def registry(backend):
    from wanllmdb.registry import open_registry
    from wanllmdb.settings import load_settings

    reg = open_registry(load_settings())
    yield reg
    reg.close()


def postgres_required() -> bool:
    return os.environ.get("WANLLMDB_REQUIRE_POSTGRES") == "1"


def fuse_required() -> bool:
    return os.environ.get("WANLLMDB_REQUIRE_FUSE") == "1"
