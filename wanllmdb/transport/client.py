"""``HttpTransport``: JSON calls to a ``wanllmdb server`` and streaming blob transfers to presigned URLs.

This is the only code that sends HTTP requests. Blob bytes never pass through ``Response.content`` or the
default ``iter_content()`` (10 KB pieces): uploads stream the file in 1 MiB blocks, downloads read 1 MiB
pieces straight into the caller's writer. A download whose body breaks off is resumed with a ``Range``
request from the first missing byte, so a reset connection costs only the bytes in flight.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3
from requests.hooks import dispatch_hook

from ..cache.store import BlobWriter
from ..errors import ChecksumError, ConfigError, ServerError, ServerUnreachableError, TransportError
from ..iobuf import buffer_for
from .errors import error_for_exception, raise_for_status
from .session import BLOCK_SIZE, DEFAULT_BACKOFF, DEFAULT_RETRIES, IDEMPOTENT_METHODS, RETRY_STATUSES, make_session

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
#: Seconds to wait for a TCP connection (reads wait ``timeout``).
CONNECT_TIMEOUT = 10.0
#: A download that breaks off this many times in a row without receiving a byte is given up.
MAX_STALLED_RESUMES = 3
#: ... and one that breaks off this many times in all.
MAX_RESUMES = 20


def normalize_base_url(url: str) -> str:
    """``http://host:8080/`` or ``http://host:8080/api/v1`` -> ``http://host:8080``.

    Raises:
        ConfigError: not an http(s) URL.
    """
    cleaned = (url or "").strip().rstrip("/")
    if not cleaned.startswith(("http://", "https://")) or len(cleaned.split("://", 1)[1]) == 0:
        raise ConfigError(f"not a server URL: {url!r} (expected e.g. http://127.0.0.1:8080)")
    if cleaned.endswith(API_PREFIX):
        cleaned = cleaned[: -len(API_PREFIX)]
    return cleaned


class HttpTransport:
    """A pooled session bound to one server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8080``.
        api_key: sent as ``Authorization: Bearer`` to API routes only (never to presigned URLs, which may
            point elsewhere and carry their own authorization).
        timeout: seconds a stalled read may wait.
        pool_size: keep-alive connections per host (at least the number of transfer threads).
        retries, backoff: see :mod:`.session`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        pool_size: int = 16,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.server = f"server {self.base_url}"
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.retries = retries
        self.backoff = backoff
        self.session = make_session(pool_size, retries=retries, backoff=backoff, base_url=self.base_url)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._blob_headers = {"User-Agent": self.session.headers["User-Agent"], "Accept-Encoding": "identity"}

    def close(self) -> None:
        self.session.close()

    # --- URLs -------------------------------------------------------------------------------------------

    def api_url(self, endpoint: str) -> str:
        """Absolute URL of an API endpoint: ``"projects"``, ``"/projects"`` and ``"/api/v1/projects"`` agree."""
        if endpoint.startswith(("http://", "https://")):
            return endpoint
        path = endpoint if endpoint.startswith(API_PREFIX + "/") else f"{API_PREFIX}/{endpoint.lstrip('/')}"
        return self.base_url + path

    def absolute(self, url: str) -> str:
        """A presigned URL as the server gave it, made absolute if it was relative."""
        if url.startswith(("http://", "https://")):
            return url
        return self.base_url + ("" if url.startswith("/") else "/") + url

    # --- JSON API ---------------------------------------------------------------------------------------

    def request_json(
        self,
        method: str,
        endpoint: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        repeatable: bool = False,
        read_timeout: float | None = None,
    ) -> Any:
        """Call an API endpoint; returns its parsed JSON answer (None for an empty one).

        Args:
            body: a value to send as JSON, or ``bytes`` that already are (a draft of a million files: see
                ``HttpRegistry.create_draft``).
            repeatable: the call may be repeated after a lost answer or a 429/5xx even though its method
                is not idempotent (e.g. creating a draft: a second draft is harmless and expires).
            read_timeout: seconds to wait for the answer when more than the transport's own (a call whose
                work grows with its body, such as a draft of a million files).

        Raises:
            WanllmdbError: the typed error for a failed status (see :func:`.errors.raise_for_status`).
            ServerUnreachableError: no answer after the retries.
        """
        method = method.upper()
        url = self.api_url(endpoint)
        headers = dict(self._auth)
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else (
                json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
            )
            headers["Content-Type"] = "application/json"
        attempts = 1 + (self.retries if repeatable and method not in IDEMPOTENT_METHODS else 0)
        for attempt in range(attempts):
            try:
                response = self._send(method, url, data=data, params=params, headers=headers, read_timeout=read_timeout)
                with response:
                    raise_for_status(response, server=self.server)
                    return _parse_json(response, self.server)
            except (ServerError, ServerUnreachableError) as exc:
                # A connection that could not be made was already retried by the session, for every method;
                # an answer lost after the request went out is worth one more round, no more.
                if isinstance(exc, ServerUnreachableError):
                    retry = attempt == 0 and not _never_connected(exc)
                else:
                    retry = exc.status in RETRY_STATUSES
                if not retry or attempt + 1 >= attempts:
                    raise
                delay = min(10.0, self.backoff * 2**attempt)
                logger.debug("%s %s failed (%s); retrying in %.2fs", method, url, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    @contextmanager
    def open_body(self, endpoint: str) -> Iterator[BinaryIO]:
        """GET an API endpoint whose answer is read as it arrives (e.g. a manifest of a million entries):
        yields its body as a binary file object; a body that breaks off raises :class:`TransportError` from
        ``read`` (it is not resumed: the caller starts over).

        Raises:
            WanllmdbError: the typed error for a failed status.
            ServerUnreachableError: no answer after the retries.
        """
        url = self.api_url(endpoint)
        response = self._send("GET", url, headers=dict(self._auth), stream=True)
        with response:
            raise_for_status(response, server=self.server)
            yield _BodyReader(response, self.server)

    def _send(self, method: str, url: str, *, read_timeout: float | None = None, **kwargs: Any) -> requests.Response:
        timeout = self.timeout if read_timeout is None else (self.timeout[0], max(self.timeout[1], read_timeout))
        try:
            return self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise error_for_exception(exc, server=self.server) from exc

    def _send_blob(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, data: Any = None
    ) -> requests.Response:
        """A streamed blob request through the session's adapter (same pool, same retries).

        It skips ``Session.request``'s merging of settings, cookies and environment, which costs more than
        the request itself when the blobs are small; the session's response hooks still run.
        """
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers={**self._blob_headers, **(headers or {})}, data=data)
        try:
            response = self.session.get_adapter(url).send(
                prepared, stream=True, timeout=self.timeout, verify=self.session.verify, proxies=self.session.proxies
            )
        except requests.RequestException as exc:
            raise error_for_exception(exc, server=self._who(url)) from exc
        return dispatch_hook("response", self.session.hooks, response)

    def _who(self, url: str) -> str:
        """Who a blob URL reaches, for messages: this server, or the object store its URLs point at."""
        host = urlsplit(url).netloc
        return self.server if host == urlsplit(self.base_url).netloc else f"object store {host}"

    # --- blobs ------------------------------------------------------------------------------------------

    def put_file(
        self,
        url: str,
        path: str,
        size: int,
        *,
        progress: Any = None,
        headers: Mapping[str, str] | None = None,
        observer: Any = None,
        offset: int = 0,
    ) -> Any:
        """Stream ``size`` bytes of the local file ``path`` to a presigned upload URL.

        The body is read in 1 MiB blocks into one reused buffer (``_FileBody``); urllib3 rewinds it for a
        retry.

        Args:
            observer: called once with every byte sent, in order (e.g. a digester hashing the file in the
                same read), however often a retry rewinds the body.
            offset: where in the file the ``size`` bytes start (a part of a multipart upload).

        Returns:
            the server's parsed JSON answer, or None.
        """
        sent_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        sent_headers.update(headers or {})
        with open(path, "rb") as f:
            body = _FileBody(f, size, progress, observer, offset, label=path)
            response = self._send_blob("PUT", self.absolute(url), data=body if size else b"", headers=sent_headers)
            with response:
                raise_for_status(response, server=self._who(url))
                return _parse_json(response, self.server)

    def post_bundle(
        self, url: str, listing: bytes, paths: Sequence[str], sizes: Sequence[int], *, progress: Any = None
    ) -> Any:
        """POST ``listing`` followed by the local files ``paths`` (of ``sizes`` bytes) to an upload bundle URL."""
        body = _BundleBody(listing, paths, sizes, progress)
        sent_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        response = self._send_blob("POST", self.absolute(url), data=body, headers=sent_headers)
        with response:
            raise_for_status(response, server=self.server)
            return _parse_json(response, self.server)

    def get_into(
        self,
        url: str,
        writer: BlobWriter,
        *,
        start: int = 0,
        stop: int | None = None,
        size: int | None = None,
        progress: Any = None,
    ) -> int:
        """Write the bytes ``[start, stop)`` of a presigned download URL into ``writer``.

        Args:
            start: first byte (a ``Range`` request when above 0).
            stop: end of the range (exclusive); None means the end of the blob.
            size: the blob's size when known, so that a body ending early is noticed and resumed.
            progress: called with each piece's byte count.

        Returns:
            bytes written.

        Raises:
            WanllmdbError: a failed status (an expired URL is a ``PresignedURLExpiredError``).
            TransportError: the body kept breaking off.
        """
        url = self.absolute(url)
        pos = start
        target = stop if stop is not None else size
        stalls = resumes = 0
        view: memoryview | None = None  # every piece of this transfer is received into it
        while True:
            ranged = pos > 0 or stop is not None
            headers = {"Range": f"bytes={pos}-{'' if stop is None else stop - 1}"} if ranged else {}
            before = pos
            response = self._send_blob("GET", url, headers=headers)
            with response:
                raise_for_status(response, server=self._who(url))
                if ranged and response.status_code != 206:
                    raise TransportError(
                        f"{self.server} ignored a Range request (status {response.status_code})",
                        status=response.status_code,
                        response=response,
                    )
                if ranged:
                    target = _range_end(response, target)
                if view is None:  # sized to the body: a small blob must not pay for zeroing 1 MiB
                    view = memoryview(buffer_for(_announced_length(response), BLOCK_SIZE))
                pos, failure = _receive(response, writer, pos, view, progress)
                if failure is None:
                    if target is None or pos >= target:
                        return pos - start
                    failure = TransportError(f"body ended at byte {pos} of {target}")
            stalls = 0 if pos > before else stalls + 1
            resumes += 1
            if stalls >= MAX_STALLED_RESUMES or resumes > MAX_RESUMES:
                raise TransportError(
                    f"download from {self.server} broke off at byte {pos} and could not be resumed: {failure}"
                ) from failure
            logger.debug("download of %s broke off at byte %d (%s); resuming", url.split("?")[0], pos, failure)
            time.sleep(min(2.0, self.backoff * stalls))

    def fetch_bundle(self, url: str, sha256s: Sequence[str], sizes: Sequence[int]) -> dict[str, bytes]:
        """POST a presigned bundle URL its list of blobs; returns each blob's bytes (a bundle is a few MiB).

        Raises:
            WanllmdbError: a failed status.
            TransportError: the body was shorter or longer than the sizes announce.
        """
        total = sum(sizes)
        body = "\n".join(sha256s).encode("ascii")
        headers = {"Content-Type": "text/plain"}
        response = self._send_blob("POST", self.absolute(url), data=body, headers=headers)
        with response:
            raise_for_status(response, server=self.server)
            sink = _Collector(total, self.server)
            _, failure = _receive(response, sink, 0, memoryview(buffer_for(total, BLOCK_SIZE)), None)
            if failure is not None:
                raise TransportError(f"bundle download from {self.server} broke off: {failure}") from failure
        buffer = sink.buffer
        if len(buffer) != total:
            raise TransportError(f"bundle from {self.server} holds {len(buffer)} bytes, expected {total}")
        view = memoryview(buffer)
        pieces: dict[str, bytes] = {}
        offset = 0
        for sha, size in zip(sha256s, sizes, strict=True):
            pieces[sha] = bytes(view[offset : offset + size])
            offset += size
        return pieces


