"""Claims a scenario makes about its own true values (``Scenario.shows``), checked by ``diagnosis.py --verify``.

Each function returns a check: ``check(truth) -> str`` gives the figures that show the claim, or raises
``AssertionError`` saying what is missing. A fault that does not show in its true values is a wrong scenario.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from benchmarks.scenarios.truth import Truth

Check = Callable[[Truth], str]


def _smooth(t: Truth, name: str = "loss", window: int = 10) -> dict[int, float]:
    """Median of the last ``window`` finite values at each step."""
    pts = sorted(t.get(name).items())
    out: dict[int, float] = {}
    vals: list[float] = []
    for s, v in pts:
        if math.isfinite(v):
            vals.append(v)
        if vals:
            out[s] = statistics.median(vals[-window:])
    return out


def all_of(*checks: Check) -> Check:
    def check(t: Truth) -> str:
        return "; ".join(c(t) for c in checks)

    return check


def learns(factor: float = 0.8) -> Check:
    """Healthy: the loss ends (mean of the last 50 steps) below ``factor`` x its start (first 20), finite."""

    def check(t: Truth) -> str:
        last = t.last_step()
        start, end = t.mean("loss", 1, 20), t.mean("loss", last - 49, last)
        assert t.first_nonfinite() is None, f"the loss is not finite at step {t.first_nonfinite()}"
        assert end < factor * start, f"the loss went from {start:.4g} to {end:.4g} only"
        return f"loss {start:.4g} -> {end:.4g} over {last} steps"

    return check


def nan_from(onset: int) -> Check:
    def check(t: Truth) -> str:
        nan = t.first_nonfinite()
        assert nan is not None, "the loss never becomes NaN/inf"
        assert nan >= onset - 1, f"the loss is NaN at step {nan}, before the onset {onset}"
        return f"loss finite until step {nan - 1}, NaN/inf from step {nan} (onset {onset})"

    return check


def loss_rises(onset: int, factor: float = 2.0) -> Check:
    """The smoothed loss climbs to ``factor`` x its best so far (or its start) after ``onset``."""

    def check(t: Truth) -> str:
        sm = _smooth(t)
        best = min([v for s, v in sm.items() if s < max(onset, 2)] or [t.mean("loss", 1, 3)])
        after = {s: v for s, v in sm.items() if s >= onset}
        peak_step = max(after, key=after.get)
        assert after[peak_step] > factor * best, (
            f"the smoothed loss peaks at {after[peak_step]:.4g} (step {peak_step}), not {factor}x its best {best:.4g}")
        return f"smoothed loss best {best:.4g} before the onset, {after[peak_step]:.4g} at step {peak_step}"

    return check


def stays_high(factor: float = 0.9) -> Check:
    """The run ends with a finite loss no better than ``factor`` x where it started (it learned nothing)."""

    def check(t: Truth) -> str:
        last = t.last_step()
        start, end = t.get("loss")[1], t.mean("loss", last - 49, last)  # a random model's loss
        assert t.first_nonfinite() is None, f"the loss is NaN at step {t.first_nonfinite()}"
        assert end > factor * start, f"the loss fell from {start:.4g} to {end:.4g}"
        return f"loss {start:.4g} at the start, still {end:.4g} at the end (no NaN)"

    return check


def oscillates(factor: float = 1.4, window: int = 50) -> Check:
    """The smoothed loss goes back up by ``factor`` after a trough, more than once or then down again."""

    def check(t: Truth) -> str:
        sm = sorted(_smooth(t, window=window).items())
        trough, rises = math.inf, 0
        low_step = 0
        events = []
        for s, v in sm:
            if v < trough:
                trough, low_step = v, s
            elif v > factor * trough:
                rises += 1
                events.append(f"{trough:.3g}@{low_step} -> {v:.3g}@{s}")
                trough = v
        assert rises >= 2, f"the smoothed loss rose {factor}x above a trough {rises} time(s) only"
        return f"smoothed loss rebounds {rises} times: " + ", ".join(events[:3])

    return check


def flat(after: int = 200, within: float = 0.05) -> Check:
    """The loss after ``after`` steps is still within ``within`` of its start (mean of 100 vs first 20)."""

    def check(t: Truth) -> str:
        last = t.last_step()
        start, end = t.mean("loss", 1, 20), t.mean("loss", max(after, last - 99), last)
        assert abs(end / start - 1) < within, f"the loss moved from {start:.4g} to {end:.4g}"
        return f"loss {start:.4g} at the start, {end:.4g} at the end"

    return check


def stops_improving(onset: int, within: float = 0.03) -> Check:
    """From ``onset`` on the loss stops falling: the last 100 steps' mean within ``within`` of the 50 after onset."""

    def check(t: Truth) -> str:
        last = t.last_step()
        at, end = t.mean("loss", onset, onset + 49), t.mean("loss", last - 99, last)
        before = t.mean("loss", 1, 20)
        assert end > (1 - within) * at, f"the loss still fell from {at:.4g} to {end:.4g} after step {onset}"
        return f"loss {before:.4g} at the start, {at:.4g} after the onset, {end:.4g} at the end"

    return check


