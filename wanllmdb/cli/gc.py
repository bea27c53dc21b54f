"""``wanllmdb gc``: retention and garbage collection of the embedded registry.

    wanllmdb gc [--dry-run] [--grace 25h] [--json]

Deletes the blobs that no version and no draft has needed for the grace period (mark, grace, sweep: see
``registry/gc.py``), and reports blobs and bytes reclaimed. A server collects its own garbage in the
background; ``wanllmdb server gc`` runs it at once against a server's storage.
"""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..registry.local import DEFAULT_DRAFT_MAX_AGE, LocalRegistry
from ..settings import load_settings
from .common import common_parent, out

#: The embedded registry's grace: its drafts' lifetime and an hour (no presigned URLs are involved).
DEFAULT_GRACE = DEFAULT_DRAFT_MAX_AGE + 3600.0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gc",
        parents=[common_parent()],
        help="delete blobs no version needs (embedded registry)",
        description="Delete the blobs of the embedded registry that no version and no draft has needed for "
        "the grace period, and report what was reclaimed.",
    )
    add_gc_options(parser, default_grace="25h")
    parser.set_defaults(func=run)
    return parser


def add_gc_options(parser: argparse.ArgumentParser, *, default_grace: str | None) -> None:
    parser.add_argument("--dry-run", action="store_true", help="change nothing; say what would be reclaimed")
    parser.add_argument(
        "--grace",
        default=default_grace,
        help="how long a blob must stay unreferenced before it is deleted (e.g. 25h, 90m, 0 for at once)",
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON")


def parse_grace(text: str) -> float:
    from ..settings import parse_duration

    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text)
        except (ValueError, ConfigError):
            seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"--grace must be a duration of 0 or more (e.g. 25h, 90m, 0), not {text!r}")
    return seconds


def report(result, as_json: bool) -> None:
    if result is None:
        out("another garbage collection is running; nothing done")
    elif as_json:
        out(json.dumps(result.to_dict()))
    else:
        out(result.summary())


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.base_url:
        raise ConfigError(
            f"wanllmdb gc works on the embedded registry; {settings.base_url} collects its own garbage "
            "(run `wanllmdb server gc` where the server runs)"
        )
    grace = parse_grace(args.grace)
    registry = LocalRegistry(settings.data_dir)
    try:
        report(registry.maintain(grace=grace, dry_run=args.dry_run), args.json)
    finally:
        registry.close()
    return 0
