"""The rule engine: the symptom -> cause table as rules that diagnose runs.

Rules are YAML files (the built-in ones ship in ``txwatch/_builtin_rules``); conditions are written in a small
declarative language over a run's metric series (see docs/rules.md).
"""

from txwatch.rules.evaluator import Core, Transition
from txwatch.rules.engine import RuleEngine, build_engine
from txwatch.rules.errors import ConditionError, Problem, RuleError
from txwatch.rules.language import check as check_condition
from txwatch.rules.loader import builtin_dir, check_paths, load_rules
from txwatch.rules.model import Rule
from txwatch.rules.notify import NullNotifier, RecordingNotifier
from txwatch.rules.persistence import DiagnosisChange
from txwatch.rules.replay import Replayed, RunNotFound, replay

__all__ = [
    "ConditionError",
    "Core",
    "DiagnosisChange",
    "NullNotifier",
    "Problem",
    "RecordingNotifier",
    "Replayed",
    "Rule",
    "RuleEngine",
    "RuleError",
    "RunNotFound",
    "Transition",
    "build_engine",
    "builtin_dir",
    "check_condition",
    "check_paths",
    "load_rules",
    "replay",
]
