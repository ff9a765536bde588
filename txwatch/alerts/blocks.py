"""Slack messages as Block Kit (plus the plain-text fallback Slack shows in notifications).

Pure functions of the notification payloads (see payload.py): no I/O, no slack-sdk. A message must be enough to
act on: severity, run and project, symptom, likely cause, fix steps, evidence, and a link to the run page.
"""

from __future__ import annotations

import json
from typing import Any

HEADER_MAX = 150  # Slack's limit for header text
SECTION_MAX = 3000  # Slack's limit for a section's text
MAX_GROUP_ITEMS = 20  # 2 blocks each; Slack allows 50 blocks per message
MAX_EVIDENCE_ITEMS = 8
MAX_LIST_ITEMS = 6

SEVERITY = {
    "critical": (":red_circle:", "CRITICAL"),
    "warning": (":large_orange_circle:", "WARNING"),
    "info": (":large_blue_circle:", "INFO"),
}
RESOLVED = ":white_check_mark:"
_RANK = {"info": 0, "warning": 1, "critical": 2}

Message = tuple[str, list[dict[str, Any]]]  # (fallback text, blocks)


def esc(text: Any) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, SECTION_MAX)}}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _cut(text, HEADER_MAX), "emoji": True}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(text, SECTION_MAX)}]}


def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# The rule engine keeps the figures a diagnosis fired with under "first" (on updates) and how it went away under
# "resolution" (on resolves); messages show the current figures and say the resolution in words.
_BOOKKEEPING = ("first", "resolution")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _pairs(d: dict[str, Any]) -> str:
    shown = list(d.items())[:MAX_LIST_ITEMS]
    text = ", ".join(f"{esc(k)}={esc(fmt_value(v))}" for k, v in shown)
    return text + (f" (+{len(d) - MAX_LIST_ITEMS} more)" if len(d) > MAX_LIST_ITEMS else "")


def evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """``• *name*: value`` lines for the evidence figures.

    Understands the rule engine's shape (``values``: expression -> value, ``layers`` with ``layer_count``,
    ``layer_values``: layer -> figures, ``run``: run facts) and falls back to one line per key for anything else;
    lists and long mappings are shortened.
    """
    lines: list[str] = []
    items = [(k, v) for k, v in evidence.items() if k not in _BOOKKEEPING and k != "layer_count"]
    for key, value in items[:MAX_EVIDENCE_ITEMS]:
        if isinstance(value, list):
            shown = value[:MAX_LIST_ITEMS]
            total = evidence.get("layer_count") if key == "layers" and isinstance(evidence.get("layer_count"), int) else len(value)
            if all(isinstance(v, str) for v in shown):
                rendered = ", ".join(f"`{esc(v)}`" for v in shown)
            else:
                rendered = ", ".join(esc(fmt_value(v)) for v in shown)
            if total > len(shown):
                rendered += f" (+{total - len(shown)} more)"
            lines.append(f"• *{esc(key)}*: {rendered}")
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            # per-layer figures: one line per layer
            for inner, figures in list(value.items())[:MAX_LIST_ITEMS]:
                lines.append(f"• `{esc(inner)}`: {_pairs(figures)}")
        elif isinstance(value, dict) and key == "values":
            for expr, v in list(value.items())[:MAX_EVIDENCE_ITEMS]:
                lines.append(f"• `{esc(expr)}` = `{esc(fmt_value(v))}`")
        elif isinstance(value, dict) and all(_scalar(v) for v in value.values()):
            lines.append(f"• *{esc(key)}*: {_pairs(value)}")
        elif isinstance(value, dict):
            lines.append(f"• *{esc(key)}*: `{esc(_cut(json.dumps(value, sort_keys=True), 200))}`")
        else:
            lines.append(f"• *{esc(key)}*: `{esc(fmt_value(value))}`")
    if len(items) > MAX_EVIDENCE_ITEMS:
        lines.append(f"• … {len(items) - MAX_EVIDENCE_ITEMS} more figures on the run page")
    return lines


def _fix_lines(fix: list[str]) -> str:
    return "\n".join(f"{i}. {esc(f)}" for i, f in enumerate(fix, 1)) or "_no fix steps for this rule_"


def _run_line(payload: dict[str, Any], mention: str | None) -> str:
    r = payload["run"]
    run = f"<{r['url']}|{esc(r['name'])}>" if r.get("url") else f"`{esc(r['name'])}`"
    line = f"*Run* {run} · *Project* `{esc(r['project'])}`"
    return f"{mention} {line}" if mention else line


def _step_of(d: dict[str, Any]) -> str:
    return "?" if d.get("first_step") is None else str(d["first_step"])


def _resolved(d: dict[str, Any]) -> bool:
    return d.get("state") == "resolved"


