"""``wanllmdb.Api``: read access to the registry outside of a run (W&B's public API, artifact parts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ArtifactTypeMismatchError, InvalidRefError, NotFoundError
from ..manifest import parse_ref, validate_artifact_name, validate_project
from ..registry import RunInfo
from .artifact import Artifact
from .client import Client, get_client


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
        return Artifact._from_version(info, self._client)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except NotFoundError:
            return False
        return True

    def projects(self) -> list[str]:
        return self.registry.list_projects()

    def artifacts(self, project: str, name: str | None = None) -> list[Artifact]:
        """The latest version of each artifact in ``project``.

        W&B's form ``artifacts(type_name, "project/name")`` returns every version of that artifact.
        """
        if name is not None:
            ref = parse_ref(name)
            return self.artifact_versions(self._project_for(ref.project, name), ref.name, type=project)
        validate_project(project)
        return [
            self.artifact(f"{project}/{s.name}:v{s.latest_version}")
            for s in self.registry.list_artifacts(project)
        ]

    def artifact_versions(self, project: str, name: str, type: str | None = None) -> list[Artifact]:
        """Every version of ``project/name``, oldest first."""
        validate_project(project)
        validate_artifact_name(name)
        info = self.registry.get_artifact(project, name)
        if type is not None and info.type != type:
            raise ArtifactTypeMismatchError(
                f"artifact '{project}/{name}' has type '{info.type}', not '{type}'"
            )
        return [self.artifact(f"{project}/{name}:v{v.version}") for v in info.versions]

    def run(self, run_id: str) -> RunInfo:
        """A run's record (config, summary, state), by id (``project/id`` accepted)."""
        return self.registry.get_run(run_id.rsplit("/", 1)[-1])

    def run_history(self, run_id: str) -> list[dict[str, Any]]:
        return self.registry.run_history(run_id.rsplit("/", 1)[-1])
