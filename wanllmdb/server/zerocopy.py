"""Blob bodies sent with ``sendfile``: the ASGI zero-copy send extension (``http.response.zerocopysend``)
for uvicorn, which implements none (0.54: no ``sendfile`` anywhere in it).

Sent from Python, a blob's bytes are copied twice by the server (``pread`` into a buffer, ``send`` out of it):
~0.55 server CPU-s per GiB before uvicorn's own per-piece work, against ~0.16 for ``os.sendfile`` from the
page cache to the socket (1 GiB to a loopback reader, two runs each). :class:`ZeroCopySend` wraps the app
outermost, where ``send`` is still uvicorn's: where that is the httptools protocol's response cycle, it
advertises the extension in ``scope["extensions"]`` and carries out each ``http.response.zerocopysend``
message itself, with the event loop's ``sendfile`` on the connection's transport (asyncio's selector loop
sends natively, after the transport's buffer has drained; other transports fall back to reads and writes),
keeping the cycle's Content-Length count as its own ``send`` would. Anywhere else (uvicorn's h11
protocol, another server) nothing is advertised and the app streams the body as before: the extension is
an optimisation, never a requirement.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

EXTENSION = "http.response.zerocopysend"
_CYCLE_MODULE = "uvicorn.protocols.http.httptools_impl"


def _cycle_of(send: Send) -> Any | None:
    """uvicorn's httptools response cycle behind ``send``, if it is one whose bookkeeping this module knows."""
    cycle = getattr(send, "__self__", None)
    if type(cycle).__module__ != _CYCLE_MODULE:
        return None
    if not all(hasattr(cycle, name) for name in ("transport", "expected_content_length", "disconnected")):
        return None
    return cycle


class ZeroCopySend:
    """ASGI middleware, outermost: the zero-copy send extension over uvicorn's httptools protocol."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: ``WANLLMDB_SERVER_SENDFILE=0`` turns the extension off (A/B measurements).
        self.enabled = os.environ.get("WANLLMDB_SERVER_SENDFILE") != "0"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = _cycle_of(send) if scope["type"] == "http" and self.enabled else None
        if cycle is None:
            await self.app(scope, receive, send)
            return
        scope["extensions"] = {**(scope.get("extensions") or {}), EXTENSION: {}}

        async def send_or_sendfile(message: Message) -> None:
            if message["type"] != EXTENSION:
                await send(message)
                return
            if await _sendfile(cycle, message) and not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, send_or_sendfile)


async def _sendfile(cycle: Any, message: Message) -> bool:
    """Send ``count`` bytes of ``file`` from ``offset`` on the cycle's connection; False if it is gone.

    Raises:
        RuntimeError: the body would be longer than the Content-Length sent, or the response has none
            (as uvicorn's own ``send`` raises).
    """
    if cycle.disconnected:
        return False
    count = int(message["count"])
    if getattr(cycle, "chunked_encoding", False) or count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    try:
        offset = int(message.get("offset", 0))
        await asyncio.get_running_loop().sendfile(cycle.transport, message["file"], offset, count)
    except (ConnectionError, OSError) as exc:
        # The client went away mid-body: close the connection and let uvicorn mark the cycle disconnected,
        # so that whatever the app sends next is dropped quietly, as after any disconnect.
        logger.debug("sendfile ended early: %s", exc)
        cycle.transport.close()
        for _ in range(2):
            await asyncio.sleep(0)
        return False
    cycle.expected_content_length -= count
    return True
