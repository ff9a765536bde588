"""Silences: parsing, matching, and the HTTP API (a real server)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.alerts.conftest import T0
from txwatch.alerts.silences import (
    SilenceError,
    add_silence,
    list_silences,
    matching_silence,
    parse_duration,
    remove_silence,
)

AUTH = {"Authorization": "Bearer api-token-123"}


@pytest.mark.parametrize("text,seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("1d", 86400), ("45s", 45),
                                          ("1w", 604800), ("600", 600), (120, 120), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text,message", [
    ("2 hours", "not understood: use a number and a unit"),
    ("h", "not understood"),
    ("0m", "must be longer than zero"),
    ("100d", "longer than the limit of 90 days"),
])
def test_bad_durations_say_what_is_accepted(text, message):
    with pytest.raises(SilenceError, match=message):
        parse_duration(text)


def test_silences_match_what_they_name_until_they_end(sessions):
    with sessions() as s, s.begin():
        run_rule = add_silence(s, run="search/bert-42", rule="loss-diverging", duration="2h", now=T0)
        project = add_silence(s, project="vision", duration="30m", now=T0)

    def match(project_, run, rule, after_s=0):
        with sessions() as s:
            found = matching_silence(s, project=project_, run=run, rule=rule, now=T0 + timedelta(seconds=after_s))
            return found.id if found else None

    assert match("search", "bert-42", "loss-diverging") == run_rule.id
    assert match("search", "bert-42", "gradient-explosion") is None
    assert match("other", "bert-42", "loss-diverging") is None
    assert match("vision", "anything", "any-rule") == project.id
    assert match("vision", "anything", "any-rule", after_s=1801) is None
    assert match("search", "bert-42", "loss-diverging", after_s=7201) is None
    with sessions() as s:
        assert [x.id for x in list_silences(s, now=T0 + timedelta(hours=1))] == [run_rule.id]
        assert len(list_silences(s, include_expired=True, now=T0 + timedelta(hours=1))) == 2
    with sessions() as s, s.begin():
        assert remove_silence(s, run_rule.id) is True
        assert remove_silence(s, run_rule.id) is False


@pytest.mark.parametrize("kwargs,message", [
    ({"duration": "1h"}, "say what to silence"),
    ({"run": "a/b", "project": "c", "duration": "1h"}, "names project 'a' but --project is 'c'"),
    ({"run": "bad name", "duration": "1h"}, "run 'bad name' is not a valid name"),
    ({"run": "r", "rule": "no spaces please", "duration": "1h"}, "is not a rule id"),
])
def test_bad_silences_name_the_problem(sessions, kwargs, message):
    with sessions() as s, pytest.raises(SilenceError, match=message):
        add_silence(s, **kwargs)


def test_silences_over_http(api_server):
    with httpx.Client(base_url=api_server, headers=AUTH, timeout=10) as http:
        created = http.post("/api/v1/silences", json={"run": "search/bert-42", "rule": "loss-diverging", "duration": "2h",
                                                      "comment": "known, fixing the LR", "created_by": "ana"})
        assert created.status_code == 201
        body = created.json()
        assert {k: body[k] for k in ("project", "run", "rule", "active", "comment", "created_by")} == {
            "project": "search", "run": "bert-42", "rule": "loss-diverging", "active": True,
            "comment": "known, fixing the LR", "created_by": "ana"}
        listed = http.get("/api/v1/silences").json()["silences"]
        assert [x["id"] for x in listed] == [body["id"]]

        bad = http.post("/api/v1/silences", json={"run": "r", "duration": "forever"})
        assert bad.status_code == 422 and "duration 'forever' not understood" in bad.json()["detail"]
        extra = http.post("/api/v1/silences", json={"run": "r", "duration": "1h", "until": "tomorrow"})
        assert extra.status_code == 422 and "until" in extra.text

        assert http.delete(f"/api/v1/silences/{body['id']}").json() == {"removed": body["id"]}
        missing = http.delete(f"/api/v1/silences/{body['id']}")
        assert missing.status_code == 404 and missing.json()["detail"] == f"no silence with id {body['id']}"
        assert http.get("/api/v1/silences").json() == {"silences": []}

    # Every route needs the token.
    assert httpx.get(f"{api_server}/api/v1/silences").status_code == 401
    assert httpx.post(f"{api_server}/api/v1/silences", json={"run": "r", "duration": "1h"}).status_code == 401
    assert httpx.delete(f"{api_server}/api/v1/silences/1", headers={"Authorization": "Bearer wrong"}).status_code == 401
