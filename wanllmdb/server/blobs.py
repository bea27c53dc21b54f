"""The blob endpoint ``/api/v1/blobs/{sha256}``: a plain ASGI handler, authorized by the URL signature alone.

It bypasses FastAPI's routing and dependency machinery, which costs about a millisecond per request and
would make fetching many small blobs server-bound; :mod:`.app` documents it in the OpenAPI schema.

``GET``/``HEAD ?expires=&sig=`` streams the blob in 1 MiB pieces and honours a single ``Range`` (206, or 416
when it cannot be satisfied).

``PUT ?size=&expires=&sig=`` requires ``Content-Length`` equal to the signed size (a larger one is refused
with 413 before a byte is read), streams the body into a temporary file while hashing it, and stores it only
if its SHA-256 (and ``Content-MD5``, when sent) match; a mismatch stores nothing (400 ``checksum_mismatch``).
A blob that is already stored is not written again: its body is drained and dropped, keeping the connection
usable.

``PUT /api/v1/blobs/new?size=&nonce=&expires=&sig=`` uploads a blob whose SHA-256 the client does not know
yet: the server names the blob by the SHA-256 of the bytes received and answers it with their MD5. With an
``X-Wanllmdb-Chunks: <algorithm> <chunk size>`` header it also computes their chunk digests and answers one
digest of that list: the client computes only the chunk digests (it needs them for the manifest) while it
sends, and compares, instead of computing MD5 and SHA-256 a second time (``HttpRegistry.store_unhashed``).

``POST /api/v1/blobs/bundle-upload?listing=&expires=&sig=`` uploads several small blobs in one request: the
body is a listing of ``<sha256> <size>`` lines (``listing`` bytes, covered by the signature) followed by the
blobs concatenated in that order; each is checked and stored on its own, as a single PUT would be.

``POST /api/v1/blobs/bundle?expires=&sig=`` with a body listing digests (one per line) answers those blobs
concatenated in that order; the signature covers the list, so only lists the server presigned (small blobs
grouped by ``POST /api/v1/blob-urls`` with ``bundle: true``) are served. A reader fetching thousands of
small files thus pays one request per few MiB instead of one per file.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import logging
import os
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import (
    BlobNotFoundError,
    ChecksumError,
    InvalidInputError,
    RequestTooLargeError,
    WanllmdbError,
)
from ..manifest.digest import CHUNKS_HEADER, chunk_list_digest, digester_for
from ..registry.blobstore import IncomingBlob, check_sha256
from .context import ServerState
from .responses import (
    BlobResponse,
    BundleResponse,
    JSONResponse,
    RangeError,
    error_payload,
    error_response,
    parse_range,
)
from .signing import bundle_digest

logger = logging.getLogger(__name__)

BLOB_PREFIX = "/api/v1/blobs/"
#: A refused upload whose body is at most this large is read and dropped before the answer, so the client
#: reads the answer instead of a reset connection; a larger one is answered at once and the connection closed.
DRAIN_LIMIT = 16 * 1024 * 1024
#: Bytes of an upload handed at once to its lanes (at most ``PIPELINE_DEPTH`` + 1 batches per upload in
#: memory). Plain PUTs of 1 GiB, alternating runs: 2.2-2.8 s and 2.4-3.0 server CPU-s in 1 MiB
#: batches, 2.0-2.2 s and 2.1-2.3 CPU-s in 4 MiB batches (fewer thread hops).
WRITE_BATCH = 4 << 20
#: Batches of one upload that may wait in its lanes while the next one is received (see ``_Body.read_into``).
PIPELINE_DEPTH = 2
#: Largest list of digests a bundle request may send (about 16,000 blobs).
MAX_BUNDLE_LIST = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class LengthRequiredError(InvalidInputError):
    """A blob upload without Content-Length (411): its size must be known before a byte is read."""

    code = InvalidInputError.code
    http_status = 411


class _Disconnected(Exception):
    """The client went away mid-body."""


class _Body:
    """The request body as ASGI messages, remembering whether it was read to its end."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False
        self._leftover = b""

    async def read_into(self, incoming: IncomingBlob | None) -> None:
        """Read the body to its end, into ``incoming`` (or nowhere, to drain it).

        Pieces are gathered into batches of about ``WRITE_BATCH`` (4 MiB) handed to the blob's lanes
        (``IncomingBlob.submit``: one thread writes with SHA-256 and chunk digests, one computes MD5; hashlib
        and file writes release the GIL) while the event loop receives the next ones: receiving, hashing
        and writing overlap instead of taking turns. At most ``PIPELINE_DEPTH`` batches wait in the lanes,
        so memory stays at a few batches whatever the blob's size. A body smaller than one batch is
        written here: a thread hop would cost more.
        """
        pending: collections.deque[list[asyncio.Future]] = collections.deque()
        batch: list[bytes] = []
        batch_bytes = 0
        try:
            while not self.done:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected()
                self.done = not message.get("more_body", False)
                piece = message.get("body", b"")
                if incoming is None or not piece:
                    continue
                batch.append(piece)
                batch_bytes += len(piece)
                if batch_bytes >= WRITE_BATCH or (self.done and pending):
                    pending.append([asyncio.wrap_future(f) for f in incoming.submit(batch)])
                    batch, batch_bytes = [], 0
                    while len(pending) > PIPELINE_DEPTH:
                        await _all_done(pending.popleft())
            while pending:
                await _all_done(pending.popleft())
            if batch:
                assert incoming is not None
                incoming.write_many(batch)
        finally:
            if pending:  # never leave a lane writing into a blob being aborted
                await asyncio.wait([future for futures in pending for future in futures])

    async def read_exact(self, n: int, sink: IncomingBlob | None = None) -> bytes:
        """The next ``n`` bytes of the body: written into ``sink`` (returns b"") or returned (small reads).

        Keeps what a message carried past ``n`` for the next call, so a body of several parts can be read
        piece by piece (upload bundles).
        """
        pieces: list[bytes] = []
        while n > 0:
            if not self._leftover:
                if self.done:
                    raise ChecksumError(f"request body ended {n} bytes early")
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected()
                self.done = not message.get("more_body", False)
                self._leftover = message.get("body", b"")
                continue
            piece, self._leftover = self._leftover[:n], self._leftover[n:]
            n -= len(piece)
            if sink is not None:
                sink.write(piece)
            else:
                pieces.append(piece)
        return b"".join(pieces)

    async def read_small(self, limit: int) -> bytes:
        """The whole body of a request known to be small (at most ``limit`` bytes)."""
        pieces: list[bytes] = []
        received = 0
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            piece = message.get("body", b"")
            received += len(piece)
            if received > limit:
                raise RequestTooLargeError(f"request body exceeds its declared {limit} bytes")
            pieces.append(piece)
            self.done = not message.get("more_body", False)
        return b"".join(pieces)


