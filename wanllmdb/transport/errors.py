"""HTTP status and request failures -> :mod:`wanllmdb.errors` types. Nobody else inspects status codes.

The server answers every failure with ``{"error": {"code": ..., "message": ...}}``; the ``code`` names
the exception class (``errors.ERRORS_BY_CODE``), so the HTTP registry raises exactly what the embedded
registry raises. Answers without a known code (a proxy's 502, a load balancer's 429) are mapped by status.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from ..errors import (
    ERRORS_BY_CODE,
    AuthenticationError,
    ChecksumError,
    ForbiddenError,
    IncompleteDraftError,
    InvalidInputError,
    NotFoundError,
    RequestTooLargeError,
    ServerError,
    ServerUnreachableError,
    TransportError,
    WanllmdbError,
)

_BY_STATUS: dict[int, type[WanllmdbError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    413: RequestTooLargeError,
    416: InvalidInputError,
}
#: Error bodies larger than this are not parsed (a misbehaving proxy could send anything).
_MAX_ERROR_BODY = 64 * 1024


def raise_for_status(response: requests.Response, *, server: str) -> None:
    """Return if the response succeeded, else raise the typed error it stands for.

    Args:
        response: the answer (possibly streamed: its body is read only on failure).
        server: who answered, for messages (``"server http://host:8080"``).

    Raises:
        WanllmdbError: the class named by the answer's error code, else one chosen by status:
            401/403 :class:`AuthenticationError`/:class:`ForbiddenError` naming the server,
            404 :class:`NotFoundError`, 4xx :class:`InvalidInputError`, 429/5xx :class:`ServerError`.
    """
    status = response.status_code
    if status < 400:
        return
    code, message, extra = _read_error_body(response)
    cls = ERRORS_BY_CODE.get(code or "")
    if cls is None or cls is WanllmdbError:
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 or status == 429 else TransportError)
    if not message:
        message = f"HTTP {status} {response.reason or ''}".strip()
    if issubclass(cls, AuthenticationError):
        message = _auth_message(status, message, server)
    elif issubclass(cls, TransportError):
        message = f"{server}: {message}"
    raise build_error(cls, message, status=status, response=response, extra=extra)


def build_error(
    cls: type[WanllmdbError],
    message: str,
    *,
    status: int | None = None,
    response: Any = None,
    extra: dict[str, Any] | None = None,
) -> WanllmdbError:
    """An instance of ``cls``, filling the constructor arguments that class takes."""
    extra = extra or {}
    if issubclass(cls, TransportError):
        return cls(message, status=status, response=response)
    if issubclass(cls, IncompleteDraftError):
        return cls(message, list(extra.get("missing") or []))
    if issubclass(cls, ChecksumError):
        return cls(message, expected=extra.get("expected"), actual=extra.get("actual"))
    try:
        return cls(message)
    except TypeError:  # a class with another signature: keep the code's meaning, lose nothing of the message
        return WanllmdbError(message)


def error_for_exception(exc: requests.RequestException, *, server: str) -> TransportError:
    """A typed error for a request that got no usable answer (after the session's own retries)."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        reason = _root_cause(exc)
        return ServerUnreachableError(f"{server} is unreachable: {reason}")
    return TransportError(f"request to {server} failed: {_root_cause(exc)}")


def _auth_message(status: int, message: str, server: str) -> str:
    if status == 401:
        return f"{server} refused the request (401 unauthorized): {message}; check WANLLMDB_API_KEY"
    return f"{server} refused the request ({status} forbidden): {message}"


def _read_error_body(response: requests.Response) -> tuple[str | None, str, dict[str, Any]]:
    try:
        if getattr(response, "_content_consumed", False) or response.raw is None:
            raw = response.content or b""
        else:  # a streamed answer: read no more of it than an error body may hold
            raw = response.raw.read(_MAX_ERROR_BODY + 1, decode_content=True) or b""
    except Exception:  # a body we cannot read must not hide the status
        raw = b""
    if len(raw) > _MAX_ERROR_BODY:
        return None, "", {}
    try:
        payload = json.loads(raw)
        error = payload["error"]
        code = str(error["code"])
        message = str(error.get("message") or "")
        extra = {k: v for k, v in error.items() if k not in ("code", "message")}
        return code, message, extra
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()
        s3 = _S3_ERROR.search(text)
        if s3 is not None:  # an object store's answer to a presigned URL
            code = s3.group(1)
            message = _S3_MESSAGE.search(text)
            detail = f"{code}: {message.group(1)}" if message else code
            return _S3_CODES.get(code), f"object store refused the request ({detail})", {}
        return None, text[:300], {}


_S3_ERROR = re.compile(r"<Error>\s*<Code>([A-Za-z0-9.]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]{0,300})</Message>")
#: S3 error codes -> our error codes (bytes that are not what the URL signed are a checksum failure).
_S3_CODES = {
    "BadDigest": "checksum_mismatch",
    "InvalidDigest": "checksum_mismatch",
    "XAmzContentSHA256Mismatch": "checksum_mismatch",
    "IncompleteBody": "checksum_mismatch",
    "EntityTooLarge": "too_large",
}


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error chain, short enough for one line."""
    seen = exc
    for _ in range(6):
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        inner = inner or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException):
            break
        seen = inner
    text = str(seen) or type(seen).__name__
    return text if len(text) <= 300 else text[:300] + "..."
