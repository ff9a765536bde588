"""The incremental rule evaluation, in memory: new points and events in, transitions out.

Points of a batch are applied step by step in step order; after each step the rules that read a series updated
at that step are evaluated (a per-layer rule only for the layers updated). So the cost of a batch is
proportional to its points and the rules' windows, never to the run's history, and the outcome does not depend
on how the points were split into batches. The database side (locking, saving, diagnoses rows) is in
``engine``; replay uses this class directly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from txwatch.rules.detection import detect
from txwatch.rules.compiler import Context
from txwatch.rules.lifecycle import Tracker, advance
from txwatch.rules.model import Rule
from txwatch.rules.state import RunState, SeriesIndex
from txwatch.rules.buffers import Needs

# A diagnosis that keeps holding refreshes its figures on every batch, but notifies an "update" at most this
# often in the run's own time (and at once when more layers join), so a chat channel is not flooded.
UPDATE_INTERVAL_S = 300.0


@dataclass
class Transition:
    """Something that happened to a (rule, layer) at a step."""

    kind: str  # pending | fire | update | cancel | resolve | end (the run ended while it was firing)
    rule: Rule
    layer: str | None
    step: int
    time: float
    episode: int
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    notify: bool = True  # for updates: whether the notifier hears of it


def _needs_of(rules: Iterable[Rule]) -> dict[str, Needs]:
    merged: dict[str, Needs] = {}
    for r in rules:
        programs = [r.program, r.resolve_program] + [p.program for p in r.template]
        for prog in programs:
            if prog is None:
                continue
            for pattern, needs in prog.needs.items():
                merged.setdefault(pattern, Needs()).merge(needs)
    return merged


class Core:
    """Rules applied to one run's state at a time (the caller serializes access per run)."""

    def __init__(self, rules: list[Rule], settings: Mapping[str, float] | None = None):
        self.rules = list(rules)
        self.settings = dict(settings or {})
        self.series_rules = [r for r in self.rules if r.reads_series and not r.time_based]
        self.run_rules = [r for r in self.rules if not r.reads_series and not r.time_based]
        self.time_rules = [r for r in self.rules if r.time_based]
        self.index = SeriesIndex(_needs_of(self.rules))
        self._order = {r.id: i for i, r in enumerate(self.rules)}
        self._by_pattern: dict[str, list[Rule]] = defaultdict(list)
        for r in self.series_rules:
            patterns = {s.pattern for s in r.program.checked.series}
            if r.resolve_program is not None:
                patterns |= {s.pattern for s in r.resolve_program.checked.series}
            for p in patterns:
                self._by_pattern[p].append(r)
        self._for_name: dict[str, list[tuple[Rule, str | None]]] = {}
        # per name, the rules it makes due as (rules evaluated whatever the layer, (rule, layer) pairs); the
        # first part is one shared tuple for every name with the same rules (all grad_norm/<p> of a model), so
        # a step merges it once, not once per layer's point
        self._plan: dict[str, tuple[tuple[Rule, ...], tuple[tuple[Rule, str], ...]]] = {}
        self._groups: dict[tuple[str, ...], tuple[Rule, ...]] = {}

    def new_state(self, run_id: int) -> RunState:
        return RunState(run_id, self.index)

    def rules_for(self, name: str) -> list[tuple[Rule, str | None]]:
        """Rules to evaluate when ``name`` gets a point, with the layer key for per-layer rules."""
        hit = self._for_name.get(name)
        if hit is not None:
            return hit
        out: list[tuple[Rule, str | None]] = []
        for r in self._by_pattern.get(name, ()):
            out.append((r, None))
        _, families = self.index.match(name)
        for pattern, key in families:
            for r in self._by_pattern.get(pattern, ()):
                if r.scope == "layer":
                    out.append((r, key) if pattern in r.program.layer_patterns else (r, None))
                else:
                    out.append((r, None))
        if len(self._for_name) < 200_000:
            self._for_name[name] = out
        return out

    def _plan_for(self, name: str) -> tuple[tuple[Rule, ...], tuple[tuple[Rule, str], ...]]:
        hit = self._plan.get(name)
        if hit is not None:
            return hit
        affected = self.rules_for(name)
        whole = tuple(r for r, key in affected if key is None)
        group = self._groups.setdefault(tuple(r.id for r in whole), whole)
        plan = (group, tuple((r, key) for r, key in affected if key is not None))
        if len(self._plan) < 200_000:
            self._plan[name] = plan
        return plan

    # ------------------------------------------------------------ processing

    def process(
        self,
        state: RunState,
        series: Mapping[str, Iterable[Any]],
        events: Iterable[Mapping[str, Any]] = (),
    ) -> list[Transition]:
        """Apply a batch (``series``: name -> [(step, time, value)], ``events``: dicts) and evaluate rules."""
        events = list(events)
        for ev in events:
            if ev.get("kind") == "info":  # the run's info, which the collector adds to the batch that carries it:
                state.learn_roles(ev.get("info") or {})  # its parameter roles apply to the batch's own points
        events = [ev for ev in events if ev.get("kind") != "info"]
        out: list[Transition] = []
        holds: dict[tuple[str, str | None], tuple[Rule, str | None, int, float]] = {}
        by_step: dict[int, list[tuple[Any, float, float, tuple]]] = defaultdict(list)
        for name, points in series.items():
            if name.startswith("lr/"):
                state.saw_lr(name, points)
            buf = state.buffer_for(name)
            if buf is None:
                continue
            plan = self._plan_for(name)
            for p in points:
                by_step[int(p[0])].append((buf, float(p[1]), float(p[2]), plan))
        facts = state.facts
        for step in sorted(by_step):
            entries = by_step[step]
            tmax = -math.inf
            due: dict[str, tuple[Rule, set[str] | None]] = {}
            merged: set[int] = set()  # the rule groups already made due at this step
            for buf, t, v, (group, pairs) in entries:
                buf.add(step, t, v)
                state.touched(buf)
                if t > tmax:
                    tmax = t
                if group and id(group) not in merged:
                    merged.add(id(group))
                    for rule in group:
                        if rule.id not in due:
                            due[rule.id] = (rule, set() if rule.scope == "layer" else None)
                for rule, key in pairs:
                    slot = due.get(rule.id)
                    if slot is None:
                        slot = due[rule.id] = (rule, set() if rule.scope == "layer" else None)
                    if slot[1] is not None:
                        slot[1].add(key)
            if facts.start_time is None or tmax < facts.start_time:
                facts.start_time = tmax
            if facts.last_time is None or tmax > facts.last_time:
                facts.last_time = tmax
            if step > state.max_step:
                state.max_step = step
            for rule_id in sorted(due, key=self._order.__getitem__):
                rule, layers = due[rule_id]
                if layers is None:
                    self._evaluate(state, rule, None, step, tmax, out, holds)
                else:
                    for key in sorted(layers):
                        self._evaluate(state, rule, key, step, tmax, out, holds)
        if events:
            was_running = facts.status == "running"
            self._apply_events(state, events)
            step = facts.end_step if facts.end_step is not None else state.max_step
            now = facts.last_time or 0.0
            for rule in self.run_rules:
                self._evaluate(state, rule, None, step, now, out, holds)
            if was_running and facts.status != "running":
                self._close_at_end(state, step, now, out, holds)
        self._updates(state, holds, out)
        return out

    def _close_at_end(
        self,
        state: RunState,
        step: int,
        time: float,
        out: list[Transition],
        holds: dict[tuple[str, str | None], tuple[Rule, str | None, int, float]],
    ) -> None:
        """The run ended: the diagnoses of its series that are still firing are closed as ended (not left firing
        forever, not called resolved), and pending ones are dropped. Those about the end itself (run-crashed,
        out-of-memory) stay as they are."""
        by_id = {r.id: r for r in self.series_rules}
        status = state.facts.status
        for key, t in state.trackers.items():
            rule_id, _, layer_key = key.partition("|")
            rule = by_id.get(rule_id)
            if rule is None or t.state == "inactive":
                continue
            layer = layer_key or None
            if t.state == "firing":
                out.append(Transition("end", rule, layer, step, time, t.episode,
                                      f"the run ended ({status}) at step {step} while this was firing"))
                holds.pop((rule.id, layer), None)
            t.state = "inactive"  # the stored row is closed from the transition (persistence.apply_transitions)
            t.clear_step = t.clear_time = None

    def _apply_events(self, state: RunState, events: Iterable[Mapping[str, Any]]) -> None:
        facts = state.facts
        for ev in events:
            kind = ev.get("kind")
            if kind == "info":  # learnt before the batch's points (``process``)
                continue
            t = ev.get("time")
            if isinstance(t, (int, float)) and math.isfinite(t):
                if facts.last_time is None or t > facts.last_time:
                    facts.last_time = float(t)
                if kind == "start" and (facts.start_time is None or t < facts.start_time):
                    facts.start_time = float(t)
            step = ev.get("step")
            if isinstance(step, int) and step > state.max_step:
                state.max_step = step
            if kind == "start" and facts.status != "running":
                facts.status = "running"  # the run was resumed under the same name
                facts.error = facts.memory = None
                facts.end_step = None
            elif kind == "end":
                facts.status = ev.get("status") or "finished"
                facts.error = ev.get("error")
                facts.memory = ev.get("memory")
                facts.end_step = step if isinstance(step, int) else state.max_step

    def _evaluate(
        self,
        state: RunState,
        rule: Rule,
        layer: str | None,
        step: int,
        time: float,
        out: list[Transition],
        holds: dict[tuple[str, str | None], tuple[Rule, str | None, int, float]],
    ) -> None:
        node_state = state.node_state.get(rule.id)
        if node_state is None:
            node_state = state.node_state[rule.id] = {}
        t = state.tracker(rule.id, layer)
        # the fast path: the compiled condition straight on the state (detect() adds reasons and evidence)
        ctx = Context(state, step, self.settings, node_state, {}, {}, None)
        held = rule.program.fn(ctx, layer)
        updates = ctx.updates
        clears = None
        rp = rule.resolve_program
        if t.state == "firing" or (rp is not None and rp.checked.stateful):
            if rp is not None:
                rctx = Context(state, step, self.settings, node_state, {}, {}, None)
                resolved = rp.fn(rctx, layer)
                updates = {**updates, **rctx.updates}
                if t.state == "firing":
                    clears = resolved
            elif held is not None:
                clears = not held
        what = advance(t, held, clears, step, time, rule.hold, rule.resolve_hold)
        if what in ("pending", "fire"):
            full = detect(rule, state, step, self.settings, node_state, layer, explain=True)
            if what == "fire":
                t.notified_time = time
                t.notified_layers = full.evidence.get("layers")
            out.append(Transition(what, rule, layer, step, time, t.episode, full.reason, full.evidence))
        elif what == "resolve":
            prog = rp or rule.program
            full = detect(rule, state, step, self.settings, node_state, layer, explain=True, program=prog)
            how = f"resolved: {full.reason}" if rp is not None else f"no longer holds: {_not_reason(rule, full)}"
            out.append(Transition("resolve", rule, layer, step, time, t.episode, how, full.evidence))
            holds.pop((rule.id, layer), None)
        elif what == "cancel":
            out.append(Transition("cancel", rule, layer, step, time, t.episode, "stopped holding before it fired"))
        elif what == "hold":
            holds[(rule.id, layer)] = (rule, layer, step, time)
        if updates:
            node_state.update(updates)

    def _updates(
        self,
        state: RunState,
        holds: dict[tuple[str, str | None], tuple[Rule, str | None, int, float]],
        out: list[Transition],
    ) -> None:
        """One update per still-firing diagnosis per batch, with the latest figures."""
        fired_now = {(tr.rule.id, tr.layer) for tr in out if tr.kind == "fire"}
        for key, (rule, layer, step, time) in holds.items():
            t: Tracker = state.tracker(rule.id, layer)
            if t.state != "firing" or key in fired_now:
                continue
            node_state = state.node_state.get(rule.id, {})
            full = detect(rule, state, step, self.settings, node_state, layer, explain=True)
            layers = full.evidence.get("layers")
            new_layers = bool(layers) and bool(set(layers) - set(t.notified_layers or []))
            notify = t.notified_time is None or time - t.notified_time >= UPDATE_INTERVAL_S or new_layers
            if notify:
                t.notified_time = time
                t.notified_layers = layers
            out.append(Transition("update", rule, layer, step, time, t.episode, full.reason, full.evidence, notify))


def _not_reason(rule: Rule, det) -> str:
    values = det.evidence.get("values", {})
    if values:
        from txwatch.rules.reasons import fmt

        shown = "; ".join(f"{k} = {fmt(v)}" for k, v in list(values.items())[:4])
        return f"the condition is false now ({shown})"
    return "the condition is false now"
