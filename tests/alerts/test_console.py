"""The console sink: readable lines as diagnoses fire and resolve (embedded mode, the demo)."""

from __future__ import annotations

import logging

from tests.alerts.conftest import change, fire
from txwatch.alerts import build_alerting
from txwatch.alerts.silences import add_silence
from txwatch.settings import Settings


def test_fires_and_resolves_print_readable_lines(sessions, clock):
    lines: list[str] = []
    alerting = build_alerting(Settings(public_url="http://127.0.0.1:8642"), sessions, clock=clock,
                              console=lambda text, payload: lines.append(text))
    diag = fire(sessions, alerting, layer="h.3.mlp.c_fc.weight")
    change(sessions, alerting, diag, "update", last_step=600)  # updates are not printed: they would flood the terminal
    change(sessions, alerting, diag, "resolve", resolved_step=700)
    assert lines == [
        "[CRITICAL] search-ranking/bert-ft-42 step 412: Loss became NaN [layer h.3.mlp.c_fc.weight] (loss-nonfinite)\n"
        "    cause: The learning rate is too high for this model: updates overshoot until values overflow.\n"
        "    fix:   1. Lower the learning rate 10x  2. Enable gradient clipping (max_norm=1.0)\n"
        "    why:   loss was nan at step 412 (a finite value is expected)\n"
        "    see:   http://127.0.0.1:8642/runs/search-ranking/bert-ft-42",
        "[RESOLVED] search-ranking/bert-ft-42 step 700: Loss became NaN [layer h.3.mlp.c_fc.weight] (loss-nonfinite)",
    ]


def test_without_a_callback_lines_go_to_the_log_and_silences_apply(sessions, clock, caplog):
    alerting = build_alerting(Settings(), sessions, clock=clock, console=True)
    with sessions() as s, s.begin():
        add_silence(s, run="quiet-run", duration="1h")
    with caplog.at_level(logging.INFO, logger="txwatch.alerts.console"):
        fire(sessions, alerting, severity="warning", rule_id="loss-diverging", symptom="Loss is diverging")
        fire(sessions, alerting, run="quiet-run")
    [record] = [r for r in caplog.records if r.name == "txwatch.alerts.console"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("[WARNING] search-ranking/bert-ft-42 step 412: Loss is diverging (loss-diverging)")


def test_a_broken_callback_falls_back_to_the_log(sessions, clock, caplog):
    def broken(text, payload):
        raise OSError("terminal closed")

    alerting = build_alerting(Settings(), sessions, clock=clock, console=broken)
    with caplog.at_level(logging.INFO, logger="txwatch.alerts"):
        fire(sessions, alerting)
        fire(sessions, alerting, run="r2")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("console alert callback failed (OSError: terminal closed)" in m for m in msgs) == 1
    assert sum(m.startswith("[CRITICAL]") for m in msgs) == 2