class BlobEndpoint:
    """ASGI handler for every request under :data:`BLOB_PREFIX`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sha256 = scope["path"][len(BLOB_PREFIX) :]
        method = scope["method"]
        headers = dict(scope["headers"])
        body = _Body(receive)
        try:
            query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            if sha256 == "bundle" and method == "POST":
                response = await self._bundle(query, headers, body)
            elif sha256 == "bundle-upload" and method == "POST":
                response = await self._bundle_upload(query, headers, body)
            elif sha256 == "new" and method == "PUT":
                response = await self._upload_new(query, headers, body)
            elif method in ("GET", "HEAD"):
                response = self._download(sha256, method, query, headers)
            elif method == "PUT":
                response = await self._upload(sha256, query, headers, body)
            else:
                response = JSONResponse(
                    error_payload(InvalidInputError.code, f"method {method} not allowed on blobs"),
                    status_code=405,
                    headers={"Allow": "GET, HEAD, PUT"},
                )
        except _Disconnected:
            return
        except WanllmdbError as exc:
            if not body.done and not isinstance(exc, RequestTooLargeError) and _declared(headers) <= DRAIN_LIMIT:
                try:
                    await body.read_into(None)
                except _Disconnected:
                    return
            response = error_response(exc)
        except Exception as exc:
            logger.exception("%s %s failed", method, scope["path"])
            response = JSONResponse(error_payload("server_error", f"internal error: {type(exc).__name__}"), 500)
        await response(scope, receive, send)

    def _download(self, sha256: str, method: str, query: dict[str, str], headers: dict[bytes, bytes]) -> Response:
        self.state.signer.verify(method, sha256, None, _int(query, "expires"), query.get("sig"))
        fd = _open_blob(self.state.registry.blobs.path(sha256), sha256)
        try:
            size = os.fstat(fd).st_size
            range_header = headers.get(b"range")
            span = parse_range(range_header.decode("latin-1") if range_header else None, size)
        except RangeError as exc:
            os.close(fd)
            return JSONResponse(
                error_payload(InvalidInputError.code, str(exc)),
                status_code=416,
                headers={"Content-Range": f"bytes */{size}"},
            )
        except BaseException:
            os.close(fd)
            raise
        start, stop = span if span is not None else (0, size)
        return BlobResponse(fd, start, stop, size, partial=span is not None, etag=sha256)

    async def _bundle(self, query: dict[str, str], headers: dict[bytes, bytes], body: _Body) -> Response:
        expires, sig = _int(query, "expires"), query.get("sig")
        if expires is None or sig is None:
            self.state.signer.verify("BUNDLE", "", None, expires, sig)  # raises: not presigned
        declared = _content_length(headers)
        if declared > MAX_BUNDLE_LIST:
            raise RequestTooLargeError(f"a bundle lists at most {MAX_BUNDLE_LIST} bytes of digests")
        listing = await body.read_small(declared)
        sha256s = listing.decode("ascii", "replace").split()
        self.state.signer.verify("BUNDLE", bundle_digest(sha256s), None, expires, sig)
        store = self.state.registry.blobs
        fds: list[int] = []
        sizes: list[int] = []
        try:
            for sha256 in sha256s:
                fds.append(_open_blob(store.path(sha256), sha256))
                sizes.append(os.fstat(fds[-1]).st_size)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return BundleResponse(fds, sizes)

    async def _upload(self, sha256: str, query: dict[str, str], headers: dict[bytes, bytes], body: _Body) -> Response:
        size = _int(query, "size")
        self.state.signer.verify("PUT", sha256, size, _int(query, "expires"), query.get("sig"))
        assert size is not None  # a valid signature was made with one
        store = self.state.registry.blobs
        check_sha256(sha256)
        declared = _content_length(headers)
        if declared > size:
            raise RequestTooLargeError(f"body of {declared} bytes exceeds the {size} bytes this URL was signed for")
        if declared < size:
            raise ChecksumError(
                f"blob {sha256[:12]}: Content-Length {declared} differs from its size {size}",
                expected=str(size),
                actual=str(declared),
            )
        if sha256 in await run_in_threadpool(self.state.registry.stored_sizes, [sha256]):
            await body.read_into(None)
            return JSONResponse({"sha256": sha256, "size": size, "stored": False})
        md5 = headers.get(b"content-md5")
        incoming = store.begin(sha256, size, md5.decode("latin-1") if md5 else None)
        try:
            await body.read_into(incoming)
            stored = await _commit(incoming)
        except _Disconnected:
            logger.info("upload of blob %s broke off after %d bytes; nothing stored", sha256[:12], incoming.received)
            raise
        finally:
            incoming.abort()  # removes the temporary file unless commit renamed it (a no-op then)
        return JSONResponse({"sha256": sha256, "size": size, "stored": stored}, status_code=201 if stored else 200)

    async def _upload_new(self, query: dict[str, str], headers: dict[bytes, bytes], body: _Body) -> Response:
        size = _int(query, "size")
        self.state.signer.verify("PUT-NEW", query.get("nonce", ""), size, _int(query, "expires"), query.get("sig"))
        assert size is not None
        declared = _content_length(headers)
        if declared > size:
            raise RequestTooLargeError(f"body of {declared} bytes exceeds the {size} bytes this URL was signed for")
        if declared < size:
            raise ChecksumError(f"upload: Content-Length {declared} differs from the signed size {size}")
        wanted = headers.get(CHUNKS_HEADER.lower().encode())
        chunks = digester_for(wanted.decode("latin-1")) if wanted is not None else None
        incoming = self.state.registry.blobs.begin(None, size, chunks=chunks)
        try:
            await body.read_into(incoming)
            stored = await _commit(incoming)
        except _Disconnected:
            logger.info("unaddressed upload broke off after %d bytes; nothing stored", incoming.received)
            raise
        finally:
            incoming.abort()
        # The digests of what arrived: the uploader takes MD5 and SHA-256 from here and checks its bytes
        # arrived unchanged by comparing the chunk digests, so that each byte is hashed once per digest.
        answer: dict[str, object] = {"sha256": incoming.sha256, "size": size, "stored": stored, "md5": incoming.md5}
        if chunks is not None:
            listed = chunks.digests()
            answer["chunks"] = {
                "algorithm": chunks.algorithm,
                "size": chunks.chunk_size,
                "count": len(listed),
                "digest": chunk_list_digest(listed),
            }
        return JSONResponse(answer, status_code=201)

    async def _bundle_upload(self, query: dict[str, str], headers: dict[bytes, bytes], body: _Body) -> Response:
        expires, sig, listing_size = _int(query, "expires"), query.get("sig"), _int(query, "listing")
        if expires is None or sig is None or listing_size is None:
            self.state.signer.verify("BUNDLE-PUT", "", None, expires, sig)  # raises: not presigned
            raise InvalidInputError("an upload bundle URL needs its listing size")
        if not 0 < listing_size <= MAX_BUNDLE_LIST:
            raise RequestTooLargeError(f"an upload bundle lists at most {MAX_BUNDLE_LIST} bytes")
        declared = _content_length(headers)
        listing = await body.read_exact(listing_size)
        self.state.signer.verify("BUNDLE-PUT", hashlib.sha256(listing).hexdigest(), None, expires, sig)
        items = [(sha, int(size)) for sha, size in (line.split() for line in listing.decode("ascii").splitlines())]
        if declared != listing_size + sum(size for _, size in items):
            raise ChecksumError(f"upload bundle: Content-Length {declared} does not match its listing")
        store = self.state.registry.blobs
        present = await run_in_threadpool(self.state.registry.stored_sizes, [sha for sha, _ in items])
        stored: list[tuple[str, int, str | None]] = []
        try:
            for sha256, size in items:
                if sha256 in present:
                    await body.read_exact(size)
                    continue
                incoming = store.begin(sha256, size)
                try:
                    await body.read_exact(size, incoming)
                    if await _commit(incoming, notify=False):
                        stored.append((sha256, size, incoming.md5))
                finally:
                    incoming.abort()
        finally:
            if stored and store.on_install is not None:
                await run_in_threadpool(store.on_install, stored)
        return JSONResponse({"stored": len(stored), "blobs": len(items)}, status_code=201)


async def _all_done(futures: list[asyncio.Future]) -> None:
    """Wait for every lane of one batch; the first failure is raised once all of them are done."""
    await asyncio.wait(futures)
    for future in futures:
        future.result()


async def _commit(incoming: IncomingBlob, *, notify: bool = True) -> bool:
    """Commit a received blob (``notify=False``: a blob of a bundle, the registry told later); with object
    storage the write to the store is a network call, so it runs on a thread."""
    if incoming.store.lists_itself:
        return incoming.commit(notify=notify)
    return await run_in_threadpool(incoming.commit, notify=notify)


def _open_blob(path: str, sha256: str) -> int:
    """Open a stored blob for reading; a symlink in its place is refused, never followed out of the root.

    ``path`` comes from ``BlobStore.path``, which accepts only a hex digest, so no request can name a file
    other than a blob.
    """
    try:
        return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise BlobNotFoundError(f"blob {sha256} is not stored") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        logger.warning("refusing to serve %s: it is a symlink", path)
        raise BlobNotFoundError(f"blob {sha256} is not stored") from None


def _int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInputError(f"query parameter {name}={raw[:40]!r} is not an integer") from None


def _content_length(headers: dict[bytes, bytes]) -> int:
    raw = headers.get(b"content-length")
    if raw is None:
        raise LengthRequiredError("a blob upload needs a Content-Length header (chunked uploads are not accepted)")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInputError(f"invalid Content-Length {raw[:40]!r}")
    return value


def _declared(headers: dict[bytes, bytes]) -> int:
    """The declared body length, or a huge number when it is missing or unreadable (never drained)."""
    try:
        return int(headers.get(b"content-length", b""))
    except ValueError:
        return 1 << 62
