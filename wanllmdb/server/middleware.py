"""The one ASGI middleware in front of every route: API key check, body size limit, one log line.

It runs before routing and before any body byte is read, so an unauthenticated or oversized request
costs nothing: no JSON is parsed and nothing is allocated for a huge declared ``Content-Length``.
Blob requests go straight to :class:`.blobs.BlobEndpoint`, authorized by their URL signature instead, with
the size the URL was signed for as their limit. The health route is open. The web pages (``/``, ``/ui/...``)
are authorized by the login cookie instead (:mod:`.web_auth`); without one they redirect to ``/login``. The
cookie is never looked at for ``/api/v1``.

The log line is ``client method path status bytes-out duration``; the query string is left out so that
URL signatures do not land in logs.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTooLargeError, WanllmdbError
from .blobs import BLOB_PREFIX, BlobEndpoint
from .context import ServerState
from .responses import error_payload
from .web import login_redirect
from .web_auth import cookie_from_header
from .zerocopy import EXTENSION as ZERO_COPY

access_log = logging.getLogger("wanllmdb.server.access")

API_PREFIX = "/api/v1/"
OPEN_PATHS = frozenset({"/api/v1/health"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` past the JSON limit; an HTTPException so that FastAPI's body parsing passes
    it through unchanged to the app's handler (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class GatewayMiddleware:
    """Authentication, request-size limit and access logging for the app it wraps."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.blobs = BlobEndpoint(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = {"status": 0, "bytes": 0}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            elif message["type"] == "http.response.body":
                outcome["bytes"] += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY:
                outcome["bytes"] += message["count"]
            await send(message)

        try:
            if scope["path"].startswith(BLOB_PREFIX):
                await self.blobs(scope, receive, send_logged)
                return
            if _is_page(scope["path"]) and not self._has_session(scope):
                await _send_login_redirect(send_logged, scope)
                return
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_error(send_logged, *refusal)
                return
            await self.app(scope, self._limited(scope, receive), send_logged)
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %d %.1fms",
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                outcome["status"],
                outcome["bytes"],
                (time.perf_counter() - started) * 1000,
            )

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, code, message) when the request is refused before it reaches a route."""
        path: str = scope["path"]
        if not path.startswith(API_PREFIX) or path in OPEN_PATHS:
            return None
        headers = dict(scope["headers"])
        try:
            self.state.keys.check(_header(headers, b"authorization"))
        except WanllmdbError as exc:
            return exc.http_status, exc.code, str(exc)
        declared = _header(headers, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return 400, "invalid_input", f"invalid Content-Length {declared[:40]!r}"
            if length > self.state.config.max_json_bytes:
                return (
                    413,
                    RequestTooLargeError.code,
                    f"request body of {length} bytes exceeds the limit of {self.state.config.max_json_bytes}",
                )
        return None

    def _has_session(self, scope: Scope) -> bool:
        return self.state.sessions.valid(cookie_from_header(_header(dict(scope["headers"]), b"cookie")))

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` that stops a body (e.g. chunked, without Content-Length) past the JSON limit."""
        limit = self.state.config.max_json_bytes
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return receive_limited


def _is_page(path: str) -> bool:
    """A web page that needs a login (``/login`` and ``/logout`` do not)."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


async def _send_login_redirect(send: Send, scope: Scope) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    location = login_redirect(scope["path"], query).encode("latin-1")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_payload(code, message), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
