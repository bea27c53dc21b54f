"""What every workload gets: sizes for the chosen mode, a work directory, and an isolated environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    big: int              # the "1 GB" file
    small_count: int      # the "10,000 x 4 KB" files
    mount_small: int      # cold small files read through the mount
    listing_files: int    # files in the version listed with ls -lR
    memory_big: int       # the "4 GB" file for memory measurements


FULL = Sizes(big=1 << 30, small_count=10_000, mount_small=5_000, listing_files=100_000, memory_big=4 << 30)
QUICK = Sizes(big=128 << 20, small_count=1_000, mount_small=500, listing_files=10_000, memory_big=256 << 20)


@dataclass
class Context:
    workdir: str
    sizes: Sizes
    quick: bool

    def path(self, *parts: str) -> str:
        full = os.path.join(self.workdir, *parts)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """Environment for a subprocess with its own registry and cache under the work dir."""
        env = dict(os.environ)
        env.update(
            WANLLMDB_DIR=self.path(name, "data", ""),
            WANLLMDB_CACHE_DIR=self.path(name, "cache", ""),
            WANLLMDB_CACHE_SIZE=str(64 << 30),
        )
        env.pop("WANLLMDB_BASE_URL", None)
        env.update(extra)
        return env
