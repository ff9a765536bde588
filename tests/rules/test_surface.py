"""The package's public surface, and the docs that describe the built-in rules."""

from __future__ import annotations

from pathlib import Path

import txwatch.rules
from txwatch.rules import load_rules

DOCS = Path(__file__).parents[2] / "docs" / "rules.md"


def test_the_public_surface_is_pinned():
    assert sorted(txwatch.rules.__all__) == [
        "ConditionError", "Core", "DiagnosisChange", "NullNotifier", "Problem", "RecordingNotifier", "Replayed",
        "Rule", "RuleEngine", "RuleError", "RunNotFound", "Transition", "build_engine", "builtin_dir",
        "check_condition", "check_paths", "load_rules", "replay",
    ]
    for name in txwatch.rules.__all__:
        assert getattr(txwatch.rules, name) is not None


def test_the_docs_table_is_the_built_in_rules():
    text = DOCS.read_text()
    for rule in load_rules([]):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{rule.id}` | {rule.severity} |")), None)
        assert row is not None, f"docs/rules.md has no table row for {rule.id} ({rule.severity})"
        assert rule.symptom in row and rule.cause in row, rule.id
        assert all(step in row for step in rule.fix), rule.id
        assert f"| `{rule.id}` | fires when" not in text  # the second table has its own row per rule
        assert sum(1 for line in text.splitlines() if line.startswith(f"| `{rule.id}`")) == 2, rule.id


def test_every_construct_of_the_language_has_an_example_in_the_docs():
    from txwatch.rules.language import FUNCTIONS, WINDOW_KWARGS

    text = DOCS.read_text()
    for name in FUNCTIONS:
        assert f"{name}(" in text, name
    for kw in WINDOW_KWARGS:
        assert f"{kw}=" in text, kw
    for word in ("scope: layer", "reason:", "resolve:", "for:", "labels:", "and", "or", "not", "*weight", '"val-acc"'):
        assert word in text, word


def test_every_example_condition_in_the_docs_is_valid():
    import re

    from txwatch.rules import ConditionError, check_condition

    text = DOCS.read_text()
    spans = set(re.findall(r"`([^`\n]+)`", text)) | {
        m.strip() for m in re.findall(r"^condition: (.+)$", text, flags=re.M)
    }
    checked = 0
    for span in spans:
        if "(" not in span or any(c in span for c in "{}$|") or span.startswith(("txwatch", "torch", "monitor")):
            continue
        python = re.search(r"[A-Za-z_]\.[A-Za-z_]+\(", span)  # notifier.record(...): Python, not a condition
        signature = "..." in span or "[" in span or re.search(r"\((x|expr|test|a, b|status|name)?[,)]", span)
        if python or signature or " = " in span:  # " = ": a reason quoted from a diagnosis
            continue
        errors = []
        for kind in ("bool", "num"):
            for layer_scope in (False, True):
                try:
                    check_condition(span, want=kind, layer_scope=layer_scope)
                    break
                except ConditionError as exc:
                    errors.append(exc.message)
            else:
                continue
            break
        else:
            raise AssertionError(f"docs example `{span}` is not valid: {errors}")
        checked += 1
    assert checked >= 30
