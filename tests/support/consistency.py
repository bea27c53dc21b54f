"""Whole-store consistency scans for fault tests: after crashes and broken links, is everything still true?

- :func:`assert_cache_sound`: every blob in a client cache hashes to its name (nothing wrong was admitted).
- :func:`scan_registry`: every version of every artifact of every project resolves, has dense numbers,
  and downloads through a fresh SDK client into a fresh directory with bytes matching its manifest
  (size, MD5 and SHA-256 of each file); returns counts for the test's report.
- :func:`orphan_temp_files`: what is left in a registry's or a cache's ``tmp/`` (by writers that are gone).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

from wanllmdb.registry import Registry


def _digests(path: str) -> tuple[int, str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return size, md5.hexdigest(), sha.hexdigest()


def assert_cache_sound(cache_dir: str) -> int:
    """Assert that every blob under ``cache_dir/blobs`` hashes to its name; returns how many were checked."""
    checked = 0
    blobs = os.path.join(cache_dir, "blobs")
    for dirpath, _dirs, names in os.walk(blobs):
        for name in names:
            digest = _digests(os.path.join(dirpath, name))[2]
            assert digest == name, f"cache blob {name} holds other bytes (they hash to {digest})"
            checked += 1
    return checked


@dataclass
class ScanReport:
    artifacts: int = 0
    versions: int = 0
    files: int = 0
    bytes: int = 0


def scan_registry(registry: Registry, workdir: str) -> ScanReport:
    """Check every version the registry lists; raise AssertionError naming the first that is not whole.

    Downloads go through a fresh SDK client (the environment's registry and cache) into new
    directories under ``workdir``.
    """
    import wanllmdb
    from wanllmdb.sdk.client import close_clients

    report = ScanReport()
    close_clients()
    api = wanllmdb.Api()
    for project in registry.list_projects():
        for summary in registry.list_artifacts(project):
            info = registry.get_artifact(project, summary.name)
            numbers = [v.version for v in info.versions]
            assert numbers == list(range(1, len(numbers) + 1)), f"{project}/{summary.name}: versions {numbers}"
            report.artifacts += 1
            for version in info.versions:
                ref = f"{project}/{summary.name}:v{version.version}"
                manifest = registry.resolve(project, summary.name, version.label).manifest
                root = api.artifact(ref).download(os.path.join(workdir, "scan-" + uuid.uuid4().hex[:10]))
                for entry in manifest:
                    local = os.path.join(root, *entry.path.split("/"))
                    got = _digests(local)
                    assert got == (entry.size, entry.md5, entry.sha256), f"{ref}: {entry.path} differs"
                    report.files += 1
                    report.bytes += entry.size
                report.versions += 1
    close_clients()
    return report


def orphan_temp_files(data_dir: str) -> list[str]:
    """Files left in ``tmp/`` of a registry directory (embedded, or a server's root) or of a cache."""
    tmp = os.path.join(data_dir, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []
