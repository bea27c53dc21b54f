"""A minimal TCP load balancer for tests: several ``wanllmdb server`` replicas behind one loopback port.

Each client connection goes to the next upstream in turn (round robin); an upstream that refuses the
connection is skipped, as a load balancer's health check would, so a killed replica's share moves to the
others. Bytes are relayed unchanged in both directions (keep-alive connections stay on their replica).
"""

from __future__ import annotations

import itertools
import socket
import threading


class Balancer:
    """Listens on 127.0.0.1 (``port``) and relays connections to ``upstreams`` (ports on 127.0.0.1)."""

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = list(upstreams)
        self._turn = itertools.count()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        #: Connections relayed to each upstream port.
        self.served: dict[int, int] = {port: 0 for port in self.upstreams}
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="balancer").start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        start = next(self._turn)
        for i in range(len(self.upstreams)):
            port = self.upstreams[(start + i) % len(self.upstreams)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            self.served[port] += 1
            return upstream
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
