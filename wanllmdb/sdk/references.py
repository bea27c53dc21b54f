"""Reference entries (``Artifact.add_reference``): files that stay where they are, recorded by URI and digest.

``checksum=True`` reads each referenced file or URL once: a ``file://`` file is hashed like ``add_file`` does
(MD5, SHA-256 and chunk digests, remembered in the digest cache), an ``http(s)://`` URL is fetched with one
GET and hashed as it streams (its ETag is kept, as W&B records it). Readers fetch the bytes from the URI
again and check them against these digests (``transport.references``). ``checksum=False`` records the URI
only (``manifest.entry.unchecked_reference``): ``download()`` fetches whatever the URI holds then, unverified
and not cached, and the mount refuses to serve it.

A ``file://`` directory expands to one entry per file under ``name/`` (at most ``max_objects``).
Nothing is uploaded: the registry stores no blob for a reference entry (``Manifest.blobs``).
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

from ..errors import InvalidInputError, InvalidPathError, ReferenceNotFoundError
from ..manifest import ManifestEntry, validate_path
from ..manifest.digest import Digester
from ..manifest.entry import unchecked_reference
from ..settings import CHUNK_SIZE
from ..transport.references import file_uri, local_path, reference_scheme, stream_reference
from .client import get_client
from .hashing import digest_file

#: Files one ``add_reference`` may record when ``max_objects`` is not given (W&B's default).
DEFAULT_MAX_OBJECTS = 10_000_000
#: Referenced files are hashed on this many threads.
HASH_THREADS = 4


def reference_entries(
    uri: str, name: str | None = None, *, checksum: bool = True, max_objects: int | None = None
) -> list[ManifestEntry]:
    """The manifest entries ``add_reference(uri, name, checksum, max_objects)`` records.

    Raises:
        UnsupportedReferenceError: a scheme other than file://, http://, https:// (s3:// included).
        ReferenceNotFoundError: ``checksum=True`` and the file or URL is not there.
        InvalidInputError: a directory with more than ``max_objects`` files, or a bad ``max_objects``.
        InvalidPathError: ``name`` is not a valid artifact path, or none can be taken from the URI.
    """
    scheme = reference_scheme(uri)
    limit = DEFAULT_MAX_OBJECTS if max_objects is None else max_objects
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInputError(f"add_reference: max_objects must be a positive integer, got {max_objects!r}")
    if scheme == "file":
        path = local_path(uri)
        if os.path.isdir(path):
            return _directory_entries(uri, path, name, checksum, limit)
        return [_file_entry(uri, path, _name_for(uri, name, path), checksum)]
    return [_http_entry(uri, _name_for(uri, name, unquote(urlsplit(uri).path)), checksum)]


def _name_for(uri: str, name: str | None, path: str) -> str:
    chosen = name if name is not None else posixpath.basename(path.rstrip("/"))
    if not chosen:
        raise InvalidPathError(f"add_reference: {uri!r} has no file name; pass name=")
    return validate_path(chosen)


def _file_entry(uri: str, path: str, name: str, checksum: bool) -> ManifestEntry:
    if not checksum:
        return unchecked_reference(name, uri)
    if not os.path.isfile(path):
        raise ReferenceNotFoundError(f"add_reference: {uri!r}: {path} is not an existing file or directory")
    d = digest_file(get_client().digests, path)
    return ManifestEntry(name, d.size, d.md5, d.sha256, d.chunk_size, d.chunks, ref=uri)


def _directory_entries(uri: str, root: str, name: str | None, checksum: bool, limit: int) -> list[ManifestEntry]:
    prefix = validate_path(name.strip("/")) + "/" if name and name.strip("/") else ""
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            full = os.path.join(dirpath, filename)
            if not os.path.isfile(full):
                continue
            if len(found) == limit:
                raise InvalidInputError(
                    f"add_reference: {uri!r} holds more than {limit} files; pass a larger max_objects "
                    f"to add_reference"
                )
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            found.append((validate_path(prefix + rel), full))
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="wanllmdb-hash") as pool:
        return list(pool.map(lambda item: _file_entry(file_uri(item[1]), item[1], item[0], checksum), found))


def _http_entry(uri: str, name: str, checksum: bool) -> ManifestEntry:
    if not checksum:
        return unchecked_reference(name, uri)
    digester = Digester(CHUNK_SIZE)
    etag = stream_reference(uri, _DigestingSink(digester), label=f"add_reference {name!r}")
    d = digester.result()
    return ManifestEntry(name, d.size, d.md5, d.sha256, d.chunk_size, d.chunks, ref=uri, etag=etag)


class _DigestingSink:
    def __init__(self, digester: Digester) -> None:
        self._digester = digester

    def write(self, data: bytes | memoryview, /) -> int:
        # Digester may still hash a piece on its MD5 thread after write returns: hand it immutable bytes.
        self._digester.update(bytes(data))
        return len(data)
