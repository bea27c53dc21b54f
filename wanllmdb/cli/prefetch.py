"""``wanllmdb prefetch REF... [--mount MOUNTPOINT] [--dry-run] [--threads N] [--json]``: warm the shared cache.

Each REF is one of:

- a version, ``[project/]name[:version|:alias]`` (project from ``--project`` when the REF has none);
- a path prefix of a version, ``[project/]name:SELECTOR/PATH``: everything after the first ``/`` that
  follows the ``:`` is a path in the version. ``PATH`` selects the file of that path or every file under the
  directory of that path; ``PATH/`` (trailing slash) only the files under the directory;
- a path in a ``wanllmdb mount`` (``~/artifacts/vision/mnist/latest/images``): the mount layout
  ``<mount>/<project>/<name>/vN/<path>`` (``<mount>/<name>/vN/<path>`` for a ``--project`` mount) is
  mapped back to a version and a path prefix, aliases (symlinks such as ``latest``) resolved. The registry
  and cache directory are those the mount uses (from its state record), else the current settings.

Only the blobs missing from the cache are fetched: presigned in one request, then fetched by ``--threads``
workers and verified before they are admitted. ``--mount MOUNTPOINT`` warms the cache of that mount for
registry REFs too. A one-line summary ends the output (``--json``: one JSON document instead).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

from ..errors import FileNotInArtifactError, InvalidInputError, InvalidRefError
from ..manifest import parse_ref
from ..settings import format_size, load_settings
from .common import common_parent, dump_json, out

_VERSION_DIR = re.compile(r"^v\d+$")
MOUNT_FSTYPE = "fuse.wanllmdb"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prefetch",
        help="warm the shared cache with versions (or path prefixes of them) before they are read",
        description=(
            "Fetch the files of versions into the shared cache, in parallel, so that a later download or a "
            "read through a mount runs at cache speed. Cached files cost nothing."
        ),
        epilog=(
            "REF: project/name[:alias|:vN], project/name:vN/PATH (a file, or the files under that directory), "
            "or a path inside a wanllmdb mount (e.g. ~/artifacts/vision/mnist/latest/images)."
        ),
        parents=[common_parent()],
    )
    parser.add_argument("refs", nargs="+", metavar="REF", help="version, version/path prefix, or a path in a mount")
    parser.add_argument("--project", "-p", help="project of REFs that name none")
    parser.add_argument(
        "--mount", metavar="MOUNTPOINT", help="warm the cache that this mount reads (its registry and cache directory)"
    )
    parser.add_argument("--dry-run", action="store_true", help="say how many files and bytes would be fetched")
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N", help="parallel fetches (default: $WANLLMDB_TRANSFER_THREADS or 8)"
    )
    parser.add_argument("--json", action="store_true", help="the report as one JSON document")
    parser.set_defaults(func=cmd_prefetch)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# --- what a REF names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One REF resolved to a version's selector and an optional path prefix in it."""

    text: str
    project: str
    name: str
    selector: str
    prefix: str | None
    #: Settings overrides (base_url, data_dir, cache_dir) of the mount the REF was found in.
    overrides: tuple[tuple[str, str], ...] = ()


def split_ref(text: str) -> tuple[str, str | None]:
    """``project/name:v2/images/`` -> (``project/name:v2``, ``images/``); no path -> (text, None)."""
    head, colon, tail = text.partition(":")
    if not colon:
        return text, None
    selector, slash, path = tail.partition("/")
    return f"{head}:{selector}", (path if slash and path else None)


def select(entries, prefix: str | None) -> list:
    """The entries a path prefix selects (see the module docstring); all of them without one."""
    if not prefix:
        return list(entries)
    if prefix.endswith("/"):
        return [e for e in entries if e.path.startswith(prefix)]
    return [e for e in entries if e.path == prefix or e.path.startswith(prefix + "/")]


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or os.sep in text and ":" not in text and os.path.lexists(text)


def mount_root(path: str) -> str | None:
    """The wanllmdb mount holding ``path`` (already resolved), or None."""
    from ..fs.process import mount_entry

    current = path
    while True:
        if os.path.ismount(current):
            entry = mount_entry(current)
            return current if entry is not None and entry.fstype == MOUNT_FSTYPE else None
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def mount_overrides(root: str) -> tuple[tuple[str, str], ...]:
    """Settings the mount at ``root`` was started with (its state record), as overrides of the current ones."""
    from ..fs.process import read_state

    state = read_state(root)
    keys = ("base_url", "data_dir", "cache_dir")
    return tuple((k, state[k]) for k in keys if isinstance(state.get(k), str) and state[k])


