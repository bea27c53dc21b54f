"""Read routes: projects, artifacts, one version with its manifest (one request), aliases, lineage."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from starlette.responses import StreamingResponse

from ..errors import InvalidRefError, NotFoundError, VersionNotFoundError
from ..fs.index import INDEX_SCHEMA
from ..manifest import Manifest, parse_version
from ..manifest.entry import CANONICAL_PREFIX
from ..registry import VersionInfo
from ..registry.base import INDEX_DIGEST_HEADER
from ..registry.local import LocalRegistry
from .models import AliasRequest
from .responses import BlobResponse, JSONResponse, json_bytes, no_content

router = APIRouter(tags=["artifacts"])

_ARTIFACT = "/projects/{project}/artifacts/{name}"


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.server.registry


def _version_number(selector: str) -> int:
    number = parse_version(selector)
    if number is None:
        raise InvalidRefError(f"expected a version such as v3, got {selector[:80]!r}")
    return number


@router.get("/projects", summary="List projects")
def list_projects(request: Request) -> JSONResponse:
    return JSONResponse({"projects": _registry(request).list_projects()})


@router.get("/projects/{project}/artifacts", summary="List the artifacts of a project")
def list_artifacts(request: Request, project: str) -> JSONResponse:
    summaries = _registry(request).list_artifacts(project)
    return JSONResponse({"artifacts": [s.to_dict() for s in summaries]})


@router.get("/projects/{project}/usage", summary="Per artifact: logical, stored and exclusive bytes")
def storage_usage(request: Request, project: str) -> JSONResponse:
    return JSONResponse({"artifacts": [u.to_dict() for u in _registry(request).storage_usage(project)]})


@router.get(_ARTIFACT, summary="An artifact with its versions (without manifests) and aliases")
def get_artifact(request: Request, project: str, name: str) -> JSONResponse:
    return JSONResponse(_registry(request).get_artifact(project, name).to_dict())


#: Most download URLs one resolve answer carries (``?urls=large``).
MAX_RESOLVE_URLS = 1000


@router.get(_ARTIFACT + "/versions/{selector}", summary="Resolve vN or an alias: the version with its manifest")
def resolve(request: Request, project: str, name: str, selector: str, urls: str | None = None) -> Response:
    """With ``?urls=large`` the answer also carries ``blob_urls``: presigned download URLs of the version's
    chunked (large) files, as ``POST /blob-urls`` would give them, so that a reader's first ranged GET
    needs no second request (the mount's open-to-first-byte path).

    The manifest goes out as the registry stored it: the JSON text ``Manifest.to_json`` wrote at finalize,
    from a manifest checked then, is spliced into the answer without being parsed and encoded again (for
    100,000 files that was ~0.9 CPU-s and ~0.5 KB of Python objects per file on every request). A stored text
    not in that form (``_STORED_PREFIX``: written by other code) is parsed and written in that form first.
    """
    info, text = _stored(request, project, name, selector)
    data = info.to_dict(with_manifest=False)
    if urls == "large":
        data["blob_urls"] = _signed_urls(request, _chunked_in_text(text))
    head = json_bytes(data)[:-1] + b',"manifest":'
    if info.file_count < STREAM_MANIFEST_MIN:
        return Response(head + text.encode() + b"}", media_type="application/json")
    return StreamingResponse(_spliced(head, text), media_type="application/json")


@router.get(
    _ARTIFACT + "/versions/{selector}/manifest",
    summary="The manifest of a version alone, as its canonical JSON text (for readers that parse it in pieces)",
)
def manifest(request: Request, project: str, name: str, selector: str) -> Response:
    """The manifest as ``Manifest.to_json`` writes it (``{"format":1,"entries":[...]}``, entries in path order,
    keys in a fixed order, no spaces), streamed from 1,000 entries. A reader that cannot hold a large manifest
    whole (the mount's on-disk index) parses it as it arrives; the version itself comes from the artifact
    listing it already has. The answer's ``X-Wanllmdb-Version`` header names the version resolved."""
    info, text = _stored(request, project, name, selector)
    headers = {"X-Wanllmdb-Version": str(info.version)}
    if info.file_count < STREAM_MANIFEST_MIN:
        return Response(text.encode(), media_type="application/json", headers=headers)
    return StreamingResponse(_pieces(text), media_type="application/json", headers=headers)


@router.get(
    _ARTIFACT + "/versions/{selector}/index",
    summary="A version's SQLite index for mounts, in the schema named (built once per version, then kept)",
    responses={200: {"content": {"application/vnd.sqlite3": {}}}},
)
def version_index(request: Request, project: str, name: str, selector: str, schema: str) -> Response:
    """The file a mount opens for a version of many files (``fs/index.py``; see ``server/indexes.py``), by
    version number. A schema this server does not build answers 404, and the mount builds the index from the
    manifest itself. The answer's ``X-Wanllmdb-Files`` header says how many files it indexes, and
    ``X-Wanllmdb-Sha256`` the file's SHA-256, taken when it was built."""
    number = _version_number(selector)
    if schema != INDEX_SCHEMA:
        raise NotFoundError(f"this server builds version indexes of schema {INDEX_SCHEMA}, not {schema[:20]!r}")
    state = request.app.state.server
    info = next((v for v in state.registry.get_artifact(project, name).versions if v.version == number), None)
    if info is None:
        raise VersionNotFoundError(f"version v{number} of '{project}/{name}' not found")
    path, digest = state.indexes.get(state.registry, info)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    size = os.fstat(fd).st_size
    response = BlobResponse(fd, 0, size, size, partial=False, etag=f"{info.id}.{INDEX_SCHEMA}")
    response.headers["content-type"] = "application/vnd.sqlite3"
    response.headers["x-wanllmdb-files"] = str(info.file_count)
    response.headers[INDEX_DIGEST_HEADER] = digest
    return response


def _stored(request: Request, project: str, name: str, selector: str) -> tuple[VersionInfo, str]:
    """The version and its manifest text in the canonical form (a text stored in another form, by other
    code, is brought to it)."""
    info, text = _registry(request).resolve_stored(project, name, selector)
    if not (text.startswith(_STORED_PREFIX) and text.endswith("]}")):
        text = Manifest.from_json(text).to_json()
    return info, text


#: How every manifest text ``Manifest.to_json`` writes begins (entries follow, each beginning with its path).
_STORED_PREFIX = CANONICAL_PREFIX
#: A chunked entry as ``ManifestEntry.to_dict`` orders its keys: ``"sha256":"<64 hex>","chunk_size":``.
_SHA_KEY = '"sha256":"'
_CHUNK_KEY = '","chunk_size":'
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Manifests of at least this many entries go out in ``STREAM_PIECE`` pieces as they are encoded, so the first
#: bytes leave at once (a 1M-file version's answer, built whole, took 20 s on 2 loaded cores, and its reader
#: gave up at 30 s with nothing received).
STREAM_MANIFEST_MIN = 1000
STREAM_PIECE = 1 << 20


def _spliced(head: bytes, text: str) -> Iterator[bytes]:
    yield head
    yield from _pieces(text)
    yield b"}"


def _pieces(text: str) -> Iterator[bytes]:
    for start in range(0, len(text), STREAM_PIECE):
        yield text[start : start + STREAM_PIECE].encode()


def _chunked_in_text(text: str) -> list[str]:
    """The SHA-256s of the chunked entries of a stored manifest text, at most ``MAX_RESOLVE_URLS``, found
    without parsing it (``str.find``: 0.04 s for 1M entries, a regular expression took 0.46). Only URLs are at
    stake: an entry this misses costs its reader one ``POST /blob-urls``. (References are never stored blobs:
    ``_signed_urls`` leaves out what is not stored.)"""
    found: dict[str, None] = {}
    at = text.find(_CHUNK_KEY)
    while at != -1 and len(found) < MAX_RESOLVE_URLS:
        sha = text[at - 64 : at]
        if text.startswith(_SHA_KEY, at - 64 - len(_SHA_KEY)) and _HEX64.fullmatch(sha):
            found[sha] = None
        at = text.find(_CHUNK_KEY, at + len(_CHUNK_KEY))
    return list(found)


def _signed_urls(request: Request, wanted: list[str]) -> dict[str, dict]:
    if not wanted:
        return {}
    state = request.app.state.server
    base = state.base_url(str(request.base_url))
    stored = state.registry.stored_sizes(wanted)
    # A blob not stored (never, for a committed version; a reference's digest) gets no URL: a reader then asks
    # POST /blob-urls and gets "missing".
    return {sha: state.download_item(base, sha, stored[sha]) for sha in wanted if sha in stored}


@router.put(_ARTIFACT + "/aliases/{alias}", summary="Point an alias at a version", status_code=204)
def set_alias(request: Request, project: str, name: str, alias: str, body: AliasRequest) -> Response:
    _registry(request).set_alias(project, name, alias, body.version)
    return no_content()


@router.delete(_ARTIFACT + "/aliases/{alias}", summary="Remove an alias", status_code=204)
def delete_alias(request: Request, project: str, name: str, alias: str) -> Response:
    _registry(request).delete_alias(project, name, alias)
    return no_content()


@router.get(_ARTIFACT + "/versions/{selector}/logged-by", summary="The run that logged a version", tags=["runs"])
def logged_by(request: Request, project: str, name: str, selector: str) -> JSONResponse:
    run = _registry(request).logged_by(project, name, _version_number(selector))
    return JSONResponse({"run": run.to_dict() if run else None})


@router.get(_ARTIFACT + "/versions/{selector}/used-by", summary="The runs that used a version", tags=["runs"])
def used_by(request: Request, project: str, name: str, selector: str) -> JSONResponse:
    runs = _registry(request).used_by(project, name, _version_number(selector))
    return JSONResponse({"runs": [r.to_dict() for r in runs]})
