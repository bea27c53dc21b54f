"""Read routes: projects, artifacts, one version with its manifest (one request), aliases, lineage."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..errors import InvalidRefError
from ..manifest import parse_version
from ..registry.local import LocalRegistry
from .models import AliasRequest
from .responses import JSONResponse, no_content

router = APIRouter(tags=["artifacts"])

_ARTIFACT = "/projects/{project}/artifacts/{name}"


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.server.registry


def _version_number(selector: str) -> int:
    number = parse_version(selector)
    if number is None:
        raise InvalidRefError(f"expected a version such as v3, got {selector[:80]!r}")
    return number


@router.get("/projects", summary="List projects")
def list_projects(request: Request) -> JSONResponse:
    return JSONResponse({"projects": _registry(request).list_projects()})


@router.get("/projects/{project}/artifacts", summary="List the artifacts of a project")
def list_artifacts(request: Request, project: str) -> JSONResponse:
    summaries = _registry(request).list_artifacts(project)
    return JSONResponse({"artifacts": [s.to_dict() for s in summaries]})


@router.get("/projects/{project}/usage", summary="Per artifact: logical, stored and exclusive bytes")
def storage_usage(request: Request, project: str) -> JSONResponse:
    return JSONResponse({"artifacts": [u.to_dict() for u in _registry(request).storage_usage(project)]})


@router.get(_ARTIFACT, summary="An artifact with its versions (without manifests) and aliases")
def get_artifact(request: Request, project: str, name: str) -> JSONResponse:
    return JSONResponse(_registry(request).get_artifact(project, name).to_dict())


@router.get(_ARTIFACT + "/versions/{selector}", summary="Resolve vN or an alias: the version with its manifest")
def resolve(request: Request, project: str, name: str, selector: str) -> JSONResponse:
    return JSONResponse(_registry(request).resolve(project, name, selector).to_dict())


@router.put(_ARTIFACT + "/aliases/{alias}", summary="Point an alias at a version", status_code=204)
def set_alias(request: Request, project: str, name: str, alias: str, body: AliasRequest) -> Response:
    _registry(request).set_alias(project, name, alias, body.version)
    return no_content()


@router.delete(_ARTIFACT + "/aliases/{alias}", summary="Remove an alias", status_code=204)
def delete_alias(request: Request, project: str, name: str, alias: str) -> Response:
    _registry(request).delete_alias(project, name, alias)
    return no_content()


@router.get(_ARTIFACT + "/versions/{selector}/logged-by", summary="The run that logged a version", tags=["runs"])
def logged_by(request: Request, project: str, name: str, selector: str) -> JSONResponse:
    run = _registry(request).logged_by(project, name, _version_number(selector))
    return JSONResponse({"run": run.to_dict() if run else None})


@router.get(_ARTIFACT + "/versions/{selector}/used-by", summary="The runs that used a version", tags=["runs"])
def used_by(request: Request, project: str, name: str, selector: str) -> JSONResponse:
    runs = _registry(request).used_by(project, name, _version_number(selector))
    return JSONResponse({"runs": [r.to_dict() for r in runs]})
