"""``wanllmdb server``: the registry protocol over HTTP (FastAPI, installed with the ``server`` extra).

Layers: this package serves :class:`wanllmdb.registry.local.LocalRegistry` and its blob store; it never
imports the SDK or the mount. ``create_app`` builds the ASGI app, ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .context import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServerConfig", "create_app", "serve"]


def create_app(config: ServerConfig) -> FastAPI:
    """The ASGI app (FastAPI is imported only here: it is an optional extra)."""
    from .app import create_app as _create_app

    return _create_app(config)


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8080, *, port_file: str | None = None) -> None:
    """Run the server until interrupted (see :func:`.run.serve`)."""
    from .run import serve as _serve

    _serve(config, host, port, port_file=port_file)
