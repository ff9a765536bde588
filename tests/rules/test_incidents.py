"""Incidents: overlapping diagnoses of a run grouped, the root cause first by the documented causal order."""

from __future__ import annotations

from txwatch.rules.incidents import EXPLAINS, ORDER, Episode, group


def ep(rule: str, first: int, resolved: int | None = None, severity: str = "warning") -> Episode:
    return Episode(rule, severity, first, resolved)


def test_an_lr_blow_up_is_one_incident_led_by_the_learning_rate_with_the_rest_as_consequences():
    (incident,) = group([ep("gradient-explosion", 20, severity="critical"), ep("update-ratio-high", 16),
                         ep("loss-diverging", 25, severity="critical"), ep("dead-layer", 60)])
    assert incident.primary.rule == "update-ratio-high"
    assert [e.rule for e in incident.consequences] == ["gradient-explosion", "loss-diverging", "dead-layer"]
    assert incident.severity == "critical" and incident.open
    assert incident.note == "update-ratio-high explains dead-layer, gradient-explosion, loss-diverging"


def test_a_jump_in_the_learning_rate_explains_the_nan_that_follows():
    (incident,) = group([ep("loss-nonfinite", 157, severity="critical"), ep("lr-jump", 150, 250, "critical"),
                         ep("loss-diverging", 163, severity="critical")])
    assert incident.primary.rule == "lr-jump"


def test_no_warmup_leads_only_when_the_instability_stayed_in_the_first_steps():
    passed = group([ep("no-warmup", 8, 60), ep("loss-diverging", 13, 70), ep("update-ratio-high", 6, 40)])
    assert passed[0].primary.rule == "no-warmup" and "a warmup is the fix" in passed[0].note
    lasting = group([ep("no-warmup", 8), ep("loss-diverging", 13), ep("update-ratio-high", 6)])
    assert lasting[0].primary.rule == "update-ratio-high"  # the loss never came back: the LR is too high


def test_of_a_spike_and_a_climb_the_earlier_is_the_cause():
    spike_first = group([ep("loss-diverging", 110), ep("gradient-explosion", 104, severity="critical")])
    assert spike_first[0].primary.rule == "gradient-explosion"
    climb_first = group([ep("loss-diverging", 100), ep("gradient-explosion", 130, severity="critical")])
    assert climb_first[0].primary.rule == "loss-diverging"


def test_a_nan_with_nothing_before_it_points_at_the_data():
    (incident,) = group([ep("loss-nonfinite", 120, severity="critical")])
    assert incident.primary.rule == "loss-nonfinite" and "look at the inputs and the loss first" in incident.note


def test_episodes_apart_in_time_are_separate_incidents_and_info_is_not_an_incident():
    incidents = group([ep("update-ratio-high", 10, 40), ep("overfitting", 300), ep("slow-training", 5, 8, "info")])
    assert [(i.number, i.primary.rule, i.first_step) for i in incidents] == [(1, "update-ratio-high", 10),
                                                                              (2, "overfitting", 300)]
    assert incidents[0].as_dict()["state"] == "resolved" and incidents[0].as_dict()["resolved_step"] == 40
    joined = group([ep("update-ratio-high", 10, 40), ep("loss-diverging", 55)])  # within 20 steps of closing
    assert len(joined) == 1


def test_the_causal_order_names_every_built_in_rule():
    from txwatch.rules import load_rules

    ids = {r.id for r in load_rules([])}
    assert ids == set(EXPLAINS) == set(ORDER)
    assert all(set(effects) <= ids for effects in EXPLAINS.values())


def test_a_finding_open_since_before_the_cause_is_listed_as_concurrent_not_as_its_consequence():
    # a branch dead since step 5 is still open when the learning rate jumps at step 40: the jump cannot have
    # killed it (a cause does not come 35 steps after its effect), so the incident does not say it did
    (incident,) = group([ep("dead-layer", 5), ep("lr-jump", 40, severity="critical"),
                         ep("gradient-explosion", 41, severity="critical"), ep("loss-nonfinite", 44, severity="critical")])
    assert incident.primary.rule == "lr-jump"
    assert [e.rule for e in incident.consequences] == ["gradient-explosion", "loss-nonfinite"]
    assert [e.rule for e in incident.concurrent] == ["dead-layer"]
    d = incident.as_dict()
    assert [e["rule"] for e in d["consequences"]] == ["gradient-explosion", "loss-nonfinite"]
    assert [e["rule"] for e in d["concurrent"]] == ["dead-layer"]
