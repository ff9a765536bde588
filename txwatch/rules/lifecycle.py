"""The life of one diagnosis: inactive -> pending -> firing -> resolved, with hysteresis.

A rule's condition must hold for the rule's ``for`` (steps or seconds) before it fires; once firing, it resolves
only after it has stopped holding (or its separate resolve condition has held) for the resolve duration, so a
value hovering at a threshold does not flap. ``None`` (no data) changes nothing. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from txwatch.rules.model import Hold

Step = Literal["pending", "fire", "hold", "cancel", "resolve", "none"]


@dataclass
class Tracker:
    """Where one (rule, layer) stands; saved with the engine state."""

    state: str = "inactive"  # inactive | pending | firing
    since_step: int = 0  # when the condition started holding
    since_time: float = 0.0
    clear_step: int | None = None  # when it started to clear (firing only)
    clear_time: float | None = None
    episode: int = 0  # the current (firing) or last episode number
    first_step: int | None = None  # step the current episode fired at
    last_step: int | None = None  # latest step the condition held at
    diagnosis_id: int | None = None  # the stored row of the current episode
    notified_time: float | None = None  # run time of the last fire/update notification
    notified_layers: list[str] | None = None

    def to_state(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tracker:
        return cls(**state)


def advance(
    t: Tracker,
    held: bool | None,
    clears: bool | None,
    step: int,
    time: float,
    hold: Hold,
    resolve_hold: Hold,
) -> Step:
    """Move ``t`` for one evaluation and say what happened.

    ``held``: the condition's value; ``clears``: whether the episode is clearing (the resolve condition, or
    ``not held`` when the rule has none). Returns pending, fire, hold (still firing), cancel (a pending test
    stopped holding before it fired), resolve, or none.
    """
    if t.state == "inactive":
        if held is not True:
            return "none"
        t.since_step, t.since_time = step, time
        if hold.zero:
            return _fire(t, step)
        t.state = "pending"
        return "pending"
    if t.state == "pending":
        if held is True:
            if hold.satisfied(t.since_step, t.since_time, step, time):
                return _fire(t, step)
            return "none"
        if held is False:
            t.state = "inactive"
            return "cancel"
        return "none"
    # firing
    if held is True:
        t.last_step = step if t.last_step is None else max(t.last_step, step)
    if clears is True:
        if t.clear_step is None:
            t.clear_step, t.clear_time = step, time
        if resolve_hold.satisfied(t.clear_step, t.clear_time or time, step, time):
            t.state = "inactive"
            t.clear_step = t.clear_time = None
            return "resolve"
        return "none"
    if clears is False:
        t.clear_step = t.clear_time = None
    return "hold" if held is True else "none"


def _fire(t: Tracker, step: int) -> Step:
    t.state = "firing"
    t.episode += 1
    t.first_step = step
    t.last_step = step
    t.clear_step = t.clear_time = None
    t.diagnosis_id = None
    t.notified_time = None
    t.notified_layers = None
    return "fire"
