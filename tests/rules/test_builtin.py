"""Each built-in rule on synthetic series: it fires on the symptom, and stays quiet on a near miss."""

from __future__ import annotations

import math
import random

import pytest

from tests.rules.synth import T0, at, curve, points, run_rules
from txwatch.rules import load_rules
from txwatch.rules.detection import detect
from txwatch.rules.engine import _Facts
from txwatch.rules.compiler import RunFacts

BUILTIN_IDS = {
    "out-of-memory", "memory-pressure", "loss-nonfinite", "loss-diverging", "loss-not-decreasing",
    "loss-oscillating", "gradient-explosion", "vanishing-gradients", "dead-layer", "gradient-imbalance",
    "update-ratio-high", "update-ratio-low", "slow-training", "overfitting", "no-warmup", "run-stalled",
    "run-crashed", "fp16-overflow", "lr-jump", "preflight-failed", "preflight-warned", "unscaled-inputs",
}


def test_the_built_in_rules_are_exactly_the_documented_ids_each_with_cause_and_fix():
    rules = {r.id: r for r in load_rules([])}
    assert set(rules) == BUILTIN_IDS
    for r in rules.values():
        assert r.builtin and r.cause and r.fix and r.symptom
        assert r.severity in ("info", "warning", "critical")


# ------------------------------------------------------------ loss


def _falling(n: int, noise: float = 0.05, seed: int = 0) -> list[float]:
    return curve(n, lambda s: 2.0 * math.exp(-s / 50) + 0.3, noise, seed)


def test_loss_nonfinite_fires_at_the_first_nan_and_resolves_once_the_loss_is_finite_again():
    values = _falling(100)
    values[49] = math.nan
    result = run_rules({"loss": points(values)})
    fire = result.first_fire("loss-nonfinite")
    assert fire is not None and fire.step == 50
    assert "NaN" in fire.reason and "step 50" in fire.reason
    assert result.kinds("loss-nonfinite") == ["fire", "resolve"]


def test_loss_nonfinite_fires_on_infinity_but_not_on_a_huge_finite_loss():
    inf = _falling(60)
    inf[30] = math.inf
    assert run_rules({"loss": points(inf)}).first_fire("loss-nonfinite").step == 31
    huge = _falling(60)
    huge[30] = 1e30
    assert "loss-nonfinite" not in run_rules({"loss": points(huge)}).ids()


def _diverging(peak: float) -> list[float]:
    def f(s: int) -> float:
        base = 2.0 * math.exp(-s / 40) + 0.3
        return base if s <= 150 else base + (peak - 0.3) * min(1.0, (s - 150) / 50)

    return curve(250, f, 0.05)


def test_loss_diverging_fires_when_the_smoothed_loss_climbs_far_above_its_best():
    fire = run_rules({"loss": points(_diverging(peak=1.6))}).first_fire("loss-diverging")
    assert fire is not None and 150 < fire.step <= 200
    assert fire.rule.severity == "critical"
    assert "more than twice its best" in fire.reason
    assert fire.evidence["values"]["median(loss, last=10)"] > 1.2


def test_loss_diverging_near_miss_a_rise_below_twice_the_best_is_not_divergence():
    assert "loss-diverging" not in run_rules({"loss": points(_diverging(peak=0.75))}).ids()


def _diverging_from_the_start(peak: float) -> list[float]:
    """A learning rate far too high from step 1: the loss leaves its initial 4.2 at once, climbs to ``peak``
    times that within a few steps, then sinks back to the start over 100 steps without learning anything."""
    def f(s: int) -> float:
        rise = min(1.0, (s - 1) / 5)
        fall = max(0.0, min(1.0, (s - 20) / 100))
        return 4.2 * (1 + (peak - 1) * rise * (1 - fall))

    return curve(200, f, 0.1, seed=3)


def test_loss_diverging_near_miss_a_long_run_of_tiny_noisy_batches():
    """Batches of 4 for 1500 steps: each step's loss jumps around its level by about 40% (the corpus's noisy
    small-batch MLP). Somewhere a lucky stretch of 10 steps sits far under the level; twice that is ordinary
    noise, not divergence. (At 50% noise the 10-step median itself reaches twice the level: a detector that
    knows the series' own noise is issue 14's.)"""
    rng = random.Random(3)
    loss = [1.4] + [(1.4 - 0.6 * min(s, 1000) / 1000) * rng.lognormvariate(0, 0.4) for s in range(2, 1501)]
    assert "loss-diverging" not in run_rules({"loss": points(loss)}).ids()


