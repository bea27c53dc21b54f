"""The FastAPI application: the registry protocol under ``/api/v1`` over an embedded ``LocalRegistry``.

``create_app(config)`` builds it; ``wanllmdb server`` runs it with uvicorn. The OpenAPI description is at
``/openapi.json`` and browsable at ``/docs``. Errors leave as ``{"error": {"code", "message"}}`` with the
status of the error class (see :mod:`.responses`). Read-only web pages are at ``/`` (:mod:`.web`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .._version import __version__
from ..errors import InvalidInputError, WanllmdbError
from . import api_manage, api_multipart, api_read, api_runs, api_write, web
from .blobs import BLOB_PREFIX
from .context import ServerConfig, ServerState
from .middleware import OPEN_PATHS, GatewayMiddleware
from .responses import JSONResponse, error_payload, error_response

logger = logging.getLogger(__name__)

_CODES_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}


def create_app(config: ServerConfig) -> FastAPI:
    """The server application for ``config`` (opens the registry under ``config.root``)."""
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_sweep_drafts(state))]
        if state.config.gc_interval > 0:
            tasks.append(asyncio.create_task(_collect_garbage(state)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.close()

    app = FastAPI(
        title="wanllmdb",
        version=__version__,
        summary="Versioned ML artifacts: drafts, presigned blob URLs, versions and aliases.",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = state

    health = APIRouter(tags=["health"])

    @health.get("/api/v1/health", summary="Liveness (no key needed)")
    def health_check() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__, "auth": state.keys.enabled})

    app.include_router(health)
    for module in (api_read, api_write, api_multipart, api_runs, api_manage):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(web.router)  # the read-only pages at / (not in the OpenAPI description)
    _install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(GatewayMiddleware, state=state)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WanllmdbError)
    async def typed_error(request: Request, exc: WanllmdbError) -> JSONResponse:
        if exc.http_status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in exc.errors()[:5]
        )
        return JSONResponse(error_payload(InvalidInputError.code, f"invalid request: {problems}"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "invalid_input" if exc.status_code < 500 else "server_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        return JSONResponse(error_payload(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_payload("server_error", f"internal error: {type(exc).__name__}"), status_code=500)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the bearer scheme the gateway middleware enforces."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            # Invalid input is answered 400 (see validation_error), never FastAPI's 422.
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in API_ERROR_STATUSES:
                responses.setdefault(status, _ERROR)
    schema["paths"][BLOB_PREFIX + "{sha256}"] = BLOB_PATH_SCHEMA
    app.openapi_schema = schema
    return schema


def _query(name: str, description: str, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "string" if name == "sig" else "integer"}}  # fmt: skip


_SHA = {"name": "sha256", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_ERROR = {"description": 'failure: {"error": {"code", "message"}}'}
#: What any keyed API operation may answer with the error envelope: invalid input, no or a wrong key, not
#: found, a conflict (type, alias, draft), a body over the limit.
API_ERROR_STATUSES = ("400", "401", "404", "409", "413")
#: The blob endpoint is a plain ASGI handler (see .blobs); this documents it. No bearer key: the URL's
#: signature is its authorization (401 without one, 403 when invalid or expired).
BLOB_PATH_SCHEMA: dict[str, Any] = {
    "get": {
        "tags": ["blobs"],
        "summary": "Download a blob through a presigned URL (a single Range works: 206, or 416)",
        "parameters": [_SHA, _query("expires", "expiry, unix seconds"), _query("sig", "HMAC signature"),
                       {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the blob", "content": {"application/octet-stream": {}}},
                      "206": {"description": "the requested range"}, "400": _ERROR, "401": _ERROR, "403": _ERROR,
                      "404": _ERROR, "416": _ERROR},
    },
    "put": {
        "tags": ["blobs"],
        "summary": "Upload a blob through a presigned URL; stored only if its SHA-256 (and Content-MD5) match",
        "parameters": [_SHA, _query("size", "the size the URL was signed for"),
                       _query("expires", "expiry, unix seconds"), _query("sig", "HMAC signature"),
                       {"name": "Content-MD5", "in": "header", "required": False, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/octet-stream": {}}},
        "responses": {"201": {"description": "stored"}, "200": {"description": "already stored, body dropped"},
                      "400": _ERROR, "401": _ERROR, "403": _ERROR, "411": _ERROR, "413": _ERROR},
    },
}  # fmt: skip


async def _sweep_drafts(state: ServerState) -> None:
    """Remove drafts older than ``draft_max_age`` now and then (a killed logger's leftovers); with several
    replicas on one PostgreSQL database, one of them at a time does it (``LocalRegistry.sweep``)."""
    interval = min(max(state.config.draft_max_age / 4, 0.25), 600.0)
    while True:
        try:
            await run_in_threadpool(state.registry.sweep)
        except Exception:  # a failed sweep is retried at the next interval
            logger.exception("removing stale drafts failed")
        await asyncio.sleep(interval)


async def _collect_garbage(state: ServerState) -> None:
    """Garbage collection every ``gc_interval`` seconds, by one replica at a time (``LocalRegistry.maintain``)."""
    while True:
        await asyncio.sleep(state.config.gc_interval)
        try:
            await run_in_threadpool(state.registry.maintain, grace=state.config.grace)
        except Exception:  # retried at the next interval
            logger.exception("garbage collection failed")