def _footer(payload: dict[str, Any], resolved_note: str | None = None) -> dict[str, Any]:
    d, r = payload["diagnosis"], payload["run"]
    parts = ["txwatch"]
    if resolved_note:
        parts.append(resolved_note)
    if d.get("first_seen"):
        parts.append(f"first seen {d['first_seen'].replace('T', ' ')[:16]} UTC")
    if r.get("url"):
        parts.append(f"<{r['url']}|Open the run page>")
    return _context(" · ".join(parts))


def _resolved_note(d: dict[str, Any]) -> str:
    step = d.get("resolved_step") if d.get("resolved_step") is not None else d.get("last_step")
    return f"{RESOLVED} resolved at step {step if step is not None else '?'}"


def single_message(payload: dict[str, Any], mention: str | None = None, note: str | None = None) -> Message:
    """The message for one diagnosis (fire, or the original re-rendered when it resolves); ``note`` goes in the
    footer (e.g. "still firing at step 900" for a top-level update)."""
    d, r = payload["diagnosis"], payload["run"]
    emoji, label = SEVERITY.get(d["severity"], SEVERITY["info"])
    resolved = _resolved(d)
    title = f"{RESOLVED} RESOLVED: {d['symptom']}" if resolved else f"{emoji} {label}: {d['symptom']}"
    facts = f"{_run_line(payload, None if resolved else mention)} · *Rule* `{esc(d['rule'])}` · *Step* {_step_of(d)}"
    if d.get("layer"):
        facts += f" · *Layer* `{esc(d['layer'])}`"
    evidence = "\n".join(filter(None, [esc(d.get("reason") or ""), *evidence_lines(d.get("evidence") or {})]))
    blocks = [
        _header(title),
        _section(facts),
        _section(f"*Likely cause*\n{esc(d['cause'])}"),
        _section(f"*Fix*\n{_fix_lines(d.get('fix') or [])}"),
    ]
    if evidence:
        blocks.append(_section(f"*Evidence*\n{evidence}"))
    blocks.append(_footer(payload, _resolved_note(d) if resolved else note))
    status = "RESOLVED" if resolved else label
    text = f"[{status}] {d['symptom']} — {r['project']}/{r['name']}, step {_step_of(d)} ({d['rule']})."
    if not resolved:
        fixes = "; ".join(f"{i}) {f}" for i, f in enumerate(d.get("fix") or [], 1))
        text += f" Likely cause: {d['cause']}" + (f" Fix: {fixes}" if fixes else "")
        if mention:
            text = f"{mention} {text}"
    return esc_text(text), blocks


def group_message(payloads: list[dict[str, Any]], mention: str | None = None) -> Message:
    """One message for several diagnoses of one run that fired within the group window."""
    if len(payloads) == 1:
        return single_message(payloads[0], mention)
    first = payloads[0]
    r = first["run"]
    diags = [p["diagnosis"] for p in payloads]
    worst = max(diags, key=lambda d: _RANK.get(d["severity"], 0))["severity"]
    emoji, label = SEVERITY.get(worst, SEVERITY["info"])
    all_resolved = all(_resolved(d) for d in diags)
    n = len(diags)
    title = f"{RESOLVED} RESOLVED: {n} problems in run {r['name']}" if all_resolved else f"{emoji} {label}: {n} problems in run {r['name']}"
    blocks = [_header(title), _section(_run_line(first, None if all_resolved else mention))]
    for d in diags[:MAX_GROUP_ITEMS]:
        blocks.append({"type": "divider"})
        blocks.append(_section(_group_item(d)))
    if n > MAX_GROUP_ITEMS:
        blocks.append(_context(f"… and {n - MAX_GROUP_ITEMS} more on the run page"))
    blocks.append(_footer(first, f"{RESOLVED} all resolved" if all_resolved else None))
    listed = "; ".join(f"{d['symptom']} ({d['rule']}{', resolved' if _resolved(d) else ''})" for d in diags)
    status = "RESOLVED" if all_resolved else label
    text = f"[{status}] {n} problems in {r['project']}/{r['name']}: {listed}"
    if mention and not all_resolved:
        text = f"{mention} {text}"
    return esc_text(text), blocks


def _group_item(d: dict[str, Any]) -> str:
    emoji, label = SEVERITY.get(d["severity"], SEVERITY["info"])
    where = f"`{esc(d['rule'])}` · step {_step_of(d)}" + (f" · layer `{esc(d['layer'])}`" if d.get("layer") else "")
    if _resolved(d):
        return f"{RESOLVED} ~{esc(d['symptom'])}~ — {_resolved_note(d)} ({where})"
    fixes = " ".join(f"{i}. {esc(f)}" for i, f in enumerate(d.get("fix") or [], 1)) or "_none_"
    evidence = "; ".join(filter(None, [esc(d.get("reason") or ""), *(
        line.removeprefix("• ") for line in evidence_lines(d.get("evidence") or {})[:3]
    )]))
    lines = [f"{emoji} *{label} · {esc(d['symptom'])}*  {where}", f"*Likely cause:* {esc(d['cause'])}", f"*Fix:* {fixes}"]
    if evidence:
        lines.append(f"*Evidence:* {evidence}")
    return "\n".join(lines)


