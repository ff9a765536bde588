"""Loading rule files: every problem names the file, the line (and in a condition, the column)."""

from __future__ import annotations

from pathlib import Path

import pytest

from txwatch.rules import RuleError, check_paths, load_rules
from txwatch.rules.model import Hold

GOOD = """\
id: loss-too-high
symptom: The loss is above 10
cause: Something is off.
fix:
  - Look at it.
severity: warning
condition: mean(loss, last=5) > 10
for: 20
resolve:
  condition: mean(loss, last=5) < 8
  for: 30s
labels:
  team: research
"""


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    _, problems = check_paths([path])
    return [f"{Path(p.file).name}:{p.line}: {p.message}" for p in problems]


def test_a_good_file_loads_with_everything_parsed(tmp_path):
    write(tmp_path, GOOD)
    rules = load_rules([tmp_path], builtin=False)
    assert len(rules) == 1
    r = rules[0]
    assert (r.id, r.severity, r.scope, r.labels) == ("loss-too-high", "warning", "run", {"team": "research"})
    assert r.hold == Hold(steps=20) and r.resolve_hold == Hold(seconds=30.0)
    assert r.resolve_condition == "mean(loss, last=5) < 8"
    assert r.fix == ["Look at it."] and r.line == 1 and r.source.endswith("mine.yaml") and not r.builtin


def test_builtin_rules_come_first_and_a_user_rule_with_the_same_id_replaces_one(tmp_path):
    write(tmp_path, GOOD.replace("loss-too-high", "loss-diverging"))
    rules = {r.id: r for r in load_rules([tmp_path])}
    assert len(rules) == len(load_rules([]))  # replaced, not added
    assert not rules["loss-diverging"].builtin and rules["loss-diverging"].condition == "mean(loss, last=5) > 10"
    assert rules["loss-nonfinite"].builtin


@pytest.mark.parametrize(
    "broken,expected",
    [
        (GOOD.replace("severity: warning", "severity: high"), "mine.yaml:6: severity: Input should be 'info', 'warning' or 'critical' (got 'high')"),
        (GOOD.replace("symptom: The loss is above 10\n", ""), "mine.yaml:1: symptom: missing (every rule needs symptom)"),
        (GOOD.replace("labels:", "lables:"), "mine.yaml:12: lables: unknown field; did you mean labels?"),
        (GOOD.replace("id: loss-too-high", "id: Loss Too High"), "mine.yaml:1: id: must be lowercase letters, digits and dashes, like loss-diverging"),
        (GOOD.replace("for: 20", "for: soon"), "mine.yaml:8: for: for must be a number of steps (20) or a duration (30s, 5m, 1h), got 'soon'"),
        (GOOD.replace("  - Look at it.", "  - Fix: look at it."), "mine.yaml:5: fix.0: must be text, but YAML read a mapping: put the sentence in quotes (it contains ': ')"),
        (GOOD.replace("condition: mean(loss, last=5) > 10", "condition: meen(loss, last=5) > 10"), "mine.yaml:7: condition, column 12: unknown function meen() (did you mean mean?)"),
        (GOOD.replace("  condition: mean(loss, last=5) < 8", '  condition: "mean(loss, last=5) < "'), "mine.yaml:10: resolve.condition, column 35: the condition ends too early: expected an expression"),
        (GOOD + "for: 3\n", "mine.yaml:14: for: given twice"),
        ("id: [unclosed\n", "mine.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
        ("", "mine.yaml:1: the file is empty: a rule file holds one rule (a mapping) or a list of them"),
        ("just text\n", "mine.yaml:1: a rule file holds one rule (a mapping with id, symptom, ...) or a list of them"),
    ],
)
def test_each_problem_names_file_line_and_what_is_wrong(tmp_path, broken, expected):
    assert expected in problems_of(tmp_path, broken)


def test_a_condition_error_in_a_folded_block_points_at_the_file_line_and_column(tmp_path):
    text = GOOD.replace(
        "condition: mean(loss, last=5) > 10",
        "condition: >\n  mean(loss, last=5) > 10\n  and max(grad_norm_total, lst=3) > 1",
    )
    assert problems_of(tmp_path, text) == [
        "mine.yaml:9: condition, column 28: unknown window lst= (windows: last=N steps or last=30s, points=N, "
        "first=N, shift=, prev=); did you mean last=?"
    ]


def test_load_rules_raises_one_error_listing_every_problem_of_every_file(tmp_path):
    write(tmp_path, GOOD.replace("severity: warning", "severity: loud"), "a.yaml")
    write(tmp_path, GOOD.replace("loss-too-high", "other").replace("> 10", "> "), "b.yaml")
    with pytest.raises(RuleError) as err:
        load_rules([tmp_path], builtin=False)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("a.yaml:6: severity: Input should be 'info', 'warning' or 'critical' (got 'loud')")
    assert "b.yaml:7: condition, column" in lines[1] and "ends too early" in lines[1]
    assert err.value.file.endswith("a.yaml") and err.value.line == 6


def test_two_user_rules_with_one_id_are_an_error_naming_both_places(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, "# same again\n" + GOOD, "b.yaml")
    with pytest.raises(RuleError, match=r"b.yaml:2: rule id 'loss-too-high' is already defined in .*a.yaml:1"):
        load_rules([tmp_path], builtin=False)


def test_a_file_may_hold_a_list_of_rules(tmp_path):
    second = GOOD.replace("loss-too-high", "loss-way-too-high").replace("> 10", "> 100")
    text = "- " + GOOD.replace("\n", "\n  ").rstrip() + "\n- " + second.replace("\n", "\n  ").rstrip() + "\n"
    write(tmp_path, text)
    assert [r.id for r in load_rules([tmp_path], builtin=False)] == ["loss-too-high", "loss-way-too-high"]


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(RuleError, match="rules folder .*nowhere does not exist"):
        load_rules([tmp_path / "nowhere"])


def test_scheduler_rules_may_not_wait_or_read_series(tmp_path):
    text = GOOD.replace("condition: mean(loss, last=5) > 10", "condition: idle_s() > 60 and last(loss) > 1")
    found = problems_of(tmp_path, text)
    assert any("mine.yaml:8: for: a rule that reads idle_s()" in p for p in found)
    assert any("mine.yaml:7: condition: a rule that reads idle_s() is checked by the scheduler" in p for p in found)


def test_a_reason_template_is_checked_like_a_condition(tmp_path):
    bad = GOOD + "reason: 'loss is {mean(loss, last=5)} in {layerz}'\n"
    assert problems_of(tmp_path, bad) == ["mine.yaml:14: reason: in {layerz}: layerz is a series: aggregate it, e.g. last(layerz) or mean(layerz, last=20)"]
    good = GOOD + "reason: 'loss is {mean(loss, last=5)} at step {step}'\n"
    assert problems_of(tmp_path, good) == []


def test_the_builtin_rules_folder_is_the_repository_rules_folder():
    from txwatch.rules import builtin_dir

    shipped = sorted(p.name for p in builtin_dir().glob("*.yaml"))
    repo = sorted(p.name for p in (Path(__file__).parents[2] / "rules").glob("*.yaml"))
    assert shipped == repo and len(shipped) == 22
