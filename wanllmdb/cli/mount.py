"""``wanllmdb mount MOUNTPOINT`` and ``wanllmdb unmount MOUNTPOINT``.

``mount`` checks everything that can be checked up front (mountpoint, FUSE, registry and key), then either
serves in this process (``--foreground``; Ctrl-C unmounts) or starts a detached mount process and returns
once the mount is live, naming the log file that process writes to.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import ConfigError
from ..fs.catalog import DEFAULT_TREE_ENTRIES
from ..fs.index import INDEX_MIN
from ..settings import load_settings, parse_size
from .common import common_parent, out

logger = logging.getLogger(__name__)

DEFAULT_METADATA_TTL = 5.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    mount = subparsers.add_parser(
        "mount",
        help="mount the registry as a read-only filesystem",
        description=(
            "Mount every project (or one, with --project) at MOUNTPOINT: <project>/<artifact>/vN/<file>, "
            "aliases as symlinks (latest -> vN). File bytes are fetched on demand into the shared cache "
            "and verified before they are served."
        ),
        parents=[common_parent()],
    )
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    mount.add_argument("--project", "-p", help="mount only this project, at the root")
    mount.add_argument("--base-url", help="a wanllmdb server (default: $WANLLMDB_BASE_URL, else embedded)")
    mount.add_argument("--data-dir", help="embedded registry directory (default: $WANLLMDB_DIR)")
    mount.add_argument("--cache-dir", help="blob cache directory (default: $WANLLMDB_CACHE_DIR)")
    mount.add_argument("--cache-size", help="cache size limit, e.g. 10G (default: $WANLLMDB_CACHE_SIZE or 10GB)")
    mount.add_argument(
        "--metadata-ttl", type=float, default=DEFAULT_METADATA_TTL, metavar="SECONDS",
        help=f"how soon new versions and moved aliases show (default {DEFAULT_METADATA_TTL:g})",
    )
    mount.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help="a read waiting this long on a stalled fetch fails with EIO (default: $WANLLMDB_TIMEOUT or 30)",
    )
    mount.add_argument(
        "--max-tree-entries", type=int, default=DEFAULT_TREE_ENTRIES, metavar="FILES",
        help=f"files of versions kept in memory, all versions together (default {DEFAULT_TREE_ENTRIES})",
    )
    mount.add_argument(
        "--index-min", type=int, default=INDEX_MIN, metavar="FILES",
        help=f"a version of at least this many files (default {INDEX_MIN}, at most --max-tree-entries) is indexed "
        "on disk under the cache directory and read a directory at a time instead of held in memory",
    )
    mount.add_argument("--foreground", "-f", action="store_true", help="serve in this process; Ctrl-C unmounts")
    mount.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    mount.add_argument("--log-file", help="where the mount process logs (default: under the state directory)")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)

    unmount = subparsers.add_parser(
        "unmount", help="unmount a mount and end its process", parents=[common_parent()]
    )
    unmount.add_argument("mountpoint", metavar="MOUNTPOINT")
    unmount.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="how long to wait before forcing it"
    )
    unmount.set_defaults(func=cmd_unmount)


def _settings(args: argparse.Namespace):
    if args.metadata_ttl <= 0:
        raise ConfigError(f"--metadata-ttl must be positive, got {args.metadata_ttl:g}")
    if args.max_tree_entries < 1:
        raise ConfigError(f"--max-tree-entries must be at least 1, got {args.max_tree_entries}")
    if args.index_min < 1:
        raise ConfigError(f"--index-min must be at least 1, got {args.index_min}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout:g}")
    return load_settings(
        base_url=args.base_url,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        cache_max_bytes=parse_size(args.cache_size) if args.cache_size else None,
        timeout=args.timeout,
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from ..fs import process
    from ..manifest import validate_project

    settings = _settings(args)
    if args.project:
        validate_project(args.project)
    mountpoint = process.check_mountpoint(args.mountpoint)
    binding = process.check_fuse()
    description = process.check_registry(settings, args.project)
    if args.foreground:
        if args.log_file:
            _log_to_file(args.log_file, getattr(args, "verbose", 0))
        logger.info("mounting %s at %s with %s", description, mountpoint, binding)
        status = process.serve(
            process.ServeOptions(
                mountpoint=mountpoint,
                settings=settings,
                project=args.project,
                metadata_ttl=args.metadata_ttl,
                max_tree_entries=args.max_tree_entries,
                index_min=args.index_min,
                allow_other=args.allow_other,
                log_file=args.log_file,
                ready_fd=args.ready_fd,
                debug_fuse=args.debug_fuse,
            )
        )
        process.exit_now(status)
    log_file = args.log_file or process.default_log_file(mountpoint)
    pid = process.start_background(
        _child_args(args, mountpoint, settings, log_file), mountpoint, log_file, timeout=30.0 + settings.timeout
    )
    out(f"mounted {description} at {mountpoint} (pid {pid}, log {log_file})")
    return 0


def _child_args(args: argparse.Namespace, mountpoint: str, settings, log_file: str) -> list[str]:
    """The foreground command the background mount runs: every choice made explicit."""
    child = ["mount", mountpoint, "--foreground", "--log-file", log_file, "--metadata-ttl", repr(args.metadata_ttl)]
    child += ["--timeout", repr(settings.timeout), "--cache-dir", settings.cache_dir]
    child += ["--cache-size", str(settings.cache_max_bytes), "--max-tree-entries", str(args.max_tree_entries)]
    child += ["--index-min", str(args.index_min)]
    if settings.base_url:
        child += ["--base-url", settings.base_url]
    else:
        child += ["--data-dir", settings.data_dir]
    if args.project:
        child += ["--project", args.project]
    if args.allow_other:
        child.append("--allow-other")
    if args.debug_fuse:
        child.append("--debug-fuse")
    verbosity = getattr(args, "verbose", 0)
    if verbosity:
        child.append("-" + "v" * verbosity)
    return child


def _log_to_file(path: str, verbosity: int) -> None:
    """The mount process logs to its file: lifecycle at INFO, every request with -vv."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)


def cmd_unmount(args: argparse.Namespace) -> int:
    from ..fs import process

    out(process.unmount(args.mountpoint, timeout=args.timeout))
    return 0