def test_loss_diverging_fires_on_a_run_that_diverges_from_its_first_steps_and_resolves_back_at_its_start():
    # there is no smoothed best yet when the rise starts: the first loss is the baseline
    result = run_rules({"loss": points(_diverging_from_the_start(peak=5.0))})
    fire = result.first_fire("loss-diverging")
    assert fire is not None and fire.step <= 15, fire
    assert "it started at 4." in fire.reason
    episode = [(t.kind, t.step) for t in result.transitions if t.rule.id == "loss-diverging" and t.kind != "update"]
    assert [k for k, _ in episode] == ["pending", "fire", "resolve"], episode  # one episode, no flapping
    assert episode[-1][1] > 100  # not while the loss is still far above where it started, as it sinks back


def test_loss_diverging_near_miss_an_early_rise_below_three_times_the_first_loss_is_not_divergence():
    assert "loss-diverging" not in run_rules({"loss": points(_diverging_from_the_start(peak=2.5))}).ids()


def test_loss_diverging_a_flat_noisy_loss_after_a_lucky_first_batch_is_not_divergence():
    # fine-tuning a pretrained model on small batches: the loss barely moves and the first batch happened to
    # be easy (40% of the typical loss); a noisy start is not a divergence
    values = curve(300, lambda s: 1.0, 0.25, seed=5)
    values[0] = 0.4
    assert "loss-diverging" not in run_rules({"loss": points(values)}).ids()


def test_loss_not_decreasing_fires_after_warmup_when_the_loss_stays_at_its_start():
    n = 400
    result = run_rules({"loss": points(curve(n, lambda s: 2.3, 0.03)), "lr/0": points([1e-6] * n)})
    fire = result.first_fire("loss-not-decreasing")
    assert fire is not None and 250 <= fire.step <= 300
    assert "against 2.288 in its first 20 steps" in fire.reason
    assert "validation" not in fire.reason  # no validation set: the reason says nothing of it, not "no data"


def test_loss_not_decreasing_fires_at_chance_level_when_validation_never_improves():
    n = 400
    creeping = curve(n, lambda s: 1.386 * (1 - 0.08 * s / n), 0.03)  # memorizing shuffled labels, 8% in 400 steps
    val = at(range(50, n + 1, 50), lambda s: 1.374 + 0.0002 * s)  # at chance and creeping up
    fire = run_rules({"loss": points(creeping), "val_loss": val, "lr/0": points([1e-3] * n)}).first_fire(
        "loss-not-decreasing")
    assert fire is not None and fire.step == 250
    assert "the validation loss's best, 1.384, is no better than its first evaluation, 1.384" in fire.reason
    learning_val = at(range(50, n + 1, 50), lambda s: 1.374 - 0.001 * s)  # the same run generalizing
    assert "loss-not-decreasing" not in run_rules({"loss": points(creeping), "val_loss": learning_val,
                                                  "lr/0": points([1e-3] * n)}).ids()


def test_loss_not_decreasing_near_misses_a_slow_but_real_decrease_and_a_long_warmup():
    n = 400
    slow = curve(n, lambda s: 2.3 * (1 - 0.15 * s / n), 0.03)
    assert "loss-not-decreasing" not in run_rules({"loss": points(slow), "lr/0": points([1e-4] * n)}).ids()
    flat = curve(n, lambda s: 2.3, 0.03)
    warming = [1e-4 * s / 1000 for s in range(1, n + 1)]  # still ramping up: judge it later
    assert "loss-not-decreasing" not in run_rules({"loss": points(flat), "lr/0": points(warming)}).ids()


def test_loss_oscillating_fires_when_the_smoothed_loss_swings_up_and_back_down():
    wave = curve(700, lambda s: 0.7 + 0.3 * math.sin(2 * math.pi * s / 250), 0.2)
    fire = run_rules({"loss": points(wave)}).first_fire("loss-oscillating")
    assert fire is not None and fire.step <= 500
    assert "climbed to" in fire.reason


