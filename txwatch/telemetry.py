"""Every Prometheus instrument of the collector, on its own registry (``REGISTRY``), which ``/metrics`` serves.

One module for all of them, so a reader finds every name in one place (docs/metrics.md lists them; the Grafana
dashboard and the Prometheus rules are checked against that list). The scrape-time figures of active runs,
which read the database, are ``txwatch.api.run_metrics``. Reasons and results are short fixed codes, so label
cardinality stays small.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# -- ingest (the HTTP route, embedded mode and the collector queue) ----------------------------------------

POINTS_INGESTED = Counter("txwatch_points_ingested", "Metric points stored.", registry=REGISTRY)
BATCHES = Counter("txwatch_batches", "Batches received and acknowledged, by result.", ["result"], registry=REGISTRY)
BATCHES_REJECTED = Counter(
    "txwatch_batches_rejected", "Batches refused, by reason.", ["reason"], registry=REGISTRY
)
INGEST_LATENCY = Histogram(
    "txwatch_ingest_latency_seconds",
    "Time from a batch reaching the collector to it being stored and its rules evaluated (validation excluded).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
INGEST_IN_FLIGHT = Gauge("txwatch_ingest_in_flight", "Ingest requests being handled now.", registry=REGISTRY)
RULE_OBSERVE_FAILURES = Counter(
    "txwatch_rule_observe_failures", "Rule-engine calls that raised on a stored batch (the batch was kept).",
    registry=REGISTRY,
)
for _reason in ("invalid", "malformed_json", "schema_version", "too_large", "unauthorized", "unavailable",
                "content_type", "busy"):
    BATCHES_REJECTED.labels(_reason)  # present at 0 from the start, so rate() works on the first rejection
for _result in ("accepted", "duplicate"):
    BATCHES.labels(_result)

# -- background jobs (the composition root's scheduler) -----------------------------------------------------

JOB_FAILURES = Counter("txwatch_job_failures", "Background job runs that failed, by job.", ["job"], registry=REGISTRY)
JOB_DURATION = Histogram(
    "txwatch_job_duration_seconds", "Background job run time, by job.", ["job"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0), registry=REGISTRY,
)

# -- the rule engine ---------------------------------------------------------------------------------------

RULE_POINTS = Counter(
    "txwatch_rule_points",
    "Points handed to the rule engine.",
    registry=REGISTRY,
)
RULE_BATCH_SECONDS = Histogram(
    "txwatch_rule_batch_seconds",
    "Time to evaluate the rules on one group of batches written together (one batch when ingest is quiet), "
    "store the diagnoses and save the engine state.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
RULE_DIAGNOSES = Counter(
    "txwatch_rule_diagnoses",
    "Diagnosis transitions stored, by rule and kind (fire, update, resolve).",
    ["rule", "kind"],
    registry=REGISTRY,
)
RULE_STATE_CONFLICTS = Counter(
    "txwatch_rule_state_conflicts",
    "Evaluations redone because another collector saved the run's engine state meanwhile.",
    registry=REGISTRY,
)
RULE_ERRORS = Counter(
    "txwatch_rule_errors",
    "Rule evaluations that failed (logged; the batch itself was stored), by stage.",
    ["stage"],
    registry=REGISTRY,
)

# -- alerts ------------------------------------------------------------------------------------------------

ALERTS_SENT = Counter(
    "txwatch_alerts_sent",
    "Notifications delivered, by sink.",
    ["sink"],
    registry=REGISTRY,
)
ALERTS_FAILED = Counter(
    "txwatch_alerts_failed",
    "Notifications given up on (never retried again), by sink and reason.",
    ["sink", "reason"],
    registry=REGISTRY,
)
ALERTS_RETRIED = Counter(
    "txwatch_alerts_retried",
    "Send attempts that failed for a passing reason and will be retried, by sink and reason.",
    ["sink", "reason"],
    registry=REGISTRY,
)
ALERTS_SILENCED = Counter(
    "txwatch_alerts_silenced",
    "Notifications recorded but not sent because a silence matched, by sink.",
    ["sink"],
    registry=REGISTRY,
)

# the ingest and job instruments' names as /metrics shows them (with the run figures: api.run_metrics.EXPORTED_NAMES)
INSTRUMENT_NAMES = (
    "txwatch_points_ingested_total", "txwatch_batches_total", "txwatch_batches_rejected_total",
    "txwatch_ingest_latency_seconds", "txwatch_ingest_in_flight", "txwatch_rule_observe_failures_total",
    "txwatch_job_failures_total", "txwatch_job_duration_seconds",
)


class IngestResult(Protocol):
    duplicate: bool
    points: int


def observe_ingest(result: IngestResult, seconds: float) -> None:
    """Count one acknowledged batch (called by the collector queue)."""
    BATCHES.labels("duplicate" if result.duplicate else "accepted").inc()
    if result.points:
        POINTS_INGESTED.inc(result.points)
    INGEST_LATENCY.observe(seconds)


def value(counter: Counter, **labels: str) -> float:
    """The current value of one labelled counter (0 when never incremented); for tests and the CLI."""
    sample = REGISTRY.get_sample_value(f"{counter._name}_total", labels)  # noqa: SLF001
    return 0.0 if sample is None else sample
