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

from fastapi import APIRouter, Request, Response

from ..errors import InvalidInputError
from ..manifest import Manifest
from ..registry.base import BlobTarget, DraftSpec
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


def _upload_targets(state: ServerState, request: Request, targets: tuple[BlobTarget, ...]) -> list[dict]:
    base = state.base_url(str(request.base_url))
    out = []
    for target in targets:
        signed = state.signer.presign(base, "PUT", target.sha256, target.size)
        out.append({"sha256": target.sha256, "size": target.size, "url": signed.url, "expires_at": signed.expires_at})
    return out


@router.post("/drafts", summary="Create a draft from a whole manifest; answers the blobs to upload")
def create_draft(request: Request, body: DraftRequest) -> JSONResponse:
    state = _state(request)
    spec = DraftSpec(
        project=body.project,
        name=body.name,
        type=body.type,
        manifest=Manifest.from_dict(body.manifest),
        description=body.description,
        metadata=body.metadata,
        run_id=body.run_id,
    )
    draft = state.registry.create_draft(spec)
    missing = _upload_targets(state, request, draft.missing)
    bundles = _upload_bundles(state, request, draft.missing)
    return JSONResponse(
        {"id": draft.id, "digest": draft.digest, "missing": missing, "bundles": bundles}, status_code=201
    )


def _upload_bundles(state: ServerState, request: Request, targets: tuple[BlobTarget, ...]) -> list[dict]:
    """Small missing blobs grouped into presigned upload bundles (a few MiB, up to a thousand blobs each)."""
    base = state.base_url(str(request.base_url))
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
        if target.size > BUNDLE_BLOB_MAX:
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
    return JSONResponse({"known": sorted(_state(request).registry.known_sizes(body.sizes))})


@router.post("/uploads", summary="A presigned URL to upload a file whose SHA-256 is not known yet", tags=["blobs"])
def new_upload(request: Request, body: NewUploadRequest) -> JSONResponse:
    state = _state(request)
    signed = state.signer.presign_new_upload(state.base_url(str(request.base_url)), body.size)
    return JSONResponse({"url": signed.url, "expires_at": signed.expires_at}, status_code=201)


@router.post("/drafts/{draft_id}/upload-urls", summary="Fresh upload URLs for the blobs a draft still lacks")
def refresh_upload_urls(request: Request, draft_id: str) -> JSONResponse:
    state = _state(request)
    return JSONResponse({"missing": _upload_targets(state, request, state.registry.draft_missing(draft_id))})


@router.post("/drafts/{draft_id}/finalize", summary="Make the draft a version and apply its aliases")
def finalize_draft(request: Request, draft_id: str, body: FinalizeRequest) -> JSONResponse:
    result = _state(request).registry.finalize_draft(draft_id, body.aliases, tags=body.tags)
    return JSONResponse({"version": result.version.to_dict(), "created": result.created})


@router.delete("/drafts/{draft_id}", summary="Abandon a draft", status_code=204)
def abort_draft(request: Request, draft_id: str) -> Response:
    _state(request).registry.abort_draft(draft_id)
    return no_content()


@router.post("/blob-urls", summary="Presigned download URLs for many blobs in one request", tags=["blobs"])
def blob_urls(request: Request, body: BlobUrlsRequest) -> JSONResponse:
    """Stored blobs get ``{url, size, expires_at}``; the others are listed under ``missing``."""
    if len(body.sha256s) > MAX_URLS_PER_REQUEST:
        raise InvalidInputError(f"at most {MAX_URLS_PER_REQUEST} blobs per request")
    state = _state(request)
    blobs = state.registry.blobs
    base = state.base_url(str(request.base_url))
    urls: dict[str, dict] = {}
    missing: list[str] = []
    for sha in dict.fromkeys(body.sha256s):
        try:
            size = blobs.size(sha)
        except LookupError:
            missing.append(sha)
            continue
        signed = state.signer.presign(base, "GET", sha, None)
        urls[sha] = {"url": signed.url, "size": size, "expires_at": signed.expires_at}
    bundles = _bundles(state, base, urls) if body.bundle else []
    return JSONResponse({"urls": urls, "missing": missing, "bundles": bundles})


def _bundles(state: ServerState, base: str, urls: dict[str, dict]) -> list[dict]:
    """Small blobs, in the order asked, grouped into presigned bundles of at most a few MiB."""
    bundles: list[dict] = []
    group: list[str] = []
    group_bytes = 0

    def flush() -> None:
        if len(group) >= 2:
            signed = state.signer.presign_bundle(base, group)
            sizes = [urls[sha]["size"] for sha in group]
            bundles.append({"url": signed.url, "sha256s": list(group), "sizes": sizes, "expires_at": signed.expires_at})
        group.clear()

    for sha, item in urls.items():
        size = item["size"]
        if size > BUNDLE_BLOB_MAX:
            continue
        if group and (group_bytes + size > BUNDLE_MAX_BYTES or len(group) >= BUNDLE_MAX_BLOBS):
            flush()
            group_bytes = 0
        group.append(sha)
        group_bytes += size
    flush()
    return bundles
