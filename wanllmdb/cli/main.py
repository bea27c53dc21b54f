"""The ``wanllmdb`` command: artifact put/get/ls/info/diff, prefetch, cache, gc, mount/unmount, server,
completion.

Each subcommand lives in its own module with ``add_parser(subparsers)``. An error is one line on stderr and
an exit status that says its kind (``common.EXIT_*``: 2 bad input, 3 not found, 4 unavailable, 5 refused
credentials, 1 anything else); ``-v`` adds logging and the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .._version import __version__
from ..errors import WanllmdbError
from .common import EXIT_INTERRUPTED, EXIT_USAGE, configure_logging, exit_code_for

logger = logging.getLogger(__name__)

SUBCOMMAND_MODULES = ("artifact", "prefetch", "cache", "gc", "mount", "server", "completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wanllmdb",
        description="Version ML artifacts and read them as plain files.",
    )
    parser.add_argument("--version", action="version", version=f"wanllmdb {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-v info, -vv debug) and tracebacks on errors",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module_name = f"{__package__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a partial install (e.g. a vendored copy without the server) keeps the rest working
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("wanllmdb: interrupted\n")
        return EXIT_INTERRUPTED
    except (WanllmdbError, OSError, ValueError) as exc:
        if args.verbose:
            logger.exception("%s failed", args.command)
        message = str(exc) or type(exc).__name__
        sys.stderr.write(f"wanllmdb: error: {message}\n")
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