def lr_zero_from(step: int) -> Check:
    def check(t: Truth) -> str:
        lr = t.get("lr/0")
        late = [v for s, v in lr.items() if s >= step]
        assert late and max(late) == 0, f"the learning rate after step {step} reaches {max(late or [math.nan]):.3g}"
        peak = max(lr.values())
        return f"lr/0 peaks at {peak:.3g}, is 0 from step {step} to {max(lr)}"

    return check


def lr_jump(onset: int, factor: float) -> Check:
    def check(t: Truth) -> str:
        lr = t.get("lr/0")
        before, after = lr.get(onset - 1, math.nan), lr.get(onset + 1, math.nan)
        assert after >= factor * 0.9 * before, f"lr/0 {before:.3g} before step {onset}, {after:.3g} after"
        return f"lr/0 {before:.3g} -> {after:.3g} at step {onset}"

    return check


def grad_spikes(onset: int, factor: float = 10.0) -> Check:
    """The total gradient norm jumps ``factor`` x above its median before ``onset``, at steps from it on."""

    def check(t: Truth) -> str:
        g = t.get("grad_norm_total")
        base = statistics.median([v for s, v in g.items() if 10 <= s < onset and math.isfinite(v)])
        spikes = sorted(s for s, v in g.items() if s >= onset and (not math.isfinite(v) or v > factor * base))
        assert spikes, f"no total gradient norm above {factor}x the median {base:.3g} after step {onset}"
        off = [s for s in spikes if s % 10]
        return (f"grad_norm_total median {base:.3g}; {factor:g}x spikes at steps {spikes[:8]}"
                f" ({len(off)} of {len(spikes)} between the default samples)")

    return check


