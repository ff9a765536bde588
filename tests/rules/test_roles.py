"""Gradient and update rules judge the right parameters: the roles the hooks send in run_info."""

from __future__ import annotations

import pytest

from txwatch.rules.errors import ConditionError
from txwatch.rules.language import check
from tests.rules.synth import curve, points, run_rules


def param(name: str, kind: str, group: int | None = 0, requires_grad: bool = True) -> dict:
    return {"name": name, "kind": kind, "group": group, "requires_grad": requires_grad, "shape": [4, 4], "numel": 16}


def info(params: list[dict], groups: int = 1) -> dict:
    return {"params": params, "param_groups": [{"index": g, "optimizer": 0, "optimizer_group": g} for g in range(groups)]}


def flat(value: float, n: int = 40, seed: int = 0) -> list:
    return points(curve(n, lambda s: value, 0.1, seed=seed), every=10)


def test_vanishing_fires_when_gradients_shrink_layer_by_layer_toward_the_input():
    names = [f"layers.{i}.weight" for i in range(6)]
    series = {f"grad_norm/{n}": flat(10.0 ** (i - 6), seed=i) for i, n in enumerate(names)}  # 1e-6 ... 0.1
    fire = run_rules(series, info=info([param(n, "weight") for n in names])).first_fire("vanishing-gradients")
    assert fire is not None
    assert fire.evidence["layers"][:2] == ["layers.0.weight", "layers.1.weight"]  # in model order
    assert "shrink toward the input" in fire.reason


def test_vanishing_near_miss_small_projections_at_every_depth_among_normal_layers():
    # a transformer at a 0.02 init: each block's query and key projections get tiny gradients, the rest do not
    params, series = [], {}
    for b in range(3):
        for j, (part, size) in enumerate((("query", 3e-6), ("key", 4e-6), ("value", 1e-3), ("dense", 1e-3))):
            name = f"blocks.{b}.{part}.weight"
            params.append(param(name, "weight"))
            series[f"grad_norm/{name}"] = flat(size, seed=10 * b + j)
    params.append(param("head.weight", "weight"))
    series["grad_norm/head.weight"] = flat(0.2)
    result = run_rules(series, info=info(params))
    assert "vanishing-gradients" not in result.ids()
    assert "gradient-imbalance" not in result.ids()  # 2.5 orders below the typical layer: not imbalance


def test_biases_and_norm_scales_are_not_compared_with_weight_matrices():
    params = [param(f"fc{i}.weight", "weight") for i in range(4)] + [param("fc0.bias", "bias"), param("ln.weight", "norm")]
    series = {f"grad_norm/fc{i}.weight": flat(0.5, seed=i) for i in range(4)}
    series["grad_norm/fc0.bias"] = flat(1e-7)  # a bias whose gradient is structurally near zero
    series["grad_norm/ln.weight"] = flat(1e-6)
    assert "gradient-imbalance" not in run_rules(series, info=info(params)).ids()
    without_roles = run_rules(series)  # without roles every layer is judged, as before roles existed
    assert "gradient-imbalance" in without_roles.ids()


def test_frozen_parameters_and_an_lr0_group_are_left_out_of_dead_layer():
    params = [param("backbone.weight", "weight", requires_grad=False), param("pos.weight", "embedding", group=1),
              param("head.weight", "weight")]
    series = {
        "grad_norm/backbone.weight": flat(0.0),
        "grad_norm/pos.weight": flat(0.0),
        "grad_norm/head.weight": flat(0.3),
        "lr/0": flat(1e-3),
        "lr/1": flat(0.0),
    }
    assert "dead-layer" not in run_rules(series, info=info(params, groups=2)).ids()
    # a group warming up from 0 trains as soon as its rate rises: its dead layer is reported
    series["lr/1"] = points([0.0] + [1e-3] * 39, every=10)
    fire = run_rules(series, info=info(params, groups=2)).first_fire("dead-layer")
    assert fire is not None and fire.evidence["layers"] == ["pos.weight"]


def test_the_update_ratio_rules_read_weight_matrices_of_any_name():
    params = [param(f"blocks.{i}.proj", "weight") for i in range(4)] + [param("blocks.0.scale", "norm")]
    series = {f"update_ratio/blocks.{i}.proj": points([0.2] * 40) for i in range(4)}
    series["update_ratio/blocks.0.scale"] = points([1e-4] * 40)
    fire = run_rules(series, info=info(params)).first_fire("update-ratio-high")
    assert fire is not None


def test_kind_is_checked_when_a_rule_is_loaded():
    check('any_layer(max(grad_norm/*, points=5) == 0, kind="weight,bias")')
    with pytest.raises(ConditionError, match="kind= takes"):
        check('any_layer(max(grad_norm/*, points=5) == 0, kind="matrix")')
    with pytest.raises(ConditionError, match="takes kind="):
        check('any_layer(max(grad_norm/*, points=5) == 0, role="weight")')


def test_the_update_ratio_rules_suggest_a_learning_rate_from_the_run_s_own_figures():
    params = [param(f"blocks.{i}.proj", "weight") for i in range(4)]
    high = {f"update_ratio/blocks.{i}.proj": points([0.2] * 40) for i in range(4)}
    high["lr/0"] = points([0.05] * 40)
    fire = run_rules(high, info=info(params)).first_fire("update-ratio-high")
    assert "at the current learning rate of 0.05, about 0.005 would bring it near 1e-3" in fire.reason  # 10x, capped
    low = {f"update_ratio/blocks.{i}.proj": points([2e-6] * 200) for i in range(4)}
    low["lr/0"] = points([1e-6] * 200)
    fire = run_rules(low, info=info(params)).first_fire("update-ratio-low")
    assert "about 1e-05 would bring the ratio near 1e-3" in fire.reason  # 500x would do it: capped at 10x
    stopped = dict(low, **{"lr/0": points([1e-3] * 100 + [0.0] * 100)})
    fire = run_rules(stopped, info=info(params)).first_fire("update-ratio-low")
    assert "against a peak of 0.001" in fire.reason and "would bring" not in fire.reason  # nothing to scale at 0