class _FileBody:
    """A file as a request body: an iterable of blocks read into one buffer, with ``seek``/``tell`` so that
    urllib3 can rewind it for a retry.

    Each block is a view of the same buffer, read with ``preadv`` into it: urllib3 sends a block before it
    asks for the next one, so the buffer can be reused at once. Reading the file with ``read`` allocated a
    fresh 1 MiB object per block, and hashing it on a thread of its own (``manifest.digest.Pipelined``) cost
    a queue and a thread hop per block: an unaddressed 1 GiB upload cost its client 0.91-0.93 CPU-s, against
    0.82-0.86 so (medians of 6-7 interleaved runs; docs/ARCHITECTURE.md, round 10). The observer (the chunk
    digests) runs here, in the thread that sends: the socket's send buffer keeps the receiver busy meanwhile.

    ``observer`` sees each byte once and ``progress`` counts it once, even when a retry rewinds the body.
    An observer that keeps a piece past its call must copy it (``Pipelined`` does).
    """

    def __init__(
        self, f: BinaryIO, size: int, progress: Any, observer: Any = None, offset: int = 0, label: str = "file"
    ) -> None:
        self._fd = f.fileno()
        self._label = label
        self._size = size
        self._progress = progress
        self._observer = observer
        self._reported = 0
        self._offset = offset
        self._pos = 0
        self._buffer = memoryview(buffer_for(size, BLOCK_SIZE))

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[memoryview]:
        while self._pos < self._size:
            want = min(len(self._buffer), self._size - self._pos)
            n = os.preadv(self._fd, [self._buffer[:want]], self._offset + self._pos)
            if n == 0:
                raise ChecksumError(
                    f"{self._label}: ended after {self._pos} of the {self._size} bytes being uploaded "
                    "(it changed while it was uploaded)",
                    expected=str(self._size),
                    actual=str(self._pos),
                )
            block = self._buffer[:n]
            self._pos += n
            fresh = self._pos - self._reported
            if fresh > 0:
                if self._observer:
                    self._observer(block if fresh == n else block[n - fresh :])
                if self._progress:
                    self._progress(fresh)
                self._reported = self._pos
            yield block

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:  # from the end of the body, which is not the end of the file
            self._pos = self._size + offset
        return self._pos


