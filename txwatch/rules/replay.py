"""Replay: run rules over a stored run and say what would have fired at which step, without training again.

The stored points are streamed in step order through the same incremental core the collector uses, in chunks
of steps, with nothing written to the database. Time-based rules (run-stalled) are not replayed: they depend on
the wall clock, not on the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from txwatch.rules.evaluator import Core, Transition
from txwatch.rules.incidents import Episode
from txwatch.rules.model import Rule
from txwatch.store.codec import decode
from txwatch.store.models import Point, Project, Run, Series

CHUNK_STEPS = 500  # steps per simulated batch; results do not depend on it (evaluation is per step)
STATE_NAMES = {"pending": "pending", "fire": "firing", "resolve": "resolved", "cancel": "cancelled", "end": "ended"}


class Replayed(NamedTuple):
    """One thing that would have happened: at ``step``, ``rule`` went to ``state`` because of ``reason``."""

    step: int
    rule: str
    state: str  # pending | firing | resolved | cancelled | ended
    reason: str
    layer: str | None = None
    evidence: dict[str, Any] = {}


class RunNotFound(LookupError):
    """The run named for replay is not in the database (or the name is ambiguous)."""


def find_run(session: Session, run: int | str | Run) -> Run:
    """A run by row, id, ``project/name`` or a name that is unique across projects."""
    if isinstance(run, Run):
        return run
    if isinstance(run, int):
        row = session.get(Run, run)
        if row is None:
            raise RunNotFound(f"no run with id {run}")
        return row
    text = str(run)
    if "/" in text:
        project, name = text.split("/", 1)
        row = session.execute(
            select(Run).join(Project).where(Project.name == project, Run.name == name)
        ).scalar_one_or_none()
        if row is None:
            raise RunNotFound(f"no run {name!r} in project {project!r}")
        return row
    rows = session.execute(select(Run).where(Run.name == text)).scalars().all()
    if not rows:
        raise RunNotFound(f"no run named {text!r}; list runs with `txwatch runs`")
    if len(rows) > 1:
        projects = sorted(session.get(Project, r.project_id).name for r in rows)
        raise RunNotFound(
            f"run name {text!r} is in several projects ({', '.join(projects)}): write it as project/{text}"
        )
    return rows[0]


def replay(
    session_factory: sessionmaker[Session],
    run: int | str | Run,
    rules: list[Rule],
    settings: dict[str, float] | None = None,
    include_pending: bool = True,
) -> list[Replayed]:
    """What ``rules`` would have done on the stored ``run``, in step order.

    Raises ``RunNotFound`` when the run does not exist or its name is ambiguous.
    """
    core = Core([r for r in rules if not r.time_based], settings)
    out: list[Replayed] = []
    with session_factory() as session:
        row = find_run(session, run)
        state = core.new_state(row.id)
        wanted = {
            sid: name
            for sid, name in session.execute(select(Series.id, Series.name).where(Series.run_id == row.id)).all()
            if core.index.match(name)[0] is not None
        }
        if row.info:
            _collect(core.process(state, {}, [{"kind": "info", "info": row.info}]), out, include_pending)
        for chunk in _chunks(session, wanted):
            _collect(core.process(state, chunk, ()), out, include_pending)
        end = _end_event(row, state.max_step)
        if end is not None:
            _collect(core.process(state, {}, [end]), out, include_pending)
    return out


def _chunks(session: Session, wanted: dict[int, str]) -> Iterator[dict[str, list[tuple[int, float, float]]]]:
    if not wanted:
        return
    stmt = (
        select(Point.series_id, Point.step, Point.time, Point.value)
        .where(Point.series_id.in_(list(wanted)))
        .order_by(Point.step)
        .execution_options(yield_per=20_000)
    )
    chunk: dict[str, list[tuple[int, float, float]]] = {}
    chunk_end: int | None = None
    for sid, step, t, v in session.execute(stmt):
        if chunk_end is None:
            chunk_end = step + CHUNK_STEPS
        if step >= chunk_end:
            yield chunk
            chunk = {}
            chunk_end = step + CHUNK_STEPS
        chunk.setdefault(wanted[sid], []).append((int(step), float(t), decode(v)))  # NULL stores NaN
    if chunk:
        yield chunk


def _end_event(row: Run, max_step: int) -> dict[str, Any] | None:
    status = row.end_reason if row.end_reason in ("finished", "crashed", "oom") else None
    if status is None and row.status in ("finished", "crashed", "oom"):
        status = row.status
    if status is None:
        return None
    ended = row.ended or row.last_seen
    ev: dict[str, Any] = {"kind": "end", "time": ended.timestamp() if ended else 0.0, "step": max_step, "status": status}
    if row.error_type:
        ev["error"] = {"type": row.error_type, "message": row.error_message or ""}
    if row.end_memory:
        ev["memory"] = row.end_memory
    return ev


def _collect(transitions: list[Transition], out: list[Replayed], include_pending: bool) -> None:
    for tr in transitions:
        state = STATE_NAMES.get(tr.kind)
        if state is None or (not include_pending and state in ("pending", "cancelled")):
            continue
        out.append(Replayed(tr.step, tr.rule.id, state, tr.reason, tr.layer, tr.evidence))


def episodes(found: list[Replayed], rules: list[Rule]) -> list[Episode]:
    """The episodes a replay went through (firing, then resolved or still open), for ``incidents.group``."""
    by_id = {r.id: r for r in rules}
    open_: dict[tuple[str, str | None], Replayed] = {}
    out: list[Episode] = []

    def close(start: Replayed, resolved: int | None) -> None:
        rule = by_id.get(start.rule)
        out.append(Episode(start.rule, rule.severity if rule else "warning", start.step, resolved, start.layer or "",
                           start.reason, tuple(rule.fix) if rule else ()))

    for e in found:
        key = (e.rule, e.layer)
        if e.state == "firing":
            open_.setdefault(key, e)
        elif e.state == "resolved" and key in open_:
            close(open_.pop(key), e.step)
    for start in open_.values():
        close(start, None)
    return sorted(out, key=lambda ep: ep.first_step)