def test_loss_oscillating_near_misses_noise_around_a_plateau_and_a_noisy_decrease():
    plateau = curve(700, lambda s: 0.7 + 0.05 * math.sin(2 * math.pi * s / 250), 0.3)
    assert "loss-oscillating" not in run_rules({"loss": points(plateau)}).ids()
    assert "loss-oscillating" not in run_rules({"loss": points(_falling(700, noise=0.3))}).ids()


# ------------------------------------------------------------ gradients


def test_gradient_explosion_fires_on_a_sustained_spike_against_the_running_median():
    norms = curve(100, lambda s: 1.0, 0.1) + [20.0, 40.0, 80.0, 160.0]
    fire = run_rules({"grad_norm_total": points(norms)}).first_fire("gradient-explosion")
    assert fire is not None and fire.step == 102  # two of the last three samples spiked
    assert fire.rule.severity == "critical"
    assert fire.reason.startswith("the total gradient norm is 20 (median of its last 3 samples)")


def test_gradient_explosion_is_judged_against_the_series_own_noise():
    # a fine-tune whose sampled norm moves 3x from sample to sample: 20x its median is within its noise...
    rough = [(3.0 if i % 2 else 1.0) for i in range(30)] + [20.0, 20.0, 20.0]
    assert "gradient-explosion" not in run_rules({"grad_norm_total": points(rough, every=10)}).ids()
    # ...while a steady one at 20x its median has exploded
    steady = curve(30, lambda s: 1.0, 0.05) + [20.0, 20.0, 20.0]
    assert "gradient-explosion" in run_rules({"grad_norm_total": points(steady, every=10)}).ids()


def test_a_spike_between_two_samples_is_seen_at_the_next_one():
    sampled = points(curve(30, lambda s: 1.0, 0.05), every=10)
    folded = [(s, t, v * (40.0 if s == 251 else 1.2)) for s, t, v in sampled]  # step 247 spiked, unsampled
    fire = run_rules({"grad_norm_total": sampled, "grad_norm_total_max": folded}).first_fire("gradient-explosion")
    assert fire is not None and fire.step == 251


def test_gradient_explosion_near_miss_one_odd_batch_is_not_an_explosion():
    norms = curve(100, lambda s: 1.0, 0.1) + [50.0] + curve(20, lambda s: 1.0, 0.1, seed=1)
    assert "gradient-explosion" not in run_rules({"grad_norm_total": points(norms)}).ids()


def test_gradient_explosion_near_miss_a_norm_growing_while_the_loss_falls_fast_is_learning():
    # a fine-tune starting to learn: its gradient norm grows 20x while its loss halves every 50 steps
    norms = curve(20, lambda s: 0.5, 0.05) + [10.0] * 10
    loss = curve(300, lambda s: 1.4 * 0.5 ** (s / 50) + 0.1, 0.01)
    series = {"grad_norm_total": points(norms, every=10), "loss": points(loss)}
    assert "gradient-explosion" not in run_rules(series).ids()
    # the same growth with the loss stuck is an explosion
    series["loss"] = points(curve(300, lambda s: 1.0, 0.01))
    assert "gradient-explosion" in run_rules(series).ids()


def test_unscaled_inputs_fires_on_a_huge_gradient_at_the_first_step_naming_the_layers():
    layers = {"grad_norm/0.weight": points([900.0] + [400.0] * 29), "grad_norm/2.weight": points([3.0] * 30),
              "grad_norm/0.bias": points([50.0] * 30)}
    series = {"grad_norm_total": points([1500.0] + [600.0] * 29), "loss": points([480.0] + [100.0] * 29), **layers}
    run = run_rules(series, info={"params": [{"name": n.split("/")[1], "kind": "bias" if "bias" in n else "weight"}
                                             for n in layers]})
    fire = run.first_fire("unscaled-inputs")
    assert fire is not None and fire.step == 1
    assert fire.reason.startswith("the total gradient norm was 1500 at its first sample")
    assert "the loss started at 480" in fire.reason and "0.weight" in fire.reason and "2.weight" not in fire.reason


def test_unscaled_inputs_near_miss_a_gradient_that_grows_later_is_not_the_inputs():
    # normal at step 1 (38: the largest first norm of any run in the corpus), huge later: the LR's doing
    series = {"grad_norm_total": points([38.0] + [5.0] * 20 + [2000.0] * 9)}
    assert "unscaled-inputs" not in run_rules(series).ids()


