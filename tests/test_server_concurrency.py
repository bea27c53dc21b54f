"""Concurrency against a real ``wanllmdb server``: simultaneous finalizes get distinct consecutive versions,
readers of ``latest`` never see a draft, and parallel uploaders of overlapping content store each blob once."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.server import manifest_of, write_files
from wanllmdb.errors import ArtifactNotFoundError, ProjectNotFoundError
from wanllmdb.registry.base import DraftSpec

pytestmark = pytest.mark.server


def _prepared_draft(registry, project: str, name: str, files: dict[str, str]):
    """A draft with every blob uploaded, ready to finalize."""
    manifest, by_sha = manifest_of(files)
    draft = registry.create_draft(DraftSpec(project, name, "dataset", manifest))
    for target in draft.missing:
        registry.upload_blob(draft, target, by_sha[target.sha256])
    return draft, manifest


def test_simultaneous_finalizes_get_distinct_consecutive_versions(live_server, project, tmp_path):
    clients = [live_server.registry(), live_server.registry()]
    try:
        numbers = []
        for round_ in range(4):
            drafts = [
                _prepared_draft(client, project, "race", write_files(tmp_path / f"r{round_}c{i}", 2, prefix=f"c{i}"))[0]
                for i, client in enumerate(clients)
            ]
            barrier = threading.Barrier(len(clients))

            def finalize(pair, barrier=barrier):
                client, draft = pair
                barrier.wait(timeout=10)
                return client.finalize_draft(draft.id, [f"from-{draft.id[:6]}"])

            with ThreadPoolExecutor(len(clients)) as pool:
                results = list(pool.map(finalize, zip(clients, drafts, strict=True)))
            assert all(r.created for r in results)
            numbers += sorted(r.version.version for r in results)
    finally:
        for client in clients:
            client.close()

    assert numbers == list(range(1, 9))  # distinct, consecutive, none skipped
    with_info = live_server.registry()
    info = with_info.get_artifact(project, "race")
    with_info.close()
    assert [v.version for v in info.versions] == list(range(1, 9)) and info.aliases["latest"] == 8


def test_readers_of_latest_never_see_a_draft(live_server, project, tmp_path):
    writer, reader = live_server.registry(), live_server.registry()
    finalized: set[str] = set()
    seen: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_latest() -> None:
        while not stop.is_set():
            try:
                version = reader.resolve(project, "watched", "latest")
            except (ProjectNotFoundError, ArtifactNotFoundError):
                continue
            except BaseException as exc:  # reported below
                errors.append(exc)
                return
            seen.append((version.version, version.digest))

    thread = threading.Thread(target=read_latest)
    thread.start()
    try:
        for i in range(6):
            draft, manifest = _prepared_draft(writer, project, "watched", write_files(tmp_path / f"v{i}", 3))
            # a draft waiting to be finalized is invisible: latest is still the previous version
            if finalized:
                assert reader.resolve(project, "watched", "latest").digest != manifest.digest
            else:
                with pytest.raises((ProjectNotFoundError, ArtifactNotFoundError)):
                    reader.get_artifact(project, "watched")
            writer.finalize_draft(draft.id)
            finalized.add(manifest.digest)
        abandoned, manifest = _prepared_draft(writer, project, "watched", write_files(tmp_path / "never", 3))
        assert reader.resolve(project, "watched", "latest").version == 6
    finally:
        stop.set()
        thread.join(timeout=30)
        writer.close()
        reader.close()

    assert not errors and seen
    assert all(digest in finalized for _, digest in seen)
    assert manifest.digest not in {digest for _, digest in seen}
    versions = [number for number, _ in seen]
    assert versions == sorted(versions)  # latest only ever moves forward


def test_parallel_uploaders_of_overlapping_content_store_each_blob_once(live_server, project, tmp_path):
    shared = write_files(tmp_path / "shared", 30, size=20_000, prefix="shared")
    uploaders = 8
    clients = [live_server.registry() for _ in range(uploaders)]
    barrier = threading.Barrier(uploaders)

    def log(i: int):
        own = write_files(tmp_path / f"own{i}", 3, size=20_000, prefix=f"own{i}")
        manifest, by_sha = manifest_of({**shared, **own})
        client = clients[i]
        draft = client.create_draft(DraftSpec(project, f"overlap{i}", "dataset", manifest))
        barrier.wait(timeout=30)  # every draft lists the shared blobs as missing; all upload them at once
        for target in draft.missing:
            client.upload_blob(draft, target, by_sha[target.sha256])
        return draft, client.finalize_draft(draft.id)

    try:
        with ThreadPoolExecutor(uploaders) as pool:
            results = list(pool.map(log, range(uploaders)))
    finally:
        for client in clients:
            client.close()

    shared_shas = set(manifest_of(shared)[1])
    assert all(shared_shas <= {t.sha256 for t in draft.missing} for draft, _ in results)
    assert all(result.created for _, result in results)
    stored = [name for _, _, names in os.walk(os.path.join(live_server.root, "blobs")) for name in names]
    for sha in shared_shas:
        assert stored.count(sha) == 1
    expected = shared_shas | {sha for draft, _ in results for sha in (t.sha256 for t in draft.missing)}
    assert expected <= set(stored)
    assert os.listdir(os.path.join(live_server.root, "tmp")) == []


def test_a_put_of_a_stored_blob_drains_its_body_and_writes_nothing(live_server, project, tmp_path):
    files = write_files(tmp_path / "src", 1, size=300_000)
    manifest, by_sha = manifest_of(files)
    registry = live_server.registry()
    try:
        draft = registry.create_draft(DraftSpec(project, "twice", "dataset", manifest))
        target = draft.missing[0]
        data = open(by_sha[target.sha256], "rb").read()
        path = os.path.join(live_server.root, "blobs", target.sha256[:2], target.sha256)
        session = requests.Session()
        first = session.put(target.url, data=data)
        before = os.stat(path)
        second = session.put(target.url, data=data)
        after_put = session.get(live_server.url + "/api/v1/health")  # the same connection still works
    finally:
        registry.close()

    assert first.status_code == 201 and first.json()["stored"] is True
    assert second.status_code == 200 and second.json()["stored"] is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert after_put.status_code == 200
