"""Response bodies: compact JSON, the error format, and blob files streamed with ``Range`` support.

Every failure is ``{"error": {"code": ..., "message": ...}}`` where ``code`` is the ``code`` of a
:mod:`wanllmdb.errors` class, so the client raises the same class the embedded registry would.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import AuthenticationError, IncompleteDraftError, ServerBusyError, WanllmdbError
from .zerocopy import EXTENSION as ZERO_COPY

#: Blobs (and ranges) up to this size go out in one piece read on the event loop: a page-cache read of at
#: most 1 MiB costs less than a thread hop. Bundles coalesce their small blobs into sends of this size.
BLOB_CHUNK = 1 << 20
#: Pieces larger blobs are read in (on worker threads) and sent in. Server CPU per GiB sent from the page
#: cache, alternating runs of 5 GETs: ~0.66 s in 1 MiB pieces, ~0.43 in 4 MiB, ~0.55 in 8 MiB.
SEND_PIECE = 4 << 20
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def json_bytes(content: Any) -> bytes:
    """Compact UTF-8 JSON, as every answer is encoded; NaN and infinities pass (run metrics may hold them)."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


class JSONResponse(Response):
    """Compact JSON (:func:`json_bytes`); unlike Starlette's, NaN and infinities pass."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def no_content() -> Response:
    return Response(status_code=204)


def error_payload(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(exc: WanllmdbError, status: int | None = None) -> JSONResponse:
    """The answer for a typed error: its ``http_status`` and its ``code``."""
    extra: dict[str, Any] = {}
    if isinstance(exc, IncompleteDraftError):
        extra["missing"] = exc.missing
    expected, actual = getattr(exc, "expected", None), getattr(exc, "actual", None)
    if expected is not None or actual is not None:
        extra.update(expected=expected, actual=actual)
    headers = {"WWW-Authenticate": "Bearer"} if type(exc) is AuthenticationError else None
    if isinstance(exc, ServerBusyError):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(
        error_payload(exc.code, str(exc), **extra), status_code=status or exc.http_status, headers=headers
    )


class RangeError(Exception):
    """A Range header that cannot be served (answered 416 with ``Content-Range: bytes */size``)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a single-range ``Range`` header, None without one.

    Supports ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` (the last n bytes).

    Raises:
        RangeError: malformed, several ranges, or not satisfiable for a blob of ``size`` bytes.
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeError(f"unsupported Range header {header[:100]!r}: expected one range, bytes=START-[END]")
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        if length == 0 or size == 0:
            raise RangeError(f"range {header!r} is empty")
        return max(0, size - length), size
    start = int(first)
    stop = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise RangeError(f"range {header!r} is not satisfiable for a blob of {size} bytes")
    return start, stop


class BlobResponse(Response):
    """Streams ``[start, stop)`` of an open file descriptor, which it closes when done.

    One piece for small blobs, read on the event loop (a page-cache read of at most 1 MiB costs less than
    a thread hop); larger blobs go out with ``sendfile`` where the server offers the zero-copy send extension
    (:mod:`.zerocopy`), else are read in ``SEND_PIECE`` (4 MiB) pieces on worker threads, so a slow disk
    never stalls other requests. Nothing larger than one piece is ever held in memory.
    """

    def __init__(self, fd: int, start: int, stop: int, size: int, *, partial: bool, etag: str) -> None:
        self.fd = fd
        self.start = start
        self.stop = stop
        headers = {
            "content-length": str(stop - start),
            "accept-ranges": "bytes",
            "etag": f'"{etag}"',
            "cache-control": "private, max-age=31536000, immutable",
        }
        if partial:
            headers["content-range"] = f"bytes {start}-{stop - 1}/{size}"
        super().__init__(status_code=206 if partial else 200, headers=headers, media_type="application/octet-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            pos, stop = self.start, self.stop
            if stop - pos <= BLOB_CHUNK:
                await send({"type": "http.response.body", "body": os.pread(self.fd, stop - pos, pos)})
                return
            if ZERO_COPY in (scope.get("extensions") or {}):  # page cache to socket, no copy through Python
                with open(self.fd, "rb", buffering=0, closefd=False) as file:
                    await send({"type": ZERO_COPY, "file": file, "offset": pos, "count": stop - pos})
                return
            while pos < stop:
                piece = await anyio.to_thread.run_sync(os.pread, self.fd, min(SEND_PIECE, stop - pos), pos)
                if not piece:
                    raise OSError(f"blob file ended at byte {pos}, expected {stop}")
                pos += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": pos < stop})
        finally:
            os.close(self.fd)


class BundleResponse(Response):
    """Streams several open files one after the other (a bundle of small blobs), closing each when done.

    Pieces are coalesced into sends of about 1 MiB, so a bundle of a thousand small blobs costs a few sends.
    """

    def __init__(self, fds: list[int], sizes: list[int]) -> None:
        self.fds = fds
        self.sizes = sizes
        super().__init__(
            status_code=200,
            headers={"content-length": str(sum(sizes)), "cache-control": "no-store"},
            media_type="application/octet-stream",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            pending: list[bytes] = []
            pending_bytes = 0
            for fd, size in zip(self.fds, self.sizes, strict=True):
                pos = 0
                while pos < size:
                    n = min(BLOB_CHUNK, size - pos)
                    piece = (
                        os.pread(fd, n, pos)
                        if size <= BLOB_CHUNK
                        else await anyio.to_thread.run_sync(os.pread, fd, n, pos)
                    )
                    if not piece:
                        raise OSError(f"a bundled blob file ended at byte {pos}, expected {size}")
                    pos += len(piece)
                    pending.append(piece)
                    pending_bytes += len(piece)
                    if pending_bytes >= BLOB_CHUNK:
                        await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                        pending, pending_bytes = [], 0
            await send({"type": "http.response.body", "body": b"".join(pending)})
        finally:
            for fd in self.fds:
                os.close(fd)
