"""A fault-injecting TCP proxy for tests: clients (SDK, CLI, mount) talk to a real server through it.

``FaultProxy(upstream_port)`` listens on 127.0.0.1 and relays every connection to the server. It reads
just enough HTTP to know where each request's and each response's body starts, and forces one request per
connection (it sends ``Connection: close`` upstream, so the server says so to the client), which makes
"the body of the response to this request" well defined without parsing bodies.

A :class:`Fault`, set or replaced at run time with :meth:`FaultProxy.set_fault`, applies to the bodies of
the exchanges it matches (method, a substring of the request target, request or response side) whose body
reaches byte ``after``, at most ``times`` of them, from that byte on:

- ``stall``: stop relaying and hold the connection open (until the fault is cleared or the proxy stops);
- ``trickle``: relay ``rate`` bytes per second;
- ``reset``: close the connection the body goes to (the client's, or the server's for a request body) with
  an RST (``SO_LINGER`` 0);
- ``truncate``: close that connection cleanly (FIN), the body cut short;
- ``flip``: invert the byte at body offset ``after`` and relay the rest unchanged.

``hits`` counts the exchanges the fault struck, so that a test can check that it really happened.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

MODES = ("stall", "trickle", "reset", "truncate", "flip")
#: How long a blocked socket operation waits before the relay looks at its stop flags again.
POLL = 0.05
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What to do to the matching exchanges (see the module docstring)."""

    mode: str
    after: int = 0
    rate: int = 64 * 1024
    method: str | None = None
    path: str | None = None
    side: str = "response"
    times: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.side not in ("request", "response"):
            raise ValueError(f"bad fault: {self}")

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path in target)


class _Closed(Exception):
    """The connection is over (closed by a peer, reset or truncated by a fault, or the proxy stopped)."""


class FaultProxy:
    """A threaded relay from ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` with one fault at a time."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._left: int | None = None
        self.hits = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._accepter.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(self, fault: Fault | None) -> None:
        """Apply ``fault`` to exchanges from now on (None: relay faithfully; stalled connections resume)."""
        with self._lock:
            self._fault = fault
            self._left = fault.times if fault else None
            self.hits = 0

    def stop(self) -> None:
        self._stopping.set()
        self._accepter.join(5)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(5)

    # --- relaying -----------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _matching(self, method: str, target: str, side: str) -> Fault | None:
        """The current fault if it applies to this exchange's ``side``."""
        fault = self._fault
        return fault if fault is not None and fault.side == side and fault.matches(method, target) else None

    def _use(self, fault: Fault) -> bool:
        """Whether ``fault`` may strike one more exchange (it is still current and has ``times`` left)."""
        with self._lock:
            if fault is not self._fault or self._left == 0:
                return False
            if self._left is not None:
                self._left -= 1
            self.hits += 1
            return True

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(POLL)
        upstream = None
        try:
            head, rest = self._read_head(client)
            method, target = head.split(b" ", 2)[:2]
            method, target = method.decode("latin-1"), target.decode("latin-1")
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(POLL)
            self._send(upstream, _force_close(head))
            sender = threading.Thread(
                target=self._relay_quietly,
                args=(client, upstream, rest, self._matching(method, target, "request")),
                name="faultproxy-request",
                daemon=True,
            )
            sender.start()
            response_head, body = self._read_head(upstream)
            self._send(client, response_head)
            self._relay(upstream, client, body, self._matching(method, target, "response"))
        except (_Closed, OSError, ValueError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _relay_quietly(self, src: socket.socket, dst: socket.socket, first: bytes, fault: Fault | None) -> None:
        with contextlib.suppress(_Closed, OSError):
            self._relay(src, dst, first, fault)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _read_head(self, sock: socket.socket) -> tuple[bytes, bytes]:
        """An HTTP head (through the blank line) and whatever body bytes came with it."""
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > HEAD_LIMIT:
                raise ValueError("HTTP head too large")
            data += self._recv(sock)
        end = data.index(b"\r\n\r\n") + 4
        return data[:end], data[end:]

    def _recv(self, sock: socket.socket) -> bytes:
        while not self._stopping.is_set():
            try:
                data = sock.recv(256 * 1024)
            except TimeoutError:
                continue
            if not data:
                raise _Closed
            return data
        raise _Closed

    def _send(self, sock: socket.socket, data: bytes) -> None:
        """``sendall`` that waits for a slow reader as long as it takes (the socket's timeout is only a poll)."""
        view = memoryview(data)
        while view:
            if self._stopping.is_set():
                raise _Closed
            try:
                view = view[sock.send(view) :]
            except TimeoutError:
                continue

    def _relay(self, src: socket.socket, dst: socket.socket, first: bytes, fault: Fault | None) -> None:
        """Copy a body from ``src`` to ``dst`` until ``src`` closes, applying ``fault`` from its offset on."""
        offset, data, armed = 0, first, False
        while True:
            if data:
                end = offset + len(data)
                if fault is not None and not armed and end > fault.after:
                    armed = self._use(fault)  # only bodies that reach the offset count as hits
                self._forward(dst, data, offset, fault if armed else None)
                offset = end
            data = self._recv(src)

    def _forward(self, dst: socket.socket, data: bytes, offset: int, fault: Fault | None) -> None:
        end = offset + len(data)
        if fault is None or end <= fault.after:
            self._send(dst, data)
            return
        cut = max(0, fault.after - offset)
        self._send(dst, data[:cut])
        if fault.mode == "flip":
            flipped = bytearray(data[cut:])
            if offset + cut == fault.after:
                flipped[0] ^= 0xFF
            self._send(dst, flipped)
        elif fault.mode == "trickle":
            self._trickle(dst, data[cut:], fault.rate)
        elif fault.mode == "stall":
            while self._fault is fault and not self._stopping.is_set():
                time.sleep(POLL)
            if self._stopping.is_set():
                raise _Closed
            self._send(dst, data[cut:])
        elif fault.mode == "reset":
            dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            dst.close()
            raise _Closed
        else:  # truncate
            dst.shutdown(socket.SHUT_RDWR)
            raise _Closed

    def _trickle(self, dst: socket.socket, data: bytes, rate: int) -> None:
        piece = max(1, rate // 20)
        for start in range(0, len(data), piece):
            if self._stopping.is_set():
                raise _Closed
            self._send(dst, data[start : start + piece])
            time.sleep(piece / rate)


def _force_close(head: bytes) -> bytes:
    """The request head with ``Connection: close`` (one request per connection; see the module docstring)."""
    lines = [line for line in head[:-4].split(b"\r\n") if not re.match(rb"(?i)connection\s*:", line)]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"
