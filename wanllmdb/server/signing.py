"""Presigned blob URLs: HMAC-SHA256 over (method, blob, size for uploads, expiry) with the server's secret.

Like S3 presigned URLs, a signed URL is its own authorization: whoever holds it may GET (or PUT) that one
blob until it expires, and nothing else. The secret is generated once and kept in the server root with
mode 0600 (or given by flag/environment), so URLs stay valid across restarts.

    /api/v1/blobs/<sha256>?expires=<unix seconds>&size=<bytes, uploads only>&sig=<hex>
    /api/v1/blobs/bundle?expires=<unix seconds>&sig=<hex>     (signs a list of small blobs, see .blobs)
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from .. import tmpfiles
from ..errors import AuthenticationError, ConfigError, ForbiddenError, PresignedURLExpiredError
from ..registry.base import upload_listing

logger = logging.getLogger(__name__)

SECRET_FILE = "server.secret"
DEFAULT_URL_TTL = 3600.0


@dataclass(frozen=True)
class SignedURL:
    url: str
    expires_at: int


def bundle_digest(sha256s: Sequence[str]) -> str:
    """What a bundle URL signs: the SHA-256 of its blob list, one digest per line, in order."""
    return hashlib.sha256("\n".join(sha256s).encode("ascii", "replace")).hexdigest()


#: Methods whose signature binds a size.
_SIZED = ("PUT", "PUT-NEW")


class URLSigner:
    """Signs and checks blob URLs.

    Args:
        secret: the HMAC key.
        ttl: seconds a URL stays valid.
    """

    def __init__(self, secret: bytes, ttl: float = DEFAULT_URL_TTL) -> None:
        if len(secret) < 16:
            raise ConfigError("the URL signing secret must be at least 16 bytes")
        self._secret = secret
        self.ttl = ttl

    def _signature(self, method: str, subject: str, size: int | None, expires: int) -> str:
        message = f"{method}\n{subject}\n{'' if size is None else size}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _expiry(self) -> int:
        return math.ceil(time.time() + self.ttl)

    def presign(self, base_url: str, method: str, sha256: str, size: int | None = None) -> SignedURL:
        """A URL under ``base_url`` allowing ``method`` on blob ``sha256`` (``size`` binds an upload)."""
        expires = self._expiry()
        query = {"expires": expires}
        if method == "PUT":
            query["size"] = int(size or 0)
        query["sig"] = self._signature(method, sha256, query.get("size"), expires)
        return SignedURL(f"{base_url.rstrip('/')}/api/v1/blobs/{sha256}?{urlencode(query)}", expires)

    def presign_new_upload(self, base_url: str, size: int) -> SignedURL:
        """A URL to PUT ``size`` bytes whose SHA-256 is not known yet; the server names the blob by it."""
        expires = self._expiry()
        nonce = secrets.token_hex(8)
        sig = self._signature("PUT-NEW", nonce, int(size), expires)
        query = urlencode({"size": int(size), "nonce": nonce, "expires": expires, "sig": sig})
        return SignedURL(f"{base_url.rstrip('/')}/api/v1/blobs/new?{query}", expires)

    def presign_upload_bundle(self, base_url: str, items: Sequence[tuple[str, int]]) -> SignedURL:
        """A URL to POST several small blobs to: the body is :func:`upload_listing` then the blobs."""
        expires = self._expiry()
        listing = upload_listing(items)
        sig = self._signature("BUNDLE-PUT", hashlib.sha256(listing).hexdigest(), None, expires)
        query = urlencode({"listing": len(listing), "expires": expires, "sig": sig})
        return SignedURL(f"{base_url.rstrip('/')}/api/v1/blobs/bundle-upload?{query}", expires)

    def presign_bundle(self, base_url: str, sha256s: Sequence[str]) -> SignedURL:
        """A URL to POST the list ``sha256s`` to (one per line) and receive those blobs concatenated."""
        expires = self._expiry()
        sig = self._signature("BUNDLE", bundle_digest(sha256s), None, expires)
        return SignedURL(f"{base_url.rstrip('/')}/api/v1/blobs/bundle?expires={expires}&sig={sig}", expires)

    def verify(self, method: str, subject: str, size: int | None, expires: int | None, sig: str | None) -> None:
        """Accept the request or raise.

        Args:
            method: the request method (HEAD is checked as GET), or ``"BUNDLE"``.
            subject: the blob's SHA-256, or a bundle's :func:`bundle_digest`.

        Raises:
            AuthenticationError: the URL carries no signature at all (401).
            ForbiddenError: the signature is not valid for this method, blob and size (403).
            PresignedURLExpiredError: it was valid, but its time is over (403, the client asks anew).
        """
        if sig is None or expires is None:
            raise AuthenticationError(
                "blob URLs must be presigned: ask the API for one (POST /api/v1/blob-urls, or create a draft)"
            )
        signed_method = "GET" if method == "HEAD" else method
        expected = self._signature(signed_method, subject, size if signed_method in _SIZED else None, expires)
        # Compared as bytes: compare_digest refuses str with non-ASCII characters, which a forged URL may carry.
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
            what = "blob bundle" if signed_method == "BUNDLE" else f"{signed_method} of blob {subject[:12]}"
            raise ForbiddenError(f"invalid signature for {what}")
        if time.time() > expires:
            raise PresignedURLExpiredError(f"presigned URL for {subject[:12]} expired at {expires}")


def load_or_create_secret(root: str) -> bytes:
    """The secret kept in ``<root>/server.secret``, created (mode 0600) on first use.

    The file appears whole or not at all: the secret is written to a temporary file named by its writer
    (:mod:`..tmpfiles`) and hard-linked into place, which fails if another server got there first. Servers
    started together on one root therefore all read the one secret that won, never an empty file.

    Raises:
        ConfigError: the file exists but holds no usable secret.
    """
    path = os.path.join(root, SECRET_FILE)
    os.makedirs(root, exist_ok=True)
    tmpfiles.reclaim_dead(root, prefix=_TMP_PREFIX)  # left by a server killed while creating it
    if not os.path.exists(path):
        _create_secret(path)
    elif os.stat(path).st_mode & 0o077:
        logger.warning("%s was readable by others; restricting it to its owner", path)
        os.chmod(path, 0o600)
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < 16:
        raise ConfigError(f"{path} holds no usable secret: delete it to have a new one generated")
    return secret


_TMP_PREFIX = "server-secret."  # no dot in what precedes the writer's tag (see tmpfiles.owner)


def _temporary_name(path: str) -> str:
    return os.path.join(os.path.dirname(path), f"{_TMP_PREFIX}{tmpfiles.writer_tag()}.{secrets.token_hex(4)}.tmp")


def _create_secret(path: str) -> None:
    secret = secrets.token_hex(32).encode()
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another server's secret won; this one is dropped
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A filesystem without hard links (some network shares): created in place, as one write.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
        logger.info("generated a URL signing secret in %s", path)
    finally:
        os.unlink(tmp)


#: What ``link`` answers where the filesystem has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
