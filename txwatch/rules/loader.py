"""Loading rule files: YAML (with line numbers kept), validated, conditions checked and compiled.

Every problem is reported with the file, the line (and for a condition, the column) and what is wrong, e.g.::

    rules/mine.yaml:7: condition, column 23: unknown function meen() (did you mean mean?)
    rules/mine.yaml:3: severity: must be one of info, warning, critical (got 'high')
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from txwatch.rules.errors import ConditionError, Problem, RuleError, display_path
from txwatch.rules.compiler import compile_condition
from txwatch.rules.language import check
from txwatch.rules.model import Hold, Rule, RuleSpec, TemplatePart, parse_hold

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "_builtin_rules"
RULE_SUFFIXES = (".yaml", ".yml")
TEMPLATE_PLACEHOLDERS = ("layer", "layers", "step")


def builtin_dir() -> Path:
    """The folder of built-in rules shipped with the package (the repository's top-level rules/)."""
    return BUILTIN_DIR


def load_rules(dirs: list[Path | str] | tuple[Path | str, ...] = (), builtin: bool = True) -> list[Rule]:
    """Load the built-in rules (unless ``builtin`` is false) and every rule file in ``dirs``.

    A folder contributes its ``*.yaml``/``*.yml`` files (sorted); a file path is loaded as is. A user rule
    with a built-in rule's id replaces it (tune a threshold by copying the file). Raises ``RuleError`` listing
    every problem found, each with the file and line.
    """
    problems: list[Problem] = []
    rules: dict[str, Rule] = {}
    if builtin:
        for rule in _load_many([builtin_dir()], problems, is_builtin=True):
            rules[rule.id] = rule
    user_seen: dict[str, Rule] = {}
    for rule in _load_many(list(dirs), problems, is_builtin=False):
        if rule.id in user_seen:
            first = user_seen[rule.id]
            problems.append(
                Problem(
                    f"rule id {rule.id!r} is already defined in {first.source}:{first.line}; ids must be unique",
                    rule.source,
                    rule.line,
                )
            )
            continue
        user_seen[rule.id] = rule
        rules[rule.id] = rule
    if problems:
        raise RuleError(problems)
    return list(rules.values())


def check_paths(paths: list[Path | str]) -> tuple[list[Rule], list[Problem]]:
    """Validate rule files/folders without raising: the rules that loaded and every problem found."""
    problems: list[Problem] = []
    rules = _load_many(list(paths), problems, is_builtin=False)
    seen: dict[str, Rule] = {}
    for r in rules:
        if r.id in seen:
            problems.append(
                Problem(f"rule id {r.id!r} is already defined in {seen[r.id].source}:{seen[r.id].line}", r.source, r.line)
            )
        seen[r.id] = r
    return rules, problems


def rule_files(paths: list[Path | str], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in RULE_SUFFIXES and f.is_file())
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(f"rules folder {p} does not exist", display_path(p)))
    return files


def _load_many(paths: list[Path | str], problems: list[Problem], is_builtin: bool) -> list[Rule]:
    rules: list[Rule] = []
    for f in rule_files(paths, problems):
        rules.extend(load_file(f, problems, is_builtin=is_builtin))
    return rules


def load_file(path: Path, problems: list[Problem] | None = None, is_builtin: bool = False) -> list[Rule]:
    """The rules in one file. Problems go to ``problems`` when given, else raise ``RuleError``."""
    own: list[Problem] = [] if problems is None else problems
    before = len(own)
    name = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        own.append(Problem(f"cannot read the file: {exc}", name))
        return _finish([], own, before, problems)
    rules = load_text(text, name, own, is_builtin=is_builtin)
    return _finish(rules, own, before, problems)


def _finish(rules: list[Rule], own: list[Problem], before: int, problems: list[Problem] | None) -> list[Rule]:
    if problems is None and len(own) > before:
        raise RuleError(own[before:])
    return rules


