"""The registry's content-addressed blob directory (used by the embedded registry and by the server).

``<root>/blobs/ab/abcdef...`` holds one file per SHA-256. A blob is written to ``<root>/tmp``, checked
(size, SHA-256, and MD5 when one is given), then renamed into place, so a blob that exists is complete
and correct; a writer killed at any point leaves at most a stale temporary file, removed by
:meth:`BlobStore.remove_stale_tmp`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import time

from ..errors import BlobNotFoundError, ChecksumError, InvalidInputError
from ..iobuf import buffer_for

logger = logging.getLogger(__name__)



_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise InvalidInputError(f"not a SHA-256 hex digest: {sha256[:80]!r}")
    return sha256


class IncomingBlob:
    """A blob being written: ``write`` pieces, then ``commit`` (checks and renames) or ``abort``."""

    def __init__(self, store: BlobStore, sha256: str, size: int, md5_hex: str | None) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.md5_hex = md5_hex
        self.received = 0
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5_hex else None
        self.tmp = os.path.join(store.root, "tmp", f"{sha256}.{os.getpid()}.{secrets.token_hex(6)}")
        self._file = open(self.tmp, "wb")

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self.received += n
        if self.received > self.size:
            raise ChecksumError(
                f"blob {self.sha256[:12]}: more than the declared {self.size} bytes", expected=str(self.size)
            )
        self._sha.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        self._file.write(data)
        return n

    def commit(self) -> bool:
        """Check and store; returns False when the blob was already stored (the copy is dropped).

        Raises:
            ChecksumError: size, SHA-256 or MD5 differ; nothing is stored.
        """
        try:
            self._file.close()
            if self.received != self.size:
                raise ChecksumError(
                    f"blob {self.sha256[:12]}: expected {self.size} bytes, received {self.received}",
                    expected=str(self.size),
                    actual=str(self.received),
                )
            actual = self._sha.hexdigest()
            if actual != self.sha256:
                raise ChecksumError(
                    f"blob {self.sha256[:12]}: content hashes to {actual}, not {self.sha256}",
                    expected=self.sha256,
                    actual=actual,
                )
            if self._md5 is not None and self._md5.hexdigest() != self.md5_hex:
                raise ChecksumError(
                    f"blob {self.sha256[:12]}: MD5 mismatch (expected {self.md5_hex}, got {self._md5.hexdigest()})",
                    expected=self.md5_hex,
                    actual=self._md5.hexdigest(),
                )
            return self.store._install(self.tmp, self.sha256)
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class BlobStore:
    """Blobs by SHA-256 under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)

    def path(self, sha256: str) -> str:
        _check_sha(sha256)
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def exists(self, sha256: str) -> bool:
        return os.path.exists(self.path(sha256))

    def size(self, sha256: str) -> int:
        try:
            return os.stat(self.path(sha256)).st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {sha256} is not stored") from None

    def begin(self, sha256: str, size: int, md5: str | None = None) -> IncomingBlob:
        """Start receiving a blob; ``md5`` may be hex or the base64 of a Content-MD5 header."""
        _check_sha(sha256)
        if size < 0:
            raise InvalidInputError(f"blob size must not be negative: {size}")
        return IncomingBlob(self, sha256, size, _md5_hex(md5) if md5 else None)

    def put_file(self, sha256: str, size: int, src: str) -> bool:
        """Copy a local file in as blob ``sha256`` after checking it; False if it was already stored.

        Raises:
            ChecksumError: the file's size or SHA-256 differ (it changed since it was hashed).
        """
        if self.exists(sha256):
            return False
        incoming = self.begin(sha256, size)
        try:
            with open(src, "rb", buffering=0) as f:
                buf = buffer_for(size)
                view = memoryview(buf)
                while n := f.readinto(buf):
                    incoming.write(view[:n])
        except BaseException:
            incoming.abort()
            raise
        return incoming.commit()

    def _install(self, tmp: str, sha256: str) -> bool:
        final = self.path(sha256)
        if os.path.exists(final):
            return False
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        return True

    def open(self, sha256: str):
        try:
            return open(self.path(sha256), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {sha256} is not stored") from None

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        with self.open(sha256) as f:
            return os.pread(f.fileno(), length, start)

    def remove_stale_tmp(self, max_age: float) -> int:
        """Delete temporary files older than ``max_age`` seconds (left by killed writers)."""
        removed = 0
        cutoff = time.time() - max_age
        tmp_dir = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp_dir):
            path = os.path.join(tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _md5_hex(md5: str) -> str:
    if len(md5) == 32 and all(c in "0123456789abcdef" for c in md5.lower()):
        return md5.lower()
    try:
        raw = base64.b64decode(md5, validate=True)
    except ValueError:
        raise InvalidInputError(f"not an MD5 digest: {md5[:60]!r}") from None
    if len(raw) != 16:
        raise InvalidInputError(f"not an MD5 digest: {md5[:60]!r}")
    return raw.hex()
