"""All scenarios of the corpus, by name, and the ``--quick`` subset."""

from __future__ import annotations

import fnmatch
import importlib

from benchmarks.scenarios.spec import Scenario

FAMILIES = ("lr", "gradients", "data_faults", "failures", "healthy")


def all_scenarios() -> list[Scenario]:
    found: list[Scenario] = []
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"benchmarks.scenarios.families.{family}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.scenarios.families.{family}":
                raise
            continue
        found.extend(module.SCENARIOS)
    names = [s.name for s in found]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"scenario names must be unique: {sorted(dupes)}")
    return found


def by_name() -> dict[str, Scenario]:
    return {s.name: s for s in all_scenarios()}


def select(quick: bool = False, patterns: list[str] | None = None) -> list[Scenario]:
    """The quick subset or the whole corpus, narrowed to names matching any of ``patterns`` (globs)."""
    chosen = [s for s in all_scenarios() if s.quick or not quick]
    if patterns:
        chosen = [s for s in chosen if any(fnmatch.fnmatch(s.name, p) or p in s.name for p in patterns)]
    return chosen