def load_text(text: str, name: str, problems: list[Problem], is_builtin: bool = False) -> list[Rule]:
    """Rules from YAML text; ``name`` is what problems call the file."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            problems.append(Problem("the file is empty: a rule file holds one rule (a mapping) or a list of them", name, 1))
            return []
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problems.append(Problem(f"not valid YAML: {exc.problem or exc}", name, line))
        return []
    except yaml.YAMLError as exc:
        problems.append(Problem(f"not valid YAML: {exc}", name))
        return []
    finally:
        loader.dispose()

    if isinstance(node, yaml.MappingNode):
        items = [(data, node)]
    elif isinstance(node, yaml.SequenceNode):
        items = list(zip(data, node.value))
    else:
        problems.append(
            Problem("a rule file holds one rule (a mapping with id, symptom, ...) or a list of them", name, node.start_mark.line + 1)
        )
        return []

    rules: list[Rule] = []
    for item, item_node in items:
        rule = _build(item, item_node, name, problems, is_builtin)
        if rule is not None:
            rules.append(rule)
    return rules


def _key_lines(node: yaml.Node, name: str, problems: list[Problem]) -> tuple[dict[tuple, int], dict[tuple, yaml.Node]]:
    """Line of every key (by path) and the value nodes, and duplicate keys reported."""
    lines: dict[tuple, int] = {(): node.start_mark.line + 1}
    nodes: dict[tuple, yaml.Node] = {(): node}

    def visit(n: yaml.Node, path: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                if key in seen:
                    problems.append(Problem(f"{'.'.join(map(str, path + (key,)))}: given twice", name, k.start_mark.line + 1))
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                nodes[path + (key,)] = v
                visit(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[path + (i,)] = v.start_mark.line + 1
                nodes[path + (i,)] = v
                visit(v, path + (i,))

    visit(node, ())
    return lines, nodes


def _line_for(lines: dict[tuple, int], loc: tuple) -> int:
    path = tuple("for" if p == "for_" else p for p in loc)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, lines[()])


def _build(item: Any, node: yaml.Node, name: str, problems: list[Problem], is_builtin: bool) -> Rule | None:
    first_line = node.start_mark.line + 1
    if not isinstance(item, dict):
        problems.append(Problem("each rule must be a mapping with id, symptom, cause, fix, severity, condition", name, first_line))
        return None
    lines, nodes = _key_lines(node, name, problems)
    try:
        spec = RuleSpec.model_validate(item)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join("for" if p == "for_" else str(p) for p in loc) or "rule"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg, line = f"missing (every rule needs {where})", _line_for(lines, loc[:-1])
            elif err["type"] == "extra_forbidden":
                msg, line = _unknown_field_message(loc[-1]), _line_for(lines, loc)
            elif err["type"] == "literal_error":
                line = _line_for(lines, loc)
                msg = f"{msg} (got {err.get('input')!r})"
            elif err["type"] == "string_type" and isinstance(err.get("input"), dict):
                line = _line_for(lines, loc)
                msg = "must be text, but YAML read a mapping: put the sentence in quotes (it contains ': ')"
            elif err["type"] == "string_pattern_mismatch" and loc == ("id",):
                line = _line_for(lines, loc)
                msg = "must be lowercase letters, digits and dashes, like loss-diverging"
            else:
                line = _line_for(lines, loc)
            problems.append(Problem(f"{where}: {msg}", name, line))
        return None

    rule_problems_before = len(problems)

    def cond(field_path: tuple, text: str, layer_scope: bool, want: str = "bool"):
        try:
            checked = check(text, layer_scope=layer_scope, want=want)  # type: ignore[arg-type]
            return compile_condition(checked)
        except ConditionError as err:
            line, col = _condition_position(nodes.get(field_path), text, err)
            label = ".".join(field_path)
            problems.append(Problem(f"{label}, column {col}: {err.message}", name, line or _line_for(lines, field_path)))
            return None

    layer_scope = spec.scope == "layer"
    program = cond(("condition",), spec.condition, layer_scope)
    resolve_program = None
    if spec.resolve is not None and spec.resolve.condition is not None:
        resolve_program = cond(("resolve", "condition"), spec.resolve.condition, layer_scope)
    hold = parse_hold(spec.for_, "for")
    resolve_hold = parse_hold(spec.resolve.for_, "resolve for") if spec.resolve and spec.resolve.for_ is not None else None
    if resolve_hold is None:
        resolve_hold = hold if not hold.zero else Hold(steps=1)
    template = _template(spec.reason, layer_scope, name, _line_for(lines, ("reason",)), problems) if spec.reason else []

    if program is not None:
        if program.checked.time_based:
            if not hold.zero:
                problems.append(
                    Problem(
                        "for: a rule that reads idle_s() is checked by the scheduler and fires as soon as its "
                        "condition holds; put the duration in the condition (idle_s() > 600) and remove for:",
                        name,
                        _line_for(lines, ("for",)),
                    )
                )
            if layer_scope:
                problems.append(Problem("scope: a rule that reads idle_s() cannot be per layer", name, _line_for(lines, ("scope",))))
            if program.checked.series:
                problems.append(
                    Problem(
                        "condition: a rule that reads idle_s() is checked by the scheduler without the run's series; "
                        "it cannot also read series (split it into two rules)",
                        name,
                        _line_for(lines, ("condition",)),
                    )
                )
    if len(problems) > rule_problems_before or program is None:
        return None
    return Rule(
        id=spec.id,
        symptom=spec.symptom.strip(),
        cause=" ".join(spec.cause.split()),
        fix=[" ".join(s.split()) for s in spec.fix],
        severity=spec.severity,
        condition=" ".join(spec.condition.split()),
        hold=hold,
        resolve_condition=" ".join(spec.resolve.condition.split()) if spec.resolve and spec.resolve.condition else None,
        resolve_hold=resolve_hold,
        scope=spec.scope,
        labels=dict(spec.labels),
        reason_template=spec.reason,
        program=program,
        resolve_program=resolve_program,
        template=template,
        source=name,
        line=first_line,
        builtin=is_builtin,
    )


_KNOWN_FIELDS = ("id", "symptom", "cause", "fix", "severity", "condition", "for", "resolve", "scope", "labels", "reason")


def _unknown_field_message(key: Any) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), _KNOWN_FIELDS, n=1, cutoff=0.7)
    hint = f"; did you mean {close[0]}?" if close else f"; a rule has {', '.join(_KNOWN_FIELDS)}"
    return f"unknown field{hint}"


def _template(text: str, layer_scope: bool, name: str, line: int, problems: list[Problem]) -> list[TemplatePart]:
    parts: list[TemplatePart] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        problems.append(Problem(f"reason: {exc} (write {{{{ and }}}} for literal braces)", name, line))
        return []
    for literal, field_text, spec, conv in parsed:
        if literal:
            parts.append(TemplatePart(literal))
        if field_text is None:
            continue
        # a format spec or conversion would be part of the expression (e.g. "a:b" series names): re-join them
        expr = field_text + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
        if expr.strip() in TEMPLATE_PLACEHOLDERS:
            parts.append(TemplatePart("", placeholder=expr.strip()))
            continue
        try:
            checked = check(expr, layer_scope=layer_scope, want="num")
            parts.append(TemplatePart(expr, program=compile_condition(checked)))
        except ConditionError as err:
            problems.append(Problem(f"reason: in {{{expr}}}: {err.message}", name, line))
    return parts


def _condition_position(node: yaml.Node | None, text: str, err: ConditionError) -> tuple[int | None, int]:
    """File line and column of a position inside a condition scalar."""
    lines = text.split("\n")
    offset = sum(len(line) + 1 for line in lines[: err.line - 1]) + err.column - 1
    if not isinstance(node, yaml.ScalarNode):
        return None, err.column
    segments = _segments(node)
    if not segments:
        return node.start_mark.line + 1, err.column
    pos = 0
    for file_line, file_col, length in segments:
        if offset <= pos + length:
            return file_line, file_col + (offset - pos)
        pos += length + 1
    file_line, file_col, length = segments[-1]
    return file_line, file_col + length


def _segments(node: yaml.ScalarNode) -> list[tuple[int, int, int]]:
    """(file line 1-based, file column 1-based, length) of each source line making up the scalar's value."""
    buf = node.start_mark.buffer
    if buf is None:
        return []
    src_lines = buf.rstrip("\0").split("\n")
    start, end = node.start_mark, node.end_mark
    out: list[tuple[int, int, int]] = []
    if node.style in ("|", ">"):
        for ln in range(start.line + 1, min(end.line + 1, len(src_lines))):
            raw = src_lines[ln]
            if not raw.strip():
                continue
            indent = len(raw) - len(raw.lstrip(" "))
            out.append((ln + 1, indent + 1, len(raw.strip())))
        return out
    quote = 1 if node.style in ("'", '"') else 0
    for ln in range(start.line, min(end.line, len(src_lines) - 1) + 1):
        raw = src_lines[ln]
        if ln == start.line:
            col = start.column + quote
            seg = raw[col:]
        else:
            seg = raw.lstrip(" ")
            col = len(raw) - len(seg)
        if ln == end.line:
            seg = seg[: max(0, end.column - quote - col)] if ln == start.line else seg[: max(0, end.column - quote - col)]
        seg = seg.rstrip()
        out.append((ln + 1, col + 1, len(seg)))
    return out
