"""Rule engine benchmark: evaluation throughput and time from a point to its stored diagnosis.

    .venv/bin/python benchmarks/rules.py           # everything (about 5 minutes on 2 quiet cores)
    .venv/bin/python benchmarks/rules.py --quick   # shorter runs
    .venv/bin/python benchmarks/rules.py --many-layers   # only part 5 (about a minute)

The workload is what the hooks send by default for a GPT-style model with 100 parameter tensors: loss, learning
rate, step time and data wait every step, per-layer gradient norms every 10th step, update ratios and parameter
norms every 50th, a validation loss every 200th, in batches of 20 steps; all 17 built-in rules are loaded.
Each figure comes with a baseline measured in the same run, and their ratio:

1. evaluation throughput in memory (points/s), early in a run (steps 0-2k) against late (steps 18k-20k):
   a ratio near 1 shows the cost of a batch does not grow with the run's history;
2. the same incremental evaluation against re-evaluating the run from scratch on every batch (what a
   non-incremental engine does), at a history of 2,000 steps;
3. points/s through the collector with the rules (store + evaluate + save engine state) against the
   collector storing the same batches without rules, on SQLite and PostgreSQL;
4. time from a batch carrying a NaN loss arriving at the collector to its diagnosis being stored and
   committed (p50/p99; target < 100 ms), against the same batch without a symptom (no diagnosis), and the
   rules' part of it, on SQLite and PostgreSQL;
5. many layers with every-step capture: a GPT-style model with 604 parameter tensors whose hooks send, on
   every step, each tensor's grad_norm/<p>, grad_norm_max/<p>, update_ratio/<p> and param_norm/<p> (with the
   parameters' roles), besides loss, lr/0, step_time, data_wait, grad_norm_total(_max) and grad_nonfinite:
   the rules' CPU per point and per training step in memory, against the same stream for 100 tensors,
   interleaved batch by batch (a ratio near 1: the cost per point does not grow with the number of layers,
   so per step it grows linearly with them).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402

from txwatch.ingest.queue import Collector  # noqa: E402
from txwatch.wire.batch import Batch, RunInfo  # noqa: E402
from txwatch.rules import Core, RuleEngine, load_rules  # noqa: E402
from txwatch.store.db import make_engine, session_factory, upgrade  # noqa: E402
from txwatch.store.models import Diagnosis  # noqa: E402

PG_ADMIN = os.environ.get("TXWATCH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
T0 = 1_764_393_000.0
LAYERS = [f"transformer.h.{i // 8}.{n}" for i, n in enumerate(
    ["attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
     "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "ln_1.weight"] * 12)][:96] + [
    "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
BATCH_STEPS = 20
STEP_S = 0.1
# part 5: 75 blocks of 8 tensors and 4 more, as many as the hooks' overhead benchmark's many-tensor model
MANY_LAYERS = [f"transformer.h.{i // 8}.{n}" for i, n in enumerate(
    ["attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
     "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "ln_1.weight"] * 75)] + [
    "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]


def batch_series(start: int, rng: random.Random, nan_at: int | None = None) -> dict[str, list]:
    """The hooks' default series for steps [start, start + BATCH_STEPS) of a healthy run."""
    out: dict[str, list] = {}

    def add(name: str, step: int, value: float) -> None:
        out.setdefault(name, []).append((step, T0 + step * STEP_S, value))

    for s in range(start, start + BATCH_STEPS):
        loss = 2.0 + 3.0 / (1 + s / 500) + rng.gauss(0, 0.05)
        add("loss", s, float("nan") if s == nan_at else loss)
        add("lr/0", s, 3e-4 * min(1.0, (s + 1) / 200))
        add("step_time", s, 0.1 + rng.random() * 0.01)
        add("data_wait", s, 0.003)
        add("data_wait_share", s, 0.03)
        if s % 10 == 0:
            total = 0.0
            for i, layer in enumerate(LAYERS):
                g = 0.05 * (1 + i % 7) * (1 + rng.gauss(0, 0.1))
                total += g * g
                add(f"grad_norm/{layer}", s, g)
            add("grad_norm_total", s, total**0.5)
            add("grad_nonfinite", s, 0.0)
        if s % 50 == 0:
            for layer in LAYERS:
                add(f"update_ratio/{layer}", s, 1e-3 * (1 + rng.gauss(0, 0.1)))
                add(f"param_norm/{layer}", s, 10.0)
            add("update_ratio_max", s, 2e-3)
        if s % 200 == 0 and s:
            add("val_loss", s, 2.1 + 3.0 / (1 + s / 500))
    return out


