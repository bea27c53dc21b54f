"""Content-addressed blob cache shared by the SDK and the mount (see store.py for the design)."""

from ..settings import Settings
from .artifacts import ArtifactCache
from .materialize import Placer, materialize
from .store import BlobCache, BlobWriter, CleanupPlan, Fetcher, VerifyReport


def open_cache(settings: Settings) -> BlobCache:
    """The blob cache the settings name."""
    return BlobCache(settings.cache_dir, settings.cache_max_bytes)


__all__ = [
    "ArtifactCache",
    "BlobCache",
    "BlobWriter",
    "CleanupPlan",
    "Fetcher",
    "Placer",
    "VerifyReport",
    "materialize",
    "open_cache",
]
