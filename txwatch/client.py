"""``txwatch.Api``: the run history in a notebook or a script, from the local database or a daemon.

    import txwatch

    api = txwatch.Api()                                  # the local database; Api("http://host:8642") a daemon
    runs = api.runs(where="tags has 'sweep'")            # one row per run, its config as config.* columns
    loss = api.history("sweep/lr-3e-3", ["loss", "val_loss"], max_points=2000)   # one row per step
    api.diagnoses(run="sweep/lr-3e-3")

Each method returns a pandas DataFrame when pandas is installed (``pip install "txwatch[pandas]"``), else plain
lists of dicts with the same columns (``frames=False`` asks for lists either way). It reads through the same
sources as the CLI (``txwatch.cli.source``), so it sees exactly what ``txwatch runs --json`` prints.
"""

from __future__ import annotations

import os
from typing import Any

from txwatch.cli.errors import CliError


# metrics with one series per parameter (grad_norm/<param>...): left out of history() unless named
PER_PARAMETER = ("grad_norm", "grad_norm_max", "update_ratio", "param_norm")


class ApiError(Exception):
    """The history could not be read (no database yet, no such run, a daemon away); the message says why."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        return None
    return pandas


class Api:
    """The run history: ``runs``, ``run``, ``history``, ``diagnoses``.

    Args:
        endpoint: a txwatch daemon's URL (default: TXWATCH_ENDPOINT; without either, the database).
        db: the database to read (URL or SQLite path; default: TXWATCH_DB_URL, else the local one).
        token: the daemon's bearer token (default: TXWATCH_TOKEN).
        frames: DataFrames (True), lists (False), or DataFrames when pandas is installed (None, the default).

    Raises ``ApiError`` when the history cannot be opened; the methods raise it for an unknown run.
    """

    def __init__(self, endpoint: str | None = None, *, db: str | None = None, token: str | None = None,
                 frames: bool | None = None):
        from txwatch.cli.source import open_source

        endpoint = endpoint if endpoint is not None else os.environ.get("TXWATCH_ENDPOINT") or None
        token = token if token is not None else os.environ.get("TXWATCH_TOKEN") or None
        db = db if db is not None else os.environ.get("TXWATCH_DB_URL") or None
        self._pd = _pandas() if frames is not False else None
        if frames and self._pd is None:
            raise ApiError('frames=True needs pandas: pip install "txwatch[pandas]"')
        try:
            self._source = open_source(endpoint, db, token)
        except CliError as exc:
            raise ApiError(str(exc)) from None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._source, method)(*args, **kwargs)
        except CliError as exc:
            raise ApiError(str(exc)) from None

    def runs(self, where: str | None = None, *, project: str | None = None, status: str | None = None,
             limit: int = 1000) -> Any:
        """Runs, newest first: name, project, status, times, steps, last_loss, tags, firing counts and the config.

        ``where`` is a filter as ``txwatch runs --where`` takes it (``docs/api.md``): ``"config.lr > 1e-3 and
        tags has 'sweep'"``. A DataFrame has one column per config key (``config.lr``, ``config.optim.name``)."""
        if where is not None:
            from txwatch.store.search import FilterError, parse

            try:
                parse(where)
            except FilterError as exc:
                raise ApiError(f"where: {exc}") from None
        rows = self._call("runs", project=project, status=status, limit=limit, where=where, with_config=True)
        if self._pd is None:
            return rows
        frame = self._pd.json_normalize(rows, sep=".") if rows else self._pd.DataFrame(columns=["name", "project"])
        for column in ("started", "ended", "last_seen"):
            if column in frame:
                frame[column] = self._pd.to_datetime(frame[column], utc=True, format="ISO8601")
        return frame

    def run(self, run: str) -> dict[str, Any]:
        """One run (``RUN`` or ``PROJECT/RUN``): status, config, info, latest values, firing diagnoses."""
        return self._call("run", run)

    def history(self, run: str, names: str | list[str] | None = None, max_points: int | None = None) -> Any:
        """The run's series by step: one row per step, one column per series (``step`` first).

        ``names``: a series name or a list (default: every series but the per-parameter ones, so ``loss``,
        ``val_loss``, ``grad_norm_total``, ``lr/0``...). ``max_points``: downsample each series to about this many points (the
        lowest and highest value of each bucket); default: every point. A step a series has no value at is
        NaN in a DataFrame and absent from that row's dict."""
        if names is None:
            names = [s["name"] for s in self._call("series", run) if s["metric"] not in PER_PARAMETER]
        elif isinstance(names, str):
            names = [names]
        by_step: dict[int, dict[str, Any]] = {}
        for name in names:
            for point in self._call("points", run, name, max_points):
                by_step.setdefault(point["step"], {"step": point["step"]})[name] = point["value"]
        rows = [by_step[s] for s in sorted(by_step)]
        if self._pd is None:
            return rows
        return self._pd.DataFrame(rows, columns=["step", *names]).set_index("step")

    def diagnoses(self, run: str | None = None, *, project: str | None = None, rule: str | None = None,
                  severity: str | None = None, state: str | None = None) -> Any:
        """Diagnoses, newest first: rule, severity, state, symptom, cause, fix, reason, run, step..."""
        if run is not None:
            run = "/".join(self._call("resolve", run))  # an unknown run is an error, not an empty list
        rows = self._call("diagnoses", run=run, project=project, rule=rule, severity=severity, state=state)
        if self._pd is None:
            return rows
        frame = self._pd.DataFrame(rows)
        for column in ("first_seen", "last_seen", "resolved_at"):
            if column in frame:
                frame[column] = self._pd.to_datetime(frame[column], utc=True, format="ISO8601")
        return frame
