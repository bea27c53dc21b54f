"""One exception hierarchy for the whole package.

Every error is a :class:`WanllmdbError`; leaves also inherit the builtin a caller would naturally catch
(``LookupError`` for things that are not there, ``ValueError`` for bad input and checksum mismatches,
``OSError`` for transport and filesystem failures). Each class has a stable ``code`` that travels over the
HTTP protocol, so the HTTP registry raises the same classes as the embedded one.
"""

from __future__ import annotations

from typing import Any


class WanllmdbError(Exception):
    """Root of every error raised by wanllmdb."""

    code = "error"
    http_status = 500


# --- bad input -------------------------------------------------------------------------------------------


class InvalidInputError(WanllmdbError, ValueError):
    """Input that can never be valid (a name, a path, a reference, a setting)."""

    code = "invalid_input"
    http_status = 400


class InvalidNameError(InvalidInputError):
    code = "invalid_name"


class InvalidPathError(InvalidInputError):
    code = "invalid_path"


class InvalidRefError(InvalidInputError):
    code = "invalid_ref"


class InvalidManifestError(InvalidInputError):
    code = "invalid_manifest"


class ManifestMismatchError(InvalidManifestError):
    """A manifest entry contradicts the stored blob it names (size or MD5)."""

    code = "manifest_mismatch"


class ConfigError(InvalidInputError):
    code = "config_error"


class ArtifactTypeMismatchError(InvalidInputError):
    """An artifact name is already registered with another type."""

    code = "type_mismatch"
    http_status = 409


class AliasError(InvalidInputError):
    """An alias that cannot be applied (e.g. ``v3`` on a version that is not v3)."""

    code = "invalid_alias"


class InvalidTagError(InvalidInputError):
    """A version tag that is empty, too long or has characters outside letters, digits, ``-``, ``_``, spaces."""

    code = "invalid_tag"


class ConflictError(WanllmdbError, RuntimeError):
    """The request contradicts the registry's current state (it may succeed once that changes)."""

    code = "conflict"
    http_status = 409


class AliasProtectedError(ConflictError):
    """A version cannot be deleted while custom aliases point at it (``delete_aliases`` not given)."""

    code = "alias_protected"


class ArtifactFinalizedError(WanllmdbError, RuntimeError):
    """The artifact was already logged; its contents can no longer change."""

    code = "artifact_finalized"
    http_status = 409


class EmptyArtifactError(InvalidInputError):
    code = "empty_artifact"


# --- not found -------------------------------------------------------------------------------------------


class CommError(WanllmdbError):
    """W&B's error for a failed exchange with the backend; W&B code catches it around ``Api().artifact()``
    and ``run.use_artifact()``. The not-found errors of projects and artifacts are CommErrors too."""

    code = "comm_error"


class NotFoundError(WanllmdbError, LookupError):
    code = "not_found"
    http_status = 404


class ProjectNotFoundError(NotFoundError, CommError):
    code = "project_not_found"


class ArtifactNotFoundError(NotFoundError, CommError):
    code = "artifact_not_found"


class VersionNotFoundError(ArtifactNotFoundError):
    code = "version_not_found"


class FileNotInArtifactError(NotFoundError, KeyError):
    """A path that the artifact's manifest does not hold."""

    code = "file_not_in_artifact"

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class BlobNotFoundError(NotFoundError):
    code = "blob_not_found"


class DraftNotFoundError(NotFoundError):
    code = "draft_not_found"


class RunNotFoundError(NotFoundError):
    code = "run_not_found"


class LocalFileNotFoundError(NotFoundError, FileNotFoundError, ValueError):
    """A local file given to the SDK (e.g. to ``add_file``) does not exist (a ``ValueError`` too, as W&B raises)."""

    code = "local_file_not_found"
    http_status = 400

    def __init__(self, message: str) -> None:
        # FileNotFoundError is an OSError: keep str(e) the plain message.
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- integrity -------------------------------------------------------------------------------------------


