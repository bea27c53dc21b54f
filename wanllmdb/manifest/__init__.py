"""Manifests: what a version holds, how its digests are computed, and which names are valid."""

from .digest import FileDigest, hash_bytes, hash_file
from .entry import Manifest, ManifestEntry
from .names import (
    ArtifactRef,
    parse_ref,
    parse_version,
    validate_alias,
    validate_artifact_name,
    validate_artifact_type,
    validate_path,
    validate_project,
)

__all__ = [
    "ArtifactRef",
    "FileDigest",
    "Manifest",
    "ManifestEntry",
    "hash_bytes",
    "hash_file",
    "parse_ref",
    "parse_version",
    "validate_alias",
    "validate_artifact_name",
    "validate_artifact_type",
    "validate_path",
    "validate_project",
]
