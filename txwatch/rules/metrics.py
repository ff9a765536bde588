"""The rule engine's own Prometheus metrics (on ``txwatch.telemetry.REGISTRY``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from txwatch.telemetry import REGISTRY

POINTS = Counter(
    "txwatch_rule_points",
    "Points handed to the rule engine.",
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "txwatch_rule_batch_seconds",
    "Time to evaluate the rules on one group of batches written together (one batch when ingest is quiet), "
    "store the diagnoses and save the engine state.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
DIAGNOSES = Counter(
    "txwatch_rule_diagnoses",
    "Diagnosis transitions stored, by rule and kind (fire, update, resolve).",
    ["rule", "kind"],
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "txwatch_rule_state_conflicts",
    "Evaluations redone because another collector saved the run's engine state meanwhile.",
    registry=REGISTRY,
)
ERRORS = Counter(
    "txwatch_rule_errors",
    "Rule evaluations that failed (logged; the batch itself was stored), by stage.",
    ["stage"],
    registry=REGISTRY,
)