def test_gradient_explosion_names_a_layer_beyond_ten_and_not_one_at_eight():
    ok = curve(30, lambda s: 0.5, 0.1)
    hot = {"grad_norm/head.weight": points([12.0] * 30), "grad_norm/embed.weight": points(ok)}
    fire = run_rules(hot).first_fire("gradient-explosion")
    assert fire is not None and fire.evidence["layers"] == ["head.weight"]
    warm = {"grad_norm/head.weight": points([8.0] * 30), "grad_norm/embed.weight": points(ok)}
    assert "gradient-explosion" not in run_rules(warm).ids()


def test_vanishing_gradients_names_the_layers_far_below_the_rest():
    series = {
        "grad_norm/layers.0.weight": points(curve(30, lambda s: 1e-6, 0.1)),
        "grad_norm/layers.1.weight": points(curve(30, lambda s: 1e-3, 0.1)),
        "grad_norm/head.weight": points(curve(30, lambda s: 0.1, 0.1)),
    }
    order = {"layers": ["layers.0.weight", "layers.1.weight", "head.weight"]}  # the model's order, input first
    fire = run_rules(series, info=order).first_fire("vanishing-gradients")
    assert fire is not None
    assert fire.evidence["layers"] == ["layers.0.weight"]
    assert "layers.0.weight" in fire.reason


def test_vanishing_gradients_near_miss_a_converged_model_has_small_gradients_everywhere():
    series = {f"grad_norm/l{i}.weight": points(curve(30, lambda s: 5e-5, 0.1, seed=i)) for i in range(4)}
    assert "vanishing-gradients" not in run_rules(series).ids()


def test_dead_layer_fires_once_naming_every_layer_after_five_exactly_zero_samples():
    series = {
        "grad_norm/fc1.weight": points([0.3] * 5 + [0.0] * 10, every=10),
        "grad_norm/fc1.bias": points([0.1] * 5 + [0.0] * 10, every=10),
        "grad_norm/fc2.weight": points([0.2] * 15, every=10),
    }
    result = run_rules(series)
    fires = result.fired("dead-layer")
    assert [f.step for f in fires] == [91]  # the 5th zero sample: one diagnosis, not one per layer
    assert fires[0].evidence["layers"] == ["fc1.bias", "fc1.weight"]
    assert "fc1.weight" in fires[0].reason and "fc1.bias" in fires[0].reason


def test_dead_layer_near_miss_a_tiny_but_nonzero_gradient_is_alive():
    series = {"grad_norm/fc1.weight": points([0.0] * 4 + [1e-9] + [0.0] * 4, every=10)}
    assert "dead-layer" not in run_rules(series).ids()


def test_gradient_imbalance_fires_when_a_layer_is_four_orders_of_magnitude_below_the_typical_one():
    series = {f"grad_norm/blocks.{i}.weight": points(curve(40, lambda s: 1.0, 0.1, seed=i)) for i in range(5)}
    series["grad_norm/embed.weight"] = points(curve(40, lambda s: 2e-5, 0.1))
    fire = run_rules(series).first_fire("gradient-imbalance")
    assert fire is not None
    assert "embed.weight" in fire.evidence["layers"]


def test_gradient_imbalance_near_miss_under_three_orders_of_magnitude_from_the_typical_layer():
    series = {f"grad_norm/blocks.{i}.weight": points(curve(60, lambda s: 1.0, 0.1, seed=i)) for i in range(5)}
    series["grad_norm/embed.weight"] = points(curve(60, lambda s: 2e-3, 0.1))
    assert "gradient-imbalance" not in run_rules(series).ids()


# ------------------------------------------------------------ update ratios


def test_update_ratio_high_fires_when_the_median_weight_moves_more_than_five_percent_a_step():
    series = {
        "update_ratio/fc1.weight": points(curve(40, lambda s: 0.1, 0.1)),
        "update_ratio/fc2.weight": points(curve(40, lambda s: 0.08, 0.1)),
        "update_ratio/fc1.bias": points(curve(40, lambda s: 0.5, 0.1)),
    }
    fire = run_rules(series).first_fire("update-ratio-high")
    assert fire is not None and fire.step == 13  # 3 samples for the medians, then held for 10 steps
    assert "update/weight ratio is 0.0" in fire.reason


