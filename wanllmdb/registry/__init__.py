"""Registries: one interface (base.Registry), an embedded implementation and an HTTP client.

Which one serves is decided by configuration alone: ``WANLLMDB_BASE_URL`` (or ``base_url=``) selects the
HTTP registry of a ``wanllmdb server``; otherwise the embedded registry under the data directory.
"""

from __future__ import annotations

from ..settings import Settings
from .base import (
    ArtifactInfo,
    ArtifactSummary,
    ArtifactTTL,
    BlobTarget,
    Draft,
    DraftSpec,
    FinalizeResult,
    Registry,
    RetentionPolicy,
    RunInfo,
    RunSpec,
    UploadBundle,
    VersionInfo,
    VersionUpdate,
)


def open_registry(settings: Settings, *, retries: int | None = None) -> Registry:
    """The registry the settings select; ``retries`` replaces the HTTP transport's default retry count."""
    if settings.base_url:
        from .http import HttpRegistry

        return HttpRegistry(
            settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            transfer_threads=settings.transfer_threads,
            **({} if retries is None else {"retries": retries}),
        )
    from .local import LocalRegistry

    return LocalRegistry(settings.data_dir)


__all__ = [
    "ArtifactInfo",
    "ArtifactSummary",
    "ArtifactTTL",
    "BlobTarget",
    "Draft",
    "DraftSpec",
    "FinalizeResult",
    "Registry",
    "RetentionPolicy",
    "RunInfo",
    "RunSpec",
    "UploadBundle",
    "VersionInfo",
    "VersionUpdate",
    "open_registry",
]