def vanishing(below: float = 1e-4, ratio: float = 1e-3) -> Check:
    def check(t: Truth) -> str:
        steps = sorted(t.get("grad_norm_total"))
        hit = []
        for s in steps:
            lo, hi, _ = t.layer_span(s)
            if lo < below and lo < ratio * hi:
                hit.append((s, lo, hi))
        assert len(hit) > len(steps) // 2, f"only {len(hit)} of {len(steps)} steps have a vanished layer"
        s, lo, hi = hit[len(hit) // 2]
        return f"{len(hit)}/{len(steps)} steps with a layer below {below:g} and {ratio:g}x the largest (step {s}: {lo:.2g} vs {hi:.2g})"

    return check


def zero_grads_from(onset: int, share: float = 0.9) -> Check:
    """Some layer's gradient is exactly zero at ``share`` of the steps from ``onset`` on (a dead unit can
    come back for one odd batch)."""

    def check(t: Truth) -> str:
        layers = t.layers("grad_norm")
        steps = range(onset, t.last_step() + 1)
        dead = [n for n, v in layers.items() if sum(v.get(s, 1.0) == 0 for s in steps) >= share * len(steps)]
        assert dead, f"no layer has exactly zero gradient at {share:.0%} of the steps from {onset}"
        return (f"exactly zero gradient at >= {share:.0%} of the steps from {onset} on: "
                f"{dead[:4]}{' ...' if len(dead) > 4 else ''}")

    return check


def imbalance(orders: float = 4.0) -> Check:
    def check(t: Truth) -> str:
        steps = sorted(t.get("grad_norm_total"))
        spans = []
        for s in steps:
            lo, hi, _ = t.layer_span(s)
            if lo > 0 and math.isfinite(hi):
                spans.append(math.log10(hi / lo))
        med = statistics.median(spans)
        assert med > orders, f"layer gradient norms span {med:.2f} orders of magnitude (median over steps)"
        return f"layer gradient norms span {med:.2f} orders of magnitude (median over steps)"

    return check


def val_turns_up(factor: float = 1.2) -> Check:
    def check(t: Truth) -> str:
        val = sorted(t.get("val_loss").items())
        assert len(val) >= 4, f"only {len(val)} validation points"
        best_step, best = min(val, key=lambda p: p[1])
        end = statistics.median(v for _, v in val[-3:])
        last = t.last_step()
        train = t.mean("loss", last - 49, last)
        assert end > factor * best, f"validation ends at {end:.4g}, its best was {best:.4g}"
        return f"val_loss best {best:.4g} at step {best_step}, {end:.4g} at the end; train loss {train:.4g}"

    return check


def gap_grows() -> Check:
    """Sparse validation: the train/val gap grows by half from the first evaluation to the last (and is large)."""

    def check(t: Truth) -> str:
        val = sorted(t.get("val_loss").items())
        assert len(val) >= 2, f"only {len(val)} validation points"
        gaps = [(s, v - t.mean("loss", s - 19, s)) for s, v in val]
        assert gaps[-1][1] > max(1.5 * gaps[0][1], 0.3), f"the gap goes {gaps[0][1]:.3g} -> {gaps[-1][1]:.3g}"
        return "train/val gap " + ", ".join(f"{g:.3g}@{s}" for s, g in gaps)

    return check


def waits(share: float = 0.5) -> Check:
    def check(t: Truth) -> str:
        shares = list(t.get("data_wait_share").values())
        wait = list(t.get("data_wait").values())
        med, med_wait = statistics.median(shares), statistics.median(wait)
        assert med > share and med_wait > 0.01, f"median data-wait share {med:.2f}, wait {1000 * med_wait:.1f} ms"
        return f"median data-wait share {med:.2f} ({1000 * med_wait:.1f} ms a step)"

    return check


def ended(status: str, at: int) -> Check:
    def check(t: Truth) -> str:
        assert t.end is not None and t.end.get("status") == status, f"the run ended {t.status()}, not {status}"
        error = (t.end.get("error") or {}).get("type", "")
        return f"ended {status} at step {t.end.get('step')} ({error}; fault at {at})"

    return check


def vanished(at: int) -> Check:
    def check(t: Truth) -> str:
        assert t.end is None, f"the run ended {t.status()}"
        return f"no end event; last step heard {t.last_step()} (went dark at {at})"

    return check


def scaler_collapses() -> Check:
    def check(t: Truth) -> str:
        skipped = t.get("scaler_skipped")
        scale = t.get("loss_scale")
        most = max(skipped.values(), default=0)
        low = min(scale.values(), default=math.inf)
        assert most > 50 or low < 1, f"the scaler skipped {most:g} steps, lowest scale {low:g}"
        return f"scaler skipped {most:g} steps, the loss scale fell to {low:.3g}"

    return check


def update_ratio_above(level: float) -> Check:
    def check(t: Truth) -> str:
        steps = sorted(s for s in t.get("grad_norm_total"))
        vals = [t.median_update(s) for s in steps]
        vals = [v for v in vals if math.isfinite(v)]
        top = max(vals, default=math.nan)
        assert top > level, f"the median layer's update ratio peaks at {top:.3g}"
        return f"median layer update ratio peaks at {top:.3g}"

    return check


def update_ratio_below(level: float, after: int = 100) -> Check:
    def check(t: Truth) -> str:
        vals = [t.median_update(s) for s in sorted(t.get("grad_norm_total")) if s >= after]
        vals = [v for v in vals if math.isfinite(v)]
        med = statistics.median(vals)
        assert med < level, f"the median layer's update ratio is {med:.3g} after step {after}"
        return f"median layer update ratio {med:.3g} after step {after}"

    return check