def test_update_ratio_high_near_miss_only_freshly_initialized_biases_move_a_lot():
    series = {
        "update_ratio/fc1.weight": points(curve(40, lambda s: 0.01, 0.1)),
        "update_ratio/fc2.weight": points(curve(40, lambda s: 0.01, 0.1)),
        "update_ratio/fc1.bias": points(curve(40, lambda s: 0.9, 0.1)),
    }
    assert "update-ratio-high" not in run_rules(series).ids()


def test_update_ratio_low_fires_after_warmup_with_the_learning_rate_at_its_peak():
    n = 200
    series = {
        "update_ratio/fc1.weight": points(curve(n, lambda s: 1e-6, 0.1)),
        "update_ratio/fc2.weight": points(curve(n, lambda s: 2e-6, 0.1)),
        "lr/0": points([1e-6] * n),
    }
    fire = run_rules(series).first_fire("update-ratio-low")
    assert fire is not None and fire.step == 120


def test_update_ratio_low_near_miss_the_tail_of_a_decayed_schedule():
    n = 300
    lr = [1e-3 * (0.01 if s > 100 else 1.0) for s in range(1, n + 1)]  # decayed to 1% of its peak
    series = {"update_ratio/fc1.weight": points(curve(n, lambda s: 1e-6, 0.1)), "lr/0": points(lr)}
    assert "update-ratio-low" not in run_rules(series).ids()


def test_update_ratio_low_fires_when_a_scheduler_drives_every_group_to_zero_mid_run():
    n = 300
    lr = [3e-3 if s < 150 else 0.0 for s in range(1, n + 1)]  # a step decay written gamma=0.0
    fire = run_rules({"lr/0": points(lr), "lr/1": points([1e-3 if s < 150 else 0.0 for s in range(1, n + 1)]),
                      "lr/2": points([0.0] * n)}).first_fire("update-ratio-low")  # group 2 is held at lr 0
    assert fire is not None and fire.step == 170
    assert "against a peak of 0.003" in fire.reason


def test_update_ratio_low_near_miss_a_planned_decay_to_zero_and_one_group_still_training():
    n = 500
    cosine = [3e-3 * 0.5 * (1 + math.cos(math.pi * s / n)) for s in range(1, n + 1)]  # exactly 0 at the end
    assert "update-ratio-low" not in run_rules({"lr/0": points(cosine)}).ids()
    stopped = [3e-3 if s < 150 else 0.0 for s in range(1, n + 1)]
    assert "update-ratio-low" not in run_rules({"lr/0": points(stopped), "lr/1": points([1e-3] * n)}).ids()


def test_lr_jump_fires_at_the_step_the_rate_leaves_anything_it_had_used():
    lr = [3e-3] * 149 + [0.39] * 51  # a schedule bug multiplies it by 130 at step 150
    fire = run_rules({"lr/0": points(lr)}).first_fire("lr-jump")
    assert fire is not None and fire.step == 150 and fire.rule.severity == "critical"
    assert fire.evidence["layers"] == ["0"] and "more than 10x its highest value before (0.003)" in fire.reason


def test_lr_jump_near_misses_a_warmup_from_almost_zero_and_warm_restarts():
    warmup = [1e-3 * min(1.0, s / 100) for s in range(1, 300)]
    restarts = [0.05 * 0.5 * (1 + math.cos(math.pi * (s % 100) / 100)) + 1e-6 for s in range(1, 400)]
    assert "lr-jump" not in run_rules({"lr/0": points(warmup)}).ids()
    assert "lr-jump" not in run_rules({"lr/0": points(restarts)}).ids()


# ------------------------------------------------------------ throughput and memory


def test_slow_training_fires_on_low_gpu_utilization_sustained_for_minutes():
    util = points(curve(60, lambda s: 30.0, 0.1), every=10, step_s=0.5)  # a sample every 5 s
    fire = run_rules({"gpu_util/cuda0": util}).first_fire("slow-training")
    assert fire is not None
    assert fire.evidence["layers"] == ["cuda0"]
    assert fire.reason.startswith("the least busy device (cuda0) averaged 29.9") and fire.reason.endswith("% utilization over the last 2 minutes")
    near = points(curve(60, lambda s: 70.0, 0.1), every=10, step_s=0.5)
    assert "slow-training" not in run_rules({"gpu_util/cuda0": near}).ids()


