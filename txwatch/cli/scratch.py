"""A run read from a daemon, copied into a scratch SQLite database, so that commands which work on a database
(``rules replay``) work on ``--endpoint`` too, through the same code."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from txwatch.cli.source import HttpSource


def _time(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


@contextmanager
def scratch_copy(src: HttpSource, ref: str, wanted: Callable[[str], bool]) -> Iterator[tuple[object, str]]:
    """(session factory, "project/name") of a scratch database holding the run ``ref`` with the series ``wanted``
    accepts, every raw point of each; the database is deleted when the block ends."""
    from txwatch.store.codec import encode
    from txwatch.store.db import make_engine, session_factory, upgrade
    from txwatch.store.models import Point, Project, Run, Series

    project, name = src.resolve(ref)
    detail = src.run(f"{project}/{name}")
    with tempfile.TemporaryDirectory(prefix="txwatch-replay-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'run.db'}")
        try:
            upgrade(engine)
            sessions = session_factory(engine)
            with sessions.begin() as s:
                error = detail.get("error") or {}
                started = _time(detail["started"]) or datetime.now(timezone.utc)
                run = Run(project=Project(name=project, created=started), name=name, config=detail.get("config") or {},
                          info=detail.get("info") or {}, host=detail.get("host"), status=detail["status"],
                          started=started, ended=_time(detail.get("ended")),
                          last_seen=_time(detail.get("last_seen")) or started, steps=detail.get("steps") or 0,
                          end_reason=detail.get("end_reason"), error_type=error.get("type"),
                          error_message=error.get("message"), end_memory=detail.get("end_memory"))
                s.add(run)
                s.flush()
                for item in src.series(f"{project}/{name}"):
                    if not wanted(item["name"]):
                        continue
                    series = Series(run_id=run.id, name=item["name"], points=item["points"],
                                    last_step=item["last_step"], last_value=encode(item["last_value"])
                                    if item["last_value"] is not None else None)
                    s.add(series)
                    s.flush()
                    rows = [{"series_id": series.id, "step": p["step"], "time": p["time"], "value": encode(p["value"])}
                            for p in src.points(f"{project}/{name}", item["name"], None)]
                    if rows:
                        s.execute(Point.__table__.insert(), rows)
            yield sessions, f"{project}/{name}"
        finally:
            engine.dispose()
