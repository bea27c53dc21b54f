"""The registry and cache a Run, an Api or an Artifact works against, opened once per configuration."""

from __future__ import annotations

import threading

from ..cache import BlobCache, open_cache
from ..cache.artifacts import ArtifactCache
from ..cache.digests import DigestCache
from ..registry import Registry, open_registry
from ..settings import Settings, load_settings


class Client:
    """Lazily opened registry + blob cache for one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._registry: Registry | None = None
        self._cache: BlobCache | None = None
        self._digests: DigestCache | None = None

    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = open_registry(self.settings)
            return self._registry

    @property
    def cache(self) -> BlobCache:
        with self._lock:
            if self._cache is None:
                self._cache = open_cache(self.settings)
            return self._cache

    @property
    def digests(self) -> DigestCache:
        with self._lock:
            if self._digests is None:
                self._digests = DigestCache(self.settings.cache_dir)
            return self._digests

    def artifact_cache(self) -> ArtifactCache:
        """The seed-compatible view over the same cache (shares its blobs and index)."""
        return ArtifactCache(blob_cache=self.cache)

    def close(self) -> None:
        with self._lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
            if self._cache is not None:
                self._cache.close()
                self._cache = None
            if self._digests is not None:
                self._digests.close()
                self._digests = None


_clients: dict[Settings, Client] = {}
_clients_lock = threading.Lock()


def get_client(**overrides: object) -> Client:
    """The shared client for the current environment plus ``overrides`` (None values ignored)."""
    settings = load_settings(**overrides)
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = Client(settings)
        return client


def close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
