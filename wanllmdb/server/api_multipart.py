"""Multipart uploads of large blobs straight to object storage (servers with ``--blobs s3://...``).

A draft's answer marks a blob above the store's multipart threshold with ``multipart: {part_size, parts}``
instead of a URL. The client then:

1. ``POST /drafts/{id}/multipart/{sha256}`` -> ``{upload_id, part_size, parts, done: [{number, size}]}``:
   the upload in progress for this blob (found again by its key, so a run killed at 90 % resumes) or a
   new one, and the parts the store already holds;
2. for each missing part, a window at a time: hashes it, ``POST .../part-urls`` with ``{upload_id,
   parts: [{number, sha256}]}`` -> a presigned PUT per part that signs its SHA-256 and length (the store
   refuses other bytes), and PUTs the part;
3. ``POST .../complete`` with every part's SHA-256 -> the store checks the parts, the server checks the
   whole object (see ``S3BlobStore.multipart_complete``) and records the blob as stored.

Every call names a draft that holds the blob, with the same API keys as any other route.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import InvalidInputError, NotFoundError
from ..registry.s3blobs import S3BlobStore, _part_length, part_size_for
from .context import ServerState
from .models import CompleteUploadRequest, PartUrlsRequest
from .responses import JSONResponse

router = APIRouter(tags=["blobs"])

_PATH = "/drafts/{draft_id}/multipart/{sha256}"


def _target(request: Request, draft_id: str, sha256: str) -> tuple[ServerState, S3BlobStore, int]:
    state: ServerState = request.app.state.server
    if state.s3 is None:
        raise NotFoundError("this server keeps blobs in a directory: upload them with the PUT URLs of the draft")
    size = state.registry.draft_wants(draft_id, sha256)
    if size is None:
        raise NotFoundError(f"draft {draft_id!r} holds no blob {sha256[:64]!r}")
    if not state.s3.uses_multipart(size):
        raise InvalidInputError(f"blob {sha256[:12]} ({size} bytes) is uploaded with one PUT, not in parts")
    return state, state.s3, size


@router.post(_PATH, summary="Start or resume the multipart upload of a large blob of a draft")
def open_upload(request: Request, draft_id: str, sha256: str) -> JSONResponse:
    _, store, size = _target(request, draft_id, sha256)
    upload = store.multipart_open(sha256, size)
    done = [{"number": n, "size": s} for n, s in sorted(upload.done.items())]
    return JSONResponse(
        {"upload_id": upload.upload_id, "part_size": upload.part_size, "parts": upload.parts, "done": done}
    )


@router.post(_PATH + "/part-urls", summary="Presigned PUTs for parts, each signing the part's SHA-256")
def part_urls(request: Request, draft_id: str, sha256: str, body: PartUrlsRequest) -> JSONResponse:
    _, store, size = _target(request, draft_id, sha256)
    part_size = part_size_for(size, store.part_size)
    parts = max(1, -(-size // part_size))
    urls = []
    for part in body.parts:
        if part.number > parts:
            raise InvalidInputError(f"blob {sha256[:12]} has {parts} parts, not {part.number}")
        length = _part_length(part.number, part_size, size)
        signed = store.presign_part(sha256, body.upload_id, part.number, length, part.sha256)
        urls.append(
            {"number": part.number, "size": length, "url": signed.url, "headers": signed.headers,
             "expires_at": signed.expires_at}
        )  # fmt: skip
    return JSONResponse({"urls": urls})


@router.post(_PATH + "/complete", summary="Complete a multipart upload; the blob is checked, then recorded")
def complete_upload(request: Request, draft_id: str, sha256: str, body: CompleteUploadRequest) -> JSONResponse:
    state, store, size = _target(request, draft_id, sha256)
    md5 = store.multipart_complete(sha256, size, body.upload_id, body.checksums)
    state.registry.record_blobs([(sha256, size, md5)])
    return JSONResponse({"sha256": sha256, "size": size, "stored": True})
