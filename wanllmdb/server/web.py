"""Read-only web pages: browse projects, artifacts, versions and their files, with download links and lineage.

Server-rendered with Jinja2 (templates in ``templates/``, autoescaped), no JavaScript. Routes, none of them in
the OpenAPI description:

- ``/``: projects; ``/ui/projects/{p}``: its artifacts; ``/ui/projects/{p}/artifacts/{n}``: the versions;
  ``/ui/projects/{p}/artifacts/{n}/versions/{vN or alias}``: the files (each stored file with a presigned
  download URL made as ``POST /api/v1/blob-urls`` makes them; a reference links to its URI) and the lineage
  (the run that logged the version, the runs that used it, and what those runs logged and used).
- ``/login`` (GET: the form, POST: the key) and ``/logout`` (POST, or GET): with API keys configured, the
  gateway (:mod:`.middleware`) sends a page request without a valid session cookie to ``/login`` (see
  :mod:`.web_auth`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .._version import __version__
from ..errors import AuthenticationError, WanllmdbError
from ..registry.base import RunInfo, VersionInfo
from .context import ServerState
from .web_auth import COOKIE_NAME

router = APIRouter(include_in_schema=False)

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: Largest login form body read.
MAX_FORM_BYTES = 16 * 1024
#: A version's page lists (and signs download URLs for) at most this many files.
MAX_FILES_SHOWN = 2000
#: Boxes per column of the lineage picture; the rest are counted in a last "+N more" box.
MAX_NODES_PER_COLUMN = 12

_environment = None


def templates():
    """The Jinja2 environment (made on first use, so that the server imports without Jinja2 until a page
    is asked for)."""
    global _environment
    if _environment is None:
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(size=human_size, when=format_time, q=quote_part)
        env.globals.update(version_url=version_url, artifact_url=artifact_url, project_url=project_url,
                           wanllmdb_version=__version__)  # fmt: skip
        _environment = env
    return _environment


# --- formatting and URLs -----------------------------------------------------------------------------------


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def quote_part(value: object) -> str:
    """One URL path segment: everything but unreserved characters percent-encoded."""
    return quote(str(value), safe="")


def project_url(project: str) -> str:
    return f"/ui/projects/{quote_part(project)}"


def artifact_url(project: str, name: str) -> str:
    return f"{project_url(project)}/artifacts/{quote_part(name)}"


def version_url(project: str, name: str, version: int | str) -> str:
    label = f"v{version}" if isinstance(version, int) else version
    return f"{artifact_url(project, name)}/versions/{quote_part(label)}"


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    state: ServerState = request.app.state.server
    html = templates().get_template(template).render(logged_in=state.sessions.enabled, **context)
    return HTMLResponse(html, status_code=status_code, headers=_PAGE_HEADERS)


#: Pages are private and never framed; nothing but inline styles is loaded.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make form POSTs say Origin: null
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


async def _render(request: Request, template: str, load: Callable[[], dict[str, Any]]) -> HTMLResponse:
    """``template`` with what ``load`` reads from the registry (in a worker thread); a registry error is an
    error page with the error's status."""
    try:
        context = await run_in_threadpool(load)
    except WanllmdbError as exc:
        status = exc.http_status
        return _page(request, "error.html", status_code=status, title="Not found" if status == 404 else "Error",
                     message=str(exc), crumbs=[])  # fmt: skip
    return _page(request, template, **context)


def _registry(request: Request):
    return request.app.state.server.registry


# --- pages ---------------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def projects_page(request: Request) -> Response:
    registry = _registry(request)

    def load() -> dict[str, Any]:
        rows = []
        for project in registry.list_projects():
            try:
                summaries = registry.list_artifacts(project)
            except WanllmdbError:
                summaries = []
            updated = max((s.updated_at for s in summaries if s.updated_at), default=None)
            rows.append({"name": project, "artifacts": len(summaries), "updated": updated})
        return {"title": "Projects", "projects": rows, "crumbs": []}

    return await _render(request, "projects.html", load)


@router.get("/ui/projects/{project}", response_class=HTMLResponse)
async def project_page(request: Request, project: str) -> Response:
    registry = _registry(request)

    def load() -> dict[str, Any]:
        return {
            "title": f"Project {project}",
            "project": project,
            "artifacts": registry.list_artifacts(project),
            "crumbs": [(project, None)],
        }

    return await _render(request, "project.html", load)