class _BundleBody:
    """A listing and several small files as one request body (read in order; rewindable to the start)."""

    def __init__(self, listing: bytes, paths: Sequence[str], sizes: Sequence[int], progress: Any) -> None:
        self._listing = listing
        self._paths = list(paths)
        self._sizes = list(sizes)
        self._progress = progress
        self._total = len(listing) + sum(self._sizes)
        self.seek(0)

    def __len__(self) -> int:
        return self._total

    def read(self, n: int = -1) -> bytes:
        want = self._total - self._pos if n is None or n < 0 else n
        out: list[bytes] = []
        while want > 0 and self._pos < self._total:
            if self._pending:
                piece, self._pending = self._pending[:want], self._pending[want:]
            else:
                index = self._next
                self._next += 1
                with open(self._paths[index], "rb") as f:
                    data = f.read(self._sizes[index] + 1)
                if len(data) != self._sizes[index]:
                    raise ChecksumError(
                        f"{self._paths[index]}: has {len(data)} bytes, expected {self._sizes[index]} "
                        "(it changed since it was hashed)"
                    )
                if self._progress:
                    self._progress(len(data))
                self._pending = data
                continue
            out.append(piece)
            self._pos += len(piece)
            want -= len(piece)
        return b"".join(out)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise OSError("an upload bundle body can only be rewound to its start")
        self._pos = 0
        self._next = 0
        self._pending = self._listing
        return 0


