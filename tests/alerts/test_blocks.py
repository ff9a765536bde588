"""Block Kit rendering details: the rule engine's evidence shape, escaping, limits."""

from __future__ import annotations

from txwatch.alerts.blocks import HEADER_MAX, SECTION_MAX, evidence_lines, group_message, single_message


def payload(**diag):
    d = {"id": 1, "rule": "dead-layer", "severity": "warning", "state": "firing", "episode": 1, "layer": None,
         "symptom": "Some layers stopped learning", "cause": "Vanishing gradients", "fix": ["Use a residual"],
         "reason": "3 layers have zero gradients", "evidence": {}, "labels": {}, "first_step": 10, "last_step": 10,
         "resolved_step": None, "first_seen": "2025-11-29T09:00:00Z", "last_seen": None, "resolved_at": None}
    d.update(diag)
    return {"version": 1, "kind": "fire", "diagnosis": d, "run": {"name": "r", "project": "p", "url": None}}


def test_engine_shaped_evidence_reads_as_figures():
    evidence = {
        "step": 1200,
        "values": {"last(loss)": "NaN", "nonfinite(loss, points=1)": 1.0},
        "layers": ["enc.0.w", "enc.1.w", "enc.2.w", "enc.3.w", "enc.4.w", "enc.5.w"],
        "layer_count": 9,
        "layer_values": {"enc.0.w": {"last(grad_norm)": 0.0}, "enc.1.w": {"last(grad_norm)": 1e-12}},
        "run": {"status": "crashed", "error": "torch.OutOfMemoryError: CUDA out of memory"},
        "first": {"step": 900},
        "resolution": {"reason": "gone"},
    }
    assert evidence_lines(evidence) == [
        "• *step*: `1200`",
        "• `last(loss)` = `NaN`",
        "• `nonfinite(loss, points=1)` = `1`",
        "• *layers*: `enc.0.w`, `enc.1.w`, `enc.2.w`, `enc.3.w`, `enc.4.w`, `enc.5.w` (+3 more)",
        "• `enc.0.w`: last(grad_norm)=0",
        "• `enc.1.w`: last(grad_norm)=1e-12",
        "• *run*: status=crashed, error=torch.OutOfMemoryError: CUDA out of memory",
    ]


def test_user_text_is_escaped_and_limits_hold():
    long = "x" * 5000
    text, blocks = single_message(payload(symptom="<script> & " + long, cause=long))
    # the header is plain_text (shown literally); mrkdwn text is escaped
    assert blocks[0]["text"]["text"].startswith(":large_orange_circle: WARNING: <script> & xx")
    assert blocks[2]["text"]["text"].startswith("*Likely cause*\nxxx")
    assert len(blocks[0]["text"]["text"]) == HEADER_MAX
    assert all(len(b["text"]["text"]) <= SECTION_MAX for b in blocks if b["type"] == "section")
    assert text.startswith("[WARNING] &lt;script&gt; &amp;")


def test_a_large_group_stays_within_slacks_block_limit():
    payloads = [payload(id=i, rule=f"rule-{i}") for i in range(30)]
    _, blocks = group_message(payloads)
    items = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert items[1].startswith(":large_orange_circle: *WARNING · Some layers stopped learning*  `rule-0`")
    assert len(blocks) <= 50
    assert blocks[-2]["elements"][0]["text"] == "… and 10 more on the run page"


def test_group_items_escape_user_text():
    _, blocks = group_message([payload(id=1, symptom="a <b> & c"), payload(id=2, rule="other")])
    assert "*WARNING · a &lt;b&gt; &amp; c*" in blocks[3]["text"]["text"]
