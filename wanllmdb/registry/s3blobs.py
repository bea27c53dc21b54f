"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, SeaweedFS, R2, ...), for ``wanllmdb server``.

``wanllmdb server --blobs s3://bucket/prefix`` keeps every blob at ``prefix/blobs/sha256/ab/abcd...`` (content
addressed, so replicas and re-uploads agree on keys) and moves bytes straight between clients and the store
through URLs presigned here with SigV4:

- **downloads**: presigned GETs (a ``Range`` header works: the mount's chunk reads). Never a HEAD: a
  GET-signed URL refuses it.
- **uploads up to** ``multipart_threshold``: presigned PUTs that sign ``Content-Length``,
  ``x-amz-checksum-sha256`` and ``Content-MD5``: the store itself refuses bytes that are not the manifest's.
- **larger blobs**: multipart uploads, parts of ``part_size`` (at most 10,000 parts), each part URL signing
  that part's SHA-256 (the client hashes a part just before asking for its URL, so URLs are handed out a
  window at a time and none expires during a long upload). The upload is found again by its key
  (``ListMultipartUploads``), so an upload killed at 90 % and run again sends only the parts the store
  lacks (``ListParts``). Completing passes every part's SHA-256, which the store checks against the parts.

**A blob counts as stored only once the server has checked it** (the registry records it in its
``blob_sizes`` table; drafts and finalize consult that record, never a listing of the bucket):

- after a single PUT, ``HeadObject(ChecksumMode=ENABLED)`` must report the size and a full-object
  SHA-256 equal to the blob's name; its MD5 is the one the URL signed (the store checked it);
- after a multipart upload the store reports a composite checksum (SHA-256 of the part digests), which
  says nothing about the whole file, so the server reads the object once and hashes it (SHA-256 + MD5;
  measured ~3 CPU-s per GB on 2 cores) before recording it; the same fallback serves a store that reports
  no checksum. An ETag is never taken for a digest.
- a blob that fails its check is deleted from the bucket and is not recorded.

Bytes that do pass through the server (small-file upload bundles, uploads hashed on the way, whose
SHA-256 is known only at the end) are staged in ``<root>/tmp``, checked there as in the directory store
(the :class:`~.blobstore.BlobStore` machinery this class inherits), then written with ``PutObject``
carrying their SHA-256 and MD5 (multipart, each part with its SHA-256, above ``multipart_threshold``).

boto3 is configured for S3-compatible stores: SigV4, path-style addressing, checksums only when an
operation requires them (boto3 >= 1.36 otherwise adds CRC checksums that several stores refuse). The
endpoint, region and credentials come from boto3's usual configuration (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, profiles, instance roles) unless ``endpoint`` is given; ``presign_endpoint`` is the
address clients reach the store at when it differs from the server's.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..cache.store import BlobWriter
from ..errors import BlobNotFoundError, ChecksumError, ConfigError, InvalidInputError, StorageUnavailableError
from .blobstore import BlobStore, InstallListener, _check_sha

logger = logging.getLogger(__name__)

#: Blobs above this size are uploaded in parts (S3 refuses single PUTs over 5 GiB).
DEFAULT_MULTIPART_THRESHOLD = 1 << 30
#: Part size of multipart uploads (grown for blobs that would need more than MAX_PARTS).
DEFAULT_PART_SIZE = 64 << 20
#: S3's smallest part (all but the last) and most parts per upload.
MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000
#: Bytes read at once when the server hashes an object.
READ_PIECE = 8 << 20
_MIB = 1 << 20