@router.get("/ui/projects/{project}/artifacts/{name}", response_class=HTMLResponse)
async def artifact_page(request: Request, project: str, name: str) -> Response:
    registry = _registry(request)

    def load() -> dict[str, Any]:
        artifact = registry.get_artifact(project, name)
        runs = _runs(registry, (v.logged_by for v in artifact.versions))
        return {
            "title": f"{project}/{name}",
            "artifact": artifact,
            "versions": list(reversed(artifact.versions)),
            "runs": runs,
            "crumbs": [(project, project_url(project)), (name, None)],
        }

    return await _render(request, "artifact.html", load)


@router.get("/ui/projects/{project}/artifacts/{name}/versions/{selector}", response_class=HTMLResponse)
async def version_page(request: Request, project: str, name: str, selector: str) -> Response:
    state: ServerState = request.app.state.server
    registry = state.registry

    def load() -> dict[str, Any]:
        version = registry.resolve(project, name, selector)
        files = _files(request, state, version, MAX_FILES_SHOWN)
        lineage = _lineage(registry, version)
        return {
            "title": f"{project}/{name}:v{version.version}",
            "version": version,
            "selector": selector,
            "files": files,
            "files_hidden": max(len(version.manifest or ()) - len(files), 0),
            "lineage": lineage,
            "graph": _graph(version, lineage),
            "crumbs": [(project, project_url(project)), (name, artifact_url(project, name)),
                       (f"v{version.version}", None)],
        }  # fmt: skip

    return await _render(request, "version.html", load)


def _runs(registry, run_ids: Iterable[str | None]) -> dict[str, RunInfo]:
    runs: dict[str, RunInfo] = {}
    for run_id in dict.fromkeys(r for r in run_ids if r):
        try:
            runs[run_id] = registry.get_run(run_id)
        except WanllmdbError:
            pass
    return runs


