"""Reading the data a reference entry points at: ``file://`` paths and ``http(s)://`` URLs.

``Artifact.add_reference`` reads a reference once to record its size and digests (:func:`stream_reference`);
readers (``download()``, ``get_path()``, the mount) read it again through :class:`ReferenceFetcher`, the
fetcher they hand to ``BlobCache.ensure``. The fetcher checks what it streams against the entry: bytes
beyond the recorded size stop the read at once, and a size or SHA-256 that differs at the end raises
:class:`~wanllmdb.errors.ReferenceChangedError` naming the entry and the URI; the cache then keeps nothing
(it checks the same digest itself before any reader can see the blob). That costs one SHA-256 pass more
than a registry fetch (about 0.7 CPU-s per GB), which buys an error that says *the reference changed*
rather than *a download was corrupt*. A missing file or an HTTP 404/410 is a
:class:`~wanllmdb.errors.ReferenceNotFoundError`.

``s3://`` (and other schemes) are refused when the reference is added: the project has no S3 client yet.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from urllib.parse import unquote, urlsplit

import requests

from ..cache.store import BlobWriter
from ..errors import (
    InvalidInputError,
    ReferenceChangedError,
    ReferenceNotFoundError,
    UnsupportedReferenceError,
)
from ..manifest import ManifestEntry
from .errors import error_for_exception, raise_for_status
from .session import BLOCK_SIZE, make_session

#: Schemes a reference may have.
SCHEMES = ("file", "http", "https")
#: Seconds an HTTP reference may take to connect, and to send its next piece.
HTTP_TIMEOUT = 60.0

_session: requests.Session | None = None
_session_lock = threading.Lock()


def _http() -> requests.Session:
    global _session
    with _session_lock:
        if _session is None:
            _session = make_session()
            _session.proxies = {}  # chosen per URL in _stream_http
        return _session


def reference_scheme(uri: str) -> str:
    """The scheme of a reference URI this project can read.

    Raises:
        UnsupportedReferenceError: another scheme (``s3://``, ``gs://``, a bare path ...), named in the message.
        InvalidInputError: a ``file://`` URI naming another host, or an HTTP URL without a host.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise UnsupportedReferenceError(
            f"add_reference: {uri!r} is not a URI; write file:///absolute/path or http(s)://host/path"
        )
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs", "gcs", "az", "azure"):
        raise UnsupportedReferenceError(
            f"add_reference: {uri!r}: {scheme}:// references need an object-store client, which wanllmdb "
            f"does not have yet; supported schemes: file://, http://, https://"
        )
    if scheme not in SCHEMES:
        raise UnsupportedReferenceError(
            f"add_reference: {uri!r}: unsupported scheme {scheme!r}; supported: file://, http://, https://"
        )
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise InvalidInputError(f"add_reference: {uri!r} names host {parts.netloc!r}; file:// URIs are local")
    if scheme != "file" and not parts.netloc:
        raise InvalidInputError(f"add_reference: {uri!r} has no host")
    return scheme


def local_path(uri: str) -> str:
    """The local path of a ``file://`` URI."""
    return unquote(urlsplit(uri).path)


def file_uri(path: str) -> str:
    """The ``file://`` URI of a local path (absolute, percent-encoded where a URI needs it)."""
    return pathlib.Path(os.path.abspath(path)).as_uri()


def stream_reference(uri: str, writer: BlobWriter, *, label: str) -> str | None:
    """Write every byte at ``uri`` into ``writer``.

    Returns:
        the ETag the HTTP server sent (None for files, or when there was none).

    Raises:
        ReferenceNotFoundError: the file is missing (or is not a file), or the server answered 404/410.
        WanllmdbError: any other failed HTTP status, or the server could not be reached (a TransportError).
    """
    if reference_scheme(uri) == "file":
        _stream_file(uri, writer, label)
        return None
    return _stream_http(uri, writer, label)


def _stream_file(uri: str, writer: BlobWriter, label: str) -> None:
    path = local_path(uri)
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ReferenceNotFoundError(f"{label}: the referenced file {path} ({uri}) no longer exists") from None
    with handle:
        if not os.path.isfile(path):
            raise ReferenceNotFoundError(f"{label}: the reference {uri} is no longer a regular file")
        buf = bytearray(BLOCK_SIZE)
        view = memoryview(buf)
        while n := handle.readinto(buf):
            writer.write(view[:n])


def _stream_http(uri: str, writer: BlobWriter, label: str) -> str | None:
    server = f"reference {uri}"
    try:
        # Proxies chosen for this URL (NO_PROXY applies): references point at any host.
        proxies = requests.utils.get_environ_proxies(uri)
        response = _http().get(uri, stream=True, timeout=(HTTP_TIMEOUT, HTTP_TIMEOUT), proxies=proxies)
    except requests.RequestException as exc:
        raise error_for_exception(exc, server=server) from None
    with response:
        if response.status_code in (404, 410):
            raise ReferenceNotFoundError(f"{label}: the reference {uri} is gone (HTTP {response.status_code})")
        raise_for_status(response, server=server)
        try:
            for piece in response.iter_content(BLOCK_SIZE):
                writer.write(piece)
        except requests.RequestException as exc:
            raise error_for_exception(exc, server=server) from None
        return response.headers.get("ETag")


class ReferenceFetcher:
    """The cache fetcher of a reference entry: streams it from its URI and checks it against the entry.

    Args:
        entry: a reference entry (``entry.ref`` set).
        label: how messages name the file (``project/name:v3/data/x.csv``).
    """

    def __init__(self, entry: ManifestEntry, label: str) -> None:
        assert entry.ref is not None
        self.entry = entry
        self.label = label

    def __call__(self, writer: BlobWriter) -> None:
        entry = self.entry
        if not entry.is_checked:
            stream_reference(entry.ref or "", writer, label=self.label)
            return
        check = _CheckingWriter(writer, self)
        stream_reference(entry.ref or "", check, label=self.label)
        sha256 = check.sha.hexdigest()
        if check.size != entry.size or sha256 != entry.sha256:
            raise self.changed(f"{check.size} bytes with SHA-256 {sha256}", actual=sha256)

    def changed(self, what: str, *, actual: str | None = None) -> ReferenceChangedError:
        entry = self.entry
        return ReferenceChangedError(
            f"{self.label}: the reference {entry.ref} changed since it was logged: it now holds {what}, "
            f"recorded {entry.size} bytes with SHA-256 {entry.sha256}",
            expected=entry.sha256,
            actual=actual,
        )


class _CheckingWriter:
    """Passes pieces on while hashing them; refuses bytes beyond the recorded size at once."""

    def __init__(self, inner: BlobWriter, fetcher: ReferenceFetcher) -> None:
        self._inner = inner
        self._fetcher = fetcher
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.size += len(data)
        if self.size > self._fetcher.entry.size:
            raise self._fetcher.changed(f"more than {self._fetcher.entry.size} bytes")
        self.sha.update(data)
        return self._inner.write(data)