def b64_sha256(hex_digest: str) -> str:
    """The base64 form of a hex SHA-256 (what ``x-amz-checksum-sha256`` carries)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def b64_md5(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


@dataclass(frozen=True)
class Presigned:
    """A presigned request: the URL, the headers the client must send with it, and when it expires."""

    url: str
    headers: dict[str, str]
    expires_at: float


@dataclass(frozen=True)
class MultipartState:
    """An upload in progress: its id, the part layout, and the parts the store already holds (number -> size)."""

    upload_id: str
    part_size: int
    parts: int
    done: dict[int, int]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end).

    Raises:
        ConfigError: not an s3:// URL, or no bucket.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"blob storage must be a directory or s3://bucket[/prefix], not {url!r}")
    return parts.netloc, parts.path.strip("/")


def part_size_for(size: int, part_size: int = DEFAULT_PART_SIZE) -> int:
    """The part size for a blob of ``size`` bytes: ``part_size``, grown in whole MiB to stay within MAX_PARTS."""
    needed = -(-size // MAX_PARTS)
    if needed > part_size:
        part_size = -(-needed // _MIB) * _MIB
    return part_size


def make_client(endpoint: str | None = None, *, pool: int = 32) -> Any:
    """A boto3 S3 client set up for S3-compatible stores (see the module docstring)."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=pool,
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    session = boto3.session.Session()
    if not session.region_name:
        kwargs["region_name"] = "us-east-1"
    return session.client("s3", **kwargs)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


