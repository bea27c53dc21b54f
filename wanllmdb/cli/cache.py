"""``wanllmdb cache ls | cleanup | verify``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os

from ..fs.index import kept_indexes, plan_kept_cleanup
from ..settings import format_size, load_settings, parse_duration, parse_size
from .common import common_parent, dump_json, out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="inspect and clean the local blob cache", parents=[common_parent()]
    )
    parser.add_argument(
        "--cache-dir", help="cache directory (default: WANLLMDB_CACHE_DIR or the user cache dir)"
    )
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", help="cached artifact versions and the cache's size", parents=[common_parent()])
    ls.add_argument("--json", action="store_true", help="one JSON document: versions, blobs, bytes, limit")
    ls.set_defaults(func=cmd_ls)

    cleanup = sub.add_parser(
        "cleanup", help="remove old or least-recently-used blobs", parents=[common_parent()]
    )
    cleanup.add_argument(
        "--max-size", help="keep at most this much, e.g. 5GB (default: the configured limit)"
    )
    cleanup.add_argument(
        "--max-age", default="30d", help="remove blobs unused for this long, e.g. 7d, 12h (default 30d)"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")
    cleanup.add_argument("--json", action="store_true", help="one JSON document: entries and bytes freed")
    cleanup.set_defaults(func=cmd_cleanup)

    verify = sub.add_parser(
        "verify", help="re-hash every cached blob, removing corrupt ones", parents=[common_parent()]
    )
    verify.add_argument("--json", action="store_true", help="one JSON document: blobs checked, corrupt ones")
    verify.set_defaults(func=cmd_verify)


def _open(args: argparse.Namespace):
    from ..cache import ArtifactCache, BlobCache

    settings = load_settings(cache_dir=args.cache_dir)
    return ArtifactCache(blob_cache=BlobCache(settings.cache_dir, settings.cache_max_bytes)), settings


def cmd_ls(args: argparse.Namespace) -> int:
    cache, settings = _open(args)
    rows = cache.list()
    indexes = kept_indexes(cache.root)
    entries = cache.blobs.entries()
    packs = sum(e.kind == "pack" for e in entries)
    if args.json:
        dump_json(
            {
                "cache_dir": cache.root,
                "versions": rows,
                "blobs": len(entries) - packs,
                "packs": packs,
                "bytes": cache.blobs.total_size(),
                "max_bytes": settings.cache_max_bytes,
                "mount_indexes": {"count": len(indexes), "bytes": sum(k.size for k in indexes)},
            }
        )
        return 0
    for row in rows:
        state = "complete" if row["complete"] else f"partial ({format_size(row['cached_bytes'])})"
        out(
            f"{row['artifact_id']}:{row['version']:<8} {row['file_count']:>7} file(s) {format_size(row['size']):>10}  "
            f"{state:<20} last used {row['last_accessed']}"
        )
    held = f"{len(entries) - packs} blob(s)" + (f" and {packs} pack(s) of small files" if packs else "")
    out(f"{cache.root}: {held}, {format_size(cache.blobs.total_size())} of {format_size(settings.cache_max_bytes)}")
    if indexes:
        out(f"and {len(indexes)} version index(es) kept for the mount, {format_size(sum(k.size for k in indexes))}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    cache, settings = _open(args)
    max_bytes = parse_size(args.max_size) if args.max_size else settings.cache_max_bytes
    max_age = parse_duration(args.max_age) if args.max_age else None
    plan = cache.blobs.plan_cleanup(max_bytes=max_bytes, max_age=max_age)
    # The mount's kept version indexes: those unused for max_age, and past their share of max_bytes.
    indexes = plan_kept_cleanup(cache.root, max_bytes=max_bytes, max_age=max_age)
    entries = [(e.key, e.size, e.last_access) for e in plan.entries]
    entries += [(f"mount-index:{k.name}", k.size, k.last_used) for k in indexes]
    count, planned = len(entries), plan.freed_bytes + sum(k.size for k in indexes)

    def execute() -> int:
        freed = plan.execute()
        for kept in indexes:  # (a mount reading one keeps its own link to it)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(kept.path)
                freed += kept.size
        return freed

    if args.json:
        freed = planned if args.dry_run else execute()
        dump_json(
            {
                "dry_run": args.dry_run,
                "entries": [{"key": key, "size": size, "last_access": last} for key, size, last in entries],
                "freed_bytes": freed,
            }
        )
        return 0
    for key, size, last_access in entries:
        last = dt.datetime.fromtimestamp(last_access).strftime("%Y-%m-%d %H:%M")
        out(f"{'would remove' if args.dry_run else 'remove'} {key[:24]:<24} {format_size(size):>10}  last used {last}")
    if args.dry_run:
        out(f"would free {format_size(planned)} ({count} entries)")
        return 0
    freed = execute()
    out(f"freed {format_size(freed)} ({count} entries)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..sdk.progress import ByteProgress

    cache, _ = _open(args)
    with ByteProgress(cache.blobs.total_size(), "verify") as progress:
        report = cache.blobs.verify(progress)
    if args.json:
        dump_json({"checked": report.checked, "corrupt": list(report.corrupt)})
        return 1 if report.corrupt else 0
    out(f"checked {report.checked} blob(s): {len(report.corrupt)} corrupt (removed)")
    for sha in report.corrupt:
        out(f"corrupt {sha}")
    return 1 if report.corrupt else 0
