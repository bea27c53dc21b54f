"""Request bodies of the JSON API (they also document the API at ``/docs``).

Only shapes are checked here; names, paths and manifests are validated by the registry with the same
rules and messages as everywhere else (a bad one is a 400 carrying the registry's error code).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DraftRequest(BaseModel):
    """A whole version to be: the server answers with the blobs it lacks, each with an upload URL."""

    project: str
    name: str
    type: str
    manifest: dict[str, Any] = Field(description='{"format": 1, "entries": [{path, size, md5, sha256, ...}]}')
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None


class FinalizeRequest(BaseModel):
    aliases: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    inherit_ttl: bool = Field(
        True, description="give the new version the artifact's default TTL; false: use `ttl` (null: keep it)"
    )
    ttl: float | None = Field(None, description="seconds the version lives (> 0), with inherit_ttl false")
    manifest: bool = Field(
        True,
        description="answer the version with its manifest; false: without it when the draft created the version "
        "(it holds the manifest the client sent; an existing version found by its digest is answered whole)",
    )


class AliasRequest(BaseModel):
    version: int = Field(ge=1, description="the version number the alias should name (3 for v3)")


class BlobUrlsRequest(BaseModel):
    """Blobs to presign for download in one request (a reader's whole fetch plan)."""

    sha256s: list[str]
    bundle: bool = Field(
        False, description="also group small blobs into bundle URLs (one request fetches many small blobs)"
    )


class RunCreateRequest(BaseModel):
    project: str
    id: str
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None


class RunUpdateRequest(BaseModel):
    """Everything a run reports since its last update, in one request (history rows are appended)."""

    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    state: str | None = None


class UseRequest(BaseModel):
    project: str
    name: str
    version: int = Field(ge=1)


class BlobSizesRequest(BaseModel):
    """Sizes of files a client is about to upload."""

    sizes: list[int] = Field(max_length=1_000_000)


class NewUploadRequest(BaseModel):
    """An upload whose SHA-256 the client computes while sending it."""

    size: int = Field(ge=0)


class VersionUpdateRequest(BaseModel):
    """Changes to a logged version (contents stay immutable); a field left out or null stays unchanged."""

    description: str | None = None
    metadata: dict[str, Any] | None = Field(None, description="replaces the whole metadata dict")
    tags: list[str] | None = Field(None, description="replaces the tag set")
    add_aliases: list[str] = Field(default_factory=list)
    remove_aliases: list[str] = Field(default_factory=list)
    ttl: float | None = Field(None, description="set the version's TTL (seconds, > 0)")
    clear_ttl: bool = Field(False, description="remove the version's TTL: it is kept")
    inherit_ttl: bool = Field(False, description="set the version's TTL to the artifact's current default")


class RetentionRequest(BaseModel):
    """An artifact's whole retention policy (replaces the previous one; a field left out is unset)."""

    model_config = {"extra": "forbid"}

    ttl: float | None = Field(None, description="default TTL (seconds, > 0) of versions logged later")
    keep_last: int | None = Field(None, description="keep the newest N versions (N >= 0)")
    keep_aliased: bool = Field(False, description="keep versions a custom alias points at")
    older_than: float | None = Field(None, description="delete only versions at least this many seconds old")


class LinkRequest(BaseModel):
    """Where to link a version: a link collection (created on first link) and aliases there."""

    target_project: str
    target_name: str
    aliases: list[str] = Field(default_factory=list)


_B64_SHA256 = r"^[A-Za-z0-9+/]{43}=$"


class PartDigest(BaseModel):
    """One part of a multipart upload and the base64 SHA-256 of its bytes."""

    number: int = Field(ge=1, le=10_000)
    sha256: str = Field(pattern=_B64_SHA256, description="base64 of the part's SHA-256 (x-amz-checksum-sha256)")


class PartUrlsRequest(BaseModel):
    upload_id: str = Field(min_length=1, max_length=1024)
    parts: list[PartDigest] = Field(min_length=1, max_length=1000)


class CompleteUploadRequest(BaseModel):
    upload_id: str = Field(min_length=1, max_length=1024)
    checksums: list[str] = Field(
        min_length=1, max_length=10_000, description="base64 SHA-256 of every part, in order"
    )
