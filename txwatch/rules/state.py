"""One run's engine state: series buffers, layer families, run facts, trackers and running baselines.

It saves to and restores from a compact blob (JSON, zlib-compressed, base64 inside a JSON object): compressed
because it is written on every batch, and wrapped because PostgreSQL's JSON type rejects the NaN and Infinity
that a diverging run's buffers legitimately hold.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import asdict
from typing import Any

from txwatch.rules import roles
from txwatch.rules.compiler import RunFacts
from txwatch.rules.lifecycle import Tracker
from txwatch.rules.buffers import Needs, SeriesBuffer

STATE_FORMAT = 1


class SeriesIndex:
    """Which series the loaded rules read, and what each needs (shared by every run's state)."""

    def __init__(self, needs_by_pattern: dict[str, Needs]):
        self.exact: dict[str, Needs] = {}
        self.wild: list[tuple[str, re.Pattern[str], Needs]] = []
        for pattern, needs in needs_by_pattern.items():
            if "*" in pattern:
                prefix, suffix = pattern.split("*", 1)
                rx = re.compile("^" + re.escape(prefix) + "(.+)" + re.escape(suffix) + "$")
                self.wild.append((pattern, rx, needs))
            else:
                self.exact[pattern] = needs
        self._cache: dict[str, tuple[Needs | None, list[tuple[str, str]]]] = {}

    def match(self, name: str) -> tuple[Needs | None, list[tuple[str, str]]]:
        """The merged needs of ``name`` (None: no rule reads it) and its (pattern, layer key) memberships."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        needs: Needs | None = None
        families: list[tuple[str, str]] = []
        if name in self.exact:
            needs = Needs()
            needs.merge(self.exact[name])
        for pattern, rx, n in self.wild:
            m = rx.match(name)
            if m:
                needs = needs or Needs()
                needs.merge(n)
                families.append((pattern, m.group(1)))
        if len(self._cache) < 200_000:  # bounded: a pathological run cannot grow it without limit
            self._cache[name] = (needs, families)
        return needs, families


class RunState:
    """Everything the engine remembers about one run between batches."""

    def __init__(self, run_id: int, index: SeriesIndex):
        self.run_id = run_id
        self.index = index
        self.buffers: dict[str, SeriesBuffer] = {}
        self.families: dict[str, dict[str, str]] = {}  # pattern -> layer key -> series name
        self.facts = RunFacts()
        self.trackers: dict[str, Tracker] = {}  # "rule_id|layer" -> tracker
        self.node_state: dict[str, dict[str, float]] = {}  # rule_id -> running baselines
        self.max_step = 0
        self.version = 0  # engine_state.version this state corresponds to
        self._layer_cache: dict[tuple[tuple[str, ...], frozenset[str] | None], list[str]] = {}
        # transient (not saved): a counter per series pattern, bumped when any of its series gets a point or a
        # layer joins, so a per-layer test over unchanged series is not recomputed at every step
        self.family_version: dict[str, int] = {}
        self.quantifier_memo: dict[int, tuple] = {}
        # a quantifier body's values over its layers at the latest step it was computed, shared by every
        # quantifier over the same body and layers (``evaluate``): (step, versions, keys, [(key, value)])
        self.layer_values: dict[tuple, tuple] = {}

    # ------------------------------------------------------------ the View protocol

    def series(self, name: str) -> SeriesBuffer | None:
        return self.buffers.get(name)

    def layer_keys(self, patterns: tuple[str, ...], kinds: frozenset[str] | None = None) -> list[str]:
        """The layer keys of ``patterns``' series; with ``kinds``, only the training parameters of those kinds."""
        keys = self._layer_cache.get((patterns, kinds))
        if keys is None:
            found: dict[str, str] = {}
            for p in patterns:
                for key, name in self.families.get(p, {}).items():
                    found.setdefault(key, name)
            facts = self.facts
            if kinds is not None:
                found = {k: n for k, n in found.items()
                         if roles.judged(facts.params, facts.lr_peak, n.split("/", 1)[-1], kinds)}
            # in model order (input side first) when the roles say it, else by name
            keys = sorted(found, key=lambda k: (roles.position(facts.params, found[k].split("/", 1)[-1]), k))
            self._layer_cache[(patterns, kinds)] = keys
        return keys

    def learn_roles(self, info: dict[str, Any]) -> None:
        """The parameter roles and config of the run's info (sent with its first batch, again when it changes)."""
        params = roles.from_info(info)
        if params is not None:
            self.facts.params = params
            self.roles_changed()
        if isinstance(info.get("config"), dict):
            self.facts.config = info["config"]

    def saw_lr(self, name: str, points: list[Any]) -> None:
        """Keep each learning-rate series' peak: a param group whose rate was never above 0 does not train."""
        peak = self.facts.lr_peak
        old = peak.get(name, 0.0)
        new = max([old, *(float(p[2]) for p in points if float(p[2]) == float(p[2]))])
        if name not in peak or (old <= 0 < new):
            peak[name] = new
            self.roles_changed()
        elif new > old:
            peak[name] = new

    def roles_changed(self) -> None:
        self._layer_cache.clear()
        self.quantifier_memo.clear()
        self.layer_values.clear()

    # ------------------------------------------------------------ writing

    def buffer_for(self, name: str) -> SeriesBuffer | None:
        """The buffer of ``name``, created on first sight when a rule reads it; None when none does."""
        buf = self.buffers.get(name)
        if buf is not None:
            return buf
        needs, families = self.index.match(name)
        if needs is None:
            return None
        buf = SeriesBuffer(needs)
        buf.patterns = tuple(p for p, _ in families) + ((name,) if name in self.index.exact else ())
        self.buffers[name] = buf
        for pattern, key in families:
            self.families.setdefault(pattern, {})[key] = name
        if families:
            self._layer_cache.clear()
        return buf

    def touched(self, buf: SeriesBuffer) -> None:
        """``buf`` got a point: what was computed from its families is out of date."""
        fv = self.family_version
        for p in buf.patterns:
            fv[p] = fv.get(p, 0) + 1

    def tracker(self, rule_id: str, layer: str | None) -> Tracker:
        key = rule_id + "|" + layer if layer else rule_id + "|"
        t = self.trackers.get(key)
        if t is None:
            t = self.trackers[key] = Tracker()
        return t

    # ------------------------------------------------------------ saving

    def to_state(self) -> dict[str, Any]:
        payload = {
            "format": STATE_FORMAT,
            "max_step": self.max_step,
            "facts": asdict(self.facts),
            "buffers": {name: b.to_state() for name, b in self.buffers.items()},
            "trackers": {k: t.to_state() for k, t in self.trackers.items() if t.state != "inactive" or t.episode},
            "nodes": self.node_state,
        }
        raw = json.dumps(payload, separators=(",", ":"), allow_nan=True).encode()
        return {"format": STATE_FORMAT, "data": base64.b64encode(zlib.compress(raw, 1)).decode("ascii")}

    @classmethod
    def from_state(cls, run_id: int, index: SeriesIndex, saved: dict[str, Any] | None) -> RunState:
        state = cls(run_id, index)
        if not saved or saved.get("format") != STATE_FORMAT or "data" not in saved:
            return state
        payload = json.loads(zlib.decompress(base64.b64decode(saved["data"])))
        state.max_step = int(payload.get("max_step", 0))
        state.facts = RunFacts(**payload.get("facts", {}))
        for name, b in payload.get("buffers", {}).items():
            needs, families = index.match(name)
            if needs is None:  # no rule reads it any more
                continue
            buf = state.buffers[name] = SeriesBuffer.from_state(b, needs)
            buf.patterns = tuple(p for p, _ in families) + ((name,) if name in index.exact else ())
            for pattern, key in families:
                state.families.setdefault(pattern, {})[key] = name
        state.trackers = {k: Tracker.from_state(t) for k, t in payload.get("trackers", {}).items()}
        state.node_state = payload.get("nodes", {})
        return state
