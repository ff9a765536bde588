"""Diagnosis benchmark: how right are the built-in rules on real small trainings?

    .venv/bin/python benchmarks/diagnosis.py               # the whole corpus (2 worker processes)
    .venv/bin/python benchmarks/diagnosis.py --quick       # one seed, a quarter of it, every rule covered
    .venv/bin/python benchmarks/diagnosis.py --only lr-too-high --json
    .venv/bin/python benchmarks/diagnosis.py --truth NAME  # NAME's true value at every step
    .venv/bin/python benchmarks/diagnosis.py --verify      # check every scenario's claim on its true values
    .venv/bin/python benchmarks/diagnosis.py --list

Each scenario (``benchmarks/scenarios``) trains on the CPU through txwatch's public surface with default
sampling, its batches go through a fresh collector with the built-in rules, and the diagnoses are scored
against the ground truth the scenario declares (``benchmarks/scenarios/score.py`` says how). It prints a row
per scenario and one summary line; ``--json`` prints both as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scenarios import registry, runner  # noqa: E402
from benchmarks.scenarios.score import Row, as_dict, summarize  # noqa: E402


def _pool_map(fn: Callable[[str], dict[str, Any]], names: list[str], workers: int,
              progress: bool) -> list[dict[str, Any]]:
    """``fn`` over ``names`` in ``workers`` fresh processes (spawned: no state shared with this one)."""
    results: dict[str, dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                initializer=runner.quiet) as pool:
        futures = {pool.submit(fn, n): n for n in names}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                results[name] = future.result()
            except Exception as exc:  # a worker died: the scenario is broken, the run goes on
                results[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
            if progress:
                print(f"  done {len(results)}/{len(names)} {name}", file=sys.stderr, flush=True)
    return [results[n] for n in names]


def _broken_row(name: str, error: str) -> Row:
    s = registry.by_name()[name]
    return Row(s.name, s.fault, s.arch, s.trainer, s.seed, s.onset, verdict="broken", error=error)


def table(rows: list[Row]) -> str:
    head = f"{'scenario':<58} {'verdict':<11} {'first':<26} {'delay':>5} {'slack':>5}  false alarms | rules fired (first step)"
    lines = [head, "-" * len(head)]
    for r in rows:
        fired = ", ".join(f"{k}@{v}" for k, v in sorted(r.fired.items(), key=lambda kv: kv[1]))
        delay = "" if r.delay is None else str(r.delay)
        lines.append(f"{r.name:<58} {r.verdict:<11} {r.first or '-':<26} {delay:>5} {r.slack:>5}  "
                     f"{', '.join(r.false_alarms) or '-'} | {fired or '-'}")
        if r.verdict == "broken" and r.error:
            lines.append("      " + r.error.strip().replace("\n", "\n      "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, about a quarter of the corpus")
    ap.add_argument("--only", action="append", metavar="PATTERN", help="scenarios whose name matches (glob or part)")
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes (default 2)")
    ap.add_argument("--json", action="store_true", help="rows and summary as JSON")
    ap.add_argument("--truth", metavar="NAME", help="print NAME's true values at every step, and check its claim")
    ap.add_argument("--every", type=int, default=1, help="with --truth: print every Nth step (and validations)")
    ap.add_argument("--verify", action="store_true", help="check each selected scenario's claim on its true values")
    ap.add_argument("--list", action="store_true", help="list the scenarios and their ground truth")
    args = ap.parse_args(argv)

    if args.truth:
        return _truth(args.truth, args.every)
    chosen = registry.select(args.quick, args.only)
    if args.list:
        for s in chosen:
            truth = "healthy" if s.healthy else f"onset {s.onset}, primary {','.join(s.primary)}" + (
                f", secondary {','.join(s.secondary)}" if s.secondary else "")
            print(f"{s.name:<58} {truth}")
        return 0
    names = [s.name for s in chosen]
    started = time.perf_counter()
    if args.verify:
        results = _pool_map(runner.verify, names, args.workers, progress=not args.json)
        if args.json:
            print(json.dumps(results, indent=1))
        for r in results if not args.json else []:
            mark = "ok  " if r.get("holds") else "FAIL"
            print(f"{mark} {r['name']:<58} {r.get('figures', '')}" + (f"  [{r['error']}]" if r.get("error") else ""))
        return 0 if all(r.get("holds") for r in results) else 1
    raw = _pool_map(runner.evaluate, names, args.workers, progress=not args.json)
    rows = [Row(**r) if "verdict" in r else _broken_row(r["name"], r["error"]) for r in raw]
    summary = summarize(rows, time.perf_counter() - started)
    if args.json:
        print(json.dumps({"summary": as_dict(summary), "rows": [as_dict(r) for r in rows]}, indent=1))
    else:
        print(table(rows))
        print()
        print(summary.line())
    return 0


def _truth(name: str, every: int) -> int:
    runner.quiet()
    from benchmarks.scenarios.truth import check, true_values

    scenario = registry.by_name().get(name)
    if scenario is None:
        print(f"no scenario {name!r}; --list shows them", file=sys.stderr)
        return 2
    truth = true_values(scenario)
    print(f"{scenario.name}: {scenario.what.strip()}")
    print(f"ground truth: {'healthy' if scenario.healthy else f'onset {scenario.onset}, primary {scenario.primary}, secondary {scenario.secondary}'}")
    print(truth.table(every))
    holds, figures = check(scenario, truth)
    print(f"claim {'holds' if holds else 'DOES NOT HOLD'}: {figures}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
