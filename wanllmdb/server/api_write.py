"""Write routes: the batched draft workflow and download URLs for many blobs at once.

1. ``POST /drafts`` with the whole manifest -> the blobs the server lacks, each with a presigned PUT URL,
   and the small ones also grouped into presigned upload bundles;
2. ``PUT`` each missing blob to its URL, or ``POST`` a bundle of small ones (see :mod:`.blobs`);
3. ``POST /drafts/{id}/finalize`` with the aliases -> the version (``vN`` assigned atomically).

Before step 1, a client holding a large file whose digest it has not computed yet asks ``POST /blob-sizes``
whether any stored blob has that size; if none has, the content cannot be stored, and it uploads the file
through ``POST /uploads`` (an unaddressed PUT URL) while hashing it in the same read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from ..errors import InvalidInputError, InvalidManifestError, ServerBusyError
from ..manifest import Manifest
from ..registry.base import ArtifactTTL, BlobTarget, DraftSpec
from ..registry.blobstore import check_sha256
from ..registry.s3blobs import part_size_for
from .context import ServerState
from .models import BlobSizesRequest, BlobUrlsRequest, DraftRequest, FinalizeRequest, NewUploadRequest
from .responses import JSONResponse, no_content

router = APIRouter(tags=["write"])

#: Most blobs one download-URL request may name.
MAX_URLS_PER_REQUEST = 1_000_000
#: Blobs up to this size are grouped into bundles ...
BUNDLE_BLOB_MAX = 256 * 1024
#: ... of at most this many bytes and blobs.
BUNDLE_MAX_BYTES = 4 * 1024 * 1024
BUNDLE_MAX_BLOBS = 1000


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _upload_targets(
    state: ServerState,
    base: str,
    targets: Sequence[BlobTarget],
    md5s: Mapping[str, str] | None = None,
    unsigned: frozenset[str] | set[str] = frozenset(),
) -> list[dict]:
    """An upload for each blob: a presigned PUT (to this server, or to the object store with the headers the
    store checks), or for a large blob on object storage the part layout of a multipart upload. Blobs in
    ``unsigned`` (bundled, for a client that asked for ``urls=unbundled``) get no URL."""
    out = []
    for target in targets:
        item: dict = {"sha256": target.sha256, "size": target.size}
        if target.sha256 in unsigned:
            pass
        elif state.s3 is None:
            signed = state.signer.presign(base, "PUT", target.sha256, target.size)
            item.update(url=signed.url, expires_at=signed.expires_at)
        elif state.s3.uses_multipart(target.size):
            part_size = part_size_for(target.size, state.s3.part_size)
            item["multipart"] = {"part_size": part_size, "parts": -(-target.size // part_size)}
        else:
            put = state.s3.presign_put(target.sha256, target.size, (md5s or {}).get(target.sha256))
            item.update(url=put.url, headers=put.headers, expires_at=put.expires_at)
        out.append(item)
    return out


#: Draft bodies larger than this count as large: at most MAX_LARGE_DRAFTS of them are parsed at once.
LARGE_DRAFT_BYTES = 1024 * 1024
MAX_LARGE_DRAFTS = 2
#: How long a large draft waits for its turn before the server answers 503 (with Retry-After).
LARGE_DRAFT_WAIT = 30.0


def _draft_turns(request: Request) -> asyncio.Semaphore:
    """The app's turns for large drafts (made on first use, inside the app's event loop)."""
    turns = getattr(request.app.state, "large_draft_turns", None)
    if turns is None:
        turns = request.app.state.large_draft_turns = asyncio.Semaphore(MAX_LARGE_DRAFTS)
    return turns


@router.post(
    "/drafts",
    summary="Create a draft from a whole manifest; answers the blobs to upload",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": DraftRequest.model_json_schema()}},
        }
    },
)
async def create_draft(request: Request, urls: Literal["all", "unbundled"] = "all") -> StreamingResponse:
    """The body is parsed once, straight into manifest entries (no model of each entry), so a draft of
    200,000 files costs a few times its JSON in memory; large bodies take turns (see LARGE_DRAFT_BYTES).

    ``urls=unbundled``: the blobs an upload bundle carries get no URL of their own (a client that uploads
    bundles never uses them; signing one per small file was a third of the server's CPU for a draft of
    100,000 new files). Such a client asks ``/drafts/{id}/upload-urls`` if it ever needs one."""
    state = _state(request)
    base = state.base_url(str(request.base_url))
    declared = request.headers.get("content-length")
    large = declared is None or not declared.isdigit() or int(declared) > LARGE_DRAFT_BYTES
    turns = _draft_turns(request)
    if large:
        try:
            await asyncio.wait_for(turns.acquire(), LARGE_DRAFT_WAIT)
        except asyncio.TimeoutError:
            raise ServerBusyError(
                f"{MAX_LARGE_DRAFTS} large drafts are being created; try again shortly"
            ) from None
    try:
        body = await request.body()
        answer = await run_in_threadpool(_create_draft, state, base, body, urls == "all")
    finally:
        if large:
            turns.release()
    return StreamingResponse(answer, status_code=201, media_type="application/json")


def _create_draft(state: ServerState, base: str, body: bytes, sign_bundled: bool = True) -> Iterator[bytes]:
    """Create the draft; its answer is JSON streamed a thousand blobs at a time (never held whole: with an
    upload URL per missing blob it is twice the size of the manifest)."""
    spec = _draft_spec(body)
    del body
    draft = state.registry.create_draft(spec)
    md5s = {entry.sha256: entry.md5 for entry in spec.manifest} if state.s3 is not None else None
    del spec
    bundles = _upload_bundles(state, base, draft.missing)
    unsigned = set() if sign_bundled else {sha for bundle in bundles for sha in bundle["sha256s"]}
    head = {"id": draft.id, "digest": draft.digest, "bundles": bundles}

    def answer() -> Iterator[bytes]:
        yield json.dumps(head).encode()[:-1] + b',"missing":['
        for i in range(0, len(draft.missing), 1000):
            part = _upload_targets(state, base, draft.missing[i : i + 1000], md5s, unsigned)
            yield (b"," if i else b"") + json.dumps(part, separators=(",", ":")).encode()[1:-1]
        yield b"]}"

    return answer()


def _draft_spec(body: bytes) -> DraftSpec:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidInputError(f"the draft is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError("the draft must be a JSON object")
    manifest = data.pop("manifest", None)
    try:
        fields = DraftRequest.model_validate({**data, "manifest": {}})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"invalid draft: {problems}") from None
    if not isinstance(manifest, dict):
        raise InvalidManifestError("the draft needs a 'manifest' object with an 'entries' list")
    return DraftSpec(
        project=fields.project,
        name=fields.name,
        type=fields.type,
        manifest=Manifest.from_dict(manifest, consume=True),
        description=fields.description,
        metadata=fields.metadata,
        run_id=fields.run_id,
    )


def _upload_bundles(state: ServerState, base: str, targets: Sequence[BlobTarget]) -> list[dict]:
    """Small missing blobs grouped into presigned upload bundles (a few MiB, up to a thousand blobs each)."""
    bundles: list[dict] = []
    group: list[tuple[str, int]] = []
    group_bytes = 0

    def flush() -> None:
        if len(group) >= 2:
            signed = state.signer.presign_upload_bundle(base, group)
            bundles.append({"url": signed.url, "sha256s": [s for s, _ in group], "sizes": [n for _, n in group],
                            "expires_at": signed.expires_at})  # fmt: skip
        group.clear()

    for target in targets:
        if target.size > BUNDLE_BLOB_MAX or (state.s3 is not None and state.s3.uses_multipart(target.size)):
            continue
        if group and (group_bytes + target.size > BUNDLE_MAX_BYTES or len(group) >= BUNDLE_MAX_BLOBS):
            flush()
            group_bytes = 0
        group.append((target.sha256, target.size))
        group_bytes += target.size
    flush()
    return bundles


@router.post("/blob-sizes", summary="Which of these sizes some stored blob has", tags=["blobs"])
def blob_sizes(request: Request, body: BlobSizesRequest) -> JSONResponse:
    """``unhashed_uploads`` is false when blobs live in object storage: a file whose SHA-256 is not known
    cannot get a content-addressed PUT URL, and uploading it through the server would put its bytes in the
    server's path; clients then hash such files first."""
    state = _state(request)
    return JSONResponse(
        {"known": sorted(state.registry.known_sizes(body.sizes)), "unhashed_uploads": state.s3 is None}
    )


