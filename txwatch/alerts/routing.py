"""Which sinks and Slack channels a diagnosis goes to.

``slack_routes`` (``txwatch.settings.SlackRoute``, validated with the settings) are checked in order, like
Alertmanager's: each route's conditions must all match (``severity``, ``project``, ``run``, ``rule``: one value
or a list, shell-style globs allowed; ``labels``: a mapping that must be a subset of the diagnosis's labels). A
matching route sends to its ``channel`` and stops the search unless it says ``continue: true``. When no route
matches, the message goes to ``slack_channel``. A route's ``mention`` (e.g. ``@here``) replaces
``slack_mention_critical`` for critical diagnoses it sends. Every other configured sink gets one target each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txwatch.settings import SlackRoute

# Targets of the sinks that have exactly one destination.
SINGLE_TARGET = "default"
SLACK_WEBHOOK_TARGET = "webhook"


@dataclass(frozen=True)
class Target:
    """One destination for a notification: a sink and, for Slack, the channel."""

    sink: str
    target: str
    mention: str | None = None


def matches(route: SlackRoute, view: dict[str, Any]) -> bool:
    """Whether every condition of ``route`` holds for ``view`` (keys: severity, project, run, rule, labels)."""
    if route.severity and view["severity"] not in route.severity:
        return False
    for patterns, value in ((route.project, view["project"]), (route.run, view["run"]), (route.rule, view["rule"])):
        if patterns and not any(fnmatchcase(str(value), p) for p in patterns):
            return False
    labels = view.get("labels") or {}
    return all(str(labels.get(k)) == v for k, v in route.labels)


def normalize_mention(mention: str | None) -> str | None:
    """``@here``/``@channel``/``@everyone`` -> Slack's ``<!here>`` syntax; ``<@U123>`` and ``<!subteam^S1>`` kept."""
    if not mention or not mention.strip():
        return None
    m = mention.strip()
    if m.lower() in ("@here", "here", "@channel", "channel", "@everyone", "everyone"):
        return f"<!{m.lower().lstrip('@')}>"
    return m


class Router:
    """Decides the targets of one diagnosis from the enabled sinks and the Slack routes."""

    def __init__(
        self,
        *,
        slack_mode: str | None,  # "token", "webhook" or None
        slack_channel: str | None,
        routes: Sequence[SlackRoute],
        mention_critical: str | None,
        others: Sequence[str] = (),
    ):
        self.slack_mode = slack_mode
        self.slack_channel = slack_channel
        self.routes = tuple(routes)
        self.mention_critical = normalize_mention(mention_critical)
        self.others = tuple(others)  # sinks with one destination each (webhook, Alertmanager)

    def route(self, view: dict[str, Any]) -> list[Target]:
        """Targets for ``view`` (keys: severity, project, run, rule, labels), in a stable order."""
        targets: list[Target] = []
        critical = view["severity"] == "critical"
        if self.slack_mode == "webhook":
            targets.append(Target("slack", SLACK_WEBHOOK_TARGET, self.mention_critical if critical else None))
        elif self.slack_mode == "token":
            seen: dict[str, Target] = {}
            for r in self.routes:
                if matches(r, view):
                    mention = (normalize_mention(r.mention) or self.mention_critical) if critical else None
                    seen.setdefault(r.channel, Target("slack", r.channel, mention))
                    if not r.cont:
                        break
            if not seen and self.slack_channel:
                seen[self.slack_channel] = Target("slack", self.slack_channel, self.mention_critical if critical else None)
            targets.extend(seen.values())
        targets.extend(Target(name, SINGLE_TARGET) for name in self.others)
        return targets
