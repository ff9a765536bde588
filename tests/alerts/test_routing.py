"""Routing: which channels (and mentions) a diagnosis goes to; bad routes are refused at start with the key named."""

from __future__ import annotations

import pytest

from txwatch.alerts import build_alerting
from txwatch.alerts.routing import Router, Target, normalize_mention
from txwatch.settings import Settings, SettingsError, load_settings


def view(severity="warning", project="search", run="r1", rule="loss-diverging", labels=None):
    return {"severity": severity, "project": project, "run": run, "rule": rule, "labels": labels or {}}


def router(routes, **kw):
    args = {"slack_mode": "token", "slack_channel": "#alerts", "routes": Settings(slack_token="xoxb-1234567", slack_routes=routes).slack_routes, "mention_critical": "@here"}
    args.update(kw)
    return Router(**args)


def test_first_matching_route_wins_unless_it_continues():
    r = router([
        {"severity": ["critical"], "channel": "#oncall", "continue": True},
        {"project": "search*", "rule": ["loss-*", "gradient-*"], "channel": "#search-ml"},
        {"project": "search*", "channel": "#search"},
        {"labels": {"team": "vision"}, "channel": "#vision"},
    ])
    assert r.route(view()) == [Target("slack", "#search-ml")]
    assert r.route(view(rule="slow-training")) == [Target("slack", "#search")]
    assert r.route(view(severity="critical", rule="slow-training")) == [
        Target("slack", "#oncall", "<!here>"), Target("slack", "#search", "<!here>")]
    assert r.route(view(project="vision", labels={"team": "vision"})) == [Target("slack", "#vision")]
    assert r.route(view(project="speech")) == [Target("slack", "#alerts")]  # no route: the default channel


def test_route_mention_overrides_the_global_one_for_critical_only():
    r = router([{"project": "vision", "channel": "#vision", "mention": "<!subteam^S0VIS>"}])
    assert r.route(view(project="vision", severity="critical")) == [Target("slack", "#vision", "<!subteam^S0VIS>")]
    assert r.route(view(project="vision", severity="warning")) == [Target("slack", "#vision", None)]


def test_other_sinks_and_webhook_mode():
    r = Router(slack_mode="webhook", slack_channel=None, routes=[], mention_critical=None, others=["webhook", "alertmanager"])
    assert r.route(view()) == [Target("slack", "webhook"), Target("webhook", "default"), Target("alertmanager", "default")]


@pytest.mark.parametrize("mention,expected", [("@here", "<!here>"), ("channel", "<!channel>"), ("<@U0123>", "<@U0123>"),
                                              ("", None), (None, None)])
def test_mentions(mention, expected):
    assert normalize_mention(mention) == expected


@pytest.mark.parametrize("routes,message", [
    ([{"severity": "critical"}], r"slack_routes\[0\]: 'channel' is required"),
    ([{"channel": "#a"}, {"channel": "#b", "severty": "critical"}], r"slack_routes\[1\]: unknown key\(s\) severty"),
    ([{"channel": "#a", "severity": "fatal"}], r"slack_routes\[0\].severity: 'fatal' is not one of info, warning, critical"),
    ([{"channel": "#a", "labels": ["team"]}], r"slack_routes\[0\].labels: expected a mapping"),
    ([{"channel": "#a", "project": 3}], r"slack_routes\[0\].project: expected a name or a list of names"),
    (["#a"], r"slack_routes\[0\]: expected a mapping"),
])
def test_bad_routes_are_settings_errors_naming_route_and_key(routes, message):
    with pytest.raises(SettingsError, match=rf"(?m)^  {message}"):
        load_settings(slack_token="xoxb-1234567", slack_routes=routes)


def test_a_bad_route_from_the_environment_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("TXWATCH_SLACK_ROUTES", '[{"channel": "#a", "severity": "fatal"}]')
    with pytest.raises(SettingsError, match=r"slack_routes\[0\].severity: 'fatal' is not one of"):
        load_settings(slack_token="xoxb-1234567")


def test_slack_settings_that_cannot_work_are_refused():
    with pytest.raises(SettingsError, match="(?m)^  TXWATCH_SLACK_TOKEN is set but no channel"):
        load_settings(slack_token="xoxb-1234567")
    with pytest.raises(SettingsError, match="(?m)^  slack_routes need a bot token"):
        load_settings(slack_webhook_url="http://127.0.0.1:9/services/a/b/cccccc", slack_routes=[{"channel": "#a"}])


def test_routes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TXWATCH_SLACK_TOKEN", "xoxb-1234567")
    monkeypatch.setenv("TXWATCH_SLACK_ROUTES", '[{"severity": "critical", "channel": "#oncall"}]')
    alerting = build_alerting(Settings(), None)
    assert alerting.outbox.router.route(view(severity="critical")) == [Target("slack", "#oncall")]


def test_urls_without_a_scheme_are_refused_without_echoing_them():
    with pytest.raises(SettingsError, match="(?m)^  slack_webhook_url: TXWATCH_SLACK_WEBHOOK_URL must be an http:// or "
                                           "https:// URL$") as err:
        load_settings(slack_webhook_url="hooks.slack.com/services/T/B/sekrit123")
    assert "sekrit123" not in str(err.value)
    with pytest.raises(SettingsError, match="(?m)^  alertmanager_url: TXWATCH_ALERTMANAGER_URL must be"):
        load_settings(alertmanager_url="alertmanager:9093")
    with pytest.raises(ValueError) as direct:  # built directly, the ValidationError does not echo it either
        Settings(webhook_url="hooks.example.com/sekrit123")
    assert "sekrit123" not in str(direct.value)
