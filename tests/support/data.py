"""Helpers that build real files and log them straight through a Registry (no SDK in between)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from wanllmdb.manifest import Manifest, ManifestEntry, hash_file
from wanllmdb.registry import DraftSpec, FinalizeResult, Registry


def read_range(registry: Registry, sha256: str, start: int, length: int) -> bytes:
    """A range of a blob as bytes, through the registry's one range call (``fetch_range_into``)."""
    out = io.BytesIO()
    registry.fetch_range_into(sha256, start, length, out)
    return out.getvalue()


def write_files(root: str, files: Mapping[str, bytes]) -> dict[str, str]:
    """Write ``files`` (artifact path -> bytes) under ``root``; returns artifact path -> local path."""
    out = {}
    for rel, data in files.items():
        local = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(data)
        out[rel] = local
    return out


def manifest_for(local_paths: Mapping[str, str], chunk_size: int | None = None) -> Manifest:
    entries = []
    for rel, local in local_paths.items():
        d = hash_file(local, chunk_size) if chunk_size else hash_file(local)
        entries.append(ManifestEntry(rel, d.size, d.md5, d.sha256, d.chunk_size, d.chunks))
    return Manifest.from_entries(entries)


def log_files(
    registry: Registry,
    tmp_root: str,
    project: str,
    name: str,
    files: Mapping[str, bytes],
    *,
    type: str = "dataset",
    aliases: Sequence[str] = (),
    run_id: str | None = None,
    metadata: Mapping | None = None,
    tags: Sequence[str] = (),
    **finalize: Any,
) -> FinalizeResult:
    folder = os.path.join(tmp_root, uuid.uuid4().hex)
    local = write_files(folder, files)
    manifest = manifest_for(local)
    draft = registry.create_draft(
        DraftSpec(project, name, type, manifest, metadata=metadata or {}, run_id=run_id)
    )
    by_sha = {manifest.get(rel).sha256: path for rel, path in local.items()}
    for target in draft.missing:
        registry.upload_blob(draft, target, by_sha[target.sha256])
    return registry.finalize_draft(draft.id, aliases, tags=tags, **finalize)
