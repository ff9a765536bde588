"""Replay: rules over a stored run say what would have fired at which step, without training again."""

from __future__ import annotations

import math

import pytest

from tests.rules.conftest import T0, Feeder
from txwatch.rules import RuleEngine, RunNotFound, load_rules, replay


def _diverging_run(feed: Feeder) -> None:
    """Loss falls and levels off by step 70, the gradient norm grows 10x from step 120, the loss turns NaN at step
    140; then it crashes. (While the loss still falls fast, a growing norm is a model learning, not an explosion.)"""
    for start in range(0, 160, 10):
        feed.steps(
            start,
            start + 10,
            loss=lambda s: math.nan if s >= 140 else 2.0 * math.exp(-s / 10) + 0.3,
            grad_norm_total=lambda s: 1.0 + 0.01 * (s % 7) if s < 120 else 20.0 * 1.2 ** (s - 120),
        )
    feed.send(events=[{"kind": "end", "time": T0 + 160, "step": 159, "status": "crashed",
                       "error": {"type": "RuntimeError", "message": "CUDA error: an illegal memory access"}}])


def test_replay_shows_what_fired_live_at_the_same_steps(sessions, feeder_factory):
    live = feeder_factory(RuleEngine(load_rules([]), sessions), run="live")
    _diverging_run(live)
    stored = feeder_factory(None, run="stored")  # a run collected without any rules
    _diverging_run(stored)

    found = replay(sessions, "stored", load_rules([]))
    firing = [(e.step, e.rule) for e in found if e.state == "firing"]
    assert firing == [(121, "gradient-explosion"), (140, "loss-nonfinite"), (159, "run-crashed")]
    assert firing == [(e.step, e.rule) for e in replay(sessions, "proj/live", load_rules([])) if e.state == "firing"]
    crashed = next(e for e in found if e.rule == "run-crashed")
    assert "CUDA error: an illegal memory access" in crashed.reason

    from sqlalchemy import select

    from txwatch.store.models import Diagnosis

    with sessions() as s:  # replay wrote nothing; the live engine stored the same firsts
        rows = s.execute(select(Diagnosis.rule_id, Diagnosis.first_step).order_by(Diagnosis.first_step)).all()
    assert [(r.first_step, r.rule_id) for r in rows] == firing


def test_replay_with_a_tuned_copy_of_a_builtin_rule_shows_the_new_threshold(sessions, feeder_factory, tmp_path):
    _diverging_run(feeder_factory(None, run="tune-me"))
    (tmp_path / "gradient-explosion.yaml").write_text(
        "id: gradient-explosion\nsymptom: Gradient norms are spiking\ncause: c\nfix: [f]\nseverity: critical\n"
        "condition: count(grad_norm_total) >= 10 and median(grad_norm_total, points=3) > 100 * median(grad_norm_total)\n"
    )
    tuned = load_rules([tmp_path])
    assert next(r for r in tuned if r.id == "gradient-explosion").source.endswith("gradient-explosion.yaml")
    step = next(e.step for e in replay(sessions, "tune-me", tuned) if e.rule == "gradient-explosion")
    assert step > 121  # 100x takes longer to reach than 10x


def test_replay_names_a_missing_or_ambiguous_run(sessions, feeder_factory):
    feeder_factory(None, run="twin", project="a").steps(0, 5, loss=lambda s: 1.0)
    feeder_factory(None, run="twin", project="b").steps(0, 5, loss=lambda s: 1.0)
    with pytest.raises(RunNotFound, match="no run named 'nope'"):
        replay(sessions, "nope", load_rules([]))
    with pytest.raises(RunNotFound, match="write it as project/twin"):
        replay(sessions, "twin", load_rules([]))
    assert replay(sessions, "a/twin", load_rules([])) == []
