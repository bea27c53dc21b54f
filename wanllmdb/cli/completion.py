"""``wanllmdb completion bash|zsh``: print a shell completion script generated from the parser (``shtab``).

    eval "$(wanllmdb completion bash)"                      # in ~/.bashrc
    wanllmdb completion zsh > ~/.zfunc/_wanllmdb            # with ~/.zfunc in $fpath, before compinit
"""

from __future__ import annotations

import argparse

from .common import common_parent, out

SHELLS = ("bash", "zsh")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description='Print a completion script for the shell: eval "$(wanllmdb completion bash)" in ~/.bashrc, '
        "or save the zsh one as _wanllmdb in a directory of $fpath.",
        parents=[common_parent()],
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    parser.set_defaults(func=cmd_completion)


def script(shell: str) -> str:
    import shtab

    from .main import build_parser

    return shtab.complete(build_parser(), shell=shell)


def cmd_completion(args: argparse.Namespace) -> int:
    out(script(args.shell).rstrip("\n"))
    return 0