def test_slow_training_without_a_gpu_fires_when_most_of_each_step_waits_for_data():
    n = 200
    waiting = {"data_wait_share": points([0.8] * n), "data_wait": points([0.02] * n)}
    fire = run_rules(waiting).first_fire("slow-training")
    assert fire is not None and fire.step == 150  # a full 100-step window, then held for 50 steps
    assert fire.reason == ("each step waited for data 80% of its time (median of the last 100 steps: 0.02 s a step), "
                           "so the CPU or GPU sat idle for most of it")


def test_slow_training_near_misses_a_toy_model_waiting_two_milliseconds_and_a_busy_gpu():
    n = 200
    tiny = {"data_wait_share": points([0.8] * n), "data_wait": points([0.002] * n)}
    assert "slow-training" not in run_rules(tiny).ids()
    busy_gpu = {
        "data_wait_share": points([0.8] * n),  # host-side timing is misleading with asynchronous CUDA
        "data_wait": points([0.02] * n),
        "gpu_util/cuda0": points([95.0] * n),
    }
    assert "slow-training" not in run_rules(busy_gpu).ids()


def _memory(used_fraction: list[float]) -> dict:
    total = 80e9
    return {
        "gpu_mem_used/cuda0": points([f * total for f in used_fraction], every=10),  # every 5 s
        "gpu_mem_total/cuda0": points([total] * len(used_fraction), every=10),
    }


def test_memory_pressure_fires_after_a_minute_above_95_percent():
    result = run_rules(_memory([0.5] * 10 + [0.97] * 20))
    fire = result.first_fire("memory-pressure")
    assert fire is not None and fire.evidence["layers"] == ["cuda0"]
    assert "cuda0" in fire.reason


def test_memory_pressure_near_misses_93_percent_and_a_brief_peak():
    assert "memory-pressure" not in run_rules(_memory([0.93] * 30)).ids()
    assert "memory-pressure" not in run_rules(_memory([0.8] * 10 + [0.99] + [0.8] * 10)).ids()


def test_memory_pressure_reads_the_allocator_when_nvml_is_missing():
    total = 80e9
    series = {
        "cuda_mem_reserved/cuda0": points([0.97 * total] * 30, every=10),
        "gpu_mem_total/cuda0": points([total] * 30, every=10),
    }
    assert "memory-pressure" in run_rules(series).ids()


# ------------------------------------------------------------ generalization and warmup


def _overfit(rise: float) -> dict:
    n = 1000
    loss = curve(n, lambda s: 1.2 * math.exp(-s / 200) + 0.02, 0.05)
    val = [0.9 * math.exp(-s / 150) + 0.6 if s <= 400 else 0.6 + 0.0 + rise * (s - 400) / 600 for s in range(50, n + 1, 50)]
    return {"loss": points(loss), "val_loss": points(val, start=50, every=50)}


def test_overfitting_fires_when_validation_turns_up_while_training_keeps_falling():
    fire = run_rules(_overfit(rise=0.4)).first_fire("overfitting")
    assert fire is not None and 600 <= fire.step <= 900
    assert "validation loss" in fire.reason and "its best" in fire.reason


def test_overfitting_near_miss_a_ten_percent_bump_in_validation_loss():
    assert "overfitting" not in run_rules(_overfit(rise=0.06)).ids()


def test_overfitting_near_miss_a_validation_loss_still_falling_fast():
    """Each evaluation a new best, each a fraction of the last (a model learning fast): the median of the last
    three is well above the newest, best, value. That is progress, not validation turning up."""
    loss = curve(300, lambda s: 1.3 * math.exp(-s / 25) + 0.004, 0.05)
    val = [0.131, 0.0238, 0.0105, 0.0077, 0.0064, 0.0061]  # a real LSTM's, every 50 steps
    assert "overfitting" not in run_rules({"loss": points(loss), "val_loss": points(val, start=50, every=50)}).ids()


