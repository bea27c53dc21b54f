"""The mount shows what the registry operations of issue 12 change: deleted versions vanish within the TTL,
link collections are directories of symlinks to their sources, and tags are an xattr of version directories.
Real mounts, read with ordinary tools, over both registries."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.mount import log_version, wait_until
from wanllmdb.registry import VersionUpdate

pytestmark = pytest.mark.fuse


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_links_tags_and_deletions_through_the_mount(registry, mounter, project, tmp_path):
    log_version(registry, tmp_path, project, "model", {"w.bin": b"first"}, type="model")
    log_version(registry, tmp_path, project, "model", {"w.bin": b"second"}, type="model", aliases=["best"])
    log_version(registry, tmp_path, project, "model", {"w.bin": b"third"}, type="model")
    registry.update_version(project, "model", 2, VersionUpdate(tags=["gold", "needs review"]))
    registry.link_version(project, "model", 2, project, "registry", aliases=["production"])
    mnt = mounter("--metadata-ttl", "1").path
    art, links = mnt / project / "model", mnt / project / "registry"

    assert sorted(os.listdir(links)) == ["latest", "production", "v1"]
    assert os.readlink(links / "v1") == f"../../{project}/model/v2"
    assert sh("readlink", "-f", str(links / "production")) == str(art / "v2")
    assert sh("cat", str(links / "production" / "w.bin")) == "second"
    assert sh("getfattr", "--only-values", "-n", "user.wanllmdb.tags", str(art / "v2")) == "gold,needs review"
    assert "user.wanllmdb.tags" in sh("getfattr", "-d", str(art / "v1"))
    assert (art / "v3" / "w.bin").read_bytes() == b"third"  # v3's tree is now in the mount's memory

    registry.delete_version(project, "model", 3)
    registry.update_version(project, "model", 1, VersionUpdate(tags=["old"]))

    def deletion_shows() -> bool:  # the kernel's entries time out with the TTL as well
        return (
            sorted(os.listdir(art)) == ["best", "latest", "v1", "v2"]
            and os.readlink(art / "latest") == "v2"
            and not os.path.exists(art / "v3" / "w.bin")
        )

    wait_until(deletion_shows, 10, "the deleted v3 to leave the mount")
    wait_until(
        lambda: sh("getfattr", "--only-values", "-n", "user.wanllmdb.tags", str(art / "v1")) == "old",
        10,
        "the new tag to show",
    )