def esc_text(text: str) -> str:
    """The fallback text: escaped like mrkdwn, except Slack's own mention syntax at the start."""
    if text.startswith("<!") or text.startswith("<@"):
        mention, _, rest = text.partition(" ")
        return f"{mention} {esc(rest)}"
    return esc(text)


def update_reply(payload: dict[str, Any]) -> Message:
    """A thread reply while the diagnosis keeps firing."""
    d = payload["diagnosis"]
    step = d.get("last_step") if d.get("last_step") is not None else "?"
    head = f":repeat: *Still firing* at step {step}: {esc(d['symptom'])} (`{esc(d['rule'])}`)"
    body = "\n".join(filter(None, [head, esc(d.get("reason") or ""), *evidence_lines(d.get("evidence") or {})]))
    text = f"Still firing at step {step}: {d['symptom']} ({d['rule']}). {d.get('reason') or ''}".strip()
    return esc(text), [_section(body)]


def incident_reply(payload: dict[str, Any]) -> Message:
    """A diagnosis that fired while an earlier one of the same run was still open: a reply in that incident's
    thread, not a message of its own (one Slack message per incident)."""
    d = payload["diagnosis"]
    emoji, label = SEVERITY.get(d["severity"], SEVERITY["info"])
    head = (f":link: *Also in this incident* at step {_step_of(d)}: {emoji} {label} · {esc(d['symptom'])} "
            f"(`{esc(d['rule'])}`)")
    body = "\n".join(filter(None, [head, esc(d.get("reason") or ""), *evidence_lines(d.get("evidence") or {})]))
    text = f"Also in this incident at step {_step_of(d)}: {d['symptom']} ({d['rule']}). {d.get('reason') or ''}"
    return esc(text.strip()), [_section(body)]


def resolve_reply(payload: dict[str, Any]) -> Message:
    """The thread reply that says the diagnosis resolved."""
    d = payload["diagnosis"]
    step = d.get("resolved_step") if d.get("resolved_step") is not None else d.get("last_step")
    step = "?" if step is None else step
    text = f"Resolved at step {step}: {d['symptom']} ({d['rule']})."
    body = f"{RESOLVED} *Resolved* at step {step}: {esc(d['symptom'])} (`{esc(d['rule'])}`)"
    resolution = (d.get("evidence") or {}).get("resolution")
    why = resolution.get("reason") if isinstance(resolution, dict) else None
    if why:
        text += f" {why}"
        body += f"\n{esc(why)}"
    return esc(text), [_section(body)]


def digest_message(digest: dict[str, Any]) -> Message:
    """The scheduled summary: runs started/finished/crashed and diagnoses raised since the last digest."""
    runs, diags = digest["runs"], digest["diagnoses"]
    since, until = digest["since"].replace("T", " ")[:16], digest["until"].replace("T", " ")[:16]
    blocks = [
        _header(":bar_chart: txwatch digest"),
        _context(f"{since} UTC → {until} UTC"),
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Runs started*\n{runs['started']}"},
            {"type": "mrkdwn", "text": f"*Finished*\n{runs['finished']}"},
            {"type": "mrkdwn", "text": f"*Crashed*\n{runs['crashed']}"},
            {"type": "mrkdwn", "text": f"*Diagnoses raised*\n{diags['total']}"},
        ]},
    ]
    if runs.get("crashed_runs"):
        shown = runs["crashed_runs"][:MAX_LIST_ITEMS * 2]
        lines = [f"• `{esc(c['project'])}/{esc(c['run'])}`: {esc(c.get('error') or c.get('reason') or 'crashed')}" for c in shown]
        blocks.append(_section("*Crashed runs*\n" + "\n".join(lines)))
    if diags.get("items"):
        lines = []
        for item in diags["items"]:
            emoji, label = SEVERITY.get(item["severity"], SEVERITY["info"])
            lines.append(f"{emoji} `{esc(item['project'])}/{esc(item['run'])}`: {esc(item['symptom'])} (`{esc(item['rule'])}`)")
        more = diags["total"] - len(diags["items"])
        if more > 0:
            lines.append(f"… and {more} more")
        blocks.append(_section("*Diagnoses raised*\n" + "\n".join(lines)))
    text = (
        f"txwatch digest {since} → {until} UTC: {runs['started']} runs started, {runs['finished']} finished, "
        f"{runs['crashed']} crashed; {diags['total']} diagnoses raised."
    )
    return esc(text), blocks
