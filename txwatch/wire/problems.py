"""A batch that failed validation, explained: ``(status, reason, one line, details)``, each detail naming the
field and the problem (``{"field": "series.loss.0.2", "problem": "..."}``) and never echoing a large input back.

Used by the HTTP ingest route and by embedded mode alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from txwatch.wire.batch import MAX_TIMESTAMP, SCHEMA_VERSION

MAX_DETAILS = 20  # a batch with 10,000 bad points gets the first 20 problems, and the count
MAX_GOT_CHARS = 80

NAME_HINT = "must be 1 to 200 characters of A-Z a-z 0-9 . _ : @ + = - starting with a letter or digit (no '/' or spaces)"
METRIC_HINT = (
    "metric names are a base name of letters, digits, _ . : - (starting with a letter or _, at most 100), "
    "optionally followed by '/<layer>'"
)


def field_path(loc: Sequence[Any], skip_body: bool = True) -> str:
    parts = [str(p) for p in loc if not (skip_body and p == "body")]
    parts = [p for p in parts if p != "[key]"]
    return ".".join(parts) or "(body)"


def _got(value: Any) -> Any:
    if isinstance(value, (int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_GOT_CHARS else value[:MAX_GOT_CHARS] + "..."
    text = repr(value)
    return text if len(text) <= MAX_GOT_CHARS else f"<{type(value).__name__} of {len(value) if hasattr(value, '__len__') else '?'} items>"


def _problem(err: Mapping[str, Any]) -> str:
    loc = err.get("loc", ())
    msg = err.get("msg", "invalid")
    if err.get("type") == "string_pattern_mismatch":
        if tuple(loc) == ("query", "run"):
            return f"run filter: a run name, or project/run, each part {NAME_HINT}"
        if tuple(loc) == ("query", "rule"):
            return "rule filter: a rule id, lowercase letters, digits and '-' (e.g. loss-nonfinite; see 'txwatch rules list')"
        if loc and loc[-1] in ("run", "project"):
            return f"{loc[-1]} {NAME_HINT}"
        if "[key]" in loc or (len(loc) >= 2 and loc[0] == "series"):
            return METRIC_HINT
    if loc[:1] == ("series",) and len(loc) == 4 and isinstance(loc[3], int) and loc[3] < 3:
        part = ("step", "time", "value")[loc[3]]
        if err.get("type") == "missing":
            return f"each point is [step, time, value]: this one has no {part}"
        if part == "time" and err.get("type") in ("greater_than_equal", "less_than_equal"):
            return f"time of a [step, time, value] point: unix seconds from 0 to {MAX_TIMESTAMP:g} (year 5138)"
        return f"{part} of a [step, time, value] point: {msg}"
    if err.get("type") == "too_long" and loc[:1] == ("series",) and len(loc) == 3:
        return f"each point is [step, time, value]: {msg}"
    if err.get("type") == "extra_forbidden":
        return "unknown field (check the spelling; see docs/design.md, 'Wire format')"
    return str(msg)


def details_from(errors: Sequence[Mapping[str, Any]], skip_body: bool = True) -> list[dict[str, Any]]:
    out = []
    for err in errors[:MAX_DETAILS]:
        item = {"field": field_path(err.get("loc", ()), skip_body), "problem": _problem(err)}
        if "input" in err and err.get("type") not in ("missing", "json_invalid"):
            item["got"] = _got(err["input"])
        out.append(item)
    if len(errors) > MAX_DETAILS:
        out.append({"field": "(more)", "problem": f"{len(errors) - MAX_DETAILS} more problems not listed"})
    return out


def batch_error(errors: Sequence[Mapping[str, Any]], body: bytes = b"") -> tuple[int, str, str, list[dict[str, Any]]]:
    """(status, reason label, one-line error, details) for a batch that failed validation."""
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}) or {}
            where = ctx.get("error", err.get("msg", ""))
            field = _lone_surrogate_at(body) if "surrogate" in str(where) else None
            if field is not None:
                problem = ("text that is not valid Unicode (a lone surrogate escape, e.g. a file name that is not "
                           "UTF-8): send valid UTF-8 (txwatch-hooks replace such characters with U+FFFD)")
                return 422, "invalid", f"invalid batch: {field}: {problem}", [{"field": field, "problem": problem}]
            return 400, "malformed_json", f"malformed JSON: {where}", [{"field": "(body)", "problem": str(where)}]
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if loc[:1] == ("schema_version",):
            if err.get("type") == "missing":
                msg = f"schema_version is missing: send \"schema_version\": {SCHEMA_VERSION}"
            else:
                msg = (
                    f"unknown schema_version {_got(err.get('input'))!r}: this collector reads schema_version "
                    f"{SCHEMA_VERSION}; upgrade the collector or use txwatch-hooks of the same version"
                )
            return 422, "schema_version", msg, [{"field": "schema_version", "problem": msg}]
    details = details_from(errors, skip_body=False)
    first = details[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, "invalid", f"invalid batch: {first['field']}: {first['problem']}{more}", details


def _lone_surrogate_at(body: bytes) -> str | None:
    """The field path of the first text holding a lone surrogate (Python's JSON reader takes those), or None."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    todo: list[tuple[list[str], Any]] = [([], doc)]
    while todo:
        path, value = todo.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            here = [*path, str(key)]
            for text in (key, item):
                if isinstance(text, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
                    return ".".join(here)
            todo.append((here, item))
    return None