def test_overfitting_is_judged_on_three_sparse_evaluations_and_not_on_a_bump_coming_back_down():
    loss = curve(700, lambda s: 1.4 * math.exp(-s / 60) + 0.001, 0.05)
    sparse = [0.86, 0.71, 0.56, 0.57, 0.66, 0.71, 0.76]  # a real CNN's, every 100 steps: the gap grows
    fire = run_rules({"loss": points(loss), "val_loss": points(sparse, start=100, every=100)}).first_fire(
        "overfitting")
    assert fire is not None and fire.step == 700  # at its 3rd rising evaluation, with no extra hold
    assert "rose at each of its last 3 evaluations, to 0.76" in fire.reason
    bump = [0.38, 0.27, 0.16, 0.10, 0.18, 0.16, 0.11, 0.11]  # a real ViT's, every 50 steps: noise, not a turn
    assert "overfitting" not in run_rules({"loss": points(loss), "val_loss": points(bump, start=50, every=50)}).ids()


def _early(loss: list[float], lr: list[float]) -> dict:
    return {"loss": points(loss), "lr/0": points(lr)}


def test_no_warmup_fires_on_an_early_loss_spike_with_the_learning_rate_at_its_peak_from_step_one():
    loss = [1.4, 1.6, 3.0, 4.0, 3.5, 3.0, 2.8, 2.5, 2.2, 1.9] + curve(60, lambda s: 1.2, 0.05)
    fire = run_rules(_early(loss, [0.1] * 70)).first_fire("no-warmup")
    assert fire is not None and fire.step <= 10
    assert "since the first step" in fire.reason


def test_no_warmup_near_misses_the_same_spike_under_a_warmup_and_a_calm_start():
    spike = [1.4, 1.6, 3.0, 4.0, 3.5, 3.0, 2.8, 2.5, 2.2, 1.9] + curve(60, lambda s: 1.2, 0.05)
    ramp = [0.1 * min(1.0, s / 50) for s in range(1, 71)]
    assert "no-warmup" not in run_rules(_early(spike, ramp)).ids()
    assert "no-warmup" not in run_rules(_early(_falling(70), [0.1] * 70)).ids()


# ------------------------------------------------------------ mixed precision


def _fp16(n: int, skipped, scale, every: int = 10) -> dict:
    """The hooks' GradScaler series at step 1 and every ``every`` steps up to ``n``: the running total of
    skipped steps and the loss scale, as functions of the step."""
    steps = [1, *range(every, n + 1, every)]
    return {"scaler_skipped": at(steps, skipped), "loss_scale": at(steps, scale)}


CALIBRATED = 2.0**24 / 2**16  # 16 skips down from an initial 2^24: 256


@pytest.mark.parametrize("before_first_step", [False, True], ids=["one-step-each", "before-step-1"])
def test_fp16_overflow_near_miss_calibration_skips_then_one_every_2000_steps(before_first_step):
    """16 skips in the first 20 steps (counted as steps, as with a fused optimizer or Lightning; or all before
    step 1, as with a plain optimizer, which is not stepped), then one each time the scale tries to grow."""
    def skipped(s: int) -> int:
        return (16 if before_first_step else min(s, 16)) + s // 2000

    def scale(s: int) -> float:
        return CALIBRATED if before_first_step else 2.0**24 / 2 ** min(s, 16)

    result = run_rules(_fp16(8000, skipped, scale), batch_steps=100)
    assert "fp16-overflow" not in result.ids()


def test_fp16_overflow_fires_at_the_first_step_after_the_scale_collapsed():
    """A plain optimizer after calibration: from step 305 on the gradients overflow even unscaled, and 30
    iterations are skipped (the scale halving each time) before the optimizer steps again."""
    series = _fp16(600, lambda s: 5 + (30 if s >= 305 else 0), lambda s: 2.0**19 / (2**30 if s >= 305 else 1))
    fire = run_rules(series).first_fire("fp16-overflow")
    assert fire is not None and fire.step == 310  # the first sample after the collapse
    assert fire.rule.severity == "warning"
    assert fire.reason.startswith("the loss scale is down to 0.0004883 (from 524288) and the GradScaler has "
                                  "skipped 35 optimizer steps by step 310")
    assert fire.evidence["values"]["last(loss_scale)"] == 2.0**-11


def _floored(pattern: list[bool], every: int) -> dict:
    """Calibrated, then from step 301 each step skipped or not per ``pattern`` (repeating), under a scaler that
    does not go below 1 (a floor); sampled every ``every`` steps."""
    skips = [0]
    for s in range(1, 601):
        skips.append(skips[-1] + (s > 300 and pattern[(s - 301) % len(pattern)]))
    return _fp16(600, lambda s: 16 + skips[s], lambda s: 1.0 if s > 310 else CALIBRATED, every=every)


