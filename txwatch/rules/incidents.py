"""Incidents: the diagnoses of one run that overlap in time, with the root cause first.

A fault rarely trips one rule: a learning rate far too high makes the weights jump (``update-ratio-high``), the
gradients spike (``gradient-explosion``), the loss climb (``loss-diverging``) and turn NaN (``loss-nonfinite``),
and ReLU units die (``dead-layer``). A person wants to read the cause and its fix first, and the rest as its
consequences. So the warning and critical diagnoses of a run are grouped into incidents: an episode joins the
incident in progress when it begins while one of its episodes is still open (or within ``JOIN_STEPS`` of the
last one closing); otherwise it opens a new incident.

The primary cause of an incident comes from an explicit causal order (``EXPLAINS``: each rule and the
symptoms it accounts for). The primary is the member that no other member explains; of two that could explain each other (a gradient spike
and a climbing loss) the earlier one is the cause; where several remain, ``ORDER`` decides, then the
earliest. Two refinements read the episodes themselves:

- ``no-warmup`` explains the instability only when it is confined to the first steps: its own episode has
  resolved (the loss came back near where it started). While the loss stays up, the learning rate is too
  high for the whole run, and the learning-rate symptoms explain the early rise instead.
- ``loss-nonfinite`` with nothing before it in its incident (no jump, spike, climb or overflow) points at the
  data or the loss: the incident says so.

The primary is decided again as members join and resolve, so an incident that opens on an early symptom names
its root cause once the evidence is in. Pure: episodes in, incidents out; the store, the API, the CLI and the
benchmark all call ``group``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

LOUD = ("warning", "critical")
JOIN_STEPS = 20  # an episode beginning this soon after the incident's last one closed still belongs to it
# A cause may be diagnosed a little after its consequence (its rule holds for some steps before it fires, or
# reads a sampled series), but not long after: a loss that starts oscillating 200 steps after a spike does not
# explain the spike.
CAUSE_LAG_STEPS = 30

LR_HIGH = ("lr-jump", "update-ratio-high", "loss-oscillating", "loss-diverging")
_LR_CONSEQUENCES = ("gradient-explosion", "loss-nonfinite", "dead-layer", "gradient-imbalance",
                    "vanishing-gradients", "loss-not-decreasing", "update-ratio-low", "no-warmup", "overfitting")

# cause -> the symptoms it accounts for (when both are in one incident)
EXPLAINS: dict[str, tuple[str, ...]] = {
    "out-of-memory": ("memory-pressure", "run-crashed", "run-stalled", "slow-training"),
    "run-crashed": ("run-stalled",),
    "fp16-overflow": ("loss-nonfinite", "loss-diverging", "gradient-explosion", "update-ratio-high",
                      "loss-oscillating", "gradient-imbalance"),
    # a huge gradient at step 1, before any update: the data, the loss or the init, whatever the LR does later
    "unscaled-inputs": ("gradient-explosion", "gradient-imbalance", "loss-diverging", "loss-nonfinite",
                        "update-ratio-high", "loss-oscillating", "dead-layer"),
    "lr-jump": ("update-ratio-high", "loss-oscillating", "loss-diverging") + _LR_CONSEQUENCES,
    "no-warmup": ("update-ratio-high", "loss-diverging", "gradient-explosion", "loss-nonfinite",
                  "loss-oscillating", "gradient-imbalance", "vanishing-gradients", "dead-layer"),
    "update-ratio-high": ("loss-oscillating", "loss-diverging") + _LR_CONSEQUENCES,
    "loss-oscillating": ("loss-diverging",) + _LR_CONSEQUENCES,
    "loss-diverging": _LR_CONSEQUENCES,
    "gradient-explosion": ("loss-diverging", "loss-nonfinite", "loss-oscillating", "update-ratio-high"),
    "vanishing-gradients": ("gradient-imbalance", "loss-not-decreasing", "update-ratio-low", "dead-layer"),
    "dead-layer": ("loss-not-decreasing", "gradient-imbalance", "vanishing-gradients", "update-ratio-low"),
    "gradient-imbalance": ("gradient-explosion", "loss-not-decreasing", "update-ratio-high"),
    "update-ratio-low": ("loss-not-decreasing",),
    "slow-training": (),
    "overfitting": (),
    "loss-not-decreasing": ("overfitting",),
    "loss-nonfinite": (),
    "memory-pressure": (),
    "run-stalled": (),
    "preflight-failed": (),
    "preflight-warned": (),
}
# Findings of the checks run before training (txwatch.preflight): each is an incident of its own, and being
# open for the whole run they would otherwise hold every later diagnosis in one incident.
BEFORE_TRAINING = ("preflight-failed", "preflight-warned")

# who leads when the causal order leaves a tie (or a loop): the more upstream cause first
ORDER = ("preflight-failed", "preflight-warned", "out-of-memory", "run-crashed", "fp16-overflow", "unscaled-inputs",
         "lr-jump", "no-warmup", "update-ratio-high",
         "update-ratio-low", "vanishing-gradients", "dead-layer", "gradient-imbalance", "loss-oscillating",
         "gradient-explosion", "loss-diverging", "slow-training", "overfitting", "loss-not-decreasing",
         "loss-nonfinite", "memory-pressure", "run-stalled")
_RANK = {rule: i for i, rule in enumerate(ORDER)}
_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Episode:
    """One diagnosis episode, as the store keeps it."""

    rule: str
    severity: str
    first_step: int
    resolved_step: int | None = None  # None: still open (firing, or the run ended with it)
    layer: str = ""
    reason: str = ""
    fix: tuple[str, ...] = ()
    id: int | None = None  # the diagnosis row, where there is one

    @property
    def end(self) -> float:
        return math.inf if self.resolved_step is None else self.resolved_step


@dataclass
class Incident:
    """Overlapping episodes of one run; ``primary`` is the root cause, ``consequences`` what it explains."""

    number: int
    episodes: list[Episode] = field(default_factory=list)
    primary: Episode | None = None
    note: str = ""  # what the causal order concluded, in words

    @property
    def first_step(self) -> int:
        return min(e.first_step for e in self.episodes)

    @property
    def end(self) -> float:
        return max(e.end for e in self.episodes)

    @property
    def open(self) -> bool:
        return math.isinf(self.end)

    @property
    def severity(self) -> str:
        return min((e.severity for e in self.episodes), key=lambda s: _SEVERITY.get(s, 9))

    @property
    def consequences(self) -> list[Episode]:
        """The members the root cause explains, directly or through another consequence (a jump explains the
        climb, the climb the NaN)."""
        if self.primary is None:
            return []
        chain = [self.primary]
        rest = [e for e in self.episodes if e is not self.primary]
        grew = True
        while grew:
            grew = False
            for e in list(rest):
                if any(_explains(c, e, self.episodes) for c in chain):
                    chain.append(e)
                    rest.remove(e)
                    grew = True
        return [e for e in self.episodes if e in chain[1:]]

    @property
    def concurrent(self) -> list[Episode]:
        """The members open at the same time that the root cause does not explain (a layer dead since step 5
        when the learning rate jumps at step 40): listed, not passed off as its consequences."""
        explained = self.consequences
        return [e for e in self.episodes if e is not self.primary and e not in explained]

    def as_dict(self) -> dict:
        def ep(e: Episode) -> dict:
            return {"rule": e.rule, "severity": e.severity, "first_step": e.first_step,
                    "resolved_step": e.resolved_step, "layer": e.layer or None, "reason": e.reason, "id": e.id}

        return {
            "number": self.number,
            "first_step": self.first_step,
            "resolved_step": None if self.open else int(self.end),
            "state": "open" if self.open else "resolved",
            "severity": self.severity,
            "primary": ep(self.primary) if self.primary else None,
            "fix": list(self.primary.fix) if self.primary else [],
            "note": self.note,
            "consequences": [ep(e) for e in self.consequences],
            "concurrent": [ep(e) for e in self.concurrent],
        }


def group(episodes: Iterable[Episode]) -> list[Incident]:
    """The run's warning and critical episodes grouped into incidents, each with its primary cause."""
    loud = sorted((e for e in episodes if e.severity in LOUD),
                  key=lambda e: (e.first_step, _SEVERITY.get(e.severity, 9), _RANK.get(e.rule, 99)))
    incidents: list[Incident] = []
    current: Incident | None = None
    for e in loud:
        if e.rule in BEFORE_TRAINING:
            incidents.append(Incident(len(incidents) + 1, [e]))
        elif current is not None and e.first_step <= current.end + JOIN_STEPS:
            current.episodes.append(e)
        else:
            current = Incident(len(incidents) + 1, [e])
            incidents.append(current)
    for incident in incidents:
        incident.primary, incident.note = primary_of(incident.episodes)
    return incidents