class _Collector:
    """Keeps the pieces of a bundle (copied: they arrive in a reused buffer); refuses more than ``size`` bytes."""

    def __init__(self, size: int, server: str) -> None:
        self.buffer = bytearray()
        self._size = size
        self._server = server

    def write(self, data: bytes | memoryview, /) -> int:
        self.buffer += data
        if len(self.buffer) > self._size:
            raise TransportError(f"bundle from {self._server} holds more than the {self._size} bytes expected")
        return len(data)


def _receive(
    response: requests.Response, writer: BlobWriter, pos: int, view: memoryview, progress: Any
) -> tuple[int, Exception | None]:
    """Pass ``response``'s body to ``writer`` in pieces of at most ``len(view)`` bytes.

    Returns the position after the last byte written (``pos`` plus the bytes received) and why the body broke
    off (None when it ended as its headers announced). The writer's own errors are raised.

    A body sent as is (no Content-Encoding) is read with ``http.client``'s ``readinto`` straight into ``view``,
    which every piece reuses: urllib3's ``read``/``stream`` would allocate a new ``bytes`` per piece (and its
    ``readinto`` reads into one and copies it). Writers must therefore not keep the view they are handed;
    ``iobuf.Drain`` copies what it queues. An encoded body goes through ``iter_content``, which decodes it.
    """
    readinto = _plain_readinto(response)
    if readinto is None:
        try:
            for piece in response.iter_content(len(view)):
                writer.write(piece)
                pos += len(piece)
                if progress:
                    progress(len(piece))
        except requests.RequestException as exc:
            return pos, exc
        return pos, None
    announced = _announced_length(response)
    received = 0
    while True:
        try:
            n = readinto(view)
        except (OSError, http.client.HTTPException) as exc:  # reset, timed out, a bad chunk
            return pos, exc
        if not n:
            break
        writer.write(view[:n])
        pos += n
        received += n
        if progress:
            progress(n)
    if announced is not None and received < announced:
        return pos, TransportError(f"body ended after {received} of the {announced} bytes announced")
    response.raw.release_conn()  # the whole body was read: the connection goes back to the pool
    return pos, None


