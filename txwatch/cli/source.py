"""Where the query commands read from: the daemon's HTTP API (``--endpoint``) or a database (``--db``).

Both return the same dicts (``txwatch.store.queries``), so every output format is the same either way.
Every failure becomes a ``CliError`` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from txwatch.cli.errors import CliError

# The options that choose the source, shared by every command that reads history (typer reads these types).
Endpoint = Annotated[Optional[str], typer.Option(
    "--endpoint", envvar="TXWATCH_ENDPOINT", help="Read from the daemon at this URL (e.g. http://127.0.0.1:8642).")]
Db = Annotated[Optional[str], typer.Option(
    "--db", envvar="TXWATCH_DB_URL", help="Read this database (URL or SQLite path); default: the local database.")]
Token = Annotated[Optional[str], typer.Option("--token", envvar="TXWATCH_TOKEN", help="Bearer token for the daemon.")]

HTTP_TIMEOUT_S = 30.0
PAGE_POINTS = 100_000  # raw points per request when paging a whole series over HTTP


class HttpSource:
    def __init__(self, endpoint: str, token: str | None):
        import httpx

        self.endpoint = endpoint.rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            raise CliError(f"bad endpoint URL {endpoint!r}: use http://HOST:PORT (e.g. http://127.0.0.1:8642)")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self.client = httpx.Client(base_url=self.endpoint, headers=headers, timeout=HTTP_TIMEOUT_S)
        except Exception as exc:
            raise CliError(f"bad endpoint URL {endpoint!r} ({exc}): use http://HOST:PORT") from None

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _request(self, method: str, path: str, params: dict | None = None, body: Any = None) -> Any:
        import httpx

        try:
            r = self.client.request(method, path, params=params, json=body)
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach the txwatch daemon at {self.endpoint}: start it with `txwatch serve`, or leave out "
                "--endpoint (and TXWATCH_ENDPOINT) to read the local database"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the daemon at {self.endpoint} did not answer within {HTTP_TIMEOUT_S:.0f} s") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise CliError(f"bad endpoint URL {self.endpoint!r} ({exc}): use http://HOST:PORT") from None
        except httpx.HTTPError as exc:
            raise CliError(f"talking to {self.endpoint} failed: {exc.__class__.__name__}: {exc}") from None
        if r.status_code == 401:
            raise CliError("the daemon wants a token: pass --token or set TXWATCH_TOKEN")
        try:
            body = json.loads(r.text)  # json, not r.json(): NaN and Infinity literals are data here
        except ValueError:
            raise CliError(f"{self.endpoint} is not a txwatch daemon (HTTP {r.status_code}, not JSON)") from None
        if r.status_code == 404:
            raise CliError(body.get("error", "not found") if isinstance(body, dict) else "not found", exit_code=1)
        if r.status_code >= 400:
            msg = body.get("error") if isinstance(body, dict) else None
            raise CliError(f"the daemon refused: HTTP {r.status_code}: {msg or r.text[:200]}")
        return body

    def runs(self, with_config: bool = False, **filters: Any) -> list[dict]:
        return self._get("/api/v1/runs", config="true" if with_config else None, **filters)["runs"]

    def resolve(self, ref: str) -> tuple[str, str]:
        """(project, name) of the run ``ref`` names; a ``CliError`` when there is none or several."""
        project, sep, name = ref.partition("/")
        found = self.runs(name=name, project=project or None, limit=100) if sep else self.runs(name=ref, limit=100)
        return _unique(ref, [(r["project"], r["name"]) for r in found])

    def run(self, ref: str) -> dict:
        project, name = self.resolve(ref)
        return self._get(f"/api/v1/runs/{project}/{name}")

    def series(self, ref: str) -> list[dict]:
        project, name = self.resolve(ref)
        return self._get(f"/api/v1/runs/{project}/{name}/series")["series"]

    def points(self, ref: str, metric: str, max_points: int | None) -> list[dict]:
        project, name = self.resolve(ref)
        path = f"/api/v1/runs/{project}/{name}/series/{metric}"
        if max_points:
            return self._get(path, max_points=max_points)["points"]
        out: list[dict] = []
        start = 0
        while True:
            page = self._get(path, raw="true", start=start, max_points=PAGE_POINTS)["points"]
            out.extend(page)
            if len(page) < PAGE_POINTS:
                return out
            start = page[-1]["step"] + 1

    def diagnoses(self, **filters: Any) -> list[dict]:
        return self._get("/api/v1/diagnoses", **filters)["diagnoses"]

    def incidents(self, ref: str) -> list[dict]:
        project, name = self.resolve(ref)
        return self._get(f"/api/v1/runs/{project}/{name}/incidents")["incidents"]

    def tag(self, project: str, name: str, add: list[str], remove: list[str]) -> list[str]:
        return self._request("POST", f"/api/v1/runs/{project}/{name}/tags", body={"add": add, "remove": remove})["tags"]

    def close(self) -> None:
        self.client.close()


class DbSource:
    def __init__(self, url: str | None):
        from sqlalchemy.engine import make_url

        from txwatch.store.db import default_db_path, is_current, make_engine, normalize_url, redact, session_factory

        url = normalize_url(url)
        self.where = redact(url)
        u = make_url(url)
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            if not Path(u.database).exists():
                default = Path(u.database) == default_db_path()
                raise CliError(
                    f"no txwatch database at {u.database} yet: "
                    + ("nothing has been recorded on this machine; train with txwatch watching (or run "
                       "`txwatch demo`), or point --endpoint at a daemon / --db at a database"
                       if default else "check the path, or pass --endpoint to read a daemon")
                )
        self.engine = make_engine(url)
        try:
            current = is_current(self.engine)
        except Exception as exc:
            self.engine.dispose()
            raise CliError(f"cannot open the database at {self.where}: {exc.__class__.__name__}: {exc}") from None
        if not current:
            self.engine.dispose()
            raise CliError(f"the database at {self.where} is not at the current schema: run `txwatch db upgrade --db ...`")
        self.sessions = session_factory(self.engine)

    def runs(self, **filters: Any) -> list[dict]:
        from txwatch.store import queries

        with self.sessions() as s:
            return queries.list_runs(s, **filters)

    def _find(self, s, ref: str):
        from txwatch.store import queries

        try:
            return queries.find_run(s, ref)
        except queries.Ambiguous as exc:
            raise CliError(str(exc)) from None
        except queries.NotFound as exc:
            raise CliError(f"{exc}; `txwatch runs` lists them", exit_code=1) from None

    def resolve(self, ref: str) -> tuple[str, str]:
        with self.sessions() as s:
            run, project = self._find(s, ref)
            return project, run.name

    def series(self, ref: str) -> list[dict]:
        from txwatch.store import queries

        with self.sessions() as s:
            run, _ = self._find(s, ref)
            return queries.list_series(s, run)

    def run(self, ref: str) -> dict:
        from txwatch.store import queries

        with self.sessions() as s:
            run, project = self._find(s, ref)
            return queries.run_detail(s, run, project)

    def points(self, ref: str, metric: str, max_points: int | None) -> list[dict]:
        from txwatch.store import downsample, queries

        with self.sessions() as s:
            run, _ = self._find(s, ref)
            try:
                series = queries.get_series(s, run, metric)
            except queries.NotFound as exc:
                names = [x["name"] for x in queries.list_series(s, run) if x["layer"] is None][:20]
                raise CliError(f"{exc}; it has: {', '.join(names) or 'no series'} (`txwatch series {ref}` lists "
                               "every one)", exit_code=1) from None
            if max_points:
                return downsample.series_points(s, series, max_points)["points"]
            return downsample.all_points(s, series)

    def diagnoses(self, **filters: Any) -> list[dict]:
        from txwatch.store import queries

        with self.sessions() as s:
            return queries.list_diagnoses(s, **filters)

    def incidents(self, ref: str) -> list[dict]:
        from txwatch.api.runs import run_incidents

        with self.sessions() as s:
            run, _ = self._find(s, ref)
            return run_incidents(s, run)

    def tag(self, project: str, name: str, add: list[str], remove: list[str]) -> list[str]:
        from txwatch.store import queries, tags

        with self.sessions() as s:
            run, _ = queries.get_run(s, project, name)
            try:
                return tags.change(s, run.id, add, remove)
            except tags.BadTag as exc:
                raise CliError(str(exc)) from None

    def close(self) -> None:
        self.engine.dispose()


def _unique(ref: str, found: list[tuple[str, str]]) -> tuple[str, str]:
    if not found:
        where = "" if "/" in ref else " in any project"
        raise CliError(f"no run {ref!r}{where}; `txwatch runs` lists them", exit_code=1)
    if len(found) > 1:
        projects = ", ".join(sorted(p for p, _ in found))
        raise CliError(f"run name {ref!r} exists in several projects ({projects}); say which: PROJECT/{ref}")
    return found[0]


def open_source(endpoint: str | None, db: str | None, token: str | None):
    """The daemon when ``endpoint`` is given, else the database ``db`` (default: the local one)."""
    if endpoint:
        return HttpSource(endpoint, token)
    return DbSource(db)
