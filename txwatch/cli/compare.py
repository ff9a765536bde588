"""``txwatch compare RUN RUN ...``: runs side by side: how their configs differ, and their key figures.

The figures come through the same sources as every query command (a database or a daemon): the final and best
loss and validation loss (best: the lowest, read from a downsampled series whose buckets keep each lowest value,
so it is exact), steps, status, duration, and the diagnoses raised.
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from typing import Any

import typer

from txwatch.cli.app import app
from txwatch.cli.errors import CliError
from txwatch.cli.output import cell, console, print_json
from txwatch.cli.source import Db, Endpoint, Token, open_source

BEST_POINTS = 2000  # downsampled min/max buckets keep every bucket's lowest value: the best loss, exactly
FIGURES = ("status", "steps", "duration_s", "final_loss", "best_loss", "best_loss_step", "final_val_loss",
           "best_val_loss", "best_val_loss_step", "diagnoses")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config keys as dotted names (``optim.lr``), as ``--where config.optim.lr`` spells them."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(configs: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(key -> each run's value, for keys that differ or are missing somewhere; key -> value where all agree)."""
    flat = [flatten(c) for c in configs]
    missing = object()
    differ: dict[str, list[Any]] = {}
    same: dict[str, Any] = {}
    for key in sorted({k for f in flat for k in f}):
        values = [f.get(key, missing) for f in flat]
        if all(v is not missing and _same(v, values[0]) for v in values):
            same[key] = values[0]
        else:
            differ[key] = [None if v is missing else v for v in values]
    return differ, same


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _best(points: list[dict]) -> tuple[float | None, int | None]:
    finite = [p for p in points if isinstance(p["value"], (int, float)) and not math.isnan(p["value"])]
    if not finite:
        return None, None
    best = min(finite, key=lambda p: (p["value"], p["step"]))
    return best["value"], best["step"]


def figures(src: Any, project: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run's key figures, its config) read from ``src``."""
    ref = f"{project}/{name}"
    detail = src.run(ref)
    series = {s["name"] for s in src.series(ref)}
    last = detail.get("summary", {}).get("last_values", {})
    out: dict[str, Any] = {"run": name, "project": project, "status": detail["status"], "steps": detail["steps"],
                           "duration_s": detail.get("duration_s")}
    for metric, key in (("loss", "loss"), ("val_loss", "val_loss")):
        best, step = _best(src.points(ref, metric, BEST_POINTS)) if metric in series else (None, None)
        out[f"final_{key}"] = last.get(metric)
        out[f"best_{key}"], out[f"best_{key}_step"] = best, step
    diagnoses = src.diagnoses(run=ref)
    out["diagnoses"] = len(diagnoses)
    out["rules"] = sorted({d["rule"] for d in diagnoses})
    return out, detail.get("config") or {}


@app.command()
def compare(
    runs: list[str] = typer.Argument(..., help="Two or more runs: RUN or PROJECT/RUN."),
    endpoint: Endpoint = None, db: Db = None, token: Token = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON: figures, config differences, shared config."),
) -> None:
    """Compare runs side by side: config differences and key figures (final/best loss, val loss, steps, ...)."""
    if len(runs) < 2:
        raise CliError("compare needs two or more runs, e.g. `txwatch compare lr-1e-3 lr-3e-4`")
    with closing(open_source(endpoint, db, token)) as src:
        refs = [src.resolve(r) for r in runs]
        if len(set(refs)) < len(refs):
            raise CliError("the same run is named twice; compare different runs")
        found = [figures(src, project, name) for project, name in refs]
    rows, configs = [f for f, _ in found], [c for _, c in found]
    differ, same = config_differences(configs)
    if as_json:
        return print_json({"runs": rows, "config_differences": differ, "config_same": same})
    _print_tables(rows, differ, same)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _print_tables(rows: list[dict], differ: dict[str, list[Any]], same: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    names = [f"{cell(r['project'])}/{cell(r['run'])}" for r in rows]
    figures_table = Table("", *names, title="key figures", title_justify="left")
    for key in FIGURES:
        values = [r.get(key) for r in rows]
        shown = [cell(_fmt(v)) for v in values]
        if key in ("best_loss", "best_val_loss", "final_loss", "final_val_loss"):
            finite = [v for v in values if isinstance(v, float) and not math.isnan(v)]
            if len(finite) > 1:  # the lowest in bold: the run that did best on it
                shown = [f"[bold]{s}[/]" if v == min(finite) else s for s, v in zip(shown, values)]
        figures_table.add_row(key.replace("_", " "), *shown)
    figures_table.add_row("rules", *[cell(", ".join(r["rules"]) or "-") for r in rows])
    out.print(figures_table)
    if differ:
        config_table = Table("config", *names, title="config differences", title_justify="left")
        for key, values in differ.items():
            config_table.add_row(cell(key), *[cell(_fmt(v)) for v in values])
        out.print(config_table)
    else:
        out.print("configs: identical")
    if same:
        out.print(f"[dim]same in all: {cell(', '.join(f'{k}={_fmt(v)}' for k, v in same.items()))}[/]")