def _plain_readinto(response: requests.Response) -> Callable[[memoryview], int] | None:
    """``http.client``'s ``readinto`` of a response whose body is not content-encoded, else None."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    fp = getattr(response.raw, "_fp", None)
    return fp.readinto if isinstance(fp, http.client.HTTPResponse) else None


def _announced_length(response: requests.Response) -> int | None:
    """The Content-Length of a body not sent in chunks, or None."""
    if "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _range_end(response: requests.Response, target: int | None) -> int | None:
    """The end a 206 answer will reach: the requested end, clamped to the blob size Content-Range gives."""
    content_range = response.headers.get("Content-Range", "")
    try:
        total = int(content_range.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return target
    return total if target is None else min(target, total)


class _BodyReader:
    """A streamed answer's body as a file object (``read`` only), its transport failures typed."""

    def __init__(self, response: requests.Response, server: str) -> None:
        self._raw = response.raw
        self._server = server
        self.headers = response.headers

    def read(self, size: int = -1) -> bytes:
        try:
            return self._raw.read(None if size < 0 else size, decode_content=True) or b""
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(f"the answer of {self._server} broke off: {exc}") from exc


def _parse_json(response: requests.Response, server: str) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise TransportError(
            f"{server} answered with invalid JSON: {response.text[:200]!r}",
            status=response.status_code,
            response=response,
        ) from exc


def _never_connected(exc: BaseException) -> bool:
    """Whether the request failed before it was sent (no connection could be made)."""
    cause = exc.__cause__
    return isinstance(cause, requests.ConnectTimeout) or (
        isinstance(cause, requests.ConnectionError) and "NewConnectionError" in repr(cause)
    )
