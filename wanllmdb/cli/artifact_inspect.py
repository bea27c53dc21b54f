"""``wanllmdb artifact info | diff``: describe a version, compare two (text, or ``--json``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from ..registry import Registry, RunInfo, VersionInfo
from ..settings import format_size
from .artifact_manage import _ref_argument, _registry, _resolve
from .common import common_parent, dump_json, out

#: VersionInfo fields ``info`` shows on lines of their own; any other field (e.g. a TTL) is listed after them.
_SHOWN = {
    "project", "name", "type", "version", "digest", "aliases", "created_at", "size", "file_count", "description",
    "metadata", "logged_by", "tags", "id", "updated_at", "state", "link_source", "manifest",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands to ``wanllmdb artifact``."""
    info = sub.add_parser(
        "info",
        help="describe a version: files, size, digest, aliases, tags, metadata, lineage",
        parents=[common_parent()],
    )
    _ref_argument(info)
    info.add_argument("--json", action="store_true", help="one JSON document")
    info.set_defaults(func=cmd_info)

    diff = sub.add_parser(
        "diff", help="files added, removed and changed between two versions", parents=[common_parent()]
    )
    diff.add_argument("ref_a", metavar="REF_A", help="project/name:v1 (or name:v1 with -p)")
    diff.add_argument("ref_b", metavar="REF_B", help="project/name:v2, or another artifact's version")
    diff.add_argument("--project", "-p", help="project of REFs that name none")
    diff.add_argument("--json", action="store_true", help="one JSON document")
    diff.set_defaults(func=cmd_diff)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def _run(run: RunInfo | None) -> dict | None:
    if run is None:
        return None
    return {"id": run.id, "project": run.project, "name": run.name, "state": run.state, "job_type": run.job_type}


def describe(registry: Registry, info: VersionInfo) -> dict:
    """What ``artifact info --json`` prints."""
    data = info.to_dict(with_manifest=False)
    data["qualified_name"] = info.qualified_name
    data["created"] = _iso(info.created_at)
    data["updated"] = _iso(info.updated_at or info.created_at)
    data["logged_by_run"] = _run(registry.logged_by(info.project, info.name, info.version))
    data["used_by"] = [_run(r) for r in registry.used_by(info.project, info.name, info.version)]
    return data


def cmd_info(args: argparse.Namespace) -> int:
    registry = _registry()
    info = _resolve(registry, args)
    data = describe(registry, info)
    if args.json:
        dump_json(data)
        return 0
    logged = data["logged_by_run"]
    rows = [
        ("type", info.type),
        ("files", f"{info.file_count}, {format_size(info.size)} ({info.size} bytes)"),
        ("digest", info.digest),
        ("id", info.id or "-"),
        ("aliases", ", ".join(info.aliases) or "-"),
        ("tags", ", ".join(info.tags) or "-"),
        ("description", info.description or "-"),
        ("state", info.state),
        ("created", data["created"]),
        ("updated", data["updated"]),
        *[(key, json.dumps(value, default=str)) for key, value in data.items() if _extra(key)],
        ("metadata", json.dumps(dict(info.metadata), default=str) if info.metadata else "-"),
        ("link of", info.link_source or "-"),
        ("logged by", f"run {logged['id']} ({logged['name']})" if logged else "-"),
        ("used by", ", ".join(f"run {r['id']} ({r['name']})" for r in data["used_by"]) or "-"),
    ]
    out(info.qualified_name)
    for key, value in rows:
        out(f"  {key + ':':<13}{value}")
    return 0


def _extra(key: str) -> bool:
    return key not in _SHOWN and key not in ("qualified_name", "created", "updated", "logged_by_run", "used_by")


def _identity(entry) -> tuple:
    return (entry.sha256, entry.ref) if not entry.is_checked else (entry.sha256,)


def compare(a: VersionInfo, b: VersionInfo) -> dict:
    """What ``artifact diff --json`` prints: files by path, changed = different content (sha256)."""
    assert a.manifest is not None and b.manifest is not None
    old, new = dict(a.manifest.entries), dict(b.manifest.entries)
    added = [{"path": p, "size": new[p].size} for p in sorted(new.keys() - old.keys())]
    removed = [{"path": p, "size": old[p].size} for p in sorted(old.keys() - new.keys())]
    changed = [
        {
            "path": p,
            "size_a": old[p].size,
            "size_b": new[p].size,
            "sha256_a": old[p].sha256,
            "sha256_b": new[p].sha256,
        }
        for p in sorted(old.keys() & new.keys())
        if _identity(old[p]) != _identity(new[p])
    ]
    unchanged = len(old.keys() & new.keys()) - len(changed)
    return {
        "a": a.qualified_name,
        "b": b.qualified_name,
        "identical": a.digest == b.digest,
        "added": added,
        "removed": removed,
        "changed": changed,
        "summary": {
            "added": len(added),
            "added_bytes": sum(f["size"] for f in added),
            "removed": len(removed),
            "removed_bytes": sum(f["size"] for f in removed),
            "changed": len(changed),
            "unchanged": unchanged,
            "size_a": a.size,
            "size_b": b.size,
        },
    }


def cmd_diff(args: argparse.Namespace) -> int:
    registry = _registry()
    a = _resolve(registry, argparse.Namespace(ref=args.ref_a, project=args.project))
    b = _resolve(registry, argparse.Namespace(ref=args.ref_b, project=args.project))
    data = compare(a, b)
    if args.json:
        dump_json(data)
        return 0
    for f in data["added"]:
        out(f"+ {f['path']}  {format_size(f['size'])}")
    for f in data["removed"]:
        out(f"- {f['path']}  {format_size(f['size'])}")
    for f in data["changed"]:
        out(f"~ {f['path']}  {format_size(f['size_a'])} -> {format_size(f['size_b'])}")
    s = data["summary"]
    out(
        f"{data['a']} -> {data['b']}: {s['added']} added ({format_size(s['added_bytes'])}), "
        f"{s['removed']} removed ({format_size(s['removed_bytes'])}), {s['changed']} changed, "
        f"{s['unchanged']} unchanged; {format_size(s['size_a'])} -> {format_size(s['size_b'])}"
    )
    return 0
