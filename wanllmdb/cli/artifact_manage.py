"""``wanllmdb artifact tag | untag | alias | rm``: change or delete what was logged (contents stay immutable).

``rm`` plans first: without ``--yes`` it lists what would be deleted and deletes nothing.
"""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError, InvalidRefError
from ..manifest import parse_ref
from ..registry import Registry, VersionInfo, VersionUpdate
from .common import common_parent, out


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands to ``wanllmdb artifact``."""
    for command, helptext, func in (
        ("tag", "add tags to a version", cmd_tag),
        ("untag", "remove tags from a version", cmd_untag),
    ):
        parser = sub.add_parser(command, help=helptext, parents=[common_parent()])
        _ref_argument(parser)
        parser.add_argument("tags", nargs="+", metavar="TAG")
        parser.set_defaults(func=func)

    alias = sub.add_parser("alias", help="add (or --remove) aliases of a version", parents=[common_parent()])
    _ref_argument(alias)
    alias.add_argument("aliases", nargs="+", metavar="ALIAS")
    alias.add_argument("--remove", action="store_true", help="remove the aliases from the version instead")
    alias.set_defaults(func=cmd_alias)

    rm = sub.add_parser(
        "rm", help="delete a version (or --all versions); lists what would go unless --yes", parents=[common_parent()]
    )
    _ref_argument(rm)
    rm.add_argument("--all", action="store_true", help="delete every version of the artifact")
    rm.add_argument(
        "--delete-aliases", action="store_true", help="delete a version even though custom aliases point at it"
    )
    rm.add_argument("--yes", "-y", action="store_true", help="delete; without it, only list what would be deleted")
    rm.set_defaults(func=cmd_rm)


def _ref_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", help="project/name:v3 or project/name:alias (or name:v3 with -p)")
    parser.add_argument("--project", "-p", help="project (unless REF names it)")


def _registry() -> Registry:
    from ..sdk.client import get_client

    return get_client().registry


def _resolve(registry: Registry, args: argparse.Namespace) -> VersionInfo:
    ref = parse_ref(args.ref)
    project = ref.project or args.project
    if not project:
        raise InvalidInputError(f"{args.ref!r} names no project: pass --project or write project/{args.ref}")
    return registry.resolve(project, ref.name, ref.selector)


def _show(info: VersionInfo) -> None:
    out(f"{info.qualified_name}  aliases: {', '.join(info.aliases) or '-'}  tags: {', '.join(info.tags) or '-'}")


def cmd_tag(args: argparse.Namespace) -> int:
    registry = _registry()
    version = _resolve(registry, args)
    tags = [*version.tags, *args.tags]
    _show(registry.update_version(version.project, version.name, version.version, VersionUpdate(tags=tags)))
    return 0


def cmd_untag(args: argparse.Namespace) -> int:
    registry = _registry()
    version = _resolve(registry, args)
    unknown = [t for t in args.tags if t not in version.tags]
    if unknown:
        raise InvalidInputError(
            f"{version.qualified_name} has no tag {', '.join(map(repr, unknown))} "
            f"(tags: {', '.join(version.tags) or 'none'})"
        )
    tags = [t for t in version.tags if t not in args.tags]
    _show(registry.update_version(version.project, version.name, version.version, VersionUpdate(tags=tags)))
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    registry = _registry()
    version = _resolve(registry, args)
    update = VersionUpdate(remove_aliases=args.aliases) if args.remove else VersionUpdate(add_aliases=args.aliases)
    _show(registry.update_version(version.project, version.name, version.version, update))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    registry = _registry()
    ref = parse_ref(args.ref)
    project = ref.project or args.project
    if not project:
        raise InvalidInputError(f"{args.ref!r} names no project: pass --project or write project/{args.ref}")
    if args.all:
        if ":" in args.ref:
            raise InvalidRefError(f"--all deletes every version: name the artifact without ':' (got {args.ref!r})")
        doomed = list(registry.get_artifact(project, ref.name).versions)
    else:
        if ":" not in args.ref:
            raise InvalidRefError(
                f"name the version to delete ({args.ref}:v3 or {args.ref}:alias), or pass --all for every version"
            )
        doomed = [registry.resolve(project, ref.name, ref.selector)]
    if not args.yes:
        for version in doomed:
            out(f"would delete {version.qualified_name}  aliases: {', '.join(version.aliases) or '-'}")
        held = [v for v in doomed if set(v.aliases) - {"latest"}]
        if held and not args.all and not args.delete_aliases:
            out("refused unless --delete-aliases: custom aliases point at it")
        out("nothing deleted: pass --yes to delete")
        return 0
    if args.all:
        registry.delete_artifact(project, ref.name)
    else:
        registry.delete_version(project, ref.name, doomed[0].version, delete_aliases=args.delete_aliases)
    for version in doomed:
        out(f"deleted {version.qualified_name}")
    return 0
