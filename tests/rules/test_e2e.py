"""End to end: real small PyTorch trainings, instrumented with the hooks, each going wrong in one known way.

Each training runs once per test session with ``txwatch_hooks.watch`` (the real hooks compute every metric and
build every batch). The batches are then ingested by the real collector with the built-in rules on SQLite and
on PostgreSQL, and the diagnosis for the fault must be stored with the right cause within a stated number of
steps of the fault's onset. The healthy runs must raise nothing of severity warning or critical.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import timedelta, timezone

import pytest
from sqlalchemy import select

from tests.rules import scenarios
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.rules import build_engine
from txwatch.settings import Settings
from txwatch.store.models import Diagnosis, Run

pytestmark = pytest.mark.slow

# per-layer norms every step and update ratios every 5th (the defaults are 10 and 50: a real job trains for
# thousands of steps, these for a few hundred), no system sampler (CPU-only here), no crash hooks (the test
# process is not the job: the `with watch()` block reports crashes)
WATCH = dict(grad_every=1, update_every=5, system_interval_s=0, crash_hooks=False, schedule_delay_s=0.2, heartbeat_s=3600)


@functools.lru_cache(maxsize=None)
def recorded(name: str, **kwargs) -> tuple[int, tuple[dict, ...]]:
    """Train scenario ``name`` once with the hooks; the onset step and the batches the hooks sent."""
    from txwatch_hooks.testing import MemorySender

    sink = MemorySender()
    run = name.replace("_", "-") + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    watch = dict(WATCH, sender=sink, run=run, project="e2e")
    if name.startswith("healthy"):
        watch.update(grad_every=5, update_every=10)  # closer to the defaults; nothing to catch quickly
    scenario = getattr(scenarios, name)(watch=watch, **kwargs)
    return scenario.onset, tuple(sorted(sink.batches, key=lambda b: b["seq"]))


def ingest(sessions, batches, settings: Settings | None = None):
    engine = build_engine(settings or Settings(), sessions)
    collector = Collector(sessions, rules=engine)
    for body in batches:
        collector.ingest(Batch.model_validate(body))
    return engine


def diagnoses(sessions) -> list[Diagnosis]:
    with sessions() as s:
        return list(s.execute(select(Diagnosis).order_by(Diagnosis.first_step, Diagnosis.id)).scalars())


@dataclass(frozen=True)
class Fault:
    scenario: str
    rule: str
    within: int  # steps after the onset
    cause: str  # words from the rule's cause
    options: tuple[tuple[str, object], ...] = ()  # keyword arguments for the scenario


FAULTS = [
    Fault("lr_too_high", "gradient-explosion", 5, "learning rate is too high"),
    Fault("lr_too_high_sgd", "update-ratio-high", 25, "learning rate is too high"),
    Fault("gpt_lr_too_high", "loss-diverging", 15, "learning rate is too high"),
    Fault("lr_too_low", "loss-not-decreasing", 260, "learning rate is too low"),
    Fault("sgd_lr_too_low", "update-ratio-low", 130, "learning rate is too low"),
    Fault("tiny_training_set", "overfitting", 150, "memorizing the training set"),
    Fault("zeroed_layer", "dead-layer", 10, "exactly zero"),
    Fault("slow_loader", "slow-training", 160, "input pipeline cannot keep up"),
    Fault("vanishing", "vanishing-gradients", 20, "gradient signal dies out"),
    Fault("vanishing", "gradient-imbalance", 30, "than the typical layer's"),
    Fault("no_warmup", "no-warmup", 10, "no (or too short a) learning-rate warmup"),
    Fault("restarts_too_high", "loss-oscillating", 160, "overshoots"),
    Fault("crashing", "run-crashed", 0, "raised an exception"),
    Fault("out_of_memory", "out-of-memory", 0, "too large for the device"),
    # a plain optimizer is not stepped while the scaler skips: the scale has collapsed by the next step
    Fault("fp16_overflow", "fp16-overflow", 0, "overflow fp16's range"),
    # a fused one is stepped on every skipped iteration: the scale halves once a step, from 2^19 (or 2^20, when
    # the scaler was trying a larger scale) to under 1
    Fault("fp16_overflow", "fp16-overflow", 21, "overflow fp16's range", (("fused", True),)),
]


def _fault_id(f: Fault) -> str:
    return f"{f.scenario}->{f.rule}" + "".join(f"-{k}{v}" for k, v in f.options)


@pytest.mark.parametrize("fault", FAULTS, ids=_fault_id)
def test_a_real_fault_is_diagnosed_with_its_cause_soon_after_onset(fault, sessions):
    onset, batches = recorded(fault.scenario, **dict(fault.options))
    ingest(sessions, batches)
    rows = [d for d in diagnoses(sessions) if d.rule_id == fault.rule]
    assert rows, f"{fault.rule} did not fire; fired: {sorted({d.rule_id for d in diagnoses(sessions)})}"
    first = rows[0]
    assert onset - 1 <= first.first_step <= onset + fault.within, (first.first_step, onset)
    assert fault.cause in first.cause
    assert first.reason
    assert first.evidence.get("first", first.evidence)["step"] == first.first_step  # figures from when it fired


def test_gradient_explosion_warns_before_the_loss_is_nan(sessions):
    onset, batches = recorded("lr_too_high")
    ingest(sessions, batches)
    rows = {d.rule_id: d for d in diagnoses(sessions)}
    nan_step = rows["loss-nonfinite"].first_step
    assert rows["gradient-explosion"].first_step < nan_step
    assert onset < nan_step <= onset + 10  # the fault really went all the way to NaN, quickly
    assert rows["gradient-explosion"].first_step - onset <= 5
    layers = rows["gradient-explosion"].evidence.get("first", rows["gradient-explosion"].evidence).get("layers", [])
    assert layers  # the layers whose norms spiked are named


def test_update_ratio_high_warns_while_the_loss_still_looks_fine(sessions):
    _, batches = recorded("lr_too_high_sgd")
    ingest(sessions, batches)
    fired = next(d.first_step for d in diagnoses(sessions) if d.rule_id == "update-ratio-high")
    loss = {p[0]: p[2] for b in batches for p in b.get("series", {}).get("loss", [])}
    steps = sorted(loss)

    def mean(lo: int, hi: int) -> float:
        vals = [loss[s] for s in steps if lo <= s < hi]
        return sum(vals) / len(vals)

    assert fired <= 25
    assert mean(fired - 10, fired) < mean(1, 11)  # when it fired, the loss was still going down...
    assert mean(steps[-50], steps[-1] + 1) > mean(fired - 10, fired)  # ...and only later turned back up


def test_a_zeroed_layer_is_one_diagnosis_naming_every_dead_layer(sessions):
    onset, batches = recorded("zeroed_layer")
    ingest(sessions, batches)
    dead = [d for d in diagnoses(sessions) if d.rule_id == "dead-layer"]
    assert len(dead) == 1 and dead[0].state == "ended" and dead[0].episode == 1  # the run finished with it
    # the zeroed first layer, and the next layer's weight (its input is now all zeros)
    layers = dead[0].evidence.get("first", dead[0].evidence).get("layers", [])
    assert sorted(layers) == ["0.bias", "0.weight", "2.weight"]


def test_a_crash_and_an_oom_carry_the_error_and_the_memory_figures(sessions):
    _, crashed = recorded("crashing")
    _, oom = recorded("out_of_memory")
    ingest(sessions, crashed + oom)
    rows = {d.rule_id: d for d in diagnoses(sessions)}
    assert "mat1 and mat2 shapes cannot be multiplied" in rows["run-crashed"].reason
    assert rows["run-crashed"].evidence["run"]["error"]["type"] == "RuntimeError"
    assert "Unable to allocate" in rows["out-of-memory"].reason
    assert rows["out-of-memory"].evidence["run"]["memory"]["cpu"]["rss"] > 0
    assert "run-crashed" not in {d.rule_id for d in diagnoses(sessions) if d.run_id == rows["out-of-memory"].run_id}


def test_warmup_prevents_the_no_warmup_diagnosis(sessions):
    _, batches = recorded("no_warmup", warmup=50)
    ingest(sessions, batches)
    assert "no-warmup" not in {d.rule_id for d in diagnoses(sessions)}


def test_a_hung_job_is_reported_stalled_by_the_scheduler(sessions):
    _, batches = recorded("healthy_mlp")
    # it never ends: the same batches without the end event (on a fast machine one batch holds the whole run)
    alive = [{**b, "events": [e for e in b.get("events", []) if e["kind"] != "end"]} for b in batches]
    engine = ingest(sessions, alive, Settings(stall_after_s=120.0))
    with sessions() as s:
        last_seen = s.execute(select(Run.last_seen)).scalar_one()
    if last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=timezone.utc)
    assert engine.check_time((last_seen + timedelta(seconds=60)).timestamp()) == []
    changes = engine.check_time((last_seen + timedelta(seconds=121)).timestamp())
    assert [(c.rule_id, c.kind) for c in changes] == [("run-stalled", "fire")]


@pytest.mark.parametrize("name", ["healthy_gpt", "healthy_mlp", "healthy_fp16"])
def test_healthy_runs_raise_no_warning_or_critical_diagnosis(name, sessions):
    _, batches = recorded(name)
    ingest(sessions, batches)
    loud = [(d.rule_id, d.first_step, d.reason) for d in diagnoses(sessions) if d.severity in ("warning", "critical")]
    assert loud == []
    with sessions() as s:
        run = s.execute(select(Run)).scalar_one()
    assert run.status == "finished" and run.steps >= 300  # it really trained, to the end


def test_the_healthy_runs_really_learned():
    """A quiet monitor is only worth something if the runs it watched were doing well."""
    for name in ("healthy_gpt", "healthy_mlp", "healthy_fp16"):
        _, batches = recorded(name)
        loss = [p[2] for b in batches for p in b.get("series", {}).get("loss", [])]
        assert sum(loss[-20:]) / 20 < 0.7 * sum(loss[:20]) / 20, name


def _series(batches, name: str) -> list[tuple[int, float]]:
    return sorted((p[0], p[2]) for b in batches for p in b.get("series", {}).get(name, []))


def test_the_healthy_fp16_run_really_skipped_steps_early_and_now_and_then():
    """Its quiet is only worth something if its scaler did what a healthy one does: calibrate, then skip rarely."""
    _, batches = recorded("healthy_fp16")
    skipped = _series(batches, "scaler_skipped")
    assert skipped[0][1] >= 4  # calibrating down from 2^24 before the first optimizer step
    later = skipped[-1][1] - skipped[0][1]
    assert 3 <= later <= 10  # one now and then as it tries a larger scale
    assert min(v for _, v in _series(batches, "loss_scale")) >= 2.0**17


def test_fp16_overflow_names_the_collapsed_scale_and_the_skips(sessions):
    onset, batches = recorded("fp16_overflow")
    ingest(sessions, batches)
    row = next(d for d in diagnoses(sessions) if d.rule_id == "fp16-overflow")
    values = row.evidence.get("first", row.evidence)["values"]
    peak = max(v for _, v in _series(batches, "loss_scale"))
    assert peak >= 2.0**17 and values["last(loss_scale)"] < 1e-3  # collapsed in the iterations skipped before it
    assert values["last(scaler_skipped)"] >= 20
    assert row.reason.startswith("the loss scale is down to 0.000")
    assert f"(from {peak:.0f})" in row.reason
    # the reason carries the latest figures while the rule holds: the step is the fire's or a later one
    said = re.search(r"by step (\d+);", row.reason)
    assert said and int(said.group(1)) >= row.first_step >= onset, (row.reason, row.first_step, onset)
    assert row.severity == "warning" and "bf16" in row.fix[0]