def points(series: dict[str, list]) -> int:
    return sum(len(v) for v in series.values())


def rate(rules, start: int, stop: int, state=None, core=None) -> tuple[float, float]:
    """(points/s of wall time, points/s of this process's CPU time) for steps [start, stop) of one run."""
    rng = random.Random(start)
    core = core or Core(rules, {"stall_after_s": 300.0})
    state = state or core.new_state(1)
    batches = [batch_series(s, rng) for s in range(start, stop, BATCH_STEPS)]
    n = sum(points(b) for b in batches)
    t, c = time.perf_counter(), time.process_time()
    for b in batches:
        core.process(state, b)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def throughput(rules, quick: bool) -> None:
    print("1. evaluation throughput in memory, all built-in rules (points/s)")
    core = Core(rules, {"stall_after_s": 300.0})
    state = core.new_state(1)
    span = 1000 if quick else 2000
    early, early_cpu = rate(rules, 0, span, state, core)
    rate(rules, span, 18_000, state, core)  # build up history
    late, late_cpu = rate(rules, 18_000, 18_000 + span, state, core)
    print(f"   early (steps 0-{span}):          {early:9,.0f} points/s ({early_cpu:,.0f} per CPU second)")
    print(f"   late  (steps 18000-{18000 + span}):   {late:9,.0f} points/s ({late_cpu:,.0f} per CPU second)"
          f"   ratio late/early {late_cpu / early_cpu:.2f} (CPU)")

    print("2. incremental against re-evaluating from scratch each batch, at 2,000 steps of history")
    history = 2000
    rng = random.Random(7)
    batches = [batch_series(s, rng) for s in range(0, history + 10 * BATCH_STEPS, BATCH_STEPS)]
    inc_core = Core(rules, {"stall_after_s": 300.0})
    inc_state = inc_core.new_state(1)
    for b in batches[: history // BATCH_STEPS]:
        inc_core.process(inc_state, b)
    tail = batches[history // BATCH_STEPS :]
    t = time.perf_counter()
    for b in tail:
        inc_core.process(inc_state, b)
    inc = (time.perf_counter() - t) / len(tail)
    repeats = 2 if quick else 3
    t = time.perf_counter()
    for i in range(repeats):  # a non-incremental engine: every batch re-reads the whole history
        scratch_core = Core(rules, {"stall_after_s": 300.0})
        scratch = scratch_core.new_state(1)
        for b in batches[: history // BATCH_STEPS + i + 1]:
            scratch_core.process(scratch, b)
    full = (time.perf_counter() - t) / repeats
    print(f"   incremental: {inc * 1000:8.2f} ms per batch")
    print(f"   from scratch: {full * 1000:7.1f} ms per batch   ratio {full / inc:.0f}x")


def databases(quick: bool):
    tmp = tempfile.mkdtemp(prefix="txwatch-bench-rules-")
    yield "sqlite", f"sqlite:///{tmp}/bench.db", None
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"txwatch_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no PostgreSQL here: say so, do not fail the SQLite figures
        print(f"   (PostgreSQL at {PG_ADMIN} not reachable: {exc.__class__.__name__}; skipped)")
        return
    try:
        yield "postgresql", PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", None
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def batch(run: str, seq: int, series: dict) -> Batch:
    return Batch.model_validate(
        {"schema_version": 1, "run": run, "project": "bench", "seq": seq,
         "series": {k: [list(p) for p in v] for k, v in series.items()}}
    )


def through_collector(rules, quick: bool) -> None:
    print("3. through the collector: store + rules + engine state, against storing alone (points/s)")
    steps = 1000 if quick else 2000
    for kind, url, _ in databases(quick):
        engine = make_engine(url)
        upgrade(engine)
        sf = session_factory(engine)
        with_rules = Collector(sf, rules=RuleEngine(rules, sf))
        plain = Collector(sf, rules=None)
        rng = random.Random(1)
        batches = [batch_series(s, rng) for s in range(0, steps, BATCH_STEPS)]
        n = sum(points(b) for b in batches)
        timings = {}
        for label, collector in (("store only", plain), ("store + rules", with_rules)):
            run = f"{label.replace(' ', '-').replace('+', 'and')}-{uuid.uuid4().hex[:6]}"
            parsed = [batch(run, i, b) for i, b in enumerate(batches)]
            t = time.perf_counter()
            for b in parsed:
                collector.ingest(b)
            timings[label] = time.perf_counter() - t
        base, full = n / timings["store only"], n / timings["store + rules"]
        print(f"   {kind:10s} store only {base:9,.0f}   store + rules {full:9,.0f}   ratio {full / base:.2f}")
        engine.dispose()


def latency(rules, quick: bool) -> None:
    print("4. a batch with a NaN loss arriving -> its diagnosis stored (ms; target < 100 ms), against the same")
    print("   batch without a symptom; whole collector path (store the batch, then the rules), and the rules' part")
    trials = 12 if quick else 30
    for kind, url, _ in databases(quick):
        engine = make_engine(url)
        upgrade(engine)
        sf = session_factory(engine)
        rule_engine = RuleEngine(rules, sf)
        observed: list[float] = []
        inner = rule_engine.observe

        def timed_observe(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                observed.append((time.perf_counter() - t) * 1000)

        rule_engine.observe = timed_observe  # the rules' share of each ingest
        collector = Collector(sf, rules=rule_engine)
        reader = sf()
        times: dict[str, list[float]] = {"no symptom": [], "NaN loss": []}
        rules_part: dict[str, list[float]] = {"no symptom": [], "NaN loss": []}
        for trial in range(trials):
            for label in times:
                run = f"lat-{trial}-{label[:2]}-{uuid.uuid4().hex[:4]}"
                rng = random.Random(trial)
                for i, s in enumerate(range(0, 200, BATCH_STEPS)):  # some history first
                    collector.ingest(batch(run, i, batch_series(s, rng)))
                nan_at = 201 if label == "NaN loss" else None
                b = batch(run, 999, batch_series(200, rng, nan_at=nan_at))
                t = time.perf_counter()
                collector.ingest(b)
                if nan_at is not None:  # stored and committed: another session sees it
                    reader.rollback()
                    found = reader.execute(
                        select(Diagnosis.id).where(Diagnosis.rule_id == "loss-nonfinite", Diagnosis.first_step == nan_at)
                    ).all()
                    assert found, "the diagnosis was not stored"
                times[label].append((time.perf_counter() - t) * 1000)
                rules_part[label].append(observed[-1])
        reader.close()

        def p(vals: list[float], q: int) -> float:
            return statistics.quantiles(vals, n=100, method="inclusive")[q - 1]

        base, diag, part = times["no symptom"], times["NaN loss"], rules_part["NaN loss"]

        def verdict(ms: float) -> str:
            return "met" if ms < 100 else "MISSED"

        print(f"   {kind:10s} no symptom     p50 {p(base, 50):6.1f}  p99 {p(base, 99):6.1f}")
        print(f"   {kind:10s} NaN diagnosed  p50 {p(diag, 50):6.1f}  p99 {p(diag, 99):6.1f}   ratio p50 "
              f"{p(diag, 50) / p(base, 50):.2f}   (< 100 ms p50: {verdict(p(diag, 50))})")
        print(f"   {kind:10s} rules' part    p50 {p(part, 50):6.1f}  p99 {p(part, 99):6.1f}   "
              f"(< 100 ms p50: {verdict(p(part, 50))}; the rest is storing the batch)")
        engine.dispose()


def _kind(layer: str) -> str:
    if layer.endswith(("wte.weight", "wpe.weight")):
        return "embedding"
    if ".ln_" in layer:
        return "norm"
    return "bias" if layer.endswith(".bias") else "weight"


def dense_info(layers: list[str]) -> dict:
    """The run's info as the hooks send it: each parameter's role and its param group."""
    return {"params": [{"name": n, "kind": _kind(n), "group": 0, "requires_grad": True} for n in layers],
            "param_groups": [{"index": 0, "optimizer": 0}]}


def dense_series(layers: list[str], start: int, rng: random.Random) -> dict[str, list]:
    """Every-step capture (grad_every=1, update ratios every step) for steps [start, start + BATCH_STEPS)."""
    out: dict[str, list] = {}

    def add(name: str, step: int, value: float) -> None:
        out.setdefault(name, []).append((step, T0 + step * STEP_S, value))

    for s in range(start, start + BATCH_STEPS):
        add("loss", s, 2.0 + 3.0 / (1 + s / 500) + rng.gauss(0, 0.05))
        add("lr/0", s, 3e-4 * min(1.0, (s + 1) / 200))
        add("step_time", s, 0.1 + rng.random() * 0.01)
        add("data_wait", s, 0.003)
        add("data_wait_share", s, 0.03)
        total = 0.0
        for i, layer in enumerate(layers):
            g = 0.05 * (1 + i % 7) * (1 + rng.gauss(0, 0.1))
            total += g * g
            add(f"grad_norm/{layer}", s, g)
            add(f"grad_norm_max/{layer}", s, g)
            add(f"update_ratio/{layer}", s, 1e-3 * (1 + rng.gauss(0, 0.1)))
            add(f"param_norm/{layer}", s, 10.0 + i % 5)
        add("grad_norm_total", s, total**0.5)
        add("grad_norm_total_max", s, total**0.5)
        add("grad_nonfinite", s, 0.0)
    return out


def many_layers(rules, quick: bool) -> None:
    print(f"5. many layers, every-step capture: {len(MANY_LAYERS)} parameter tensors against {len(LAYERS)}, "
          "in memory, interleaved (CPU)")
    steps = 400 if quick else 1000
    warm = 100  # the first steps, where every buffer is created, are not counted
    cases = {"many": MANY_LAYERS, "base": LAYERS}
    cores = {k: Core(rules, {"stall_after_s": 300.0}) for k in cases}
    states = {k: cores[k].new_state(1) for k in cases}
    cpu = {k: 0.0 for k in cases}
    n = {k: 0 for k in cases}
    rng = {k: random.Random(5) for k in cases}
    for start in range(0, warm + steps, BATCH_STEPS):
        for k, layers in cases.items():  # interleaved: both see the same load on a shared machine
            b = dense_series(layers, start, rng[k])
            events = [{"kind": "info", "time": T0, "info": dense_info(layers)}] if start == 0 else []
            c = time.process_time()
            cores[k].process(states[k], b, events)
            if start >= warm:
                cpu[k] += time.process_time() - c
                n[k] += points(b)
    us = {k: cpu[k] / n[k] * 1e6 for k in cases}
    for k in ("base", "many"):
        print(f"   {len(cases[k]):4d} tensors: {n[k] // steps:5,d} points per step   {us[k]:6.2f} us per point   "
              f"{cpu[k] / steps * 1000:7.2f} ms of CPU per step")
    print(f"   ratio per point {len(MANY_LAYERS)} / {len(LAYERS)} tensors: {us['many'] / us['base']:.2f}")

    print(f"   through the collector on SQLite, {len(MANY_LAYERS)} tensors: store + rules + engine state, against "
          "storing alone, interleaved (CPU)")
    steps = 100 if quick else 200
    tmp = tempfile.mkdtemp(prefix="txwatch-bench-rules-")
    engine = make_engine(f"sqlite:///{tmp}/many.db")
    upgrade(engine)
    sf = session_factory(engine)
    collectors = {"store only": Collector(sf, rules=None), "store + rules": Collector(sf, rules=RuleEngine(rules, sf))}
    cpu = {k: 0.0 for k in collectors}
    n = {k: 0 for k in collectors}
    for i, start in enumerate(range(0, steps, BATCH_STEPS)):
        for k, collector in collectors.items():
            series = dense_series(MANY_LAYERS, start, random.Random(start))
            b = batch(f"many-{k.replace(' ', '-').replace('+', 'and')}", i, series)
            if i == 0:
                b.run_info = RunInfo.model_validate(dense_info(MANY_LAYERS))
            c = time.process_time()
            collector.ingest(b)
            cpu[k] += time.process_time() - c
            n[k] += points(series)
    for k in collectors:
        print(f"   {k:14s} {cpu[k] / n[k] * 1e6:6.2f} us per point   {cpu[k] / steps * 1000:7.2f} ms of CPU per step")
    print(f"   ratio {cpu['store + rules'] / cpu['store only']:.2f}")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--many-layers", action="store_true", help="only part 5, many layers with every-step capture")
    args = ap.parse_args()
    rules = load_rules([])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(rules)} built-in rules; {len(LAYERS)} parameter tensors; batches of {BATCH_STEPS} steps; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (wall-clock figures suffer when it is above that)")
    if args.many_layers:
        many_layers(rules, args.quick)
        return
    throughput(rules, args.quick)
    through_collector(rules, args.quick)
    latency(rules, args.quick)
    many_layers(rules, args.quick)


if __name__ == "__main__":
    main()
