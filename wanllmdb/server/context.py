"""What the server is configured with, and the objects every request shares."""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import AuthenticationError
from ..registry.local import DEFAULT_DRAFT_MAX_AGE, LocalRegistry
from ..registry.metadata import open_metadata
from ..registry.s3blobs import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, S3BlobStore, open_blobstore
from .indexes import INDEX_CACHE_BYTES, VersionIndexes
from .signing import DEFAULT_URL_TTL, URLSigner, load_or_create_secret
from .web_auth import WebSessions

#: JSON request bodies (manifests) larger than this are refused before they are read.
DEFAULT_MAX_JSON_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one ``wanllmdb server``.

    Attributes:
        root: the registry directory it serves (SQLite + blobs), as for the embedded registry.
        api_keys: bearer keys accepted on API routes; empty means no authentication.
        secret: URL signing key; None reads or creates ``<root>/server.secret``.
        url_ttl: seconds a presigned URL stays valid.
        draft_max_age: seconds before an unfinished draft (and stale temporary blob files) are removed.
        max_json_bytes: largest JSON request body accepted.
        public_url: base of the presigned URLs; None uses the address each request came to.
        blobs, s3_endpoint, presign_endpoint, multipart_threshold, part_size: the blob store (see
            :mod:`wanllmdb.registry.s3blobs`).
        db: metadata database URL (``postgresql://...``); None keeps it in SQLite under ``root``.
        migrate: apply missing PostgreSQL migrations at start; False fails if the schema is behind.
    """

    root: str
    api_keys: tuple[str, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    url_ttl: float = DEFAULT_URL_TTL
    draft_max_age: float = DEFAULT_DRAFT_MAX_AGE
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    public_url: str | None = None
    #: Where blobs live: None (``<root>/blobs``), a directory, or ``s3://bucket/prefix``.
    blobs: str | None = None
    #: The S3 endpoint for the server, and the one put into presigned URLs (None: boto3's configuration).
    s3_endpoint: str | None = None
    presign_endpoint: str | None = None
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = DEFAULT_PART_SIZE
    db: str | None = field(default=None, repr=False)
    migrate: bool = True
    #: Seconds between the server's garbage collections (0: never; ``wanllmdb server gc`` still works).
    gc_interval: float = 3600.0
    #: Seconds a blob stays unreferenced before it is deleted; None: the URL lifetime plus the draft
    #: lifetime plus 10 minutes (see registry/gc.py).
    gc_grace: float | None = None
    #: Bytes of built version indexes kept for the mounts (0: none built; see .indexes).
    index_cache_bytes: int = INDEX_CACHE_BYTES

    @property
    def grace(self) -> float:
        return self.gc_grace if self.gc_grace is not None else self.url_ttl + self.draft_max_age + 600.0


class KeyChecker:
    """Checks ``Authorization: Bearer <key>`` against the configured keys in constant time."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raises:
        AuthenticationError: keys are configured and the header does not carry one of them.
        """
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("an API key is required (Authorization: Bearer <key>)")
        presented = token.strip().encode()
        matched = False
        for key in self._keys:  # compare with every key: the time taken reveals nothing
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise AuthenticationError("invalid API key")


def open_server_registry(config: ServerConfig) -> LocalRegistry:
    """The registry a server with ``config`` serves: its metadata database and blob store, opened in an order
    that leaves nothing half-made when one of them fails (used by the server and ``wanllmdb server gc``)."""
    root = os.path.abspath(os.path.expanduser(config.root))
    on_s3 = bool(config.blobs and "://" in config.blobs)
    s3_options = {
        "endpoint": config.s3_endpoint,
        "presign_endpoint": config.presign_endpoint,
        "url_ttl": config.url_ttl,
        "multipart_threshold": config.multipart_threshold,
        "part_size": config.part_size,
    }
    # Whatever can fail without writing comes first: the bucket (checked before its staging directory is
    # made), then the database, then a blob directory.
    blobstore = open_blobstore(config.blobs, root, **s3_options) if on_s3 else None
    database = open_metadata(config.db, root, migrate=config.migrate)
    return LocalRegistry(
        root,
        draft_max_age=config.draft_max_age,
        verify_md5=True,
        database=database,
        blobstore=blobstore or open_blobstore(config.blobs, root),
    )


class ServerState:
    """The registry, the URL signer and the key checker, shared by every request."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        root = os.path.abspath(os.path.expanduser(config.root))
        self.registry = open_server_registry(config)
        self.blobstore = self.registry.blobs
        #: The object store clients upload to and download from directly (None: blobs go through the server).
        self.s3: S3BlobStore | None = self.blobstore if isinstance(self.blobstore, S3BlobStore) else None
        secret = config.secret or load_or_create_secret(root)
        self.signer = URLSigner(secret, config.url_ttl)
        self.keys = KeyChecker(config.api_keys)
        #: Login cookies of the web pages (see .web_auth); they stand for the same keys.
        self.sessions = WebSessions(secret, config.api_keys)
        #: Large versions' SQLite indexes, built once for the mounts (see .indexes).
        self.indexes = VersionIndexes(root, config.index_cache_bytes)

    def base_url(self, request_base_url: str) -> str:
        return (self.config.public_url or request_base_url).rstrip("/")

    def download_item(self, base: str, sha256: str, size: int) -> dict:
        """``{url, size, expires_at}`` of a presigned GET of a stored blob: from the object store when blobs
        live there, else from this server under ``base``."""
        signed = self.s3.presign_get(sha256) if self.s3 is not None else self.signer.presign(base, "GET", sha256, None)
        return {"url": signed.url, "size": size, "expires_at": signed.expires_at}

    def close(self) -> None:
        self.registry.close()
