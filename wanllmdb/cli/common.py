"""What every subcommand shares: the -v flag, logging setup, one-line errors, output helpers."""

from __future__ import annotations

import argparse
import logging
import sys


def common_parent() -> argparse.ArgumentParser:
    """Parent parser giving a subcommand ``-v/--verbose`` (also accepted before the subcommand)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logging (-v info, -vv debug) and tracebacks on errors",
    )
    return parent


def configure_logging(verbosity: int, stream=None) -> None:
    """The CLI alone configures logging: warnings by default, -v info, -vv debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbosity < 2:
        for noisy in ("urllib3", "fuse", "mfusepy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def out(text: str = "") -> None:
    """Command output (stdout), the only place the CLI prints."""
    sys.stdout.write(text + "\n")
