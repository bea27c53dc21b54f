"""``ApiClient``: the seed's small client of a ``wanllmdb server``, kept for scripts written against it.

    client = ApiClient()                       # WANLLMDB_BASE_URL / WANLLMDB_API_KEY
    client.get("projects")                     # -> {"projects": [...]}
    client.upload_file("model.bin", put_url)   # streamed
    client.download_file(get_url, "model.bin", sha256=digest)   # streamed, verified, atomic

Endpoints are relative to ``/api/v1`` (``"projects"``, ``"/projects"`` and ``"/api/v1/projects"`` are the
same). Errors are the typed :mod:`wanllmdb.errors` classes. New code should prefer the SDK, or
``wanllmdb.registry.open_registry`` for the registry itself.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

from .errors import ChecksumError, ConfigError
from .settings import load_settings
from .transport import HttpTransport


class _HashingFile:
    """Writes to a file, hashing on the way when a digest is to be checked."""

    def __init__(self, f: Any, check: bool) -> None:
        self._f = f
        self._sha = hashlib.sha256() if check else None
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        if self._sha is not None:
            self._sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def hexdigest(self) -> str | None:
        return self._sha.hexdigest() if self._sha is not None else None


class ApiClient:
    """JSON calls and streamed file transfers against one server.

    Args:
        base_url: the server (default ``WANLLMDB_BASE_URL``).
        api_key: its bearer key (default ``WANLLMDB_API_KEY``).
        timeout: seconds a stalled read may wait (default ``WANLLMDB_TIMEOUT``).

    Raises:
        ConfigError: no server URL given or configured.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | None = None):
        settings = load_settings()
        base_url = base_url or settings.base_url
        if not base_url:
            raise ConfigError("no server given: pass base_url= or set WANLLMDB_BASE_URL (e.g. http://127.0.0.1:8080)")
        self.transport = HttpTransport(
            base_url,
            api_key=api_key if api_key is not None else settings.api_key,
            timeout=timeout or settings.timeout,
            pool_size=max(16, settings.transfer_threads * 2),
        )
        self.base_url = self.transport.base_url

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- JSON -------------------------------------------------------------------------------------------

    def get(self, endpoint: str, params: dict[str, Any] | None = None) -> Any:
        return self.transport.request_json("GET", endpoint, params=params)

    def post(self, endpoint: str, data: Any = None) -> Any:
        return self.transport.request_json("POST", endpoint, body=data)

    def put(self, endpoint: str, data: Any = None) -> Any:
        return self.transport.request_json("PUT", endpoint, body=data)

    def delete(self, endpoint: str) -> Any:
        return self.transport.request_json("DELETE", endpoint)

    # --- files ------------------------------------------------------------------------------------------

    def upload_file(self, file_path: str, presigned_url: str) -> Any:
        """PUT a local file to a presigned upload URL, streamed; returns the server's JSON answer.

        Raises:
            ChecksumError: the server found the bytes differ from the digest the URL was issued for.
        """
        size = os.path.getsize(file_path)
        return self.transport.put_file(presigned_url, file_path, size)

    def download_file(self, presigned_url: str, destination_path: str, sha256: str | None = None) -> str:
        """Stream a presigned download URL into ``destination_path``; returns that path.

        The bytes go to a temporary file beside the destination, are checked against ``sha256`` when given,
        and are renamed into place only when complete: ``destination_path`` never holds a partial file.

        Raises:
            ChecksumError: the downloaded bytes do not hash to ``sha256`` (nothing is left behind).
        """
        destination_path = os.path.abspath(destination_path)
        directory = os.path.dirname(destination_path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(destination_path)}.{secrets.token_hex(4)}.part")
        try:
            with open(tmp, "wb") as f:
                sink = _HashingFile(f, check=sha256 is not None)
                self.transport.get_into(presigned_url, sink)
            actual = sink.hexdigest()
            if sha256 is not None and actual != sha256.lower():
                raise ChecksumError(
                    f"{destination_path}: downloaded bytes hash to {actual}, expected {sha256}",
                    expected=sha256,
                    actual=actual,
                )
            os.replace(tmp, destination_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return destination_path
