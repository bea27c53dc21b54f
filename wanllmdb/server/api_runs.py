"""Run routes: create, batched updates (config, summary, history rows, state), history, artifact use."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..registry.base import RunSpec
from ..registry.local import LocalRegistry
from .models import RunCreateRequest, RunUpdateRequest, UseRequest
from .responses import JSONResponse, no_content

router = APIRouter(prefix="/runs", tags=["runs"])


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.server.registry


@router.post("", summary="Create (or resume) a run", status_code=201)
def create_run(request: Request, body: RunCreateRequest) -> JSONResponse:
    spec = RunSpec(
        project=body.project,
        id=body.id,
        name=body.name,
        config=body.config,
        tags=tuple(body.tags),
        notes=body.notes,
        group=body.group,
        job_type=body.job_type,
    )
    return JSONResponse(_registry(request).create_run(spec).to_dict(), status_code=201)


@router.get("/{run_id}", summary="A run")
def get_run(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse(_registry(request).get_run(run_id).to_dict())


@router.patch("/{run_id}", summary="Update a run; history rows are appended in order", status_code=204)
def update_run(request: Request, run_id: str, body: RunUpdateRequest) -> Response:
    _registry(request).update_run(
        run_id, config=body.config, summary=body.summary, history=body.history, state=body.state
    )
    return no_content()


@router.get("/{run_id}/history", summary="The history rows of a run, in order")
def run_history(request: Request, run_id: str) -> JSONResponse:
    return JSONResponse({"history": _registry(request).run_history(run_id)})


@router.post("/{run_id}/uses", summary="Record that a run used a version", status_code=204)
def record_use(request: Request, run_id: str, body: UseRequest) -> Response:
    _registry(request).record_use(run_id, body.project, body.name, body.version)
    return no_content()