class S3BlobStore(BlobStore):
    """Blobs by SHA-256 in ``s3://bucket/prefix``; bytes passing through the server are staged under ``root``.

    Args:
        url: ``s3://bucket[/prefix]``.
        root: a local directory for staging (``root/tmp``).
        endpoint: the store's address for the server (else boto3's configuration).
        presign_endpoint: the address put into presigned URLs, when clients reach the store elsewhere.
        url_ttl: seconds presigned URLs live.
        multipart_threshold, part_size: when and how blobs are uploaded in parts.
    """

    #: Which blobs are stored is what the registry recorded after checking them (not a bucket listing).
    lists_itself = False

    def __init__(
        self,
        url: str,
        root: str,
        on_install: InstallListener | None = None,
        *,
        endpoint: str | None = None,
        presign_endpoint: str | None = None,
        url_ttl: float = 3600.0,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"the part size must be at least {MIN_PART_SIZE >> 20} MiB (S3's minimum): {part_size}")
        if multipart_threshold < part_size:
            raise ConfigError("the multipart threshold must be at least the part size")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = make_client(endpoint)
        self.presigner = make_client(presign_endpoint) if presign_endpoint else self.client
        self.endpoint = endpoint or self.client.meta.endpoint_url
        self.url_ttl = int(url_ttl)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.description = f"bucket {self.url} at {self.endpoint}"
        self.check()  # before anything is written locally
        super().__init__(root, on_install, compute_md5=True)

    # --- set-up -----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raises StorageUnavailableError naming the bucket when it cannot be reached or does not exist."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._unavailable("cannot reach", exc) from None

    def _unavailable(self, what: str, exc: Exception) -> StorageUnavailableError:
        code = _error_code(exc)
        reason = f"{code}: {exc}" if code else str(exc)
        return StorageUnavailableError(f"{what} {self.description} ({reason.splitlines()[0][:300]})")

    def _call(self, operation: str, **kwargs: Any) -> Any:
        """One S3 call; a store that cannot be reached is StorageUnavailableError, 404s are left to callers."""
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:
            if _is_missing(exc) or _error_code(exc) in ("BadDigest", "InvalidDigest", "EntityTooSmall", "InvalidPart"):
                raise
            raise self._unavailable(f"{operation} failed on", exc) from None

    def _call_or_none(self, operation: str, **kwargs: Any) -> Any:
        """``_call``, with None for a missing object or upload (404, NoSuchKey, NoSuchUpload)."""
        try:
            return self._call(operation, **kwargs)
        except StorageUnavailableError:
            raise
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise

    # --- keys and lookups -------------------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        _check_sha(sha256)
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}blobs/sha256/{sha256[:2]}/{sha256}"

    def path(self, sha256: str) -> str:
        raise BlobNotFoundError(f"blob {sha256[:12]} is in {self.url}: read it through a presigned URL")

    def head(self, sha256: str) -> dict | None:
        """HeadObject with checksums, or None when the object does not exist."""
        return self._call_or_none("head_object", Bucket=self.bucket, Key=self.key(sha256), ChecksumMode="ENABLED")

    def exists(self, sha256: str) -> bool:
        return self.head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self.head(sha256)
        if head is None:
            raise BlobNotFoundError(f"blob {sha256} is not stored in {self.url}")
        return int(head["ContentLength"])

    # --- checking what clients uploaded -----------------------------------------------------------------

    def verify_stored(self, sha256: str, size: int, signed_md5: str | None) -> str | None:
        """Check an object a client uploaded; returns its MD5 (hex) if it is the blob, else None (and deletes it).

        A full-object SHA-256 reported by the store must equal the name; its MD5 is ``signed_md5`` (the PUT
        URL signed it, so the store checked it), or computed when none was signed. Without a full-object
        checksum (multipart composites, stores that keep none) the object is read once and hashed.
        """
        head = self.head(sha256)
        if head is None:
            return None
        if int(head["ContentLength"]) != size:
            logger.warning("object for blob %s has %s bytes, not %d: deleted", sha256[:12], head["ContentLength"], size)
            self._delete(sha256)
            return None
        reported = head.get("ChecksumSHA256") or ""
        if reported and "-" not in reported and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            if reported != b64_sha256(sha256):
                logger.warning("object for blob %s has SHA-256 %s: deleted", sha256[:12], reported)
                self._delete(sha256)
                return None
            if signed_md5:
                return signed_md5
        actual_sha, md5, count = self._hash_object(sha256)
        if actual_sha != sha256 or count != size:
            logger.warning("object for blob %s hashes to %s (%d bytes): deleted", sha256[:12], actual_sha[:12], count)
            self._delete(sha256)
            return None
        return md5

    def _hash_object(self, sha256: str) -> tuple[str, str, int]:
        """(SHA-256 hex, MD5 hex, bytes) of the stored object, read once."""
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        count = 0
        body = self._call("get_object", Bucket=self.bucket, Key=self.key(sha256))["Body"]
        with body:
            while piece := body.read(READ_PIECE):
                sha.update(piece)
                md5.update(piece)
                count += len(piece)
        return sha.hexdigest(), md5.hexdigest(), count

    def list_blobs(self) -> Iterator[tuple[str, int, float]]:
        """Every object under ``prefix/blobs/sha256/`` named like a blob: (sha256, size, LastModified)."""
        head = self.key("0" * 64).rsplit("/", 2)[0] + "/"
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": head, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents") or ():
                name = item["Key"].rsplit("/", 1)[-1]
                if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                    yield name, int(item["Size"]), item["LastModified"].timestamp()
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete_blobs(self, sha256s: Sequence[str]) -> None:
        """Delete objects, a thousand per ``DeleteObjects`` request; failures are raised, naming the first."""
        keys = [self.key(sha) for sha in sha256s]
        for i in range(0, len(keys), 1000):
            answer = self._call(
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageUnavailableError(
                    f"{self.description} refused to delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message', '')}"
                )

    def md5_of(self, sha256: str) -> str:
        return self._hash_object(sha256)[1]

    def _delete(self, sha256: str) -> None:
        try:
            self._call("delete_object", Bucket=self.bucket, Key=self.key(sha256))
        except Exception:
            logger.exception("could not delete the object of blob %s", sha256[:12])

    # --- presigning -------------------------------------------------------------------------------------

    def _presign(self, operation: str, params: dict[str, Any]) -> tuple[str, float]:
        url = self.presigner.generate_presigned_url(operation, Params=params, ExpiresIn=self.url_ttl)
        return url, time.time() + self.url_ttl

    def presign_get(self, sha256: str) -> Presigned:
        url, expires_at = self._presign("get_object", {"Bucket": self.bucket, "Key": self.key(sha256)})
        return Presigned(url, {}, expires_at)

    def presign_put(self, sha256: str, size: int, md5_hex: str | None) -> Presigned:
        """A PUT of exactly these bytes: size, SHA-256 and (when known) MD5 signed, so the store checks them."""
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key(sha256),
            "ContentLength": int(size),
            "ChecksumSHA256": b64_sha256(sha256),
        }
        headers = {"x-amz-checksum-sha256": params["ChecksumSHA256"]}
        if md5_hex:
            params["ContentMD5"] = headers["Content-MD5"] = b64_md5(md5_hex)
        url, expires_at = self._presign("put_object", params)
        return Presigned(url, headers, expires_at)

    def uses_multipart(self, size: int) -> bool:
        return size > self.multipart_threshold

    # --- multipart uploads ------------------------------------------------------------------------------

    def multipart_open(self, sha256: str, size: int) -> MultipartState:
        """The upload of this blob in progress (found by its key), or a new one; with the parts already stored."""
        key = self.key(sha256)
        part_size = part_size_for(size, self.part_size)
        parts = max(1, -(-size // part_size))
        found = self._call("list_multipart_uploads", Bucket=self.bucket, Prefix=key).get("Uploads") or []
        for upload in sorted(found, key=lambda u: u.get("Initiated") or 0):
            if upload.get("Key") != key:
                continue
            done = self._parts_done(key, upload["UploadId"])
            if done is None:
                continue
            # Parts of another layout (a changed part size) cannot be reused.
            if all(n <= parts and size_ == _part_length(n, part_size, size) for n, size_ in done.items()):
                return MultipartState(upload["UploadId"], part_size, parts, done)
        upload_id = self._call(
            "create_multipart_upload", Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        return MultipartState(upload_id, part_size, parts, {})

    def _parts_done(self, key: str, upload_id: str) -> dict[int, int] | None:
        """The parts the store holds (number -> size), or None when the upload is gone."""
        listed = self._listed_parts(key, upload_id)
        return None if listed is None else {n: size for n, (size, _etag) in listed.items()}

    def presign_part(self, sha256: str, upload_id: str, number: int, length: int, checksum_b64: str) -> Presigned:
        params = {
            "Bucket": self.bucket,
            "Key": self.key(sha256),
            "UploadId": upload_id,
            "PartNumber": int(number),
            "ContentLength": int(length),
            "ChecksumSHA256": checksum_b64,
        }
        url, expires_at = self._presign("upload_part", params)
        return Presigned(url, {"x-amz-checksum-sha256": checksum_b64}, expires_at)

    def multipart_complete(self, sha256: str, size: int, upload_id: str, checksums: Sequence[str]) -> str:
        """Complete the upload with every part's SHA-256 (the store checks them), then check the object whole.

        Returns:
            the blob's MD5 (hex).

        Raises:
            IncompleteUploadError-like InvalidInputError: parts are missing or of the wrong size.
            ChecksumError: the store refused a part's checksum, or the whole object is not the blob.
        """
        key = self.key(sha256)
        part_size = part_size_for(size, self.part_size)
        parts = max(1, -(-size // part_size))
        if len(checksums) != parts:
            raise InvalidInputError(f"blob {sha256[:12]}: {parts} part checksums needed, {len(checksums)} given")
        listed = self._listed_parts(key, upload_id)
        if listed is None:
            raise InvalidInputError(f"no upload {upload_id[:16]} in progress for this blob")
        wrong = [n for n in range(1, parts + 1) if n not in listed or listed[n][0] != _part_length(n, part_size, size)]
        if wrong:
            raise InvalidInputError(
                f"blob {sha256[:12]}: parts {', '.join(map(str, wrong[:10]))} are not uploaded (or have another size)"
            )
        try:
            self._complete(key, upload_id, listed, checksums)
        except StorageUnavailableError:
            raise
        except Exception as exc:
            raise ChecksumError(f"blob {sha256[:12]}: the store refused the parts ({_error_code(exc)})") from None
        md5 = self.verify_stored(sha256, size, None)
        if md5 is None:
            raise ChecksumError(f"blob {sha256[:12]}: the uploaded parts are not this blob; nothing was stored")
        return md5

    def _listed_parts(self, key: str, upload_id: str) -> dict[int, tuple[int, str]] | None:
        """Every part of an upload in progress (number -> (size, ETag)), or None when the upload is gone."""
        out: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            page = self._call_or_none(
                "list_parts", Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            if page is None:
                return None
            for part in page.get("Parts") or ():
                out[int(part["PartNumber"])] = (int(part["Size"]), part["ETag"])
            if not page.get("IsTruncated"):
                return out
            marker = int(page["NextPartNumberMarker"])

    def _complete(self, key: str, upload_id: str, listed: dict[int, tuple[int, str]], checksums: Sequence[str]) -> None:
        """CompleteMultipartUpload with every part's SHA-256 (the store checks them against the parts)."""
        self._call(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": n, "ETag": listed[n][1], "ChecksumSHA256": checksums[n - 1]}
                    for n in range(1, len(checksums) + 1)
                ]
            },
        )

    # --- bytes through the server (staged, then written with their checksums) --------------------------

    def _install(self, tmp: str, sha256: str, size: int, md5: str | None = None, *, notify: bool = True) -> bool:
        try:
            if size <= self.multipart_threshold:
                extra: dict[str, Any] = {"ContentMD5": b64_md5(md5)} if md5 else {}
                with open(tmp, "rb") as body:
                    self._call(
                        "put_object",
                        Bucket=self.bucket,
                        Key=self.key(sha256),
                        Body=body,
                        ContentLength=size,
                        ChecksumSHA256=b64_sha256(sha256),
                        **extra,
                    )
            else:
                self._put_parts(tmp, sha256, size)
        except StorageUnavailableError:
            raise
        except Exception as exc:
            raise ChecksumError(f"blob {sha256[:12]}: the store refused it ({_error_code(exc)})") from None
        if notify and self.on_install is not None:
            self.on_install([(sha256, size, md5)])
        return True

    def _put_parts(self, tmp: str, sha256: str, size: int) -> None:
        state = self.multipart_open(sha256, size)
        checksums: list[str] = []
        with open(tmp, "rb") as f:
            for number in range(1, state.parts + 1):
                length = _part_length(number, state.part_size, size)
                data = os.pread(f.fileno(), length, (number - 1) * state.part_size)
                checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
                checksums.append(checksum)
                if state.done.get(number) == length:
                    continue
                self._call(
                    "upload_part", Bucket=self.bucket, Key=self.key(sha256), UploadId=state.upload_id,
                    PartNumber=number, Body=data, ChecksumSHA256=checksum,
                )  # fmt: skip
        listed = self._listed_parts(self.key(sha256), state.upload_id) or {}
        self._complete(self.key(sha256), state.upload_id, listed, checksums)

    def open(self, sha256: str):
        found = self._call_or_none("get_object", Bucket=self.bucket, Key=self.key(sha256))
        if found is None:
            raise BlobNotFoundError(f"blob {sha256} is not stored in {self.url}")
        return found["Body"]

    def read_range_into(self, sha256: str, start: int, length: int, writer: BlobWriter) -> int:
        if length <= 0:
            return 0
        found = self._call_or_none(
            "get_object", Bucket=self.bucket, Key=self.key(sha256), Range=f"bytes={start}-{start + length - 1}"
        )
        if found is None:
            raise BlobNotFoundError(f"blob {sha256} is not stored in {self.url}")
        body = found["Body"]
        done = 0
        with body:
            while piece := body.read(1 << 20):
                writer.write(piece)
                done += len(piece)
        return done

    def remove_stale_tmp(self, max_age: float) -> int:
        """Staged files of dead writers, and multipart uploads under our prefix begun more than ``max_age`` ago."""
        removed = super().remove_stale_tmp(max_age)
        cutoff = time.time() - max_age
        head = f"{self.prefix}/blobs/" if self.prefix else "blobs/"
        try:
            uploads = self._call("list_multipart_uploads", Bucket=self.bucket, Prefix=head).get("Uploads") or []
        except StorageUnavailableError:
            logger.warning("could not list multipart uploads of %s", self.url)
            return removed
        for upload in uploads:
            initiated = upload.get("Initiated")
            if initiated is not None and initiated.timestamp() < cutoff:
                try:
                    self._call(
                        "abort_multipart_upload", Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
                except Exception:
                    logger.exception("could not abort a stale multipart upload of %s", upload["Key"])
        return removed


def _part_length(number: int, part_size: int, size: int) -> int:
    """Bytes of part ``number`` (from 1) of a blob of ``size`` bytes."""
    return max(0, min(part_size, size - (number - 1) * part_size))


def open_blobstore(
    url: str | None,
    root: str,
    on_install: InstallListener | None = None,
    **s3_options: Any,
) -> BlobStore:
    """The blob store for ``--blobs``: None or a directory -> :class:`BlobStore` under ``root`` (or that
    directory); ``s3://bucket/prefix`` -> :class:`S3BlobStore` staging under ``root``.

    The caller sets ``on_install`` and MD5 computation on the result as the registry needs.
    """
    if url is None or "://" not in url:
        return BlobStore(os.path.abspath(url) if url else root, on_install)
    return S3BlobStore(url, root, on_install, **s3_options)
