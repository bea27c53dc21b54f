"""Login sessions of the web pages: a signed cookie standing for one of the server's API keys.

The cookie never holds the key. It is ``<expires>.<key fingerprint>.<signature>``: the fingerprint is an
HMAC of the key under the server secret (so the key cannot be read back from it), the signature an HMAC of
expiry and fingerprint. A cookie is valid while it has not expired, its signature matches, and its
fingerprint is that of a key the server still accepts (removing a key from the configuration ends the
sessions opened with it). Comparisons are constant time, over every key, like ``KeyChecker``.

The cookie is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` when the page came over https), and it
authorizes the pages only (``/`` and ``/ui/...``): the JSON API under ``/api/v1`` keeps requiring the bearer
header, so no cross-site request can act through it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Sequence

COOKIE_NAME = "wanllmdb_session"
#: How long a login lasts.
SESSION_TTL = 12 * 3600.0


class WebSessions:
    """Issues and checks session cookies for ``keys`` (none configured: the pages are open)."""

    def __init__(self, secret: bytes, keys: Sequence[str], ttl: float = SESSION_TTL) -> None:
        self._secret = hashlib.sha256(b"wanllmdb web session\n" + secret).digest()
        self._fingerprints = [self._fingerprint(k.encode()) for k in keys if k]
        self.ttl = ttl

    @property
    def enabled(self) -> bool:
        return bool(self._fingerprints)

    def _fingerprint(self, key: bytes) -> str:
        return hmac.new(self._secret, b"key\n" + key, hashlib.sha256).hexdigest()[:32]

    def _signature(self, expires: int, fingerprint: str) -> str:
        return hmac.new(self._secret, f"session\n{expires}\n{fingerprint}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key: str) -> str:
        """The cookie value for an accepted ``key`` (the caller has checked it)."""
        expires = math.ceil(time.time() + self.ttl)
        fingerprint = self._fingerprint(key.strip().encode())
        return f"{expires}.{fingerprint}.{self._signature(expires, fingerprint)}"

    def valid(self, cookie: str | None) -> bool:
        """Whether ``cookie`` is a live session (always True when no keys are configured)."""
        if not self.enabled:
            return True
        parts = (cookie or "").split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
            return False
        expires, fingerprint, signature = int(parts[0]), parts[1], parts[2]
        signed = hmac.compare_digest(signature.encode(), self._signature(expires, fingerprint).encode())
        known = False
        for candidate in self._fingerprints:  # every key, whatever matches: the time taken reveals nothing
            known |= hmac.compare_digest(fingerprint.encode(), candidate.encode())
        return signed and known and expires > time.time()


def cookie_from_header(header: str | None) -> str | None:
    """The session cookie's value in a ``Cookie`` request header, if any."""
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            return value.strip().strip('"')
    return None