@pytest.mark.parametrize("every", [1, 10])
def test_fp16_overflow_fires_when_most_steps_are_skipped_though_the_scale_holds_at_1(every):
    fire = run_rules(_floored([True, True, False, True, False], every)).first_fire("fp16-overflow")  # 3 in 5
    assert fire is not None and 380 <= fire.step <= 390  # more than 50 skips within 100 steps: ~85 steps in
    values = fire.evidence["values"]
    assert values["last(scaler_skipped)"] - values["running_min(last(scaler_skipped), last=100)"] > 50
    assert values["last(loss_scale)"] == 1.0


@pytest.mark.parametrize("every", [1, 10])
def test_fp16_overflow_near_misses_half_the_steps_skipped_and_a_scale_settled_at_2(every):
    assert "fp16-overflow" not in run_rules(_floored([True, False], every)).ids()  # 50 in 100: not more than half
    settled = _fp16(1000, lambda s: min(s, 23), lambda s: 2.0**24 / 2 ** min(s, 23), every)  # large gradients
    assert "fp16-overflow" not in run_rules(settled).ids()


def test_fp16_overflow_resolves_only_once_the_scale_is_back_at_2_and_the_skips_stopped():
    """After the collapse the scale regrows, doubling every 100 clean steps here: it crosses 1 at step 1405,
    which does not resolve the diagnosis; 2 at step 1505, held for 100 steps, does."""
    def scale(s: int) -> float:
        return 2.0**19 if s < 305 else 2.0**-11 * 2 ** ((s - 305) // 100)

    result = run_rules(_fp16(2000, lambda s: 5 + (30 if s >= 305 else 0), scale))
    changes = [(t.kind, t.step) for t in result.transitions if t.rule.id == "fp16-overflow" and t.kind != "update"]
    assert [kind for kind, _ in changes] == ["fire", "resolve"]
    assert 1605 <= changes[1][1] <= 1620


# ------------------------------------------------------------ how the run ended


def _end(status: str, **extra) -> dict:
    return {"kind": "end", "time": T0 + 100, "step": 80, "status": status, **extra}


def test_run_crashed_fires_from_the_end_event_with_the_error():
    err = {"type": "RuntimeError", "message": "mat1 and mat2 shapes cannot be multiplied"}
    result = run_rules({"loss": points(_falling(80))}, events=[_end("crashed", error=err)])
    fire = result.first_fire("run-crashed")
    assert fire is not None and fire.step == 80
    assert "RuntimeError: mat1 and mat2 shapes" in fire.reason
    assert fire.evidence["run"]["error"] == err
    assert "out-of-memory" not in result.ids()


def test_out_of_memory_fires_with_the_memory_figures_and_a_clean_finish_fires_nothing():
    memory = {"cuda:0": {"allocated": 7.9e10, "reserved": 8.0e10, "peak": 8.0e10, "total": 8.1e10}}
    err = {"type": "torch.OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    result = run_rules({"loss": points(_falling(80))}, events=[_end("oom", error=err, memory=memory)])
    fire = result.first_fire("out-of-memory")
    assert fire is not None
    assert fire.evidence["run"]["memory"] == memory
    assert "CUDA out of memory" in fire.reason
    assert "run-crashed" not in result.ids()
    assert run_rules({"loss": points(_falling(80))}, events=[_end("finished")]).ids() == set()


@pytest.mark.parametrize("idle_s,fires", [(301.0, True), (299.0, False)])
def test_run_stalled_holds_when_a_running_run_has_been_silent_past_the_limit(idle_s, fires):
    rule = next(r for r in load_rules([]) if r.id == "run-stalled")
    assert rule.time_based
    det = detect(rule, _Facts(RunFacts(status="running", idle_s=idle_s)), 0, {"stall_after_s": 300.0}, {})
    assert (det.fired is True) is fires
    if fires:
        assert det.reason == "no data for 301 s (the stall limit is 300 s)"
    ended = detect(rule, _Facts(RunFacts(status="finished", idle_s=5000.0)), 0, {"stall_after_s": 300.0}, {})
    assert ended.fired is False
