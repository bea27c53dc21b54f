"""``wanllmdb artifact put | get | ls`` (and the subcommands of :mod:`.artifact_manage`, :mod:`.artifact_inspect`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

from ..errors import InvalidInputError
from ..manifest import parse_ref, validate_artifact_name, validate_project
from ..settings import format_size
from . import artifact_inspect, artifact_manage
from .common import common_parent, out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "artifact", help="log, fetch and list artifacts", parents=[common_parent()]
    )
    sub = parser.add_subparsers(dest="artifact_command", metavar="ACTION", required=True)

    put = sub.add_parser("put", help="log a file or directory as a new version", parents=[common_parent()])
    put.add_argument("path", metavar="PATH", help="file or directory to log")
    put.add_argument("--project", "-p", required=True)
    put.add_argument("--name", "-n", required=True, help="artifact name")
    put.add_argument("--type", "-t", required=True, help="artifact type, e.g. dataset or model")
    put.add_argument(
        "--alias", "-a", action="append", default=[], help="alias to move to this version (repeatable)"
    )
    put.add_argument("--description", help="free-text description")
    put.add_argument("--metadata", help="JSON object stored with the version")
    put.set_defaults(func=cmd_put)

    get = sub.add_parser("get", help="download a version", parents=[common_parent()])
    get.add_argument("ref", metavar="REF", help="name, name:v3, name:alias or project/name:alias")
    get.add_argument("--project", "-p", help="project (unless REF names it)")
    get.add_argument("--root", help="target directory (default ./artifacts/<name>:<version>)")
    get.set_defaults(func=cmd_get)

    ls = sub.add_parser("ls", help="list projects, artifacts or versions", parents=[common_parent()])
    ls.add_argument("target", nargs="?", metavar="PROJECT[/NAME]")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument(
        "--size",
        action="store_true",
        help="per artifact of PROJECT: logical size, stored size and the bytes only it holds (what deleting it "
        "would free), dedupe-aware",
    )
    ls.set_defaults(func=cmd_ls)
    artifact_manage.add_parsers(sub)
    artifact_inspect.add_parsers(sub)


def cmd_put(args: argparse.Namespace) -> int:
    from ..sdk import Artifact
    from ..sdk.run import log_artifact_without_run

    metadata = None
    if args.metadata:
        try:
            metadata = json.loads(args.metadata)
        except ValueError as exc:
            raise InvalidInputError(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise InvalidInputError("--metadata must be a JSON object")
    validate_project(args.project)
    artifact = Artifact(args.name, args.type, description=args.description, metadata=metadata)
    if os.path.isdir(args.path):
        artifact.add_dir(args.path)
    else:
        artifact.add_file(args.path)
    log_artifact_without_run(artifact, args.project, aliases=args.alias)
    out(
        f"{artifact.qualified_name}  {artifact.file_count} file(s), {format_size(artifact.size)}  "
        f"aliases: {', '.join(artifact.aliases)}"
    )
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from ..sdk import Api

    ref = parse_ref(args.ref)
    project = ref.project or args.project
    if not project:
        raise InvalidInputError(f"{args.ref!r} names no project: pass --project or write project/{args.ref}")
    artifact = Api().artifact(f"{project}/{ref.name}:{ref.selector}")
    root = artifact.download(args.root)
    out(root)
    return 0


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def cmd_ls(args: argparse.Namespace) -> int:
    from ..sdk.client import get_client

    registry = get_client().registry
    if not args.target:
        projects = registry.list_projects()
        if args.json:
            out(json.dumps(projects))
        for project in [] if args.json else projects:
            out(project)
        return 0
    project, _, name = args.target.partition("/")
    validate_project(project)
    if args.size:
        usage = [u for u in registry.storage_usage(project) if not name or u.name == name]
        if name and not usage:
            registry.get_artifact(project, validate_artifact_name(name))  # raises: not found
        if args.json:
            out(json.dumps([u.to_dict() for u in usage]))
            return 0
        out(f"{'ARTIFACT':<32} {'VERSIONS':>8} {'LOGICAL':>10} {'STORED':>10} {'EXCLUSIVE':>10}")
        for u in usage:
            out(
                f"{u.name:<32} {u.versions:>8} {format_size(u.logical_bytes):>10} {format_size(u.stored_bytes):>10} "
                f"{format_size(u.exclusive_bytes):>10}"
            )
        return 0
    if not name:
        arts = registry.list_artifacts(project)
        if args.json:
            out(json.dumps([a.to_dict() for a in arts]))
            return 0
        for a in arts:
            out(
                f"{a.name:<32} {a.type:<12} v{a.latest_version:<5} {a.version_count:>4} version(s)  "
                f"{_when(a.updated_at)}"
            )
        return 0
    info = registry.get_artifact(project, validate_artifact_name(name))
    if args.json:
        out(json.dumps(info.to_dict()))
        return 0
    for v in info.versions:
        out(
            f"v{v.version:<5} {_when(v.created_at)}  {v.file_count:>7} file(s) {format_size(v.size):>10}  "
            f"{','.join(v.aliases)}"
        )
    return 0