def target_from_mount_path(text: str) -> Target:
    """Map a path in a mount back to project/name/vN and a path prefix."""
    from ..fs.process import read_state

    expanded = os.path.expanduser(text)
    if not os.path.lexists(expanded):
        raise FileNotInArtifactError(f"{text}: no such file or directory")
    real = os.path.realpath(expanded)
    root = mount_root(real)
    if root is None:
        raise InvalidRefError(f"{text} is not inside a wanllmdb mount (nor a reference like project/name:v2)")
    parts = [p for p in os.path.relpath(real, root).split(os.sep) if p not in ("", ".")]
    project = read_state(root).get("project")
    if not project:
        if not parts:
            raise InvalidRefError(f"{text} is a mount's root: name a version (<project>/<name>/latest) or a path")
        project, parts = parts[0], parts[1:]
    if len(parts) < 2 or not _VERSION_DIR.match(parts[1]):
        raise InvalidRefError(
            f"{text} is not inside a version: name a version directory (.../<name>/latest, .../<name>/v3) "
            "or a path in one"
        )
    name, version, rest = parts[0], parts[1], parts[2:]
    return Target(text, project, name, version, "/".join(rest) or None, mount_overrides(root))


def parse_target(text: str, project: str | None, overrides: tuple[tuple[str, str], ...]) -> Target:
    if looks_like_path(text):
        return target_from_mount_path(text)
    ref_text, prefix = split_ref(text)
    ref = parse_ref(ref_text)
    project = ref.project or project
    if not project:
        raise InvalidInputError(f"{text!r} names no project: pass --project or write project/{text}")
    return Target(text, project, ref.name, ref.selector, prefix, overrides)


# --- the command ------------------------------------------------------------------------------------------


def cmd_prefetch(args: argparse.Namespace) -> int:
    from ..sdk.client import get_client
    from ..sdk.transfer import warm_cache

    overrides: tuple[tuple[str, str], ...] = ()
    if args.mount:
        root = os.path.realpath(os.path.expanduser(args.mount))
        if mount_root(root) != root:
            raise InvalidInputError(f"--mount {args.mount}: not the mountpoint of a wanllmdb mount")
        overrides = mount_overrides(root)
    project = args.project or load_settings().project
    targets = [parse_target(text, project, overrides) for text in args.refs]
    # Resolve every REF before fetching anything: a bad one fails the command at once.
    plans = []
    for target in targets:
        client = get_client(**dict(target.overrides))
        info = client.registry.resolve(target.project, target.name, target.selector)
        assert info.manifest is not None
        entries = select(info.manifest.entries.values(), target.prefix)
        if not entries:
            raise FileNotInArtifactError(f"{info.qualified_name} has no file under {target.prefix!r}")
        plans.append((target, client, info, entries))

    reports = []
    for target, client, info, entries in plans:
        label = info.qualified_name + (f"/{target.prefix}" if target.prefix else "")
        report = warm_cache(client, entries, label=label, threads=args.threads, dry_run=args.dry_run)
        if not args.dry_run and not target.prefix:
            client.artifact_cache().record(f"{info.project}/{info.name}", info.label, info.manifest)
        reports.append((target, info, label, report))

    total = _total([r for *_, r in reports], args.dry_run)
    if args.json:
        dump_json(
            {
                "refs": [
                    {"ref": t.text, "version": i.qualified_name, "prefix": t.prefix, **r.to_dict()}
                    for t, i, _, r in reports
                ],
                "total": total,
            }
        )
        return 0
    if len(reports) > 1:
        for _, _, label, report in reports:
            out(f"{label}: {_line(report.to_dict(), args.dry_run)}")
    out(_line(total, args.dry_run))
    return 0


def _total(reports, dry_run: bool) -> dict[str, object]:
    keys = ("files", "bytes", "fetch_files", "fetch_blobs", "fetch_bytes", "cached_files", "cached_bytes",
            "skipped_files")
    total: dict[str, object] = {k: sum(getattr(r, k) for r in reports) for k in keys}
    seconds = sum(r.seconds for r in reports)
    total["seconds"] = round(seconds, 3)
    total["dry_run"] = dry_run
    total["bytes_per_second"] = round(total["fetch_bytes"] / seconds, 1) if seconds > 0 and not dry_run else 0.0
    return total


def _line(report: dict, dry_run: bool) -> str:
    cached = f"{report['cached_files']} file(s), {format_size(report['cached_bytes'])} already cached"
    skipped = f", {report['skipped_files']} unverified reference(s) skipped" if report["skipped_files"] else ""
    if dry_run:
        return (
            f"would fetch {report['fetch_files']} file(s), {format_size(report['fetch_bytes'])} "
            f"({report['fetch_bytes']} bytes) of {report['files']}; {cached}{skipped}; nothing fetched (dry run)"
        )
    rate = report["bytes_per_second"] / 1e6
    return (
        f"prefetched {report['files']} file(s): fetched {report['fetch_files']} file(s), "
        f"{format_size(report['fetch_bytes'])}; {cached}{skipped}; {report['seconds']:.2f} s, {rate:.1f} MB/s"
    )
