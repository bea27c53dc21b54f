"""Run the server with uvicorn on a socket bound here (so ``--port 0`` works and the port can be reported).

A server on a non-loopback address without an API key would hand every artifact to the network: that is
refused with a :class:`ConfigError` before anything is bound.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from ..errors import ConfigError
from .context import ServerConfig

logger = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open (uvicorn's default of 5 makes pooled clients reconnect).
KEEP_ALIVE = 75


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_exposure(host: str, config: ServerConfig) -> None:
    """Raises:
    ConfigError: ``host`` is reachable from other machines and no API key is configured.
    """
    if not config.api_keys and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without an API key: anyone on the network could read and write "
            "artifacts. Pass --api-key KEY (or set WANLLMDB_SERVER_API_KEYS), or bind 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every keep-alive request waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except OverflowError:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: not a port (expected 0..65535)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8080, *, port_file: str | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM end it cleanly).

    Args:
        port_file: when given, the bound port is written there once the socket listens (for ``--port 0``).

    Raises:
        ConfigError: unsafe exposure, or the address cannot be bound.
    """
    import uvicorn

    from .app import create_app
    from .zerocopy import ZeroCopySend

    check_exposure(host, config)
    app = create_app(config)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    if port_file:
        tmp = f"{port_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(bound_port))
        os.replace(tmp, port_file)
    shown = f"[{host}]" if ":" in host else host
    logger.info("wanllmdb server on http://%s:%d (root %s), API docs at /docs", shown, bound_port, config.root)
    uv_config = uvicorn.Config(
        ZeroCopySend(app),
        access_log=False,  # the gateway middleware logs one line per request
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE,
        server_header=False,
        lifespan="on",
    )
    uvicorn.Server(uv_config).run(sockets=[sock])
