"""Seed-compatible import path: ``from wanllmdb.artifact_cache import ArtifactCache``."""

from .cache.artifacts import ArtifactCache

__all__ = ["ArtifactCache"]