def _explains(cause: Episode, effect: Episode, members: list[Episode]) -> bool:
    if cause.rule == effect.rule or cause.first_step > effect.first_step + CAUSE_LAG_STEPS:
        return False  # a cause does not appear long after its consequence
    if cause.rule == "no-warmup" and cause.resolved_step is None:
        return False  # the loss has not come back: not a warmup transient (the LR symptoms explain it)
    if effect.rule == "no-warmup" and cause.rule in LR_HIGH:
        # an early rise that passed (no-warmup resolved) is the warmup's; one that lasts is the LR's
        return effect.resolved_step is None
    return effect.rule in EXPLAINS.get(cause.rule, ())


def primary_of(members: list[Episode]) -> tuple[Episode | None, str]:
    """The root cause among ``members`` (one incident) and a sentence saying why."""
    if not members:
        return None, ""
    def key(e: Episode) -> tuple:
        return (e.first_step, _RANK.get(e.rule, 99))

    def explained(e: Episode) -> bool:
        # two symptoms that could each explain the other (a spike and a climb): the earlier one is the cause
        return any(_explains(c, e, members) and not (_explains(e, c, members) and key(e) < key(c))
                   for c in members)

    unexplained = [e for e in members if not explained(e)]
    pool = unexplained or members
    lead = min(pool, key=lambda e: (_RANK.get(e.rule, 99), e.first_step, _SEVERITY.get(e.severity, 9)))
    explained = sorted({e.rule for e in members if e is not lead and _explains(lead, e, members)})
    note = ""
    if explained:
        note = f"{lead.rule} explains {', '.join(explained)}"
    if lead.rule == "loss-nonfinite" and len({e.rule for e in members}) == 1:
        note = ("the loss turned NaN with no instability before it (no jump, spike, climb or overflow): "
                "look at the inputs and the loss first (NaN or inf in a batch, log(0), a division by zero)")
    elif lead.rule == "no-warmup":
        note = (note + "; " if note else "") + "the instability stayed in the first steps: a warmup is the fix"
    return lead, note