def _files(request: Request, state: ServerState, version: VersionInfo, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` manifest entries, each with the URL it is downloaded from: a presigned GET of its
    blob (as ``blob_urls`` makes them) for a stored file, its URI for an http(s) reference; None otherwise."""
    entries = list(itertools.islice(version.manifest or (), limit))
    stored = state.registry.stored_sizes({e.sha256 for e in entries if e.ref is None})
    base = state.base_url(str(request.base_url))
    urls: dict[str, str] = {}
    for sha, size in stored.items():
        urls[sha] = state.download_item(base, sha, size)["url"]
    files = []
    for entry in entries:
        if entry.ref is not None:
            scheme = urlsplit(entry.ref).scheme.lower()
            href = entry.ref if scheme in ("http", "https") else None
        else:
            href = urls.get(entry.sha256)
        files.append({"entry": entry, "href": href, "download": os.path.basename(entry.path)})
    return files


@dataclass
class RunLineage:
    run: RunInfo
    logged: list[VersionInfo]
    used: list[VersionInfo]


@dataclass
class Lineage:
    logged_by: RunLineage | None
    used_by: list[RunLineage]


def _run_lineage(registry, run: RunInfo) -> RunLineage:
    return RunLineage(run, registry.logged_artifacts(run.id), registry.used_artifacts(run.id))


def _lineage(registry, version: VersionInfo) -> Lineage:
    producer = registry.logged_by(version.project, version.name, version.version)
    consumers = registry.used_by(version.project, version.name, version.version)
    return Lineage(
        logged_by=_run_lineage(registry, producer) if producer else None,
        used_by=[_run_lineage(registry, run) for run in consumers],
    )


# --- the lineage picture: columns of boxes joined by lines, drawn as inline SVG -----------------------------

NODE_W, NODE_H, COL_GAP, ROW_GAP, MARGIN = 190, 34, 60, 14, 10


def _same(a: VersionInfo, b: VersionInfo) -> bool:
    return (a.project, a.name, a.version) == (b.project, b.name, b.version)


def _graph(version: VersionInfo, lineage: Lineage) -> dict[str, Any]:
    """Five columns: what the logging run used -> the logging run -> this version (and the run's other
    outputs) -> the runs that used it -> what those runs logged."""
    columns: list[list[dict[str, Any]]] = [[] for _ in range(5)]
    index: dict[tuple, tuple[int, int]] = {}
    edges: list[tuple[tuple | None, tuple | None]] = []

    hidden = [0] * 5

    def node(col: int, key: tuple, label: str, href: str | None, kind: str, title: str) -> tuple | None:
        if key not in index:
            if len(columns[col]) >= MAX_NODES_PER_COLUMN and kind != "current":
                hidden[col] += 1
                return None
            index[key] = (col, len(columns[col]))
            columns[col].append({"label": _short(label), "href": href, "kind": kind, "title": title})
        return key

    def version_node(col: int, v: VersionInfo) -> tuple | None:
        kind = "current" if _same(v, version) else ("deleted" if v.state != "COMMITTED" else "version")
        href = None if v.state != "COMMITTED" else version_url(v.project, v.name, v.version)
        return node(col, ("v", v.project, v.name, v.version), f"{v.name}:v{v.version}", href, kind, v.qualified_name)

    def run_node(col: int, run: RunInfo) -> tuple | None:
        return node(col, ("r", run.id), run.name or run.id, None, "run", f"run {run.name} ({run.id})")

    current = version_node(2, version)
    if lineage.logged_by:
        producer = run_node(1, lineage.logged_by.run)
        for used in lineage.logged_by.used:
            edges.append((version_node(0, used), producer))
        edges.append((producer, current))
        for logged in lineage.logged_by.logged:
            edges.append((producer, version_node(2, logged)))
    for consumer in lineage.used_by:
        run = run_node(3, consumer.run)
        if run is None:
            continue
        edges.append((current, run))
        for logged in consumer.logged:
            edges.append((run, version_node(4, logged)))
    for col, count in enumerate(hidden):
        if count:
            columns[col].append({"label": f"+{count} more", "href": None, "kind": "more", "title": "see below"})
    rows = max(len(c) for c in columns)
    used_columns = [i for i, c in enumerate(columns) if c]
    x_of = {col: MARGIN + n * (NODE_W + COL_GAP) for n, col in enumerate(used_columns)}
    nodes = []
    for col in used_columns:
        for row, item in enumerate(columns[col]):
            item.update(x=x_of[col], y=MARGIN + row * (NODE_H + ROW_GAP), w=NODE_W, h=NODE_H)
            nodes.append(item)
    lines = []
    for a, b in dict.fromkeys(edges):
        if a is None or b is None:
            continue
        (ca, ra), (cb, rb) = index[a], index[b]
        if ca == cb:
            continue
        na, nb = columns[ca][ra], columns[cb][rb]
        lines.append({"x1": na["x"] + NODE_W, "y1": na["y"] + NODE_H // 2, "x2": nb["x"], "y2": nb["y"] + NODE_H // 2})
    width = MARGIN * 2 + len(used_columns) * NODE_W + (len(used_columns) - 1) * COL_GAP
    height = MARGIN * 2 + rows * NODE_H + (rows - 1) * ROW_GAP
    return {"nodes": nodes, "lines": lines, "width": width, "height": height}


def _short(label: str, limit: int = 26) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


# --- login and logout ----------------------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a page of this server (``/`` or ``/ui/...``), never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    path = urlsplit(target).path
    if path == "/" or path.startswith("/ui/"):
        return target
    return "/"


def login_redirect(path: str, query: str = "") -> str:
    target = path + (f"?{query}" if query else "")
    return "/login?" + urlencode({"next": target})


def _same_origin(request: Request) -> bool:
    """A form POST comes from this server's own pages (its Origin, when the browser sends one, is ours)."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or an old one: SameSite=Strict still keeps the cookie same-site
        return True
    state: ServerState = request.app.state.server
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
    if state.config.public_url:
        public = urlsplit(state.config.public_url)
        own.add(f"{public.scheme}://{public.netloc}")
    return origin in own


def _cookie_secure(request: Request) -> bool:
    state: ServerState = request.app.state.server
    public = state.config.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    state: ServerState = request.app.state.server
    if not state.sessions.enabled:
        return RedirectResponse(safe_next(next), status_code=303)
    return _page(request, "login.html", title="Log in", next=safe_next(next), error=None, crumbs=[])


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    state: ServerState = request.app.state.server
    if not _same_origin(request):
        return _page(request, "error.html", status_code=403, title="Refused",
                     message="a login must come from this server's own page", crumbs=[])  # fmt: skip
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _page(request, "error.html", status_code=413, title="Too large", message="form too large",
                         crumbs=[])  # fmt: skip
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    key = (form.get("key") or [""])[0].strip()
    target = safe_next((form.get("next") or ["/"])[0])
    if not state.sessions.enabled:
        return RedirectResponse(target, status_code=303)
    try:
        if not key:
            raise AuthenticationError("enter an API key")
        state.keys.check(f"Bearer {key}")
    except AuthenticationError as exc:
        return _page(request, "login.html", status_code=401, title="Log in", next=target, error=str(exc), crumbs=[])
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        state.sessions.issue(key),
        max_age=int(state.sessions.ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )
    return response


@router.api_route("/logout", methods=["GET", "POST"])
async def logout(request: Request) -> Response:
    if request.method == "POST" and not _same_origin(request):
        return _page(request, "error.html", status_code=403, title="Refused", message="cross-site logout", crumbs=[])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_cookie_secure(request))
    return response