@router.post("/uploads", summary="A presigned URL to upload a file whose SHA-256 is not known yet", tags=["blobs"],
             status_code=201)  # fmt: skip
def new_upload(request: Request, body: NewUploadRequest) -> JSONResponse:
    state = _state(request)
    signed = state.signer.presign_new_upload(state.base_url(str(request.base_url)), body.size)
    # ``server_digests``: the PUT's answer carries the MD5 and SHA-256 of what arrived (and, when asked, the
    # digest of its chunk digests), so the client need not compute them itself.
    return JSONResponse({"url": signed.url, "expires_at": signed.expires_at,
                         "server_digests": state.registry.blobs.compute_md5}, status_code=201)  # fmt: skip


@router.post("/drafts/{draft_id}/upload-urls", summary="Fresh upload URLs for the blobs a draft still lacks")
def refresh_upload_urls(request: Request, draft_id: str) -> JSONResponse:
    state = _state(request)
    base = state.base_url(str(request.base_url))
    missing = state.registry.draft_missing(draft_id)
    md5s = state.registry.draft_md5s(draft_id) if state.s3 is not None else None
    return JSONResponse({"missing": _upload_targets(state, base, missing, md5s)})


@router.post("/drafts/{draft_id}/finalize", summary="Make the draft a version and apply its aliases")
def finalize_draft(request: Request, draft_id: str, body: FinalizeRequest) -> JSONResponse:
    if body.inherit_ttl and body.ttl is not None:
        raise InvalidInputError("give ttl with inherit_ttl false (or inherit_ttl alone)")
    ttl = ArtifactTTL.INHERIT if body.inherit_ttl else body.ttl
    state = _state(request)
    result = state.registry.finalize_draft(draft_id, body.aliases, tags=body.tags, ttl=ttl)
    if result.created:  # a large version's index, ready before the first mount asks for it
        state.indexes.build_soon(state.registry, result.version)
    with_manifest = body.manifest or not result.created  # a new version holds what its client sent
    return JSONResponse({"version": result.version.to_dict(with_manifest=with_manifest), "created": result.created})


