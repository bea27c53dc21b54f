"""``wanllmdb artifact tag | untag | alias | rm | retain``: change or delete what was logged (contents stay
immutable), and say what retention deletes.

``rm`` plans first: without ``--yes`` it lists what would be deleted and deletes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import InvalidInputError, InvalidRefError
from ..manifest import parse_ref
from ..registry import Registry, RetentionPolicy, VersionInfo, VersionUpdate
from ..settings import parse_duration
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

    retain = sub.add_parser(
        "retain",
        help="show or set an artifact's retention: default TTL of new versions and which versions to keep",
        description="Versions beyond the newest --keep-last and older than --older-than are deleted by "
        "retention (the newest version always stays); versions logged later live --ttl unless they set their "
        "own. Options not given keep their current value; 'none' unsets one.",
        parents=[common_parent()],
    )
    retain.add_argument("ref", metavar="PROJECT/NAME", help="the artifact (or NAME with -p)")
    retain.add_argument("--project", "-p", help="project (unless PROJECT/NAME names it)")
    retain.add_argument("--keep-last", metavar="N", help="keep the newest N versions ('none' to unset)")
    retain.add_argument(
        "--keep-aliased",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep versions that custom aliases point at",
    )
    retain.add_argument(
        "--older-than", metavar="AGE", help="delete only versions older than AGE (30d, 12h; 'none' to unset)"
    )
    retain.add_argument(
        "--ttl", metavar="AGE", help="default TTL of versions logged later (30d, 12h; 'none': kept)"
    )
    retain.add_argument("--clear", action="store_true", help="remove the whole policy")
    retain.add_argument("--show", action="store_true", help="only show the policy (the default without options)")
    retain.set_defaults(func=cmd_retain)


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


def _optional(text: str | None, parse, current):
    """An option's new value: unchanged when not given, None for 'none', else parsed."""
    if text is None:
        return current
    if text.strip().lower() == "none":
        return None
    return parse(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidInputError(f"--keep-last takes a whole number of versions, not {text!r}") from None
    if value < 0:
        raise InvalidInputError(f"--keep-last takes a number of versions >= 0, not {value}")
    return value


def format_duration(seconds: float | None) -> str:
    """``30d``, ``12h``, ``90m``, ``45s`` (the largest unit that divides it), or ``-`` for None."""
    if seconds is None:
        return "-"
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _show_retention(project: str, name: str, policy: RetentionPolicy) -> None:
    keep = str(policy.keep_last) if policy.keep_last is not None else "-"
    out(
        f"{project}/{name}  ttl: {format_duration(policy.ttl)}  keep-last: {keep}  "
        f"older-than: {format_duration(policy.older_than)}  keep-aliased: {'yes' if policy.keep_aliased else 'no'}"
    )


def cmd_retain(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref)
    if ":" in args.ref:
        raise InvalidRefError(f"retention is set on an artifact, not a version: name it without ':' (got {args.ref!r})")
    project = ref.project or args.project
    if not project:
        raise InvalidInputError(f"{args.ref!r} names no project: pass --project or write project/{args.ref}")
    changes = [args.keep_last, args.keep_aliased, args.older_than, args.ttl]
    given = any(c is not None for c in changes)
    if args.clear and given:
        raise InvalidInputError("--clear removes the whole policy: give it alone")
    if args.show and (given or args.clear):
        raise InvalidInputError("--show only shows the policy: give it alone")
    registry = _registry()
    current = registry.get_artifact(project, ref.name).retention
    if args.clear:
        policy = RetentionPolicy()
    elif given:
        # Everything parsed before anything is written: a bad value changes nothing.
        policy = dataclasses.replace(
            current,
            keep_last=_optional(args.keep_last, _count, current.keep_last),
            keep_aliased=current.keep_aliased if args.keep_aliased is None else args.keep_aliased,
            older_than=_optional(args.older_than, parse_duration, current.older_than),
            ttl=_optional(args.ttl, parse_duration, current.ttl),
        ).validated()
    else:
        _show_retention(project, ref.name, current)
        return 0
    _show_retention(project, ref.name, registry.set_retention(project, ref.name, policy))
    return 0
