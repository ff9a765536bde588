"""Routes of the web page: four HTML shells and the static files they load.

The shells are Jinja templates extending ``base.html`` (head, header, token dialog), filled in with nothing
but the URL prefix, the asset version and, on the run page, the run's name (autoescaped); everything else
comes from ``/api/v1`` in the browser, behind the bearer token when one is set. Templates are compiled and
static files read once from the package at import (a few hundred kB), so serving them touches no disk and no
database, and a path that is not one of them is a plain 404 (no traversal possible).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page loads only its own files and talks only to its own origin: no CDN, no third-party requests.
# uPlot sizes its elements through element.style (CSSOM), which style-src does not govern, but the charts'
# legend markers are styled inline, hence 'unsafe-inline' for styles only; scripts stay 'self'.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HTML_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, _Asset]:
    """Every file under static/ (subfolders included), keyed by its path relative to static/."""
    assets: dict[str, _Asset] = {}
    root = resources.files("txwatch.web") / "static"

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            content_type = _CONTENT_TYPES.get(suffix)
            if content_type is None:
                continue  # only the kinds of file a page needs are served
            body = child.read_bytes()
            assets[rel] = _Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    walk(root, "")
    return assets


PAGES = ("runs.html", "run.html", "diagnoses.html", "compare.html")


def _load_templates() -> dict[str, jinja2.Template]:
    # StrictUndefined: a field a template uses but the route does not pass fails loudly, never renders empty.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("txwatch.web", "templates"), autoescape=True, auto_reload=False,
        undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True,
    )
    return {name: env.get_template(name) for name in PAGES}


# Each page loads one script and one style sheet, concatenated here once from the files in static/ (kept
# separate for reading and editing). Fewer requests matter on opening: a browser runs at most six at a time
# per server, and the run page's first data requests should not queue behind its scripts.
BUNDLES = {
    "bundle.css": ["vendor/uPlot.min.css", "txwatch.css"],
    "runs-page.js": ["common.js", "runs.js"],
    "run-page.js": ["common.js", "vendor/uPlot.iife.min.js", "charts.js", "heatmap.js", "preflight.js", "run.js"],
    "diagnoses-page.js": ["common.js", "diagnoses.js"],
    "compare-page.js": ["common.js", "vendor/uPlot.iife.min.js", "charts.js", "compare.js"],
}


def _bundle(assets: dict[str, _Asset], parts: list[str]) -> _Asset:
    # A newline and ";" between scripts, so a file without a trailing newline or semicolon cannot merge
    # into the next one; CSS gets newlines only.
    is_js = parts[0].endswith(".js")
    body = (b"\n;\n" if is_js else b"\n").join(assets[p].body for p in parts)
    return _Asset(body, assets[parts[0]].content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


_STATIC = _load_static()
_STATIC.update({name: _bundle(_STATIC, parts) for name, parts in BUNDLES.items()})
_TEMPLATES = _load_templates()
# One version for all assets: the shells ask for /static/x.js?v=<version>, so a new release is never served
# a stale script from the browser cache.
ASSET_VERSION = hashlib.sha256(b"".join(a.etag.encode() for _, a in sorted(_STATIC.items()))).hexdigest()[:12]


def _page(request: Request, template: str, **fields: str) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    text = _TEMPLATES[template].render(base=base, v=ASSET_VERSION, **fields)
    return HTMLResponse(text, headers=_HTML_HEADERS)


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    """The runs list, newest first, filterable by project and status; it polls for updates."""
    return _page(request, "runs.html", project="", run="")


@router.get("/runs/{project}/{run}", response_class=HTMLResponse)
def run_page(request: Request, project: str, run: str) -> HTMLResponse:
    """One run: config, curves with diagnosis markers, per-layer heatmaps, system figures."""
    return _page(request, "run.html", project=project, run=run)


@router.get("/runs/{run}", response_class=HTMLResponse)
def run_page_by_name(request: Request, run: str) -> HTMLResponse:
    """One run named without its project; the page finds the project when the name is unique."""
    return _page(request, "run.html", project="", run=run)


@router.get("/diagnoses", response_class=HTMLResponse)
def diagnoses_page(request: Request) -> HTMLResponse:
    """Every diagnosis across runs, with filters, and the silences with a form to add one."""
    return _page(request, "diagnoses.html", project="", run="")


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    """Two or more runs overlaid by step (``?runs=project/run,project/run``), each run's diagnoses flagged."""
    return _page(request, "compare.html", project="", run="")


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
def static_file(path: str, request: Request) -> Response:
    """A file shipped in txwatch/web/static; 304 when the browser already has this version."""
    asset = _STATIC.get(path)
    if asset is None:
        return Response(f"no static file {path!r}\n", status_code=404, media_type="text/plain")
    headers = {"ETag": asset.etag, "X-Content-Type-Options": "nosniff"}
    # Versioned URLs never change content, so the browser may keep them; bare ones are revalidated.
    if request.query_params.get("v") == ASSET_VERSION:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        headers["Cache-Control"] = "no-cache"
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)
