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


# --- exit codes -------------------------------------------------------------------------------------------
# The one place that says what ``wanllmdb``'s exit status means (README "Command line" lists the same).

EXIT_OK = 0
#: Anything else that failed: a conflict, a checksum mismatch, a damaged local database, a mount error...
EXIT_ERROR = 1
#: Bad input: a usage error (argparse exits 2 too), a malformed reference, name or size, a bad setting.
EXIT_USAGE = 2
#: What was named does not exist: project, artifact, version, file in a version, run, local file.
EXIT_NOT_FOUND = 3
#: The registry or its storage cannot be reached or is unavailable (connection refused, 5xx, timeouts).
EXIT_UNAVAILABLE = 4
#: The server refused the credentials (401/403): a missing, wrong or unauthorized API key.
EXIT_AUTH = 5
#: Interrupted by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an error a command raised (see the ``EXIT_*`` constants)."""
    from ..errors import (
        AuthenticationError,
        ChecksumError,
        FetchError,
        InvalidInputError,
        NotFoundError,
        ServerError,
        ServerUnreachableError,
        TransportError,
    )

    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    if isinstance(exc, ChecksumError):
        return EXIT_ERROR
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH
    if isinstance(exc, (ServerUnreachableError, ServerError, FetchError)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, TransportError):
        status = exc.status
        return EXIT_UNAVAILABLE if status is None or status >= 500 or status == 429 else EXIT_ERROR
    return EXIT_ERROR


def dump_json(data: object) -> None:
    """One JSON document on stdout (what ``--json`` prints)."""
    import json

    out(json.dumps(data, default=str))