class ChecksumError(WanllmdbError, ValueError):
    """Bytes whose digest or size differs from what the manifest promises."""

    code = "checksum_mismatch"
    http_status = 400

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ArtifactVerificationError(ChecksumError):
    """``Artifact.verify()`` found files that differ from the manifest (W&B raises ``ValueError``)."""

    code = "verification_failed"


class ArtifactNotLoggedError(WanllmdbError, RuntimeError):
    """Something only a logged artifact has (its version, id, ...) was asked of a draft."""

    code = "artifact_not_logged"
    http_status = 409


class IncompleteDraftError(WanllmdbError, RuntimeError):
    """A draft was finalized before all of its blobs were stored."""

    code = "incomplete_draft"
    http_status = 409

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


# --- transport and remote failures -----------------------------------------------------------------------


class TransportError(WanllmdbError, OSError):
    """An HTTP request failed; carries the status code and the response when there was one."""

    code = "transport_error"
    http_status = 502

    def __init__(self, message: str, *, status: int | None = None, response: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.response = response

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AuthenticationError(TransportError):
    """401/403 from the server, or a refused presigned URL."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(AuthenticationError):
    code = "forbidden"
    http_status = 403


class PresignedURLExpiredError(ForbiddenError):
    code = "url_expired"


class ServerError(TransportError):
    code = "server_error"


class ServerBusyError(ServerError):
    """The server is at its limit of concurrent large requests; retry after ``retry_after`` seconds (503)."""

    code = "server_busy"
    http_status = 503
    retry_after = 5


class ServerUnreachableError(TransportError):
    code = "unreachable"


class RequestTooLargeError(InvalidInputError):
    code = "too_large"
    http_status = 413


# --- references (add_reference) --------------------------------------------------------------------------


class UnsupportedReferenceError(InvalidInputError):
    """A reference URI whose scheme cannot be read here (``s3://`` until an S3 client is in the project)."""

    code = "unsupported_reference"


class ReferenceNotFoundError(NotFoundError):
    """The file or URL a reference entry was recorded from is gone (missing file, HTTP 404/410)."""

    code = "reference_not_found"


class ReferenceChangedError(ChecksumError):
    """The data behind a reference entry differs from what was recorded when it was logged."""

    code = "reference_changed"


# --- local machinery -------------------------------------------------------------------------------------


class CacheError(WanllmdbError, OSError):
    code = "cache_error"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageUnavailableError(ServerError):
    """The server's object store (an S3 bucket) cannot be reached or refused the server; the message names it."""

    code = "storage_unavailable"
    http_status = 503


class DatabaseError(WanllmdbError, OSError):
    """A database (a SQLite file: registry, cache index; or the server's PostgreSQL) is damaged, is not a
    database, or cannot be used; the message names it."""

    code = "database_error"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatabaseUnavailableError(DatabaseError, ServerBusyError):
    """The metadata database (PostgreSQL) cannot be reached, or has no connection free in time; the message
    names it (password masked). A server answers 503 with Retry-After, which clients retry."""

    code = "database_unavailable"
    http_status = 503


class DatabaseBusyError(DatabaseUnavailableError):
    """A write lost a deadlock or a serialization conflict (PostgreSQL 40P01/40001) and was rolled back
    whole: nothing of it was written, and repeating it is safe (503, retried by clients)."""

    code = "database_busy"


class FetchError(WanllmdbError, OSError):
    """Bytes could not be fetched in time or at all (the mount turns this into EIO)."""

    code = "fetch_error"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MountError(WanllmdbError, OSError):
    code = "mount_error"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReadOnlyError(WanllmdbError, PermissionError):
    """Any attempt to change the mounted tree."""

    code = "read_only"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IsDirectoryError(WanllmdbError, IsADirectoryError):
    code = "is_a_directory"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotDirectoryError(WanllmdbError, NotADirectoryError):
    code = "not_a_directory"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


ERRORS_BY_CODE: dict[str, type[WanllmdbError]] = {
    cls.code: cls for cls in [WanllmdbError, *_all_subclasses(WanllmdbError)]
}
