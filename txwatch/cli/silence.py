"""CLI commands: ``txwatch silence add|list|remove``, against the database (--db) or a daemon (--endpoint)."""

from __future__ import annotations

import getpass
from typing import Any

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import cell, console as _console

HTTP_TIMEOUT_S = 10.0  # one request to the daemon

silence_app = typer.Typer(
    help="Stop sending a run's or a project's diagnoses for a while (they are still recorded).",
    no_args_is_help=True,
)
app.add_typer(silence_app, name="silence")

DbOpt = typer.Option(None, "--db", help="Database URL or SQLite path (default: the local database).")
EndpointOpt = typer.Option(
    None, "--endpoint", envvar="TXWATCH_ENDPOINT",
    help="Talk to a running daemon instead of the database, e.g. http://collector:8642.",
)
TokenOpt = typer.Option(None, "--token", envvar="TXWATCH_TOKEN", help="The daemon's bearer token.", show_default=False)


@silence_app.command("add")
def add(
    run: str = typer.Option(None, "--run", help="Run name, or project/run."),
    project: str = typer.Option(None, "--project", help="Project: silences all its runs (or, with --run, that run)."),
    rule: str = typer.Option(None, "--rule", help="Only this rule id (e.g. loss-diverging); all rules if omitted."),
    duration: str = typer.Option(..., "--for", help="How long: 30m, 2h, 1h30m, 1d (at most 90d)."),
    comment: str = typer.Option("", "--comment", help="Why, for whoever reads `silence list`."),
    db: str = DbOpt,
    endpoint: str = EndpointOpt,
    token: str = TokenOpt,
) -> None:
    """Silence a run or a project (optionally one rule) for a while."""
    body = {"run": run, "project": project, "rule": rule, "duration": duration, "comment": comment,
            "created_by": _user()}
    if endpoint:
        silence = _request("POST", endpoint, token, "/api/v1/silences", json=body)
    else:
        from txwatch.alerts.silences import SilenceError, add_silence, silence_dict

        with _sessions(db)() as s, s.begin():
            try:
                silence = silence_dict(add_silence(s, **body))
            except SilenceError as exc:
                raise CliError(str(exc)) from None
    _console().print(
        f"Silenced {cell(_what(silence))} until {cell(silence['expires'].replace('T', ' ').replace('Z', ' UTC')[:20])}"
        f" (silence #{silence['id']}; remove it with `txwatch silence remove {silence['id']}`)"
    )


@silence_app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Include silences that have ended."),
    db: str = DbOpt,
    endpoint: str = EndpointOpt,
    token: str = TokenOpt,
) -> None:
    """List the active silences."""
    if endpoint:
        params = {"include_expired": "true"} if all_ else {}
        silences = _request("GET", endpoint, token, "/api/v1/silences", params=params)["silences"]
    else:
        from txwatch.alerts.silences import list_silences, silence_dict

        with _sessions(db)() as s:
            silences = [silence_dict(x) for x in list_silences(s, include_expired=all_)]
    console = _console()
    if not silences:
        console.print("No active silences." if not all_ else "No silences.")
        return
    from rich.table import Table

    table = Table(title="Silences")
    for col in ("id", "project", "run", "rule", "until", "by", "comment"):
        table.add_column(col)
    for x in silences:
        until = x["expires"].replace("T", " ")[:16] + " UTC" + ("" if x["active"] else " (ended)")
        table.add_row(str(x["id"]), cell(x["project"] or "*"), cell(x["run"] or "*"), cell(x["rule"] or "*"),
                      cell(until), cell(x["created_by"] or ""), cell(x["comment"] or ""))
    console.print(table)


@silence_app.command("remove")
def remove(
    silence_id: int = typer.Argument(..., metavar="ID", help="The silence's id (see `txwatch silence list`)."),
    db: str = DbOpt,
    endpoint: str = EndpointOpt,
    token: str = TokenOpt,
) -> None:
    """Remove a silence: its run's diagnoses are sent again."""
    if endpoint:
        _request("DELETE", endpoint, token, f"/api/v1/silences/{silence_id}")
    else:
        from txwatch.alerts.silences import remove_silence

        with _sessions(db)() as s, s.begin():
            if not remove_silence(s, silence_id):
                raise CliError(f"no silence with id {silence_id} (see `txwatch silence list --all`)")
    _console().print(f"Removed silence #{silence_id}.")


def _what(s: dict[str, Any]) -> str:
    where = "/".join(x for x in (s.get("project"), s.get("run")) if x)
    scope = f"run {where}" if s.get("run") else f"project {where}"
    return f"rule {s['rule']} on {scope}" if s.get("rule") else f"every rule on {scope}"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return ""


def _sessions(db: str | None):
    from txwatch.settings import load_settings
    from txwatch.store.db import make_engine, session_factory, upgrade

    settings = load_settings(db_url=db)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    return session_factory(engine)


def _request(method: str, endpoint: str, token: str | None, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = endpoint.rstrip("/") + path
    try:
        resp = httpx.request(method, url, headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(
            f"could not reach the daemon at {endpoint} ({type(exc).__name__}): is `txwatch serve` running there? "
            "check --endpoint / TXWATCH_ENDPOINT"
        ) from None
    if resp.status_code == 401:
        raise CliError("the daemon rejected the token: pass --token or set TXWATCH_TOKEN to its TXWATCH_TOKEN")
    if resp.status_code >= 400:
        raise CliError(_detail(resp))
    return resp.json()


def _detail(resp) -> str:
    try:
        detail = resp.json().get("detail")
    except Exception:
        detail = None
    if isinstance(detail, list):  # pydantic validation errors: name each field
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    return f"the daemon refused the request (HTTP {resp.status_code}): {detail or resp.text[:200]}"
