"""``HttpRegistry``: the registry Protocol spoken to a ``wanllmdb server`` (see docs/api.md).

Every call maps to one request, and failures come back as the same :mod:`wanllmdb.errors` classes the
embedded registry raises (the server sends the error's code; :mod:`wanllmdb.transport` maps it back).

Blob bytes never go through the JSON API: they move through presigned URLs.

- Writing: ``create_draft`` sends the whole manifest and receives an upload URL for each missing blob;
  ``upload_blob`` PUTs a file to its URL (callers run these in parallel, up to ``transfer_threads``);
  ``finalize_draft`` makes the version. An upload URL that expired is asked for anew, once.
- Reading: ``prepare_fetch`` presigns every blob a download will need in one request and caches the URLs
  until shortly before they expire; ``fetch_blob``/``fetch_range_into`` use them (asking for a single URL on a
  miss) and ask again once if a URL is refused (expired or 403). Broken-off downloads resume where they
  stopped (see ``HttpTransport.get_into``). Small blobs also come grouped into bundles of a few MiB: the
  first ``fetch_blob`` of a bundled blob fetches its whole bundle in one request and the others are served
  from memory, so thousands of small files cost a few requests, not one each.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import quote

from cachetools import LRUCache

from ..cache.store import BlobWriter
from ..errors import BlobNotFoundError, ChecksumError, ForbiddenError, ServerError, WanllmdbError
from ..killpoints import kill_point
from ..manifest import Manifest, validate_alias, validate_artifact_name, validate_project
from ..manifest.digest import (
    CHUNKS_HEADER,
    ChunkDigester,
    Digester,
    FileDigest,
    Pipelined,
    chunk_list_digest,
    chunks_request,
    file_digest,
)
from ..transport import HttpTransport
from ..transport.session import DEFAULT_BACKOFF, DEFAULT_RETRIES
from .base import (
    INDEX_DIGEST_HEADER,
    ArtifactInfo,
    ArtifactSummary,
    ArtifactTTL,
    ArtifactUsage,
    BlobTarget,
    Draft,
    DraftSpec,
    FinalizeResult,
    Progress,
    RetentionPolicy,
    RunInfo,
    RunSpec,
    UploadBundle,
    VersionInfo,
    VersionUpdate,
    upload_listing,
    validate_tags,
    validate_ttl,
)

logger = logging.getLogger(__name__)

#: URLs kept per registry (presigned GETs of a download plan, PUTs of a draft).
URL_CACHE_SIZE = 200_000
#: A cached URL is not used in the last part of its life: the smaller of this many seconds and a quarter of it.
URL_MARGIN = 60.0
#: Drafts of this many files, and download plans of this many blobs (``POST /blob-urls``), ask the server to
#: sign no URL for bundled blobs (``urls=unbundled``): for 100,000 new small files that signing was a third of
#: the server's CPU. Smaller ones keep a URL for every blob, so a caller going blob by blob needs no further
#: request.
UNBUNDLED_URLS_MIN = 10_000
#: Seconds added, per manifest entry, to the wait for a draft's or a finalize's answer (see ``_timeout_for``).
SECONDS_PER_FILE = 500e-6
#: Bytes of bundled small blobs kept in memory until they are asked for.
BUNDLE_HOLD_BYTES = 64 * 1024 * 1024


class _URLCache:
    """Presigned URLs by key until shortly before they expire; thread-safe, bounded (LRU)."""

    def __init__(self, size: int = URL_CACHE_SIZE) -> None:
        self._urls: LRUCache = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def put(self, key: Any, url: str, expires_at: float | None) -> None:
        now = time.time()
        if expires_at is None:
            use_until = float("inf")
        else:
            use_until = expires_at - min(URL_MARGIN, max(0.0, expires_at - now) / 4)
        with self._lock:
            self._urls[key] = (url, use_until)

    def get(self, key: Any) -> str | None:
        with self._lock:
            found = self._urls.get(key)
            if found is None:
                return None
            if time.time() >= found[1]:
                del self._urls[key]
                return None
            return found[0]

    def drop(self, key: Any) -> None:
        with self._lock:
            self._urls.pop(key, None)

    def drop_where(self, predicate: Any) -> None:
        with self._lock:
            for key in [k for k in self._urls if predicate(k)]:
                del self._urls[key]


class _Bundle:
    """Small blobs the server grouped behind one presigned URL; fetched whole, at most once."""

    def __init__(self, url: str, sha256s: Sequence[str], sizes: Sequence[int], expires_at: float | None) -> None:
        self.url = url
        self.sha256s = tuple(sha256s)
        self.sizes = tuple(int(n) for n in sizes)
        self.expires_at = expires_at
        self.lock = threading.Lock()
        self.fetched = False
        self.pieces: dict[str, bytes] | None = None


class _Bundles:
    """Small blobs announced by ``prepare_fetch``, fetched a bundle at a time when the first of them is needed.

    Callers ask in about the order announced, so few bundles are in memory at once; pieces fetched but not
    asked for are kept up to ``hold_bytes`` (the oldest bundles' pieces are dropped first). A blob whose
    bundle failed, expired or was dropped is simply fetched on its own.
    """

    def __init__(self, fetch: Callable[[_Bundle], dict[str, bytes]], hold_bytes: int = BUNDLE_HOLD_BYTES) -> None:
        self._fetch = fetch
        self._hold_bytes = hold_bytes
        self._by_sha: LRUCache = LRUCache(maxsize=URL_CACHE_SIZE)
        self._held: dict[_Bundle, int] = {}  # insertion-ordered: oldest first
        self._held_bytes = 0
        self._lock = threading.Lock()

    def add(self, bundle: _Bundle) -> None:
        with self._lock:
            for sha in bundle.sha256s:
                self._by_sha[sha] = bundle

    def take(self, sha256: str) -> bytes | None:
        """The blob's bytes if a bundle holds it (fetching the bundle first if needed), else None."""
        with self._lock:
            bundle = self._by_sha.pop(sha256, None)
        if bundle is None:
            return None
        with bundle.lock:
            if not bundle.fetched:
                bundle.fetched = True
                if bundle.expires_at is not None and time.time() > bundle.expires_at - 1:
                    return None
                try:
                    bundle.pieces = self._fetch(bundle)
                except WanllmdbError as exc:
                    logger.debug("bundle of %d blobs failed (%s); fetching them one by one", len(bundle.sha256s), exc)
                    return None
                self._hold(bundle, sum(bundle.sizes))
            pieces = bundle.pieces
            piece = pieces.pop(sha256, None) if pieces is not None else None
        if piece is not None:
            self._release(bundle, len(piece))
        return piece

    def _hold(self, bundle: _Bundle, size: int) -> None:
        with self._lock:
            self._held[bundle] = size
            self._held_bytes += size
            while self._held_bytes > self._hold_bytes and len(self._held) > 1:
                oldest = next(iter(self._held))
                self._held_bytes -= self._held.pop(oldest)
                oldest.pieces = None

    def _release(self, bundle: _Bundle, size: int) -> None:
        with self._lock:
            if bundle in self._held:
                self._held[bundle] -= size
                self._held_bytes -= size
                if self._held[bundle] <= 0:
                    del self._held[bundle]


class _CountingWriter:
    """Passes bytes on and counts them, so a refused URL can resume from where the last one stopped."""

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self.count = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self._writer.write(data)
        self.count += len(data)
        return len(data)


def _q(part: str) -> str:
    return quote(part, safe="")


#: Parts of one multipart upload in flight at once.
MULTIPART_THREADS = 4


def _target(item: Mapping[str, Any]) -> BlobTarget:
    """A missing blob of a draft's answer: a PUT URL (with headers to send), or a multipart layout."""
    multipart = item.get("multipart") or {}
    return BlobTarget(
        item["sha256"],
        int(item["size"]),
        item.get("url"),
        item.get("expires_at"),
        headers=tuple(sorted((item.get("headers") or {}).items())),
        part_size=int(multipart["part_size"]) if multipart else None,
    )


def _part_checksum(path: str, offset: int, length: int) -> str:
    """Base64 SHA-256 of ``length`` bytes of ``path`` from ``offset`` (what a part URL signs)."""
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < length:
            piece = os.pread(f.fileno(), min(8 << 20, length - done), offset + done)
            if not piece:
                raise ChecksumError(f"{path}: shorter than when it was hashed (it changed)")
            sha.update(piece)
            done += len(piece)
    return base64.b64encode(sha.digest()).decode("ascii")


class HttpRegistry:
    """The registry of a ``wanllmdb server``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8080``.
        api_key: its bearer key, if it has keys.
        timeout: seconds a stalled read may wait.
        transfer_threads: how many blob transfers callers run at once (sizes the connection pool).
        retries, backoff: the transport's retry policy (see :mod:`wanllmdb.transport.session`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transfer_threads: int = 8,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.transfer_threads = max(1, int(transfer_threads))
        self.transport = HttpTransport(
            base_url,
            api_key=api_key,
            timeout=timeout,
            pool_size=max(16, 2 * self.transfer_threads),
            retries=retries,
            backoff=backoff,
        )
        self.base_url = self.transport.base_url
        self.description = self.transport.server
        self._get_urls = _URLCache()
        self._put_urls = _URLCache()
        # draft id -> (its manifest, the digest the server gave it): finalize's wait grows with the manifest, and
        # a version the draft creates is answered without it (parsed again, it would double a large log's memory)
        self._draft_manifests: dict[str, tuple[Manifest, str]] = {}
        self._refreshing = threading.Lock()
        self._bundles = _Bundles(lambda b: self.transport.fetch_bundle(b.url, b.sha256s, b.sizes))
        #: Blobs presigned in a bundle without a URL of their own (``urls=unbundled``) -> their bundle's blobs:
        #: when one of them must be fetched alone (its bundle failed, expired or was dropped), the whole bundle
        #: is presigned in one request, not blob by blob.
        self._unsigned: LRUCache = LRUCache(maxsize=URL_CACHE_SIZE)
        self._unsigned_lock = threading.Lock()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> HttpRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpRegistry({self.base_url!r})"

    def _timeout_for(self, files: int) -> float:
        """How long to wait for the answer to a call whose work grows with a manifest of ``files`` entries:
        the transport's timeout, plus ``SECONDS_PER_FILE`` for each entry (a draft of a million new files
        kept a server on 2 cores busy for over a minute, past the 30 s default)."""
        return self.transport.timeout[1] + files * SECONDS_PER_FILE

    def _call(self, method: str, endpoint: str, body: Any = None, *, repeatable: bool = False) -> Any:
        return self.transport.request_json(method, endpoint, body=body, repeatable=repeatable)

    @staticmethod
    def _artifact_path(project: str, name: str) -> str:
        # Validated here as the embedded registry does, so a bad name fails alike and never shapes a URL.
        return f"/projects/{_q(validate_project(project))}/artifacts/{_q(validate_artifact_name(name))}"

    # --- reading ----------------------------------------------------------------------------------------

    def list_projects(self) -> list[str]:
        return list(self._call("GET", "/projects")["projects"])

    def list_artifacts(self, project: str) -> list[ArtifactSummary]:
        data = self._call("GET", f"/projects/{_q(validate_project(project))}/artifacts")
        return [ArtifactSummary.from_dict(item) for item in data["artifacts"]]

    def get_artifact(self, project: str, name: str) -> ArtifactInfo:
        return ArtifactInfo.from_dict(self._call("GET", self._artifact_path(project, name)))

    def resolve(self, project: str, name: str, selector: str = "latest") -> VersionInfo:
        path = f"{self._artifact_path(project, name)}/versions/{_q(validate_alias(selector))}"
        return VersionInfo.from_dict(self._call("GET", path))

    def resolve_for_reading(self, project: str, name: str, selector: str) -> VersionInfo:
        """:meth:`resolve`, the answer also carrying the download URLs of the version's large files
        (``?urls=large``), kept for the reads to come: the mount's first read of a large file then makes no
        presign request. A server without the field answers as :meth:`resolve` does."""
        path = f"{self._artifact_path(project, name)}/versions/{_q(validate_alias(selector))}?urls=large"
        data = self._call("GET", path)
        for sha, item in (data.get("blob_urls") or {}).items():
            self._get_urls.put(sha, item["url"], item.get("expires_at"))
        return VersionInfo.from_dict(data)

    @contextmanager
    def open_manifest(self, project: str, name: str, selector: str) -> Iterator[BinaryIO]:
        """The manifest's canonical JSON text as it arrives (``GET …/versions/{selector}/manifest``), for a
        reader that parses it in pieces (:func:`wanllmdb.manifest.stream.iter_entries`)."""
        path = f"{self._artifact_path(project, name)}/versions/{_q(validate_alias(selector))}/manifest"
        with self.transport.open_body(path) as body:
            yield body

    @contextmanager
    def open_index(self, project: str, name: str, version: int, schema: str) -> Iterator[BinaryIO]:
        """The server-built SQLite index of ``vN`` in ``schema`` (``GET …/versions/vN/index``; see
        ``server/indexes.py``) as its bytes arrive, for a mount to check and open instead of building it.

        Raises:
            NotFoundError: no such version, or a server that does not build that schema (or predates them).
        """
        path = f"{self._artifact_path(project, name)}/versions/v{int(version)}/index?schema={_q(schema)}"
        with self.transport.open_body(path) as body:
            stated = body.headers.get(INDEX_DIGEST_HEADER)
            yield _DigestCheckedBody(body, stated, f"the index of {project}/{name}:v{version}")

    # --- blobs ------------------------------------------------------------------------------------------

    def prepare_fetch(self, sha256s: Iterable[str]) -> None:
        wanted = [sha for sha in dict.fromkeys(sha256s) if self._get_urls.get(sha) is None]
        if wanted:
            self._presign_downloads(wanted, bundle=len(wanted) > 1)

    def _presign_downloads(self, sha256s: Sequence[str], *, bundle: bool = False) -> dict[str, str]:
        body = {"sha256s": list(sha256s), "bundle": bundle}
        # Large plans: no URL for the blobs that come in bundles (see ``blob_urls`` on the server).
        unbundled = bundle and len(body["sha256s"]) >= UNBUNDLED_URLS_MIN
        path = "/blob-urls?urls=unbundled" if unbundled else "/blob-urls"
        data = self._call("POST", path, body, repeatable=True)
        found = {}
        for sha, item in data["urls"].items():
            self._get_urls.put(sha, item["url"], item.get("expires_at"))
            found[sha] = item["url"]
        for item in data.get("bundles") or ():
            self._bundles.add(_Bundle(item["url"], item["sha256s"], item["sizes"], item.get("expires_at")))
            if unbundled:
                members = tuple(item["sha256s"])
                with self._unsigned_lock:
                    for sha in members:
                        self._unsigned[sha] = members
        return found

    def _download_url(self, sha256: str, *, fresh: bool = False) -> str:
        url = None if fresh else self._get_urls.get(sha256)
        if url is None:
            with self._unsigned_lock:
                batch = self._unsigned.pop(sha256, None) or (sha256,)
            url = self._presign_downloads(list(batch)).get(sha256)
            if url is None:
                raise BlobNotFoundError(f"blob {sha256} is not stored on the {self.description}")
        return url

    def fetch_blob(self, sha256: str, size: int, writer: BlobWriter, progress: Progress | None = None) -> None:
        bundled = self._bundles.take(sha256)
        if bundled is not None:
            writer.write(bundled)
            if progress:
                progress(len(bundled))
            return
        counted = _CountingWriter(writer)
        for attempt in range(2):
            url = self._download_url(sha256, fresh=attempt > 0)
            try:
                self.transport.get_into(url, counted, start=counted.count, size=size, progress=progress)
                return
            except ForbiddenError:
                self._get_urls.drop(sha256)
                if attempt:
                    raise

    #: Ranges of one blob may be fetched in parallel (see ``sdk.transfer._ensure``).
    ranged_fetch = True

    def fetch_range_into(self, sha256: str, start: int, length: int, writer: BlobWriter) -> int:
        """Stream ``length`` bytes of the blob from ``start`` into ``writer`` (fewer at its end); returns the count.

        The bytes go to ``writer`` piece by piece as they arrive (the mount hashes and stores them without
        holding the range in memory); the caller verifies them. A refused (expired) URL is replaced and the
        range resumed where it stopped.
        """
        if length <= 0:
            return 0
        counted = _CountingWriter(writer)
        for attempt in range(2):
            url = self._download_url(sha256, fresh=attempt > 0)
            try:
                self.transport.get_into(url, counted, start=start + counted.count, stop=start + length)
                return counted.count
            except ForbiddenError:
                self._get_urls.drop(sha256)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    # --- writing ----------------------------------------------------------------------------------------

    def create_draft(self, spec: DraftSpec) -> Draft:
        fields = {
            "project": spec.project,
            "name": spec.name,
            "type": spec.type,
            "description": spec.description,
            "metadata": dict(spec.metadata),
            "run_id": spec.run_id,
        }
        # The manifest is encoded a batch of entries at a time into the body, never as a dict per entry.
        head = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, default=str)
        body = b"".join(
            [head[:-1].encode(), b',"manifest":', *(p.encode() for p in spec.manifest.json_pieces()), b"}"]
        )
        # In a large draft, bundled blobs get no URL of their own (they go in their bundle; one that must go
        # alone gets its URL from /upload-urls then). The server's work, and so the wait, grows with the
        # manifest.
        params = {"urls": "unbundled"} if len(spec.manifest) >= UNBUNDLED_URLS_MIN else None
        data = self.transport.request_json(
            "POST", "/drafts", body=body, params=params, repeatable=True,
            read_timeout=self._timeout_for(len(spec.manifest)),
        )  # fmt: skip
        self._draft_manifests[data["id"]] = (spec.manifest, data["digest"])
        missing = tuple(_target(item) for item in data["missing"])
        for target in missing:
            if target.url is not None:
                self._put_urls.put((data["id"], target.sha256), target.url, target.expires_at)
        by_sha = {t.sha256: t for t in missing}
        bundles = tuple(
            UploadBundle(item["url"], tuple(by_sha[sha] for sha in item["sha256s"]), item.get("expires_at"))
            for item in data.get("bundles", ())
        )
        return Draft(data["id"], data["digest"], missing, bundles)

    def known_sizes(self, sizes: Iterable[int]) -> set[int]:
        wanted = sorted({int(s) for s in sizes})
        if not wanted:
            return set()
        answer = self._call("POST", "/blob-sizes", {"sizes": wanted}, repeatable=True)
        if answer.get("unhashed_uploads", True) is False:
            # Blobs live in object storage: a file can only be uploaded once its SHA-256 names it, so every
            # size counts as known and the SDK hashes files before the draft (see transfer.store_pending).
            return set(wanted)
        return set(answer["known"])

    def store_unhashed(self, path: str, size: int, progress: Progress | None = None) -> FileDigest:
        """Upload through an unaddressed URL while hashing the file in the same read; the server names the
        blob by the SHA-256 it computes.

        A server that says so (``server_digests``) answers the MD5 and SHA-256 of what it received and the
        digest of its chunk digests: the client then computes only the chunk digests (which the manifest
        needs) and compares them, so that each byte is hashed once per digest instead of twice (~2.4 CPU-s
        per GiB less on this machine). Otherwise the client computes all three and compares the SHA-256.
        """
        for attempt in range(2):
            offer = self._call("POST", "/uploads", {"size": int(size)}, repeatable=True)
            # The chunk digests alone where the server answers MD5 and SHA-256, else all three.
            chunks, whole = (ChunkDigester(), None) if offer.get("server_digests") is True else (None, Digester())
            # The chunk digests (~0.2 CPU-s per GiB) are computed in the thread that reads and sends, between
            # two sends (the socket's buffer keeps the server busy meanwhile); all three digests run on a
            # thread of their own (MD5 on another), beside the sending.
            hasher = _Inline(chunks) if chunks is not None else Pipelined(whole)  # type: ignore[arg-type]
            headers = {CHUNKS_HEADER: chunks_request(chunks)} if chunks is not None else None
            try:
                answer = self.transport.put_file(
                    offer["url"], path, size, progress=progress, observer=hasher.update, headers=headers
                )
                hasher.finish()
            except ForbiddenError:
                hasher.close()
                if attempt:
                    raise
                continue
            except BaseException:
                hasher.close()
                raise
            if chunks is not None:
                return _received_digest(path, size, chunks, answer)
            assert whole is not None
            digest = whole.result()
            if digest.size != size or answer["sha256"] != digest.sha256:
                raise ChecksumError(
                    f"{path}: changed while it was uploaded (sent {digest.size} bytes hashing to "
                    f"{digest.sha256[:12]}, the server received {answer['sha256'][:12]})",
                    expected=digest.sha256,
                    actual=answer["sha256"],
                )
            return digest
        raise AssertionError("unreachable")

    def upload_bundle(
        self, draft: Draft, bundle: UploadBundle, paths: Mapping[str, str], progress: Progress | None = None
    ) -> None:
        listing = upload_listing([(t.sha256, t.size) for t in bundle.targets])
        try:
            self.transport.post_bundle(
                bundle.url, listing, [paths[t.sha256] for t in bundle.targets], [t.size for t in bundle.targets],
                progress=progress,
            )
        except ForbiddenError:  # expired: the blobs go one by one, each with a fresh URL
            for target in bundle.targets:
                self.upload_blob(draft, target, paths[target.sha256], None)

    def storage_usage(self, project: str) -> list[ArtifactUsage]:
        data = self._call("GET", f"/projects/{_q(validate_project(project))}/usage")
        return [ArtifactUsage.from_dict(item) for item in data["artifacts"]]

    def missing_blobs(self, draft_id: str) -> tuple[BlobTarget, ...]:
        data = self._call("POST", f"/drafts/{_q(draft_id)}/upload-urls", repeatable=True)
        targets = tuple(_target(item) for item in data["missing"])
        for target in targets:
            if target.url is not None:
                self._put_urls.put((draft_id, target.sha256), target.url, target.expires_at)
        return targets

    def _refresh_upload_urls(self, draft_id: str) -> None:
        data = self._call("POST", f"/drafts/{_q(draft_id)}/upload-urls", repeatable=True)
        for item in data["missing"]:
            if "url" in item:  # a multipart upload's parts are signed one by one instead
                self._put_urls.put((draft_id, item["sha256"]), item["url"], item.get("expires_at"))

    def _upload_url(self, draft_id: str, target: BlobTarget, *, fresh: bool = False) -> str | None:
        """A usable upload URL, or None when the server already holds the blob."""
        key = (draft_id, target.sha256)
        if not fresh:
            url = self._put_urls.get(key)
            if url is None and target.url is not None:  # a draft made elsewhere: its URLs were never cached
                self._put_urls.put(key, target.url, target.expires_at)
                url = self._put_urls.get(key)
            if url is not None:
                return url
        with self._refreshing:  # one refresh at a time: uploaders that wait for it find their URL after it
            if fresh or self._put_urls.get(key) is None:
                self._refresh_upload_urls(draft_id)
        return self._put_urls.get(key)

    def upload_blob(self, draft: Draft, target: BlobTarget, path: str, progress: Progress | None = None) -> None:
        if target.part_size is not None:
            self._upload_parts(draft, target, path, progress)
            return
        headers = dict(target.headers)
        for attempt in range(2):
            url = self._upload_url(draft.id, target, fresh=attempt > 0)
            if url is None:  # stored meanwhile (another uploader of the same content)
                if progress:
                    progress(target.size)
                return
            try:
                self.transport.put_file(url, path, target.size, progress=progress, headers=headers)
            except ForbiddenError:
                self._put_urls.drop((draft.id, target.sha256))
                if attempt:
                    raise
            else:
                self._put_urls.drop((draft.id, target.sha256))
                return

    def _upload_parts(self, draft: Draft, target: BlobTarget, path: str, progress: Progress | None) -> None:
        """A multipart upload straight to the object store (see ``server/api_multipart.py``).

        The parts the store already holds (a run that was killed) are hashed (their checksums complete the
        upload) but not sent again. Missing parts go ``PART_WINDOW`` at a time: each is hashed, then its
        URL (which signs that SHA-256) is asked for just before it is sent, so no URL waits long enough to
        expire; a refused URL is asked for again once. ``MULTIPART_THREADS`` parts are in flight at once.
        """
        base = f"/drafts/{_q(draft.id)}/multipart/{target.sha256}"
        state = self._call("POST", base, repeatable=True)
        upload_id, part_size, parts = state["upload_id"], int(state["part_size"]), int(state["parts"])
        done = {int(p["number"]): int(p["size"]) for p in state.get("done", ())}
        checksums: list[str] = [""] * parts
        failures: list[BaseException] = []
        lock = threading.Lock()

        def length_of(number: int) -> int:
            return max(0, min(part_size, target.size - (number - 1) * part_size))

        def send(number: int) -> None:
            length = length_of(number)
            checksums[number - 1] = _part_checksum(path, (number - 1) * part_size, length)
            if done.get(number) == length:
                if progress:
                    progress(length)
                return
            for attempt in range(2):
                answer = self._call(
                    "POST", base + "/part-urls",
                    {"upload_id": upload_id, "parts": [{"number": number, "sha256": checksums[number - 1]}]},
                    repeatable=True,
                )  # fmt: skip
                signed = answer["urls"][0]
                try:
                    self.transport.put_file(
                        signed["url"], path, length, offset=(number - 1) * part_size, progress=progress,
                        headers=signed.get("headers") or {},
                    )  # fmt: skip
                    kill_point("log.part")
                    return
                except ForbiddenError:
                    if attempt:
                        raise

        def worker(numbers: list[int]) -> None:
            for number in numbers:
                with lock:
                    if failures:
                        return
                try:
                    send(number)
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    return

        threads_n = max(1, min(MULTIPART_THREADS, parts))
        lanes = [list(range(1 + i, parts + 1, threads_n)) for i in range(threads_n)]
        threads = [threading.Thread(target=worker, args=(lane,), daemon=True) for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        self._call("POST", base + "/complete", {"upload_id": upload_id, "checksums": checksums}, repeatable=True)

    def finalize_draft(
        self,
        draft_id: str,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        ttl: float | None | ArtifactTTL = ArtifactTTL.INHERIT,
    ) -> FinalizeResult:
        body: dict[str, Any] = {"aliases": list(aliases), "tags": validate_tags(tags)}
        if not isinstance(ttl, ArtifactTTL):
            body.update(inherit_ttl=False, ttl=validate_ttl(ttl))
        sent, digest = self._draft_manifests.get(draft_id, (None, None))
        if sent is not None:
            body["manifest"] = False  # a version this draft created holds what was sent: not answered again
        try:
            data = self.transport.request_json(
                "POST", f"/drafts/{_q(draft_id)}/finalize", body=body,
                read_timeout=self._timeout_for(len(sent) if sent is not None else 0),
            )  # fmt: skip
        finally:
            self._put_urls.drop_where(lambda key: key[0] == draft_id)
        self._draft_manifests.pop(draft_id, None)
        info = VersionInfo.from_dict(data["version"])
        if info.manifest is None:
            if sent is None or info.digest != digest:
                raise ServerError(
                    f"the server answered version {info.qualified_name} without its manifest, which this client "
                    "did not send"
                )
            info = dataclasses.replace(info, manifest=sent)
        return FinalizeResult(info, bool(data["created"]))

    def abort_draft(self, draft_id: str) -> None:
        self._put_urls.drop_where(lambda key: key[0] == draft_id)
        self._draft_manifests.pop(draft_id, None)
        self._call("DELETE", f"/drafts/{_q(draft_id)}")

    def set_alias(self, project: str, name: str, alias: str, version: int) -> None:
        path = f"{self._artifact_path(project, name)}/aliases/{_q(validate_alias(alias))}"
        self._call("PUT", path, {"version": int(version)})

    def delete_alias(self, project: str, name: str, alias: str) -> None:
        self._call("DELETE", f"{self._artifact_path(project, name)}/aliases/{_q(validate_alias(alias))}")

    # --- changing and deleting logged versions ----------------------------------------------------------

    def _version_path(self, project: str, name: str, version: int) -> str:
        return f"{self._artifact_path(project, name)}/versions/v{int(version)}"

    def update_version(self, project: str, name: str, version: int, update: VersionUpdate) -> VersionInfo:
        if update.tags is not None:
            validate_tags(update.tags)
        update.checked_ttl()
        data = self._call("PATCH", self._version_path(project, name, version), update.to_dict())
        return VersionInfo.from_dict(data)

    def delete_version(self, project: str, name: str, version: int, *, delete_aliases: bool = False) -> None:
        self.transport.request_json(
            "DELETE",
            self._version_path(project, name, version),
            params={"delete_aliases": "true" if delete_aliases else "false"},
        )

    def delete_artifact(self, project: str, name: str) -> int:
        return int(self._call("DELETE", self._artifact_path(project, name))["deleted"])

    def set_retention(self, project: str, name: str, policy: RetentionPolicy) -> RetentionPolicy:
        data = self._call("PUT", f"{self._artifact_path(project, name)}/retention", policy.validated().to_dict())
        return RetentionPolicy.from_dict(data)

    def link_version(
        self,
        project: str,
        name: str,
        version: int,
        target_project: str,
        target_name: str,
        aliases: Sequence[str] = (),
    ) -> VersionInfo:
        body = {
            "target_project": validate_project(target_project),
            "target_name": validate_artifact_name(target_name),
            "aliases": [validate_alias(a) for a in aliases],
        }
        # Repeatable: linking the same source again returns the existing link version.
        data = self._call("POST", f"{self._version_path(project, name, version)}/links", body, repeatable=True)
        return VersionInfo.from_dict(data)

    def logged_artifacts(self, run_id: str) -> list[VersionInfo]:
        data = self._call("GET", f"/runs/{_q(run_id)}/logged-artifacts")
        return [VersionInfo.from_dict(item) for item in data["versions"]]

    def used_artifacts(self, run_id: str) -> list[VersionInfo]:
        data = self._call("GET", f"/runs/{_q(run_id)}/used-artifacts")
        return [VersionInfo.from_dict(item) for item in data["versions"]]

    # --- runs and lineage -------------------------------------------------------------------------------

    def create_run(self, spec: RunSpec) -> RunInfo:
        body = {
            "project": spec.project,
            "id": spec.id,
            "name": spec.name,
            "config": dict(spec.config),
            "tags": list(spec.tags),
            "notes": spec.notes,
            "group": spec.group,
            "job_type": spec.job_type,
        }
        return RunInfo.from_dict(self._call("POST", "/runs", body))

    def update_run(
        self,
        run_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        state: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"history": [dict(row) for row in history]}
        if config is not None:
            body["config"] = dict(config)
        if summary is not None:
            body["summary"] = dict(summary)
        if state is not None:
            body["state"] = state
        self._call("PATCH", f"/runs/{_q(run_id)}", body)

    def get_run(self, run_id: str) -> RunInfo:
        return RunInfo.from_dict(self._call("GET", f"/runs/{_q(run_id)}"))

    def run_history(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/runs/{_q(run_id)}/history")["history"])

    def record_use(self, run_id: str, project: str, name: str, version: int) -> None:
        body = {"project": validate_project(project), "name": validate_artifact_name(name), "version": int(version)}
        self._call("POST", f"/runs/{_q(run_id)}/uses", body)

    def logged_by(self, project: str, name: str, version: int) -> RunInfo | None:
        data = self._call("GET", f"{self._artifact_path(project, name)}/versions/v{int(version)}/logged-by")
        return RunInfo.from_dict(data["run"]) if data["run"] else None

    def used_by(self, project: str, name: str, version: int) -> list[RunInfo]:
        data = self._call("GET", f"{self._artifact_path(project, name)}/versions/v{int(version)}/used-by")
        return [RunInfo.from_dict(item) for item in data["runs"]]


_HEX32, _HEX64 = re.compile("[0-9a-f]{32}"), re.compile("[0-9a-f]{64}")


class _DigestCheckedBody:
    """A streamed answer read to its end against the SHA-256 its server stated: the last ``read`` (the one
    that returns b"") raises :class:`ChecksumError` if the bytes differ, or if no digest was stated."""

    def __init__(self, body: BinaryIO, sha256: str | None, what: str) -> None:
        self._body = body
        self._expected = sha256
        self._what = what
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._body.read(size)
        if data:
            self._hash.update(data)
        elif self._expected is None or self._hash.hexdigest() != self._expected:
            raise ChecksumError(
                f"{self._what}: the bytes received hash to {self._hash.hexdigest()[:12]}, the server stated "
                f"{(self._expected or 'no digest')[:12]}",
                expected=self._expected or "",
                actual=self._hash.hexdigest(),
            )
        return data


class _Inline:
    """A digester fed in the caller's thread, with ``Pipelined``'s ``finish``/``close``."""

    def __init__(self, digester: ChunkDigester) -> None:
        self.update = digester.update

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def _received_digest(path: str, size: int, sent: ChunkDigester, answer: Any) -> FileDigest:
    """The digests of an unaddressed upload: MD5 and SHA-256 as the server computed them, once the digest of
    the server's chunk digests equals that of the chunks sent (so the bytes it hashed are the bytes read here).

    Raises:
        ChecksumError: the server received other bytes, or answered without the digests it offered.
    """
    listed = sent.digests()
    received = answer.get("chunks") if isinstance(answer, dict) else None
    md5, sha256 = (answer.get("md5"), answer.get("sha256")) if isinstance(answer, dict) else (None, None)
    if not (isinstance(received, dict) and _HEX32.fullmatch(str(md5)) and _HEX64.fullmatch(str(sha256))):
        raise ChecksumError(f"{path}: the server's upload answer lacks the digests it offered: {answer!r:.200}")
    mine = chunk_list_digest(listed)
    if sent.size != size or received.get("digest") != mine or received.get("count") != len(listed):
        raise ChecksumError(
            f"{path}: the server received other bytes than were read here ({sent.size} bytes sent in "
            f"{len(listed)} chunks, the server hashed {received.get('count')} chunks to another list); "
            "the file changed while it was uploaded, or its bytes were damaged on the way",
            expected=mine,
            actual=str(received.get("digest")),
        )
    return file_digest(size, md5, sha256, sent)
