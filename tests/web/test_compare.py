"""Comparing runs in headless Chromium: picked on the runs list, overlaid by step on the compare page (loss,
validation loss, gradient norm, learning rate, update ratio), each run's diagnoses flagged where they fired."""

from __future__ import annotations

import json

import pytest

from tests.web.conftest import PROJECT, World, screenshot
from tests.web.test_pages import api, dataset, diagnoses, series_counts

pytestmark = pytest.mark.slow

CHARTS = {"loss": "loss", "val_loss": "val_loss", "grad_norm_total": "grad_norm_total", "lr": "lr/0",
          "update_ratio_max": "update_ratio_max"}


def test_runs_picked_on_the_list_open_overlaid_on_one_step_axis(world: World, page):
    page.goto(world.url + "/")
    button = page.locator("#compare-selected")
    page.wait_for_selector(f'#runs tbody tr[data-run="{world.faulty.run}"]')
    assert button.is_disabled()
    page.check(f'input.pick[data-ref="{PROJECT}/{world.healthy.run}"]')
    assert button.is_disabled()  # one run is not a comparison
    page.check(f'input.pick[data-ref="{PROJECT}/{world.faulty.run}"]')
    assert button.inner_text() == "Compare selected (2)"
    button.click()
    page.wait_for_selector("body[data-loaded], body[data-error]")
    assert not page.evaluate("document.body.dataset.error"), page.evaluate("document.body.dataset.error")
    assert page.url.endswith(f"/compare?runs={PROJECT}%2F{world.healthy.run}%2C{PROJECT}%2F{world.faulty.run}")

    rows = page.eval_on_selector_all("#compared tbody tr", "rows => rows.map(r => r.dataset.run)")
    assert rows == [world.healthy.run, world.faulty.run]
    counts = {run: series_counts(world, run) for run in rows}
    for chart, name in CHARTS.items():
        body = dataset(page, f"#cmp-{chart} .chart-body")
        drawn = json.loads(body["counts"])  # every point each run sent, one line per run
        expected = {f"{PROJECT}/{run}": counts[run][name] for run in rows if counts[run].get(name)}
        assert drawn == expected, chart
        assert len(expected) == 2, f"both runs have {name}"
    faulty = [d for d in diagnoses(world, world.faulty.run) if d["step"] is not None]
    assert faulty and not diagnoses(world, world.healthy.run)
    assert int(dataset(page, "#cmp-loss .chart-body")["markers"]) == len(faulty)
    flags = page.eval_on_selector_all("#cmp-loss .diag-marker", "ns => ns.map(n => [n.dataset.rule, Number(n.dataset.step), n.title])")
    assert sorted((r, s) for r, s, _ in flags) == sorted((d["rule"], d["step"]) for d in faulty)
    assert all(title.split(": ", 1)[1].startswith(world.faulty.run + ": ") for _, _, title in flags)
    legend = page.locator("#cmp-loss .u-legend").inner_text()
    assert world.healthy.run in legend and world.faulty.run in legend
    screenshot(page, f"compare-{world.db}")


def test_compare_page_asks_for_runs_and_names_an_unknown_one(world: World, page):
    page.goto(world.url + f"/compare?runs={world.healthy.run}")  # a bare name is looked up
    page.wait_for_selector("body[data-loaded]")
    assert page.locator("#pick-more").is_visible()
    assert page.eval_on_selector_all("#compared tbody tr", "rows => rows.length") == 1
    page.goto(world.url + f"/compare?runs={PROJECT}/{world.healthy.run},nope-{world.faulty.run}")
    page.wait_for_selector("body[data-error]")
    assert page.locator("#errors").inner_text() == f"no run nope-{world.faulty.run}"
    listed = api(world, "/api/v1/runs", project=PROJECT)["runs"]
    assert len(listed) >= 2
