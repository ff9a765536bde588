"""Scoring: one ``Row`` per scenario from its diagnoses and its ground truth, and the corpus's ``Summary``.

Per scenario (warning and critical diagnoses only; ``info`` is never an alarm):
- a diagnosis episode is *right* when its rule is expected (primary or secondary) and it began at or after
  ``onset - 1``; every other episode is a false alarm (one per rule id and run);
- *detected*: a right episode exists; *primary right*: the root cause of the run's first incident
  (``txwatch.rules.incidents``: episodes overlapping in time, the primary chosen by the causal order) is a
  primary rule's episode and right;
- *delay*: steps from the onset to the first right episode (none for ``run-stalled``, which the scheduler
  evaluates on the clock: its step is the last one heard, before the run went silent);
- *NaN*: the first step whose loss is not finite, and whether any episode began before it;
- *Slack*: the top-level messages the alerts would post, derived from the episodes the way the outbox and
  dispatcher group them: one message per incident (a fire joining an incident whose message is out is a reply
  in its thread), and the first fires of incidents within ``group_window_s`` (10 s, on the run's clock) share
  one message. Follow-ups (updates, joined fires, the resolve note) go to the thread and are not counted.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from txwatch.rules.incidents import Episode, group
from txwatch.settings import Settings

from benchmarks.scenarios.diagnose import Found
from benchmarks.scenarios.spec import Scenario

SEVERITY_ORDER = {"critical": 0, "warning": 1}
# Rules the scheduler evaluates on the clock: their step is the last one the collector heard, which for a run
# that vanished is before the step it died at. Their episodes are right whatever their step; no delay in steps.
TIME_BASED = frozenset({"run-stalled"})


@dataclass
class Row:
    name: str
    fault: str
    arch: str
    trainer: str
    seed: int
    onset: int
    verdict: str  # healthy runs: ok | false-alarm; faults: right | detected | missed; broken
    fired: dict[str, int] = field(default_factory=dict)  # loud rule -> its first step
    first: str = ""  # "rule@step": the primary cause of the run's first incident
    false_alarms: list[str] = field(default_factory=list)
    delay: int | None = None
    slack: int = 0
    nan_step: int | None = None
    warned_before_nan: bool | None = None
    steps: int = 0
    wall_s: float = 0.0
    error: str | None = None


def _step_times(batches: list[dict[str, Any]]) -> dict[int, float]:
    times: dict[int, float] = {}
    for body in batches:
        for points in body.get("series", {}).values():
            for step, t, _ in points:
                times.setdefault(int(step), float(t))
    return times


def _first_nan(batches: list[dict[str, Any]]) -> int | None:
    steps = [int(s) for b in batches for s, _, v in b.get("series", {}).get("loss", [])
             if not math.isfinite(float(v))]
    return min(steps) if steps else None


def slack_messages(episodes: list[Found], batches: list[dict[str, Any]], settings: Settings | None = None) -> int:
    """Top-level Slack messages for ``episodes`` (see the module docstring for how fires are grouped)."""
    window = (settings or Settings()).group_window_s
    stall_after = (settings or Settings()).stall_after_s
    times = _step_times(batches)
    last = max(times.values(), default=0.0)
    steps = sorted(times)

    def when(found: Found) -> float:
        if found.rule == "run-stalled":
            return last + stall_after + 1
        at = next((s for s in steps if s >= found.first_step), None)
        return times[at] if at is not None else last

    # one message per incident (txwatch/alerts/outbox.py _incident_anchor): a fire that joins an incident whose
    # message is out is a reply in its thread; the first fires of incidents within a group window share one
    incidents = group([Episode(f.rule, f.severity, f.first_step, f.resolved_step) for f in episodes])
    starts = [min(when(f) for f in episodes if (f.rule, f.first_step) in {(e.rule, e.first_step) for e in i.episodes})
              for i in incidents]
    messages, due = 0, None
    for t in sorted(starts):
        if due is None or t > due:
            messages += 1
            due = t + window
    return messages


def score(scenario: Scenario, found: list[Found], batches: list[dict[str, Any]], wall_s: float = 0.0,
          error: str | None = None) -> Row:
    loud = [f for f in found if f.loud]
    loud.sort(key=lambda f: (f.first_step, SEVERITY_ORDER.get(f.severity, 9)))
    incidents = group([Episode(f.rule, f.severity, f.first_step, f.resolved_step) for f in loud])
    earliest = scenario.onset - 1 if not scenario.healthy else math.inf

    def right(f: Found) -> bool:
        return f.rule in scenario.expected and (f.first_step >= earliest or f.rule in TIME_BASED)

    fired: dict[str, int] = {}
    for f in loud:
        fired.setdefault(f.rule, f.first_step)
    wrong = sorted({f.rule for f in loud if not right(f)})
    hits = [f for f in loud if right(f)]
    nan_step = _first_nan(batches)
    steps = max(_step_times(batches), default=0)
    lead = incidents[0].primary if incidents else None  # the first incident's root cause
    row = Row(scenario.name, scenario.fault, scenario.arch, scenario.trainer, scenario.seed, scenario.onset,
              verdict="", fired=fired, first=f"{lead.rule}@{lead.first_step}" if lead else "",
              false_alarms=wrong, slack=slack_messages(loud, batches), nan_step=nan_step, steps=steps,
              wall_s=round(wall_s, 1), error=error)
    if nan_step is not None:
        row.warned_before_nan = any(f.first_step < nan_step for f in loud)
    timed = [f for f in hits if f.rule not in TIME_BASED]
    if timed:
        row.delay = timed[0].first_step - scenario.onset
    if error is not None and "\n" in error:  # a traceback: the scenario itself broke, not the fault
        row.verdict = "broken"
    elif scenario.healthy:
        row.verdict = "false-alarm" if loud else "ok"
    elif not hits:
        row.verdict = "missed"
    else:
        lead_found = next(f for f in loud if (f.rule, f.first_step) == (lead.rule, lead.first_step))
        row.verdict = "right" if lead.rule in scenario.primary and right(lead_found) else "detected"
    return row


@dataclass
class Summary:
    scenarios: int
    faulty: int
    healthy: int
    recall: float
    primary_right: float
    false_alarms_per_healthy: float
    healthy_with_false_alarm: int
    median_delay: float | None
    nan_runs: int
    nan_warned: float | None
    slack_per_faulty: float
    broken: int
    wall_s: float = 0.0

    def line(self) -> str:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.0f}%"

        delay = "n/a" if self.median_delay is None else f"{self.median_delay:g}"
        return (f"{self.scenarios} scenarios ({self.faulty} faulty, {self.healthy} healthy): "
                f"recall {pct(self.recall)}, primary cause right {pct(self.primary_right)}, "
                f"false alarms per healthy run {self.false_alarms_per_healthy:.2f} "
                f"({self.healthy_with_false_alarm}/{self.healthy} healthy runs with one), "
                f"median steps from onset to first right diagnosis {delay}, "
                f"warned before NaN {pct(self.nan_warned)} of {self.nan_runs} runs reaching NaN, "
                f"Slack messages per faulty run {self.slack_per_faulty:.2f}"
                + (f", {self.broken} broken" if self.broken else "")
                + (f" [{self.wall_s:.0f} s]" if self.wall_s else ""))


def summarize(rows: list[Row], wall_s: float = 0.0) -> Summary:
    faulty = [r for r in rows if r.fault != "healthy"]
    healthy = [r for r in rows if r.fault == "healthy"]
    nan = [r for r in rows if r.nan_step is not None]
    delays = [r.delay for r in faulty if r.delay is not None]
    return Summary(
        scenarios=len(rows), faulty=len(faulty), healthy=len(healthy),
        recall=sum(r.verdict in ("right", "detected") for r in faulty) / max(1, len(faulty)),
        primary_right=sum(r.verdict == "right" for r in faulty) / max(1, len(faulty)),
        false_alarms_per_healthy=sum(len(r.false_alarms) for r in healthy) / max(1, len(healthy)),
        healthy_with_false_alarm=sum(bool(r.false_alarms) for r in healthy),
        median_delay=statistics.median(delays) if delays else None,
        nan_runs=len(nan), nan_warned=sum(bool(r.warned_before_nan) for r in nan) / len(nan) if nan else None,
        slack_per_faulty=sum(r.slack for r in faulty) / max(1, len(faulty)),
        broken=sum(r.verdict == "broken" for r in rows), wall_s=wall_s,
    )


def as_dict(obj: Row | Summary) -> dict[str, Any]:
    return asdict(obj)
