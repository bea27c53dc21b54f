"""W&B's ``ArtifactCollection`` and ``ArtifactType``: the versions of one artifact name, and the artifacts of
one type in a project, read from the registry when asked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ArtifactNotLoggedError

if TYPE_CHECKING:
    from .artifact import Artifact
    from .client import Client


class ArtifactCollection:
    """All versions logged under one artifact name (``project/name``)."""

    def __init__(self, client: Client | None, project: str | None, name: str, type: str) -> None:
        self._client = client
        self.project = project
        self.name = name
        self.type = type

    def _registry(self):
        if self._client is None or self.project is None:
            raise ArtifactNotLoggedError(f"artifact '{self.name}' is not logged yet: its collection is empty")
        return self._client.registry

    def versions(self) -> list[Artifact]:
        """Every version, oldest first."""
        from .artifact import Artifact

        registry = self._registry()
        info = registry.get_artifact(self.project, self.name)
        return [
            Artifact._from_version(registry.resolve(self.project, self.name, v.label), self._client)
            for v in info.versions
        ]

    @property
    def aliases(self) -> list[str]:
        """Every alias of every version of the collection."""
        return sorted(self._registry().get_artifact(self.project, self.name).aliases)

    @property
    def retention(self):
        """The collection's :class:`~wanllmdb.registry.RetentionPolicy` (default TTL of versions logged later,
        and which versions expiry keeps); set it with ``wanllmdb artifact retain`` or the registry's
        ``set_retention``. A wanllmdb extension: W&B sets TTLs per version."""
        return self._registry().get_artifact(self.project, self.name).retention

    def __repr__(self) -> str:
        return f"<ArtifactCollection {self.project}/{self.name} type={self.type}>"


class ArtifactType:
    """The artifacts of one type in a project."""

    def __init__(self, client: Client, project: str, name: str) -> None:
        self._client = client
        self.project = project
        self.name = name
        self.type = name

    def collections(self) -> list[ArtifactCollection]:
        return [
            ArtifactCollection(self._client, self.project, s.name, s.type)
            for s in self._client.registry.list_artifacts(self.project)
            if s.type == self.name
        ]

    def collection(self, name: str) -> ArtifactCollection:
        return ArtifactCollection(self._client, self.project, name, self.name)

    def __repr__(self) -> str:
        return f"<ArtifactType {self.project}/{self.name}>"
