"""The listings loaded at mount start (``Catalog.warm``) after they expired: the first lookups after an idle
spell join one parallel refresh of them instead of each asking the registry in turn (``fs/catalog.py``)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support.mount import log_version

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024


def head(path: os.PathLike[str] | str, count: int) -> bytes:
    return subprocess.run(["head", "-c", str(count), str(path)], capture_output=True, timeout=60, check=True).stdout


def test_first_read_after_the_listings_expired_starts_no_listing_request_itself(registry, mounter, project, tmp_path):
    data = os.urandom(4 * CHUNK + 3)
    log_version(registry, tmp_path, project, "big", {"big.bin": data}, chunk_size=CHUNK)
    log_version(registry, tmp_path, project, "other", {"x.txt": b"x"})
    # (--project: a registry shared with other tests holds more projects than a warm-up of all of them loads)
    mnt = mounter("--metadata-ttl", "1", project=project)
    top = mnt.path
    start = mnt.stats()  # (lookups made while the mount came up may have raced the warm-up)
    for round in (1, 2):
        time.sleep(2.5)  # the warmed listings expire, and the mount sits idle for longer than the TTL
        assert head(top / "big" / "latest" / "big.bin", 100) == data[:100]
        assert head(top / "other" / "latest" / "x.txt", 1) == b"x"
        now = mnt.stats()
        # every listing on the paths (project, artifacts, aliases) came from one parallel refresh started by
        # the first lookup after the idle spell: none was asked for by a lookup, one after the other
        assert now["listing_requests"] == start["listing_requests"], mnt.log()[-3000:]
        assert now["rewarms"] == start["rewarms"] + round
