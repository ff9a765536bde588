"""The web router on its own: pages, static files, caching, escaping, and nothing loaded from the internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from txwatch.web import router
from txwatch.web.routes import ASSET_VERSION

PAGES = ["/", "/runs/demo/lr-too-high", "/runs/lr-too-high", "/diagnoses"]


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def _static_root():
    return resources.files("txwatch.web") / "static"


def _shipped_text_files():
    out = []

    def walk(node, rel):
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{rel}{child.name}/")
            elif child.name.endswith((".js", ".css", ".html", ".svg")):
                out.append((f"{rel}{child.name}", child.read_text(encoding="utf-8")))

    walk(_static_root(), "static/")
    walk(resources.files("txwatch.web") / "templates", "templates/")
    return out


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_html_with_a_strict_content_security_policy(client, path):
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "{{" not in resp.text, "a template placeholder was left unfilled"


@pytest.mark.parametrize("path", PAGES)
def test_every_script_and_style_sheet_a_page_loads_is_shipped(client, path):
    html = client.get(path).text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [r for r in refs if "/static/" in r]
    assert any(a.endswith(f"-page.js?v={ASSET_VERSION}") for a in assets)
    assert any(a.endswith(f"bundle.css?v={ASSET_VERSION}") for a in assets)
    for ref in assets:
        resp = client.get(ref)
        assert resp.status_code == 200, ref
        assert resp.content, ref
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "//")), f"{path} loads {ref} from outside the daemon"


def test_no_shipped_file_fetches_anything_from_the_internet():
    # The SVG namespace is an identifier and uPlot's banner names its home page; neither is ever fetched.
    # Any other URL in a shipped script, style sheet or page would be a CDN or a tracker.
    identifiers = {"http://www.w3.org/2000/svg", "https://github.com/leeoniya/uPlot"}
    for name, text in _shipped_text_files():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= identifiers, (name, urls - identifiers)


def test_charting_library_and_its_license_are_shipped(client):
    js = client.get("/static/vendor/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/vendor/uPlot.min.css").headers["content-type"].startswith("text/css")
    assert "MIT License" in client.get("/static/vendor/uPlot.LICENSE.txt").text


def test_unknown_or_escaping_static_paths_are_404(client):
    for path in ["/static/nope.js", "/static/../routes.py", "/static/%2e%2e/routes.py", "/static/", "/static/vendor"]:
        resp = client.get(path)
        assert resp.status_code == 404, path


def test_versioned_assets_are_cached_and_revalidated_by_etag(client):
    versioned = client.get(f"/static/run.js?v={ASSET_VERSION}")
    assert "immutable" in versioned.headers["cache-control"]
    bare = client.get("/static/run.js")
    assert bare.headers["cache-control"] == "no-cache"
    again = client.get("/static/run.js", headers={"If-None-Match": bare.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_run_name_is_escaped_into_the_page(client):
    name = '"><img src=x onerror=alert(1)>'
    resp = client.get(f"/runs/p/{name}")
    assert resp.status_code == 200
    assert "<img" not in resp.text

    # Read as a browser does: the name is the attribute's and the title's text, never markup.
    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.body, self.title, self._in_title = [], {}, "", False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "body":
                self.body = dict(attrs)
            self._in_title = ("id", "run-title") in attrs

        def handle_endtag(self, tag):
            self._in_title = False

        def handle_data(self, data):
            if self._in_title:
                self.title += data

    page = Page()
    page.feed(resp.text)
    assert "img" not in page.tags
    assert page.body["data-run"] == name and page.body["data-project"] == "p"
    assert page.title == name


@pytest.mark.parametrize("path,title,current", [
    ("/", "Runs · txwatch", "Runs"), ("/diagnoses", "Diagnoses · txwatch", "Diagnoses"),
    ("/runs/demo/r1", "Run · txwatch", None),
])
def test_every_page_has_the_shared_header_and_token_dialog_marking_where_you_are(client, path, title, current):
    html = client.get(path).text
    assert f"<title>{title}</title>" in html
    assert html.count('<header class="top">') == 1 and html.count('id="token-form"') == 1
    marked = re.findall(r'<a href="[^"]*" aria-current="page">([^<]+)</a>', html)
    assert marked == ([current] if current else [])


def test_pages_work_under_a_url_prefix():
    app = FastAPI()
    app.include_router(router)
    html = TestClient(app, root_path="/txwatch").get("/runs/demo/r1").text
    assert f'src="/txwatch/static/run-page.js?v={ASSET_VERSION}"' in html
    assert 'data-base="/txwatch"' in html


def test_pages_are_not_in_the_api_schema(client):
    app = FastAPI()
    app.include_router(router)
    assert not any(p.startswith(("/static", "/runs", "/diagnoses")) for p in app.openapi()["paths"])


def test_shipped_chart_library_is_the_version_pinned_in_web_src():
    import json
    from pathlib import Path

    pinned = json.loads((Path(__file__).resolve().parents[2] / "web-src" / "package.json").read_text())
    version = pinned["devDependencies"]["uplot"]
    banner = (_static_root() / "vendor" / "uPlot.iife.min.js").read_text(encoding="utf-8")[:200]
    assert f"(v{version})" in banner, "run `npm install && npm run build` in web-src after changing the version"


def test_each_page_script_bundles_the_shipped_files_in_order(client):
    from txwatch.web.routes import BUNDLES

    for name, parts in BUNDLES.items():
        body = client.get(f"/static/{name}").text
        offsets = [body.index((_static_root() / part).read_text(encoding="utf-8")) for part in parts]
        assert offsets == sorted(offsets), name
    # Only the run page draws charts, so only it carries the chart library.
    assert "leeoniya/uPlot" in client.get("/static/run-page.js").text
    assert "leeoniya/uPlot" not in client.get("/static/runs-page.js").text
