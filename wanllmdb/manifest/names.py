"""Validation of the names a user gives: projects, artifacts, aliases, refs and file paths.

Every layer (SDK, server, download, mount) calls these, so a bad name is refused with the same message
wherever it enters. Rules (DESIGN.md "Names and layout"):

- project and artifact names, aliases: ``[A-Za-z0-9._-]``, 1-128 characters, not ``.`` or ``..``
  (they become directory names in the mount);
- versions are ``v1, v2, ...``; an alias spelled like a version is only accepted for that very version;
- file paths are relative POSIX paths: no leading ``/``, no empty, ``.`` or ``..`` segment, no NUL,
  every segment at most 255 bytes of UTF-8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidNameError, InvalidPathError, InvalidRefError

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_VERSION_RE = re.compile(r"v([0-9]+)")
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    if not _NAME_RE.fullmatch(value) or value in (".", ".."):
        shown = value if len(value) <= 160 else value[:160] + "..."
        raise InvalidNameError(
            f"invalid {what} {shown!r}: use 1-128 characters from A-Z a-z 0-9 . _ - (not '.' or '..')"
        )
    return value


def validate_project(name: object) -> str:
    return _check_name(name, "project name")


def validate_artifact_name(name: object) -> str:
    return _check_name(name, "artifact name")


def validate_artifact_type(type_: object) -> str:
    """An artifact type ("dataset", "model", ...): free text, 1-128 characters, no NUL."""
    if not isinstance(type_, str) or not type_ or len(type_) > 128 or "\x00" in type_:
        raise InvalidNameError(
            f"artifact type must be a non-empty string of at most 128 characters: {type_!r}"
        )
    return type_


def parse_version(text: str) -> int | None:
    """``"v3"`` -> 3; anything not spelled like a version -> None.

    Raises:
        InvalidRefError: spelled like a version but not a valid one (``v0``, ``v007``).
    """
    match = _VERSION_RE.fullmatch(text)
    if not match:
        return None
    digits = match.group(1)
    if digits.startswith("0"):
        raise InvalidRefError(
            f"invalid version {text!r}: versions are v1, v2, v3, ... (no v0, no leading zeros)"
        )
    return int(digits)


def validate_alias(alias: object) -> str:
    """An alias name; ``v3``-style names pass here and are checked against the version when applied."""
    _check_name(alias, "alias")
    assert isinstance(alias, str)
    parse_version(alias)
    return alias


def validate_path(path: object) -> str:
    """A file path inside an artifact, returned unchanged when valid.

    Raises:
        InvalidPathError: naming the path and the rule it breaks.
    """
    if not isinstance(path, str):
        raise InvalidPathError(f"file path must be a string, got {type(path).__name__}")
    shown = path if len(path) <= 160 else path[:160] + "..."
    if path == "":
        raise InvalidPathError("file path is empty")
    if "\x00" in path:
        raise InvalidPathError(f"invalid file path {shown!r}: contains a NUL character")
    if path.startswith("/"):
        raise InvalidPathError(f"invalid file path {shown!r}: must be relative (no leading '/')")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPathError(f"invalid file path {shown!r}: not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPathError(f"invalid file path {shown!r}: longer than {MAX_PATH_BYTES} bytes")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidPathError(f"invalid file path {shown!r}: empty segment ('//' or trailing '/')")
        if segment in (".", ".."):
            raise InvalidPathError(f"invalid file path {shown!r}: '{segment}' segments are not allowed")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidPathError(
                f"invalid file path {shown!r}: a segment is longer than {MAX_SEGMENT_BYTES} bytes"
            )
    return path


@dataclass(frozen=True)
class ArtifactRef:
    """A parsed ``[project/]name[:vN|:alias]``; ``selector`` is ``"latest"`` when none was given."""

    project: str | None
    name: str
    selector: str = "latest"

    @property
    def version(self) -> int | None:
        return parse_version(self.selector)

    def __str__(self) -> str:
        prefix = f"{self.project}/" if self.project else ""
        return f"{prefix}{self.name}:{self.selector}"


def parse_ref(ref: object, *, version: str | int | None = None, alias: str | None = None) -> ArtifactRef:
    """Parse an artifact reference as W&B users write it.

    ``version=`` / ``alias=`` (as in ``run.use_artifact(name, version=..., alias=...)``) override a missing
    selector; giving both a selector in the ref and a different one as keyword is an error.

    Raises:
        InvalidRefError: the reference cannot name any artifact.
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidRefError(f"artifact reference must be a non-empty string, got {ref!r}")
    project: str | None = None
    rest = ref
    if "/" in rest:
        parts = rest.split("/")
        if len(parts) > 3:
            raise InvalidRefError(
                f"invalid artifact reference {ref!r}: expected [project/]name[:version|:alias]"
            )
        # W&B refs may carry an entity: entity/project/name:alias. The entity has no meaning here.
        project, rest = parts[-2], parts[-1]
    name, sep, selector = rest.partition(":")
    if sep and not selector:
        raise InvalidRefError(f"invalid artifact reference {ref!r}: nothing after ':'")
    if ":" in selector:
        raise InvalidRefError(f"invalid artifact reference {ref!r}: more than one ':'")
    try:
        if project is not None:
            validate_project(project)
        validate_artifact_name(name)
    except InvalidNameError as exc:
        raise InvalidRefError(f"invalid artifact reference {ref!r}: {exc}") from None
    keyword = None
    if version is not None:
        keyword = version if isinstance(version, str) and version.startswith("v") else f"v{version}"
    if alias is not None:
        if keyword is not None and keyword != alias:
            raise InvalidRefError(f"give either version= or alias= for {ref!r}, not both")
        keyword = alias
    if selector and keyword is not None and keyword != selector:
        raise InvalidRefError(
            f"artifact reference {ref!r} already names {selector!r}; it conflicts with {keyword!r}"
        )
    chosen = selector or keyword or "latest"
    try:
        validate_alias(chosen)
    except InvalidNameError as exc:
        raise InvalidRefError(f"invalid artifact reference {ref!r}: {exc}") from None
    return ArtifactRef(project, name, chosen)
