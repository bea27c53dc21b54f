"""Routes that change what was logged: update a version, delete versions and artifacts, link versions into
link collections, and the versions a run logged or used (tombstones of deleted ones included)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..registry.base import RetentionPolicy, VersionUpdate
from ..registry.local import LocalRegistry
from .api_read import _ARTIFACT, _version_number
from .models import LinkRequest, RetentionRequest, VersionUpdateRequest
from .responses import JSONResponse, no_content

router = APIRouter(tags=["manage"])


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.server.registry


@router.patch(_ARTIFACT + "/versions/{selector}", summary="Update description, metadata, tags and aliases")
def update_version(
    request: Request, project: str, name: str, selector: str, body: VersionUpdateRequest
) -> JSONResponse:
    update = VersionUpdate(
        description=body.description,
        metadata=body.metadata,
        tags=body.tags,
        add_aliases=tuple(body.add_aliases),
        remove_aliases=tuple(body.remove_aliases),
        ttl=body.ttl,
        clear_ttl=body.clear_ttl,
        inherit_ttl=body.inherit_ttl,
    )
    info = _registry(request).update_version(project, name, _version_number(selector), update)
    return JSONResponse(info.to_dict())


@router.delete(
    _ARTIFACT + "/versions/{selector}",
    summary="Delete a version (409 alias_protected while custom aliases point at it, unless delete_aliases)",
    status_code=204,
)
def delete_version(request: Request, project: str, name: str, selector: str, delete_aliases: bool = False) -> Response:
    _registry(request).delete_version(project, name, _version_number(selector), delete_aliases=delete_aliases)
    return no_content()


@router.delete(_ARTIFACT, summary="Delete every version and alias of an artifact")
def delete_artifact(request: Request, project: str, name: str) -> JSONResponse:
    return JSONResponse({"deleted": _registry(request).delete_artifact(project, name)})


@router.put(_ARTIFACT + "/retention", summary="Set an artifact's default TTL and keep policy (the whole policy)")
def set_retention(request: Request, project: str, name: str, body: RetentionRequest) -> JSONResponse:
    policy = RetentionPolicy(body.ttl, body.keep_last, body.keep_aliased, body.older_than)
    return JSONResponse(_registry(request).set_retention(project, name, policy).to_dict())


@router.post(_ARTIFACT + "/versions/{selector}/links", summary="Link a version into a link collection", status_code=201)
def link_version(request: Request, project: str, name: str, selector: str, body: LinkRequest) -> JSONResponse:
    info = _registry(request).link_version(
        project, name, _version_number(selector), body.target_project, body.target_name, body.aliases
    )
    return JSONResponse(info.to_dict(), status_code=201)


@router.get(
    "/runs/{run_id}/logged-artifacts", summary="Versions a run logged, deleted ones as tombstones", tags=["runs"]
)
def logged_artifacts(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse({"versions": [v.to_dict() for v in _registry(request).logged_artifacts(run_id)]})


@router.get("/runs/{run_id}/used-artifacts", summary="Versions a run used, deleted ones as tombstones", tags=["runs"])
def used_artifacts(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse({"versions": [v.to_dict() for v in _registry(request).used_artifacts(run_id)]})
