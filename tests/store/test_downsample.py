"""Downsampled reads against brute force over the raw points, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random

import pytest

from tests.collector.batches import T0, batch
from txwatch.ingest.queue import Collector
from txwatch.wire.batch import Batch
from txwatch.store import downsample, queries, rollup
from txwatch.store.db import session_factory


@pytest.fixture
def loaded(store_engine):
    rng = random.Random(7)
    # sparse, irregular steps across many blocks of every level, some NaN and Inf
    steps_ = sorted(rng.sample(range(0, 60_000), 9_000))
    values = {s: rng.gauss(0, 1) for s in steps_}
    for s in rng.sample(steps_, 20):
        values[s] = math.nan
    values[steps_[4321]] = math.inf
    sf = session_factory(store_engine)
    c = Collector(sf)
    chunk = 1000
    for seq, i in enumerate(range(0, len(steps_), chunk)):
        c.ingest(Batch.model_validate(batch(seq=seq, series={"x": [[s, T0 + s, values[s]] for s in steps_[i:i + chunk]]})))
    return sf, values


@pytest.mark.parametrize(("start", "end", "max_points"), [(None, None, 300), (1234, 50_321, 200), (5000, 5100, 1000),
                                                          (17, 40_000, 2000)])
def test_buckets_keep_every_extreme_and_nan_in_range(loaded, start, end, max_points):
    sf, values = loaded
    lo, hi = start if start is not None else 0, end if end is not None else 10**9
    in_range = {s: v for s, v in values.items() if lo <= s <= hi}
    with sf() as s:
        run, _ = queries.find_run(s, "r")
        out = downsample.series_points(s, queries.get_series(s, run, "x"), max_points, start, end)
    pts = out["points"]
    assert len(pts) <= max_points
    assert all(lo <= p["step"] <= hi for p in pts)
    assert [p["step"] for p in pts] == sorted({p["step"] for p in pts})
    for p in pts:  # every point shown is a real point
        v = in_range[p["step"]]
        assert (math.isnan(v) and math.isnan(p["value"])) or v == p["value"]
    finite = [v for v in in_range.values() if not math.isnan(v)]
    shown = [p["value"] for p in pts if not math.isnan(p["value"])]
    assert max(shown) == max(finite) and min(shown) == min(finite)
    if not out["downsampled"]:
        assert len(pts) == len(in_range)
    nan_steps = [s for s, v in in_range.items() if math.isnan(v)]
    assert bool(nan_steps) == any(math.isnan(p["value"]) for p in pts)


def test_summaries_equal_brute_force():
    rng = random.Random(3)
    pts = [(s, float(s), rng.choice([None, rng.random(), -rng.random()])) for s in sorted(rng.sample(range(20_000), 3000))]
    levels = rollup.all_levels(pts)
    for level, summaries in levels.items():
        for sm in summaries:
            block = [p for p in pts if p[0] // level == sm[rollup.BLOCK]]
            vals = [p[2] for p in block if p[2] is not None]
            assert sm[rollup.N] == len(block) and sm[rollup.NANS] == len(block) - len(vals)
            if vals:
                assert sm[rollup.VMIN] == min(vals) and sm[rollup.VMAX] == max(vals)
                assert math.isclose(sm[rollup.VSUM], sum(vals), abs_tol=1e-9)
