"""``wanllmdb.Api``: read access to the registry outside of a run (W&B's public API, artifact parts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ArtifactTypeMismatchError, InvalidInputError, InvalidRefError, NotFoundError
from ..manifest import parse_ref, validate_artifact_name, validate_project
from ..registry import RunInfo
from .artifact import Artifact
from .client import Client, get_client
from .collection import ArtifactCollection, ArtifactType


class Api:
    """Query projects, artifacts and versions.

    Args:
        overrides: W&B-style dict; ``project`` sets the default project for refs without one.
        base_url, api_key: select a server (default: the environment's configuration).
    """

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        overrides = dict(overrides or {})
        self._client: Client = get_client(
            base_url=base_url or overrides.get("base_url"), api_key=api_key, timeout=timeout
        )
        self.default_project: str | None = overrides.get("project") or self._client.settings.project

    @property
    def registry(self):
        return self._client.registry

    def _project_for(self, ref_project: str | None, ref: str) -> str:
        if ref_project:
            return ref_project
        from .run import current_run

        run = current_run()
        project = self.default_project or (run.project if run else None)
        if not project:
            raise InvalidRefError(
                f"artifact reference {ref!r} names no project: write 'project/{ref}' or set WANLLMDB_PROJECT"
            )
        return project

    def artifact(self, name: str, type: str | None = None) -> Artifact:
        """The version a ref names: ``project/name:alias``, ``project/name:v3``, ``name`` (latest)."""
        ref = parse_ref(name)
        project = self._project_for(ref.project, name)
        info = self.registry.resolve(project, ref.name, ref.selector)
        if type is not None and info.type != type:
            raise ArtifactTypeMismatchError(f"artifact '{name}' has type '{info.type}', not '{type}'")
        return Artifact._from_version(info, self._client, fetched_as=ref.selector)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except NotFoundError:
            return False
        return True

    def projects(self) -> list[str]:
        return self.registry.list_projects()

    def artifacts(self, type_name: str, name: str | None = None, **_: Any) -> list[Artifact]:
        """W&B's ``artifacts(type_name, "project/name")``: every version of that artifact, oldest first.

        With one argument, the latest version of each artifact in that project (this project's older form).
        """
        if name is None:
            validate_project(type_name)
            return [
                self.artifact(f"{type_name}/{s.name}:v{s.latest_version}")
                for s in self.registry.list_artifacts(type_name)
            ]
        return self.artifact_versions(type_name, name)

    def artifact_versions(self, type_name: str, name: str, type: str | None = None, **_: Any) -> list[Artifact]:
        """Every version of an artifact, oldest first: W&B's ``artifact_versions(type_name, name)``, where
        ``name`` is ``name`` or ``project/name``.

        This project's older order, ``artifact_versions(project, name)``, is still understood where it cannot
        be confused: when ``name`` names no project and no artifact of type ``type_name`` exists under it in the
        default project, but ``type_name/name`` exists.
        """
        project, artifact_name, wanted_type = self._collection_args(type_name, name, type)
        info = self.registry.get_artifact(project, artifact_name)
        if wanted_type is not None and info.type != wanted_type:
            raise ArtifactTypeMismatchError(
                f"artifact '{project}/{artifact_name}' has type '{info.type}', not '{wanted_type}'"
            )
        return [self.artifact(f"{project}/{artifact_name}:v{v.version}") for v in info.versions]

    def _collection_args(self, first: str, name: str, type: str | None) -> tuple[str, str, str | None]:
        """(project, name, type to check) from W&B's (type_name, name) or the older (project, name)."""
        ref = parse_ref(name)
        validate_artifact_name(ref.name)
        if ref.project:
            return ref.project, ref.name, first
        default = self.default_project or self._current_project()
        if default is not None:
            try:
                if self.registry.get_artifact(default, ref.name).type == first:
                    return default, ref.name, first
            except NotFoundError:
                pass
        try:
            validate_project(first)
            self.registry.get_artifact(first, ref.name)
        except (NotFoundError, InvalidInputError):
            return self._project_for(None, name), ref.name, first
        return first, ref.name, type

    @staticmethod
    def _current_project() -> str | None:
        from .run import current_run

        run = current_run()
        return run.project if run else None

    def artifact_collection(self, type_name: str, name: str) -> ArtifactCollection:
        """The collection ``name`` (``project/name`` or ``name``) of type ``type_name``."""
        ref = parse_ref(name)
        project = self._project_for(ref.project, name)
        info = self.registry.get_artifact(project, ref.name)
        if info.type != type_name:
            raise ArtifactTypeMismatchError(
                f"artifact '{project}/{ref.name}' has type '{info.type}', not '{type_name}'"
            )
        return ArtifactCollection(self._client, project, ref.name, info.type)

    def artifact_type(self, type_name: str, project: str | None = None) -> ArtifactType:
        """The artifacts of type ``type_name`` in ``project`` (default: the default project)."""
        return ArtifactType(self._client, self._project_for(project, type_name), type_name)

    def artifact_types(self, project: str | None = None) -> list[ArtifactType]:
        """One ``ArtifactType`` per type logged in ``project`` (default: the default project)."""
        project = self._project_for(project, "artifact_types")
        types = sorted({s.type for s in self.registry.list_artifacts(project)})
        return [ArtifactType(self._client, project, t) for t in types]

    def artifact_collections(self, project_name: str, type_name: str, **_: Any) -> list[ArtifactCollection]:
        """The collections of type ``type_name`` in ``project_name`` (W&B's ``per_page`` is accepted)."""
        return self.artifact_type(type_name, project_name).collections()

    def run(self, path: str) -> ApiRun:
        """A run by id (``project/id`` and ``entity/project/id`` accepted): its record (config, summary, state)
        and ``logged_artifacts()`` / ``used_artifacts()``."""
        return ApiRun(self.registry.get_run(path.rsplit("/", 1)[-1]), self._client)

    def run_history(self, run_id: str) -> list[dict[str, Any]]:
        return self.registry.run_history(run_id.rsplit("/", 1)[-1])


class ApiRun:
    """A run as W&B's public API shows it: the record's fields, and the versions it logged and used."""

    def __init__(self, info: RunInfo, client: Client) -> None:
        self._info = info
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)

    @property
    def path(self) -> list[str]:
        return [self._info.project, self._info.id]

    def _artifacts(self, versions) -> list[Artifact]:
        from dataclasses import replace

        out = []
        for info in versions:
            if info.state != "COMMITTED":  # a deleted version: lineage keeps its tombstone, there is nothing to read
                continue
            if info.manifest is None:
                info = self._client.registry.resolve(info.project, info.name, info.label)
            out.append(Artifact._from_version(replace(info), self._client))
        return out

    def logged_artifacts(self) -> list[Artifact]:
        """The versions this run logged (deleted ones left out)."""
        return self._artifacts(self._client.registry.logged_artifacts(self._info.id))

    def used_artifacts(self) -> list[Artifact]:
        """The versions this run used (deleted ones left out)."""
        return self._artifacts(self._client.registry.used_artifacts(self._info.id))

    def __repr__(self) -> str:
        return f"<Run {self._info.project}/{self._info.id} ({self._info.state})>"
