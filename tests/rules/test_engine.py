"""The rule engine with real databases: diagnoses lifecycle, persistence, restarts, two collectors, the scheduler."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tests.rules.conftest import T0, Feeder, nan_after
from txwatch.ingest.queue import Collector
from txwatch.rules import RecordingNotifier, RuleEngine, build_engine, load_rules
from txwatch.rules.state import RunState
from txwatch.settings import Settings
from txwatch.store.db import make_engine, session_factory, upgrade
from txwatch.store.models import Diagnosis, EngineState, Notification, Run


def _rows(sessions, rule_id: str | None = None) -> list[Diagnosis]:
    with sessions() as s:
        q = select(Diagnosis).order_by(Diagnosis.id)
        if rule_id:
            q = q.where(Diagnosis.rule_id == rule_id)
        return list(s.execute(q).scalars())


def _engine(sessions, notifier=None, **kw) -> RuleEngine:
    return RuleEngine(load_rules([]), sessions, notifier=notifier, **kw)


def test_a_nan_loss_fires_one_diagnosis_with_evidence_then_resolves_it(sessions, feeder_factory):
    notifier = RecordingNotifier()
    feed = feeder_factory(_engine(sessions, notifier))
    for start in range(0, 60, 10):
        feed.steps(start, start + 10, loss=nan_after(40))
    rows = _rows(sessions, "loss-nonfinite")
    assert len(rows) == 1
    row = rows[0]
    assert (row.state, row.severity, row.episode, row.layer) == ("firing", "critical", 1, "")
    assert row.first_step == 40 and row.last_step == 59
    assert row.reason == "the loss is NaN at step 59"  # kept holding: the figures are the latest
    assert "Clip gradients to norm 1.0" in " ".join(row.fix)
    assert row.evidence["step"] == 59 and row.evidence["first"]["step"] == 40
    assert row.evidence["values"]["last(loss)"] == "NaN"  # stored JSON-safe on every database
    assert row.labels == {"area": "loss"}
    assert notifier.kinds("loss-nonfinite") == ["fire"]

    for start in range(60, 100, 10):  # training recovered (restarted from a checkpoint)
        feed.steps(start, start + 10, loss=lambda s: 0.6)
    row = _rows(sessions, "loss-nonfinite")[0]
    assert row.state == "resolved" and row.resolved_step is not None and row.resolved_at is not None
    assert row.evidence["resolution"]["reason"].startswith("resolved:")
    assert notifier.kinds("loss-nonfinite") == ["fire", "resolve"]


def test_diagnoses_still_firing_when_the_run_ends_are_closed_as_ended_not_left_firing(sessions, feeder_factory):
    notifier = RecordingNotifier()
    feed = feeder_factory(_engine(sessions, notifier))
    for start in range(0, 60, 10):
        feed.steps(start, start + 10, loss=nan_after(40))
    assert _rows(sessions, "loss-nonfinite")[0].state == "firing"
    feed.send(events=[{"kind": "end", "time": T0 + 100, "step": 59, "status": "crashed",
                       "error": {"type": "RuntimeError", "message": "boom"}}])
    [nan] = _rows(sessions, "loss-nonfinite")
    assert nan.state == "ended" and nan.resolved_step is None  # not firing forever, and not "resolved" either
    assert nan.evidence["ended"]["reason"] == "the run ended (crashed) at step 59 while this was firing"
    [crashed] = _rows(sessions, "run-crashed")
    assert crashed.state == "firing"  # the end itself stays said
    assert notifier.kinds("loss-nonfinite") == ["fire"]  # an end is not news: no second message
    feed.send(events=[{"kind": "start", "time": T0 + 200}])  # resumed under the same name
    for start in range(60, 80, 10):
        feed.steps(start, start + 10, loss=lambda s: math.nan)
    assert [(r.episode, r.state) for r in _rows(sessions, "loss-nonfinite")] == [(1, "ended"), (2, "firing")]


def test_a_second_episode_is_a_second_row_and_holding_never_adds_rows(sessions, feeder_factory):
    feed = feeder_factory(_engine(sessions))
    values = {**{s: 0.5 for s in range(0, 200)}, **{s: math.nan for s in range(30, 60)}, **{s: math.inf for s in range(120, 140)}}
    for start in range(0, 200, 10):
        feed.steps(start, start + 10, loss=values.__getitem__)
    rows = _rows(sessions, "loss-nonfinite")
    assert [(r.episode, r.state, r.first_step) for r in rows] == [(1, "resolved", 30), (2, "resolved", 120)]


def test_engine_state_is_saved_with_a_version_and_a_fresh_engine_resumes_from_it(sessions, feeder_factory):
    flat = dict(loss=lambda s: 2.3 + 0.01 * math.sin(s), **{"lr/0": lambda s: 1e-6})
    first = feeder_factory(_engine(sessions))
    for start in range(0, 150, 10):
        first.steps(start, start + 10, **flat)
    with sessions() as s:
        saved = s.execute(select(EngineState)).scalar_one()
        assert saved.version == 15 and saved.state["format"] == 1
    assert _rows(sessions, "loss-not-decreasing") == []

    # the collector restarts: a new engine (empty cache) must pick up the 150 steps of history from the database
    second = Feeder(Collector(sessions, rules=_engine(sessions)), run=first.run, project=first.project)
    second.seq = first.seq
    for start in range(150, 400, 10):
        second.steps(start, start + 10, **flat)
    rows = _rows(sessions, "loss-not-decreasing")
    assert [(r.state, r.first_step) for r in rows] == [("firing", 250)]  # as if it had never stopped


def test_points_arriving_out_of_step_order_are_evaluated_in_place(sessions, feeder_factory):
    feed = feeder_factory(_engine(sessions))
    feed.steps(20, 30, loss=lambda s: 0.5)
    feed.steps(0, 10, loss=lambda s: 0.5)  # a late batch (replayed from the hooks' spool)
    feed.steps(10, 20, loss=lambda s: math.nan if s == 15 else 0.5)
    rows = _rows(sessions, "loss-nonfinite")
    assert [r.first_step for r in rows] == [15]


def test_the_notifier_writes_in_the_same_transaction_and_a_failing_one_loses_nothing(sessions, feeder_factory):
    class OutboxLike:
        def record(self, session, diagnosis, kind):
            assert session.in_transaction() and diagnosis.id is not None
            session.add(
                Notification(
                    dedupe_key=f"{diagnosis.id}:{kind}", diagnosis_id=diagnosis.id, run_id=diagnosis.run_id,
                    kind=kind, sink="test", payload={}, status="pending",
                    next_attempt=datetime.now(timezone.utc), created=datetime.now(timezone.utc),
                )
            )

    class Broken:
        def record(self, session, diagnosis, kind):
            raise RuntimeError("sink misconfigured")

    feed = feeder_factory(_engine(sessions, OutboxLike()), run="with-outbox")
    feed.steps(0, 10, loss=nan_after(5))
    with sessions() as s:
        diag = s.execute(select(Diagnosis)).scalar_one()
        note = s.execute(select(Notification)).scalar_one()
        assert note.diagnosis_id == diag.id and note.kind == "fire"

    broken = feeder_factory(_engine(sessions, Broken()), run="broken-notifier")
    broken.steps(0, 10, loss=nan_after(5))
    assert len(_rows(sessions, "loss-nonfinite")) == 2  # the diagnosis is stored though the notifier failed


def test_the_alerts_outbox_is_the_notifier_the_collector_wires(sessions, store_engine, feeder_factory):
    alerts = pytest.importorskip("txwatch.alerts")
    settings = Settings(db_url=str(store_engine.url), webhook_url="http://127.0.0.1:9/hook")
    alerting = alerts.build_alerting(settings, sessions)
    try:
        engine = build_engine(settings, sessions, notifier=alerting.outbox)
        feed = feeder_factory(engine)
        feed.steps(0, 20, loss=nan_after(5))
        with sessions() as s:
            notes = s.execute(select(Notification)).scalars().all()
        assert [(n.kind, n.sink) for n in notes] == [("fire", "webhook")]
    finally:
        alerting.close()


def test_observe_never_raises_into_the_collector(sessions):
    engine = _engine(sessions)
    assert engine.observe(999_999, {"loss": [(1, T0, 1.0)]}, []) == []  # no such run: logged and counted


@pytest.mark.postgres
def test_two_collectors_on_one_postgresql_database_store_one_diagnosis_per_episode(pg_url):
    """Two collectors behind a load balancer, both evaluating the same run at the same time (rank 0 sends the
    loss, rank 1 its device metrics): each evaluation must see the other's points, and each episode is stored
    and notified exactly once."""
    dbs = [make_engine(pg_url) for _ in range(2)]
    upgrade(dbs[0])
    try:
        factories = [session_factory(db) for db in dbs]
        notifiers = [RecordingNotifier(), RecordingNotifier()]
        collectors = [Collector(f, rules=_engine(f, n)) for f, n in zip(factories, notifiers)]
        nan = set(range(100, 150)) | set(range(250, 300))
        rank0 = [{"loss": [[s, T0 + s, math.nan if s in nan else 0.5] for s in range(a, a + 10)]} for a in range(0, 400, 10)]
        rank1 = [{"data_wait_share": [[s, T0 + s, 0.1] for s in range(a, a + 10)]} for a in range(0, 400, 10)]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def worker(rank: int, batches: list[dict]) -> None:
            feeds = [Feeder(c, run="shared", project="team", rank=rank) for c in collectors]
            try:
                barrier.wait()
                for i, batch in enumerate(batches):  # the load balancer alternates between the collectors
                    feed = feeds[(i + rank) % 2]
                    feed.seq = i
                    feed.send(batch)
            except BaseException as exc:  # surface thread failures in the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k, b)) for k, b in ((0, rank0), (1, rank1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        rows = _rows(factories[0], "loss-nonfinite")
        assert [(r.episode, r.first_step, r.state) for r in rows] == [(1, 100, "resolved"), (2, 250, "resolved")]
        told = sorted(notifiers[0].kinds("loss-nonfinite") + notifiers[1].kinds("loss-nonfinite"))
        assert told == ["fire", "fire", "resolve", "resolve"]  # each transition told exactly once, by one of them
        with factories[0]() as s:
            saved = s.execute(select(EngineState)).scalar_one()
        assert saved.version == len(rank0) + len(rank1)
        state = RunState.from_state(saved.run_id, collectors[0].rules.core.index, saved.state)
        # no evaluation worked on a stale state: every point of both ranks is in the saved one
        assert state.buffers["loss"].n == 400 and state.buffers["data_wait_share"].n == 400
    finally:
        for db in dbs:
            db.dispose()


def _set_last_seen(sessions, run_name: str, when: datetime) -> None:
    with sessions() as s, s.begin():
        run = s.execute(select(Run).where(Run.name == run_name)).scalar_one()
        run.last_seen = when


def test_run_stalled_fires_from_the_scheduler_and_resolves_when_the_run_speaks_again(sessions, feeder_factory):
    notifier = RecordingNotifier()
    engine = _engine(sessions, notifier, stall_after_s=300.0)
    feed = feeder_factory(engine, run="hangs")
    feed.steps(0, 10, loss=lambda s: 1.0)
    now = datetime.now(timezone.utc)
    _set_last_seen(sessions, "hangs", now - timedelta(seconds=200))
    assert engine.check_time(now=now.timestamp()) == []
    _set_last_seen(sessions, "hangs", now - timedelta(seconds=400))
    changes = engine.check_time(now=now.timestamp())
    assert [(c.rule_id, c.kind) for c in changes] == [("run-stalled", "fire")]
    assert engine.check_time(now=now.timestamp()) == []  # still stalled: nothing new
    row = _rows(sessions, "run-stalled")[0]
    assert row.state == "firing" and row.reason == "no data for 400 s (the stall limit is 300 s)"

    feed.send(events=[{"kind": "heartbeat", "time": now.timestamp(), "step": 10}])
    _set_last_seen(sessions, "hangs", now)
    changes = engine.check_time(now=now.timestamp() + 1)
    assert [(c.rule_id, c.kind) for c in changes] == [("run-stalled", "resolve")]
    assert _rows(sessions, "run-stalled")[0].state == "resolved"
    assert notifier.kinds("run-stalled") == ["fire", "resolve"]


def test_a_run_whose_process_vanished_stays_stalled(sessions, feeder_factory):
    engine = _engine(sessions, stall_after_s=60.0)
    feed = feeder_factory(engine, run="killed")
    feed.steps(0, 10, loss=lambda s: 1.0)
    with sessions() as s, s.begin():  # what the scheduler does when the training process is gone
        run = s.execute(select(Run)).scalar_one()
        run.status, run.end_reason = "vanished", "vanished"
        last_seen = run.last_seen if run.last_seen.tzinfo else run.last_seen.replace(tzinfo=timezone.utc)
    later = last_seen + timedelta(minutes=5)
    changes = engine.check_time(now=later.timestamp())
    assert [(c.rule_id, c.kind) for c in changes] == [("run-stalled", "fire")]
    assert changes[0].evidence["run"]["status"] == "vanished"
    assert engine.check_time(now=later.timestamp() + 3600) == []  # still gone: still diagnosed, nothing new


def test_a_finished_run_is_never_stalled_and_an_open_stall_resolves_when_it_ends(sessions, feeder_factory):
    engine = _engine(sessions, stall_after_s=60.0)
    feed = feeder_factory(engine, run="done")
    feed.steps(0, 10, loss=lambda s: 1.0)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert [c.kind for c in engine.check_time(now=later.timestamp())] == ["fire"]
    feed.send(events=[{"kind": "end", "time": later.timestamp(), "step": 10, "status": "finished"}])
    assert [c.kind for c in engine.check_time(now=later.timestamp() + 3600)] == ["resolve"]
    assert engine.check_time(now=later.timestamp() + 7200) == []


def test_build_engine_uses_the_settings_rule_folders_and_builtin_switch(sessions, tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "id: loss-too-high\nsymptom: Loss above 10\ncause: c\nfix: [f]\nseverity: info\n"
        "condition: last(loss) > 10\n"
    )
    engine = build_engine(Settings(rules_dirs=[tmp_path], builtin_rules=False), sessions)
    assert [r.id for r in engine.rules] == ["loss-too-high"]
    both = build_engine(Settings(rules_dirs=[tmp_path], stall_after_s=42.0), sessions)
    assert len(both.rules) == 23 and both.settings["stall_after_s"] == 42.0


def test_a_group_of_runs_is_evaluated_together_and_a_run_another_collector_moved_is_redone(sessions):
    """observe_many (the collector's combined writes): one transaction for several runs; a run whose saved state
    another collector advanced meanwhile is evaluated again on that state, so no point is lost or doubled."""
    store = Collector(sessions)
    feeds = {name: Feeder(store, run=name) for name in ("x", "y")}
    for feed in feeds.values():
        feed.steps(0, 1, loss=lambda s: 0.5)
    with sessions() as s:
        ids = dict(s.execute(select(Run.name, Run.id)).all())
    here, there = _engine(sessions), _engine(sessions)  # two collectors on one database

    def loss(start, stop, fn=lambda s: 0.5):
        return {"loss": [(s, T0 + s, fn(s)) for s in range(start, stop)]}

    here.observe_many([(ids["x"], loss(0, 10), []), (ids["y"], loss(0, 10), [])])
    there.observe(ids["x"], loss(10, 20), [])  # "here" still caches x's older state
    changes = here.observe_many([(ids["x"], loss(20, 30, nan_after(25)), []), (ids["y"], loss(10, 20, nan_after(15)), [])])
    assert sorted((c.run_id, c.kind, c.step) for c in changes if c.rule_id == "loss-nonfinite") == [
        (ids["x"], "fire", 25), (ids["y"], "fire", 15)]
    with sessions() as s:
        saved = {r.run_id: r for r in s.execute(select(EngineState)).scalars()}
    assert {ids["x"]: 3, ids["y"]: 2} == {rid: saved[rid].version for rid in ids.values()}
    for name, n in (("x", 30), ("y", 20)):
        state = RunState.from_state(ids[name], here.core.index, saved[ids[name]].state)
        assert state.buffers["loss"].n == n  # every point evaluated exactly once
    assert sorted((r.run_id, r.first_step) for r in _rows(sessions, "loss-nonfinite")) == [(ids["x"], 25), (ids["y"], 15)]


def test_a_saved_state_row_that_went_missing_is_recreated_not_an_error(sessions):
    """The engine skips re-inserting engine_state rows it has saved before (PostgreSQL); if one was deleted
    behind its back (a restore, an administrator), the evaluation recreates it and starts the run over."""
    from sqlalchemy import delete

    store = Collector(sessions)
    Feeder(store, run="x").steps(0, 1, loss=lambda s: 0.5)
    with sessions() as s:
        run_id = s.execute(select(Run.id)).scalar_one()
    engine = _engine(sessions)
    engine.observe(run_id, {"loss": [(s, T0 + s, 0.5) for s in range(10)]})
    with sessions() as s, s.begin():
        s.execute(delete(EngineState))
    changes = engine.observe(run_id, {"loss": [(s, T0 + s, nan_after(15)(s)) for s in range(10, 20)]})
    assert [(c.rule_id, c.step) for c in changes if c.rule_id == "loss-nonfinite"] == [("loss-nonfinite", 15)]
    with sessions() as s:
        assert s.execute(select(EngineState.version)).scalar_one() == 1  # saved again, from scratch


def test_a_quiet_group_whose_run_another_collector_moved_is_redone_too(sessions):
    """A group that fires nothing is saved on its own short path (on PostgreSQL: two round trips); a run there
    whose saved state another collector advanced, or whose saved row went missing, is still evaluated again
    on the database's state, so no point is lost or doubled."""
    from sqlalchemy import delete

    store = Collector(sessions)
    for name in ("x", "y", "z"):
        Feeder(store, run=name).steps(0, 1, loss=lambda s: 0.5)
    with sessions() as s:
        ids = dict(s.execute(select(Run.name, Run.id)).all())
    here, there = _engine(sessions), _engine(sessions)

    def loss(start, stop):
        return {"loss": [(s, T0 + s, 0.5) for s in range(start, stop)]}

    assert here.observe_many([(ids[n], loss(0, 10), []) for n in ("x", "y", "z")]) == []
    there.observe(ids["x"], loss(10, 20), [])  # "here" still caches x's older state
    with sessions() as s, s.begin():
        s.execute(delete(EngineState).where(EngineState.run_id == ids["z"]))  # z's row is gone
    assert here.observe_many([(ids["x"], loss(20, 30), []), (ids["y"], loss(10, 20), []),
                              (ids["z"], loss(10, 20), [])]) == []
    with sessions() as s:
        saved = {r.run_id: r for r in s.execute(select(EngineState)).scalars()}
    assert {ids["x"]: 3, ids["y"]: 2, ids["z"]: 1} == {rid: saved[rid].version for rid in ids.values()}
    for name, n in (("x", 30), ("y", 20), ("z", 10)):  # z starts over from the points after its row was lost
        state = RunState.from_state(ids[name], here.core.index, saved[ids[name]].state)
        assert state.buffers["loss"].n == n
