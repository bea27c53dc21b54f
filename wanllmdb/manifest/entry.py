"""ManifestEntry and Manifest: what a version holds, as frozen values with a stable JSON form.

The manifest digest depends only on content (each path with its size and SHA-256), so logging identical
content always yields the identical digest, whatever the order files were added in, the chunk size, or
the metadata.

A *reference* entry (``Artifact.add_reference``) has ``ref`` set to the URI its bytes are read from; the
registry stores nothing for it. With a checksum its size and digests are those of the bytes read when it was
added (readers check them); without one (``checksum=False``) its size is 0 and its digests are those of the
URI text (:func:`unchecked_reference`), so it stands for "whatever the URI holds". A reference takes part in
the manifest digest with its URI added to the triple: a version that reads its bytes from elsewhere differs
from one that holds them (otherwise logging the stored copy after a reference of the same content would
be taken as "unchanged" and never upload the bytes), and moving the data to another URI makes a new version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import InvalidManifestError, InvalidPathError
from .chunkhash import CHUNK_DIGEST
from .names import validate_path

MANIFEST_FORMAT = 1
#: How every text :meth:`Manifest.to_json` writes begins (the canonical form registries store and servers send).
CANONICAL_PREFIX = f'{{"format":{MANIFEST_FORMAT},"entries":['
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


#: The largest file size a manifest may state (what a signed 64-bit integer, and SQLite, can hold).
MAX_FILE_SIZE = 2**63 - 1

@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a version.

    Attributes:
        path: relative POSIX path inside the artifact.
        size: bytes.
        md5, sha256: lowercase hex digests of the whole file.
        chunk_size: for files larger than one chunk, the chunk length; 0 otherwise.
        chunks: the digest of each chunk in order (empty for single-chunk files): ``blake3:`` + hex, or bare
            hex for SHA-256 (:mod:`.chunkhash`); one algorithm per file.
        ref: the URI of a reference entry (``file://``, ``http(s)://``); None for stored files.
        etag: the ETag an HTTP reference was served with when it was added (as W&B records it), if any.
    """

    path: str
    size: int
    md5: str
    sha256: str
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()
    ref: str | None = None
    etag: str | None = None

    def __post_init__(self) -> None:
        try:
            validate_path(self.path)
        except InvalidPathError as exc:
            raise InvalidManifestError(str(exc)) from None
        if self.ref is not None and (not isinstance(self.ref, str) or "://" not in self.ref):
            raise InvalidManifestError(f"{self.path}: ref must be a URI, got {self.ref!r:.200}")
        if self.etag is not None and (self.ref is None or not isinstance(self.etag, str)):
            raise InvalidManifestError(f"{self.path}: an etag belongs to a reference entry, as a string")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size <= MAX_FILE_SIZE:
            raise InvalidManifestError(
                f"{self.path}: size must be an integer from 0 to {MAX_FILE_SIZE}, got {self.size!r}"
            )
        if not isinstance(self.md5, str) or not _HEX32.fullmatch(self.md5):
            raise InvalidManifestError(f"{self.path}: md5 must be 32 lowercase hex digits")
        if not isinstance(self.sha256, str) or not _HEX64.fullmatch(self.sha256):
            raise InvalidManifestError(f"{self.path}: sha256 must be 64 lowercase hex digits")
        if not isinstance(self.chunks, tuple):
            object.__setattr__(self, "chunks", tuple(self.chunks))
        if self.chunks or self.chunk_size:
            if self.chunk_size <= 0 or self.size <= self.chunk_size:
                raise InvalidManifestError(
                    f"{self.path}: chunk digests are only for files larger than their chunk size"
                )
            expected = -(-self.size // self.chunk_size)
            if len(self.chunks) != expected:
                raise InvalidManifestError(
                    f"{self.path}: {len(self.chunks)} chunk digests for {expected} chunks of {self.chunk_size} bytes"
                )
            for digest in self.chunks:
                if not isinstance(digest, str) or not CHUNK_DIGEST.fullmatch(digest):
                    raise InvalidManifestError(
                        f"{self.path}: chunk digests must be 64 lowercase hex digits, bare (SHA-256) or after "
                        f"'blake3:', got {digest!r:.80}"
                    )
            kinds = {len(digest) for digest in self.chunks}
            if len(kinds) > 1:
                raise InvalidManifestError(f"{self.path}: chunk digests mix algorithms (SHA-256 and BLAKE3)")

    @property
    def is_chunked(self) -> bool:
        return bool(self.chunks)

    @property
    def is_reference(self) -> bool:
        """Its bytes live at ``ref``, not in the registry."""
        return self.ref is not None

    @property
    def is_checked(self) -> bool:
        """Its size and digests are those of its bytes: False only for references added with checksum=False."""
        return self.ref is None or self.size != 0 or self.sha256 != _text_sha256(self.ref)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def with_path(self, path: str) -> ManifestEntry:
        return ManifestEntry(
            path, self.size, self.md5, self.sha256, self.chunk_size, self.chunks, self.ref, self.etag
        )

    @property
    def digest(self) -> str:
        """W&B's digest of a file: its MD5, base64-encoded (``sha256`` is the hex SHA-256)."""
        return base64.b64encode(bytes.fromhex(self.md5)).decode("ascii")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "md5": self.md5, "sha256": self.sha256}
        if self.chunks:
            data["chunk_size"] = self.chunk_size
            data["chunks"] = list(self.chunks)
        if self.ref is not None:
            data["ref"] = self.ref
        if self.etag is not None:
            data["etag"] = self.etag
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestEntry:
        if not isinstance(data, Mapping):
            raise InvalidManifestError(f"manifest entry must be an object, got {type(data).__name__}")
        try:
            return cls(
                path=data["path"],
                size=data["size"],
                md5=data["md5"],
                sha256=data["sha256"],
                chunk_size=data.get("chunk_size", 0),
                chunks=tuple(data.get("chunks", ())),
                ref=data.get("ref"),
                etag=data.get("etag"),
            )
        except KeyError as exc:
            raise InvalidManifestError(f"manifest entry lacks {exc.args[0]!r}: {dict(data)!r:.200}") from None
        except TypeError as exc:
            raise InvalidManifestError(f"malformed manifest entry: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """The files of a version, keyed and ordered by path.

    Raises:
        InvalidManifestError: on construction, for duplicate paths or a path that is both a file and a
            directory (``a`` and ``a/b``), which no filesystem can show.
    """

    entries: Mapping[str, ManifestEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ordered = dict(sorted(self.entries.items()))
        for key, entry in ordered.items():
            if key != entry.path:
                raise InvalidManifestError(f"manifest key {key!r} differs from its entry path {entry.path!r}")
        _check_no_file_dir_clash(ordered)
        object.__setattr__(self, "entries", ordered)

    @classmethod
    def from_entries(cls, entries: Iterable[ManifestEntry]) -> Manifest:
        mapping: dict[str, ManifestEntry] = {}
        for entry in entries:
            if entry.path in mapping:
                raise InvalidManifestError(f"duplicate path in manifest: {entry.path!r}")
            mapping[entry.path] = entry
        return cls._owning(mapping)

    @classmethod
    def _owning(cls, mapping: dict[str, ManifestEntry]) -> Manifest:
        """The manifest of a dict built here, keyed by each entry's own path: what ``__post_init__`` does,
        without its key check (true by construction), and without copying a dict already in path order
        (a registry's manifests are)."""
        keys = list(mapping)
        in_order = sorted(keys)
        ordered = mapping if keys == in_order else {key: mapping[key] for key in in_order}
        _check_no_file_dir_clash(ordered)
        manifest = object.__new__(cls)
        object.__setattr__(manifest, "entries", ordered)
        return manifest

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: object) -> bool:
        return path in self.entries

    def get(self, path: str) -> ManifestEntry | None:
        return self.entries.get(path)

    @cached_property
    def digest(self) -> str:
        """SHA-256 over the sorted (path, size, sha256) triples, a reference's URI appended to its triple."""
        canonical = json.dumps(
            [[e.path, e.size, e.sha256, *([e.ref] if e.ref is not None else [])] for e in self.entries.values()],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def size(self) -> int:
        return sum(e.size for e in self.entries.values())

    @property
    def file_count(self) -> int:
        return len(self.entries)

    def blobs(self) -> dict[str, int]:
        """Distinct blobs (sha256 -> size) the registry stores for this manifest: reference entries excluded."""
        return {e.sha256: e.size for e in self.entries.values() if e.ref is None}

    def to_dict(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "entries": [e.to_dict() for e in self.entries.values()]}

    def to_json(self) -> str:
        return "".join(self.json_pieces())

    def json_pieces(self, batch: int = 1024) -> Iterator[str]:
        """:meth:`to_json` in pieces of ``batch`` entries: a writer of a million entries never holds a dict
        per entry (~400 MB) nor, unless it joins them, the whole text."""
        yield CANONICAL_PREFIX
        entries = list(self.entries.values())
        for start in range(0, len(entries), batch):
            text = json.dumps([e.to_dict() for e in entries[start : start + batch]], separators=(",", ":"),
                              ensure_ascii=False)
            yield ("," if start else "") + text[1:-1]
        yield "]}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, consume: bool = False) -> Manifest:
        """The manifest of parsed JSON; ``consume`` drops each entry's dict from ``data`` as soon as it is
        converted, so that a large manifest is never held twice."""
        if not isinstance(data, Mapping) or not isinstance(data.get("entries"), list):
            raise InvalidManifestError("manifest must be an object with an 'entries' list")
        if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise InvalidManifestError(f"unsupported manifest format {data.get('format')!r}")
        items: list = data["entries"]
        mapping: dict[str, ManifestEntry] = {}
        for i in range(len(items)):
            item = items[i]
            if consume:
                items[i] = None
            # The fast path takes only entries it can prove valid; anything else (and every bad entry)
            # goes through the full checks, which raise the typed error. Same order of checks as
            # from_entries: an entry is converted, then checked against the paths before it.
            entry = _plain_entry(item) or ManifestEntry.from_dict(item)
            path = entry.path
            if path in mapping:
                raise InvalidManifestError(f"duplicate path in manifest: {path!r}")
            mapping[path] = entry
        return cls._owning(mapping)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidManifestError(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(data)


_HEX_DIGITS = b"0123456789abcdef"
# The slots' own setters: they skip the frozen class's __setattr__ (as dataclass's __init__ does) at half
# the cost of object.__setattr__.
_new_entry = object.__new__
_set_path = ManifestEntry.path.__set__  # type: ignore[attr-defined]
_set_size = ManifestEntry.size.__set__  # type: ignore[attr-defined]
_set_md5 = ManifestEntry.md5.__set__  # type: ignore[attr-defined]
_set_sha256 = ManifestEntry.sha256.__set__  # type: ignore[attr-defined]
_set_chunk_size = ManifestEntry.chunk_size.__set__  # type: ignore[attr-defined]
_set_chunks = ManifestEntry.chunks.__set__  # type: ignore[attr-defined]
_set_ref = ManifestEntry.ref.__set__  # type: ignore[attr-defined]
_set_etag = ManifestEntry.etag.__set__  # type: ignore[attr-defined]


def _plain_entry(item: object) -> ManifestEntry | None:
    """The entry of ``item`` if it is a plain stored file (exactly path, size, md5, sha256) whose fields
    are all cheaply proved valid; None when that proof fails, whatever the reason.

    A manifest from the registry is almost all such entries. The full checks of ``__post_init__`` cost
    about 7-14 us an entry (mostly :func:`validate_path`), this about 2 us. The proofs accept only a subset
    of what ``__post_init__`` accepts: an ASCII path of at most 255 characters (so no segment, nor the
    whole, is over its byte limit) with no NUL, no empty segment and no segment starting with a dot (which
    excludes ``.`` and ``..``); an int (not a bool) size in range; digests of the exact length holding only
    lowercase hex digits (``strip`` of their ASCII bytes leaves something if any other character is there).
    """
    if type(item) is not dict or len(item) != 4:
        return None
    path = item.get("path")
    size = item.get("size")
    md5 = item.get("md5")
    sha256 = item.get("sha256")
    if not (
        type(path) is str
        and 0 < len(path) <= 255
        and path.isascii()
        and path[0] not in "/."
        and path[-1] != "/"
        and "//" not in path
        and "/." not in path
        and "\x00" not in path
        and type(size) is int
        and 0 <= size <= MAX_FILE_SIZE
        and type(md5) is str
        and len(md5) == 32
        and md5.isascii()
        and not md5.encode().strip(_HEX_DIGITS)
        and type(sha256) is str
        and len(sha256) == 64
        and sha256.isascii()
        and not sha256.encode().strip(_HEX_DIGITS)
    ):
        return None
    entry = _new_entry(ManifestEntry)
    _set_path(entry, path)
    _set_size(entry, size)
    _set_md5(entry, md5)
    _set_sha256(entry, sha256)
    _set_chunk_size(entry, 0)
    _set_chunks(entry, ())
    _set_ref(entry, None)
    _set_etag(entry, None)
    return entry


def trusted_entry(
    path: str, size: int, md5: str, sha256: str, chunk_size: int, chunks: tuple[str, ...], ref: str | None,
    etag: str | None,
) -> ManifestEntry:
    """An entry made without its checks, from fields read back from where this process wrote a checked entry
    (the mount's on-disk index): ~10x cheaper than the constructor."""
    entry = _new_entry(ManifestEntry)
    _set_path(entry, path)
    _set_size(entry, size)
    _set_md5(entry, md5)
    _set_sha256(entry, sha256)
    _set_chunk_size(entry, chunk_size)
    _set_chunks(entry, chunks)
    _set_ref(entry, ref)
    _set_etag(entry, etag)
    return entry


def unchecked_reference(path: str, uri: str) -> ManifestEntry:
    """The entry of a reference recorded without a checksum: size 0, digests of the URI text.

    No file of size 0 has those digests (the URI is never empty), so :attr:`ManifestEntry.is_checked` can
    tell such an entry from a checked one.
    """
    md5 = hashlib.md5(uri.encode("utf-8"), usedforsecurity=False).hexdigest()
    return ManifestEntry(path, 0, md5, _text_sha256(uri), ref=uri)


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_tree(paths: Iterable[str]) -> None:
    """Refuse a set of file paths in which one path is also the directory of another (``a`` and ``a/b``).

    Raises:
        InvalidManifestError: naming both paths.
    """
    _check_no_file_dir_clash(dict.fromkeys(paths))


def _check_no_file_dir_clash(ordered: Mapping[str, object]) -> None:
    # Checking every parent prefix of every path against the set of file paths finds each clash in
    # O(total path segments).
    files = ordered.keys()
    for path in files:
        cut = path.rfind("/")
        while cut > 0:
            parent = path[:cut]
            if parent in files:
                raise InvalidManifestError(f"{parent!r} is a file and also a directory holding {path!r}")
            cut = parent.rfind("/")