@router.delete("/drafts/{draft_id}", summary="Abandon a draft", status_code=204)
def abort_draft(request: Request, draft_id: str) -> Response:
    _state(request).registry.abort_draft(draft_id)
    return no_content()


@router.post("/blob-urls", summary="Presigned download URLs for many blobs in one request", tags=["blobs"])
def blob_urls(
    request: Request, body: BlobUrlsRequest, urls: Literal["all", "unbundled"] = "all"
) -> JSONResponse:
    """Stored blobs get ``{url, size, expires_at}``; the others are listed under ``missing``.

    ``urls=unbundled`` (with ``bundle: true``): the blobs a bundle carries get no URL of their own, as for
    drafts (a reader that fetches the bundles never uses them; signing one per small file is most of this
    request's CPU for a plan of many small files). Such a reader asks again for a blob whose bundle failed."""
    if len(body.sha256s) > MAX_URLS_PER_REQUEST:
        raise InvalidInputError(f"at most {MAX_URLS_PER_REQUEST} blobs per request")
    state = _state(request)
    base = state.base_url(str(request.base_url))
    wanted = list(dict.fromkeys(body.sha256s))
    for sha in wanted:
        check_sha256(sha)
    stored = state.registry.stored_sizes(wanted)
    sizes = {sha: stored[sha] for sha in wanted if sha in stored}
    missing = [sha for sha in wanted if sha not in stored]
    # Bundles are served by this server; with object storage every blob comes straight from the store.
    bundles = _bundles(state, base, sizes) if body.bundle and state.s3 is None else []
    bundled = {sha for bundle in bundles for sha in bundle["sha256s"]} if urls == "unbundled" else set()
    signed_urls: dict[str, dict] = {}
    for sha, size in sizes.items():
        if sha in bundled:
            continue
        signed_urls[sha] = state.download_item(base, sha, size)
    return JSONResponse({"urls": signed_urls, "missing": missing, "bundles": bundles})


def _bundles(state: ServerState, base: str, sizes: dict[str, int]) -> list[dict]:
    """Small blobs (``sizes``: stored blobs in the order asked), grouped into presigned bundles of a few MiB."""
    bundles: list[dict] = []
    group: list[str] = []
    group_bytes = 0

    def flush() -> None:
        if len(group) >= 2:
            signed = state.signer.presign_bundle(base, group)
            bundles.append({"url": signed.url, "sha256s": list(group), "sizes": [sizes[sha] for sha in group],
                            "expires_at": signed.expires_at})
        group.clear()

    for sha, size in sizes.items():
        if size > BUNDLE_BLOB_MAX:
            continue
        if group and (group_bytes + size > BUNDLE_MAX_BYTES or len(group) >= BUNDLE_MAX_BLOBS):
            flush()
            group_bytes = 0
        group.append(sha)
        group_bytes += size
    flush()
    return bundles
