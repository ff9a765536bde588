"""Which sinks and Slack channels a diagnosis goes to.

``slack_routes`` is a list of routes checked in order, like Alertmanager's: each route's conditions must all
match (``severity``, ``project``, ``run``, ``rule``: one value or a list, shell-style globs allowed; ``labels``:
a mapping that must be a subset of the diagnosis's labels). A matching route sends to its ``channel`` and stops
the search unless it says ``continue: true``. When no route matches, the message goes to ``slack_channel``.
A route's ``mention`` (e.g. ``@here``) replaces ``slack_mention_critical`` for critical diagnoses it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from txwatch.alerts.errors import AlertConfigError

SEVERITIES = ("info", "warning", "critical")
ROUTE_KEYS = {"channel", "severity", "project", "run", "rule", "labels", "mention", "continue"}
# Targets of the sinks that have exactly one destination.
SINGLE_TARGET = "default"
SLACK_WEBHOOK_TARGET = "webhook"


@dataclass(frozen=True)
class Target:
    """One destination for a notification: a sink and, for Slack, the channel."""

    sink: str
    target: str
    mention: str | None = None


@dataclass(frozen=True)
class Route:
    channel: str
    severity: tuple[str, ...] = ()
    project: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    rule: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    mention: str | None = None
    cont: bool = False

    def matches(self, view: dict[str, Any]) -> bool:
        if self.severity and view["severity"] not in self.severity:
            return False
        for patterns, value in ((self.project, view["project"]), (self.run, view["run"]), (self.rule, view["rule"])):
            if patterns and not any(fnmatchcase(str(value), p) for p in patterns):
                return False
        labels = view.get("labels") or {}
        return all(str(labels.get(k)) == v for k, v in self.labels) if self.labels else True


def normalize_mention(mention: str | None) -> str | None:
    """``@here``/``@channel``/``@everyone`` -> Slack's ``<!here>`` syntax; ``<@U123>`` and ``<!subteam^S1>`` kept."""
    if not mention or not mention.strip():
        return None
    m = mention.strip()
    if m.lower() in ("@here", "here", "@channel", "channel", "@everyone", "everyone"):
        return f"<!{m.lower().lstrip('@')}>"
    return m


def _strings(route_no: int, key: str, value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise AlertConfigError(
            f"slack_routes[{route_no}].{key}: expected a name or a list of names, got {value!r}"
        )
    return tuple(values)


def parse_routes(raw: list[dict[str, Any]]) -> list[Route]:
    """Validate ``settings.slack_routes``; raises ``AlertConfigError`` naming the route and the key."""
    routes = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise AlertConfigError(f"slack_routes[{i}]: expected a mapping like {{severity: critical, channel: '#oncall'}}")
        unknown = set(entry) - ROUTE_KEYS
        if unknown:
            raise AlertConfigError(
                f"slack_routes[{i}]: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(ROUTE_KEYS))}"
            )
        channel = entry.get("channel")
        if not isinstance(channel, str) or not channel.strip():
            raise AlertConfigError(f"slack_routes[{i}]: 'channel' is required (a channel ID like C0123ABC or #name)")
        severity = _strings(i, "severity", entry["severity"]) if "severity" in entry else ()
        bad = [s for s in severity if s not in SEVERITIES]
        if bad:
            raise AlertConfigError(f"slack_routes[{i}].severity: {bad[0]!r} is not one of {', '.join(SEVERITIES)}")
        labels = entry.get("labels") or {}
        if not isinstance(labels, dict):
            raise AlertConfigError(f"slack_routes[{i}].labels: expected a mapping like {{team: nlp}}")
        cont = entry.get("continue", False)
        if not isinstance(cont, bool):
            raise AlertConfigError(f"slack_routes[{i}].continue: expected true or false")
        routes.append(Route(
            channel=channel.strip(),
            severity=severity,
            project=_strings(i, "project", entry["project"]) if "project" in entry else (),
            run=_strings(i, "run", entry["run"]) if "run" in entry else (),
            rule=_strings(i, "rule", entry["rule"]) if "rule" in entry else (),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            mention=normalize_mention(entry.get("mention")),
            cont=cont,
        ))
    return routes


class Router:
    """Decides the targets of one diagnosis from the enabled sinks and the Slack routes."""

    def __init__(
        self,
        *,
        slack_mode: str | None,  # "token", "webhook" or None
        slack_channel: str | None,
        routes: list[Route],
        mention_critical: str | None,
        webhook: bool,
        alertmanager: bool,
    ):
        self.slack_mode = slack_mode
        self.slack_channel = slack_channel
        self.routes = routes
        self.mention_critical = normalize_mention(mention_critical)
        self.webhook = webhook
        self.alertmanager = alertmanager

    def route(self, view: dict[str, Any]) -> list[Target]:
        """Targets for ``view`` (keys: severity, project, run, rule, labels), in a stable order."""
        targets: list[Target] = []
        critical = view["severity"] == "critical"
        if self.slack_mode == "webhook":
            targets.append(Target("slack", SLACK_WEBHOOK_TARGET, self.mention_critical if critical else None))
        elif self.slack_mode == "token":
            seen: dict[str, Target] = {}
            for r in self.routes:
                if r.matches(view):
                    mention = (r.mention or self.mention_critical) if critical else None
                    seen.setdefault(r.channel, Target("slack", r.channel, mention))
                    if not r.cont:
                        break
            if not seen and self.slack_channel:
                seen[self.slack_channel] = Target("slack", self.slack_channel, self.mention_critical if critical else None)
            targets.extend(seen.values())
        if self.webhook:
            targets.append(Target("webhook", SINGLE_TARGET))
        if self.alertmanager:
            targets.append(Target("alertmanager", SINGLE_TARGET))
        return targets
