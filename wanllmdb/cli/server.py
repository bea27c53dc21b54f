"""``wanllmdb server``: serve a registry directory over HTTP (needs the ``server`` extra).

    wanllmdb server [--host 127.0.0.1] [--port 8080] [--root DIR] [--api-key KEY ...]
                    [--url-ttl 1h] [--draft-max-age 24h] [--public-url URL] [--port-file FILE]
                    [--blobs DIR|s3://bucket/prefix] [--s3-endpoint URL] [--presign-endpoint URL]
                    [--multipart-threshold 1GiB] [--part-size 64MiB]
                    [--db postgresql://...] [--no-migrate]
    wanllmdb server migrate [--db postgresql://...]

Keys also come from ``WANLLMDB_SERVER_API_KEYS`` (comma-separated), the URL signing secret from
``WANLLMDB_SERVER_SECRET`` (else it is generated once into ``<root>/server.secret``). Binding an address
other than loopback without a key is refused.

Metadata stays in SQLite under ``--root`` unless ``--db`` (or ``WANLLMDB_SERVER_DB``) names a PostgreSQL
database, whose missing migrations are applied at start (``--no-migrate``: refuse to start if any is
missing; ``wanllmdb server migrate`` applies them and says which).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

from ..errors import ConfigError
from ..registry.pgdb import mask_url
from ..server.context import ServerConfig
from ..server.indexes import INDEX_CACHE_BYTES
from ..settings import load_settings, parse_duration, parse_size
from .common import common_parent, out
from .gc import add_gc_options, parse_grace, report


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "server",
        parents=[common_parent()],
        help="serve a registry over HTTP",
        description="Serve the registry under --root over HTTP: the API under /api/v1, docs at /docs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--root", help="registry directory (default: WANLLMDB_DIR or the user data dir)")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept this bearer key (repeatable; also WANLLMDB_SERVER_API_KEYS, comma-separated)",
    )
    parser.add_argument("--url-ttl", default="1h", help="lifetime of presigned blob URLs (default 1h; e.g. 30m, 90s)")
    parser.add_argument("--draft-max-age", default="24h", help="remove unfinished drafts older than this (default 24h)")
    parser.add_argument("--max-json-size", default="256MB", help="largest JSON request body (default 256MB)")
    parser.add_argument("--public-url", help="base URL put into presigned URLs (default: the address asked)")
    parser.add_argument(
        "--blobs",
        help="where blobs live: a directory (default <root>/blobs) or s3://bucket/prefix "
        "(also WANLLMDB_SERVER_BLOBS; S3 credentials, region and endpoint from boto3's configuration)",
    )
    parser.add_argument("--s3-endpoint", help="the S3 endpoint URL the server uses (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument(
        "--presign-endpoint", help="the S3 endpoint put into presigned URLs, when clients reach the store elsewhere"
    )
    parser.add_argument(
        "--multipart-threshold", default="1GiB", help="S3: blobs larger than this are uploaded in parts (default 1GiB)"
    )
    parser.add_argument(
        "--part-size", default="64MiB", help="S3: size of multipart parts (default 64MiB, at least 5MiB)"
    )
    parser.add_argument(
        "--gc-interval", default="1h", help="garbage collection every this long (default 1h; 0 disables it)"
    )
    parser.add_argument(
        "--gc-grace",
        help="how long a blob stays unreferenced before it is deleted (default --url-ttl + --draft-max-age + "
        "10m; never less than --url-ttl + --draft-max-age)",
    )
    parser.add_argument(
        "--index-cache",
        default="4GiB",
        help="bytes of large versions' mount indexes the server builds and keeps (default 4GiB; 0 builds none: "
        "mounts then build their own from the manifest)",
    )
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    _add_db_option(parser)
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply missing PostgreSQL migrations at start: refuse to start if any is missing",
    )
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="server_command", metavar="ACTION")
    migrate = sub.add_parser(
        "migrate",
        parents=[common_parent()],
        help="apply the missing migrations to the PostgreSQL metadata database, and exit",
        description="Apply the migrations the PostgreSQL database named by --db lacks (under a lock: safe "
        "while servers run or start), print which, and exit.",
    )
    _add_db_option(migrate)
    migrate.set_defaults(func=run_migrate)
    gc = sub.add_parser(
        "gc",
        parents=[common_parent()],
        help="run retention and garbage collection on the server's storage now, and exit",
        description="Delete the blobs no version or draft of the server's registry has needed for the grace "
        "period (default: --url-ttl + --draft-max-age + 10m). Give the same storage options as the server "
        "(--root, --db, --blobs, S3 settings), before or after 'gc'.",
    )
    _add_db_option(gc)
    for flag in ("--root", "--blobs", "--s3-endpoint", "--url-ttl", "--draft-max-age"):
        gc.add_argument(flag, default=argparse.SUPPRESS, help=f"as for the server ({flag})")
    add_gc_options(gc, default_grace=None)
    gc.set_defaults(func=run_gc)
    return parser


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="metadata database postgresql://user:password@host:port/dbname (also WANLLMDB_SERVER_DB; "
        "default: SQLite under --root)",
    )


def _db_url(args: argparse.Namespace) -> str | None:
    return getattr(args, "db", None) or os.environ.get("WANLLMDB_SERVER_DB") or None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535 (0 picks a free one), not {port}")
    return port


def _duration(text: str, flag: str) -> float:
    # A bare number means seconds here (config.parse_duration reads it as days, as cache ages are).
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{flag} must be a positive duration (e.g. 90s, 30m, 1h), not {text!r}")
    return seconds


def build_config(args: argparse.Namespace, *, serving: bool = True) -> ServerConfig:
    """The server's configuration from the command line and the environment (``serving``: for a server that
    will sign URLs, not for ``server gc``)."""

    url_ttl = _duration(args.url_ttl, "--url-ttl")
    draft_max_age = _duration(args.draft_max_age, "--draft-max-age")
    if draft_max_age < url_ttl:
        raise ConfigError(
            f"--draft-max-age ({args.draft_max_age}) must be at least --url-ttl ({args.url_ttl}): shorter, "
            "drafts would expire while their uploads are still running"
        )
    gc_interval = 0.0 if args.gc_interval in ("0", "0s") else _duration(args.gc_interval, "--gc-interval")
    gc_grace = parse_grace(args.gc_grace) if getattr(args, "gc_grace", None) else None
    if gc_grace is not None and gc_grace < url_ttl + draft_max_age:
        raise ConfigError(
            f"--gc-grace ({args.gc_grace}) must be at least --url-ttl + --draft-max-age ({url_ttl + draft_max_age:g}s):"
            " shorter, a blob uploaded for a draft could be collected before the draft is finalized"
        )
    keys = [k.strip() for k in args.api_key if k.strip()]
    keys += [k.strip() for k in os.environ.get("WANLLMDB_SERVER_API_KEYS", "").split(",") if k.strip()]
    secret = os.environ.get("WANLLMDB_SERVER_SECRET") or None
    db, blobs = _db_url(args), args.blobs or os.environ.get("WANLLMDB_SERVER_BLOBS") or None
    if serving and secret is None and db is not None and blobs is not None and "://" in blobs:
        raise ConfigError(
            "replicas on a shared database and bucket must sign URLs alike: set WANLLMDB_SERVER_SECRET "
            "(the same random string on every replica, e.g. `openssl rand -hex 32`)"
        )
    return ServerConfig(
        root=os.path.abspath(os.path.expanduser(args.root or load_settings().data_dir)),
        api_keys=tuple(dict.fromkeys(keys)),
        secret=secret.encode() if secret else None,
        url_ttl=url_ttl,
        draft_max_age=draft_max_age,
        max_json_bytes=parse_size(args.max_json_size),
        public_url=args.public_url,
        blobs=blobs,
        s3_endpoint=args.s3_endpoint,
        presign_endpoint=args.presign_endpoint,
        multipart_threshold=parse_size(args.multipart_threshold),
        part_size=parse_size(args.part_size),
        db=db,
        migrate=not args.no_migrate,
        gc_interval=gc_interval,
        gc_grace=gc_grace,
        index_cache_bytes=_index_cache(getattr(args, "index_cache", None)),
    )


def _index_cache(text: str | None) -> int:
    try:
        return INDEX_CACHE_BYTES if text is None else parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"--index-cache: {exc}") from None


def run(args: argparse.Namespace) -> int:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the server needs the 'server' extra ({', '.join(missing)} missing): pip install 'wanllmdb[server]'"
        )
    from ..server.run import check_exposure, serve

    config = build_config(args)
    check_exposure(args.host, config)
    server_log = logging.getLogger("wanllmdb.server")
    if not args.quiet and server_log.getEffectiveLevel() > logging.INFO:
        server_log.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    blobs = config.blobs or os.path.join(config.root, "blobs")
    metadata = mask_url(config.db) if config.db else os.path.join(config.root, "registry.sqlite")
    out(f"wanllmdb server: metadata {metadata}, blobs {blobs}, {len(config.api_keys)} API key(s), docs at /docs")
    serve(config, args.host, args.port, port_file=args.port_file)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    """``wanllmdb server migrate``: bring the PostgreSQL schema up to date."""
    from ..registry.pgdb import PostgresDatabase, is_postgres_url
    from ..registry.pgschema import SCHEMA_VERSION

    url = _db_url(args)
    if url is None or not is_postgres_url(url):
        raise ConfigError("wanllmdb server migrate needs --db postgresql://... (or WANLLMDB_SERVER_DB)")
    db = PostgresDatabase(url, min_size=0, max_size=1)
    try:
        if db.applied:
            out(f"{db.path}: applied migration(s) {', '.join(map(str, db.applied))}; schema {SCHEMA_VERSION}")
        else:
            out(f"{db.path}: schema {SCHEMA_VERSION} is current; nothing to apply")
    finally:
        db.close()
    return 0


def run_gc(args: argparse.Namespace) -> int:
    """``wanllmdb server gc``: retention and garbage collection against the server's storage, now."""
    from ..server.context import open_server_registry

    config = build_config(args, serving=False)
    grace = parse_grace(args.grace) if args.grace is not None else config.grace
    registry = open_server_registry(config)
    try:
        report(registry.maintain(grace=grace, dry_run=args.dry_run), args.json)
    finally:
        registry.close()
    return 0
