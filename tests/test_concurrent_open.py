"""Processes creating one database at the same moment all succeed (issue 10, point 8): a stronger form of
``test_bad_files``' two-server start, opening the registry database from 8 processes at once, 15 times."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from wanllmdb.errors import ConfigError


def _open_registry_db(path: str, start, errors) -> None:
    from wanllmdb.registry.db import Database

    start.wait(30)
    try:
        Database(path).close()
    except Exception as exc:  # reported to the test, which names it
        errors.put(repr(exc))


def test_processes_creating_one_database_at_the_same_moment_all_succeed(tmp_path):
    # Switching a new database to WAL takes a lock SQLite does not wait for: before the set-up was retried,
    # 8 openers x 15 rounds gave "database is locked" in most runs (2 servers x 3 rounds rarely did).
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(15):
        path = str(tmp_path / f"r{round_}" / "registry.sqlite")
        os.makedirs(os.path.dirname(path))
        start = ctx.Event()
        procs = [ctx.Process(target=_open_registry_db, args=(path, start, errors)) for _ in range(8)]
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    failures = []
    while not errors.empty():
        failures.append(errors.get(timeout=5))
    assert failures == []


def test_binding_a_port_out_of_range_is_a_config_error():
    from wanllmdb.server.run import bind

    with pytest.raises(ConfigError, match="99999"):
        bind("127.0.0.1", 99999)
