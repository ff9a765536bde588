"""The web page in headless Chromium against a live collector fed by real trainings (one healthy, one faulty).

What a user sees: the runs list, a run's curves with every point, the per-layer heatmap (one row per layer, the
dead layer a black band), diagnosis markers at the step they fired, silences added from the page, the token.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from urllib.parse import quote

import httpx
import pytest

from tests.web.conftest import PROJECT, World, screenshot
from tests.live import start_live as start_collector
from tests.web.training import FAULT_STEP

pytestmark = pytest.mark.slow

EXPLOSION_RULES = {"gradient-explosion", "loss-diverging", "loss-nonfinite"}
DEAD_LAYERS = {"branch.weight", "branch.bias"}  # TinyNet's branch is multiplied by zero in the faulty run


def api(world: World, path: str, **params):
    resp = httpx.get(world.url + path, params=params, timeout=10)
    resp.raise_for_status()
    return json.loads(resp.text)  # Python's json reads NaN/Infinity as the API writes them


def run_path(project: str, run: str) -> str:
    return f"/runs/{quote(project)}/{quote(run)}"


def series_counts(world: World, run: str) -> dict[str, int]:
    items = api(world, f"/api/v1/runs/{PROJECT}/{run}/series")
    items = items["series"] if isinstance(items, dict) else items
    return {s["name"]: s["points"] for s in items}


def diagnoses(world: World, run: str) -> list[dict]:
    ds = api(world, "/api/v1/diagnoses", project=PROJECT, run=run)
    return ds["diagnoses"] if isinstance(ds, dict) else ds


def open_run(page, world: World, run: str) -> None:
    page.goto(world.url + run_path(PROJECT, run))
    # Selectors, not wait_for_function: the page's Content-Security-Policy forbids the eval that needs.
    page.wait_for_selector("body[data-loaded], body[data-error]")
    assert not page.evaluate("document.body.dataset.error"), page.evaluate("document.body.dataset.error")


def dataset(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "n => Object.assign({}, n.dataset)")


# -- the runs list -----------------------------------------------------------------------------------------


def test_runs_list_shows_the_runs_newest_first_with_their_figures(world, page):
    page.goto(world.url + "/")
    page.wait_for_selector(f'#runs tbody tr[data-run="{world.faulty.run}"]')
    page.wait_for_selector(f'#runs tbody tr[data-run="{world.healthy.run}"]')
    names = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
    assert names.index(world.faulty.run) < names.index(world.healthy.run), "the newer run must come first"

    listed = api(world, "/api/v1/runs", project=PROJECT)
    listed = listed["runs"] if isinstance(listed, dict) else listed
    for run in listed:
        row = page.locator(f'#runs tbody tr[data-run="{run["name"]}"]')
        assert row.get_attribute("data-status") == run["status"]
        assert row.locator(".status").inner_text() == run["status"]
        assert row.locator('[data-field="steps"]').inner_text() == str(run["steps"])
        assert row.locator("a").get_attribute("href") == run_path(PROJECT, run["name"])
    faulty = next(r for r in listed if r["name"] == world.faulty.run)
    assert faulty["steps"] == len(world.faulty.losses)
    firing = faulty["firing"]
    badges = page.locator(f'#runs tbody tr[data-run="{world.faulty.run}"] [data-field="firing"] .badge')
    shown = {b.get_attribute("data-severity"): b.inner_text() for b in badges.all()}
    assert shown == {sev: f"{n} {sev}" for sev, n in firing.items() if n}
    assert shown, "the faulty run has firing diagnoses"
    healthy_loss = page.locator(f'#runs tbody tr[data-run="{world.healthy.run}"] [data-field="last-loss"]')
    assert math.isclose(float(healthy_loss.inner_text()), world.healthy.losses[-1], rel_tol=1e-3)
    screenshot(page, f"runs-{world.db}")


def test_runs_list_updates_live_and_filters_by_project_and_status(world, page):
    page.goto(world.url + "/?refresh=1")  # poll every second instead of every 5
    page.wait_for_selector(f'#runs tbody tr[data-run="{world.faulty.run}"]')
    other_project, new_run = f"other-{uuid.uuid4().hex[:6]}", f"late-{uuid.uuid4().hex[:6]}"
    now = time.time()
    body = {"schema_version": 1, "project": other_project, "run": new_run, "seq": 0, "sent_at": now,
            "series": {"loss": [[1, now, 1.5], [2, now, 1.4]]}, "events": [{"kind": "start", "time": now}]}
    httpx.post(world.url + "/api/v1/ingest", json=body, timeout=10).raise_for_status()
    # No reload: the page polls.
    page.wait_for_selector(f'#runs tbody tr[data-run="{new_run}"]', timeout=10_000)
    assert page.locator(f'#runs tbody tr[data-run="{new_run}"] .status').inner_text() == "running"

    page.select_option("#filter-project", PROJECT)
    page.wait_for_selector(f'#runs tbody tr[data-run="{new_run}"]', state="detached")
    assert f"project={PROJECT}" in page.url and "refresh=1" in page.url
    assert set(page.eval_on_selector_all("#runs tbody tr", "rs => rs.map(r => r.dataset.project)")) == {PROJECT}

    page.select_option("#filter-project", "")
    page.select_option("#filter-status", "running")
    page.wait_for_selector(f'#runs tbody tr[data-run="{world.faulty.run}"]', state="detached")
    statuses = page.eval_on_selector_all("#runs tbody tr", "rs => rs.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"running"}
    assert "status=running" in page.url


# -- one run -----------------------------------------------------------------------------------------------


def test_run_page_draws_every_curve_with_the_points_that_were_sent(world, page):
    faulty = world.faulty
    open_run(page, world, faulty.run)
    counts = series_counts(world, faulty.run)

    loss = json.loads(dataset(page, "#card-loss .chart-body")["counts"])
    assert loss["loss"] == len(faulty.losses) == counts["loss"]
    assert loss["val_loss"] == len(faulty.val_steps) == counts["val_loss"]
    nonfinite = sum(1 for v in faulty.losses if not math.isfinite(v))
    assert int(dataset(page, "#card-loss .chart-body")["nonfinite"]) >= nonfinite

    for card, name in [("card-lr", "lr/0"), ("card-grad", "grad_norm_total"), ("card-update", "update_ratio_max"),
                       ("card-steptime", "step_time"), ("card-steptime", "data_wait_share")]:
        shown = json.loads(dataset(page, f"#{card} .chart-body")["counts"])
        assert shown[name] == counts[name], (card, name)
    # A CPU-only host reports CPU and RSS instead of GPU figures.
    assert page.locator("#card-util h2 .title").inner_text() == "CPU utilization"
    assert json.loads(dataset(page, "#card-util .chart-body")["counts"])["cpu_util"] == counts["cpu_util"]
    assert json.loads(dataset(page, "#card-mem .chart-body")["counts"])["rss"] == counts["rss"]

    page.click("#card-config summary")  # the config is folded away until asked for
    config = page.locator("#run-config").inner_text()
    assert "optimizer" in config and "SGD" in config and "model.hidden" in config
    assert page.locator("#run-title").inner_text() == faulty.run
    screenshot(page, f"run-{world.db}-faulty")


def test_run_page_of_a_running_run_updates_live(world, page):
    run, now = f"live-{uuid.uuid4().hex[:6]}", time.time()

    def send(seq: int, steps: range) -> None:
        body = {"schema_version": 1, "project": PROJECT, "run": run, "seq": seq, "sent_at": now,
                "series": {"loss": [[s, now + s, 2.0 - 0.01 * s] for s in steps]},
                "events": [{"kind": "start", "time": now}] if seq == 0 else [{"kind": "heartbeat", "time": now + 1}]}
        httpx.post(world.url + "/api/v1/ingest", json=body, timeout=10).raise_for_status()

    send(0, range(1, 4))
    page.goto(world.url + run_path(PROJECT, run) + "?refresh=1")  # poll every second instead of every 10
    page.wait_for_selector("body[data-loaded]")
    assert json.loads(dataset(page, "#card-loss .chart-body")["counts"])["loss"] == 3
    send(1, range(4, 7))
    # No reload: the page polls while the run is running.
    page.wait_for_selector('#card-loss .chart-body[data-points="6"]', timeout=10_000)
    assert page.inner_text('#run-meta dd[data-field="steps"]') == "6"
    assert page.inner_text("#run-status") == "running"


def test_gpu_runs_show_gpu_utilization_and_memory_per_device(world, page):
    # A CPU-only test machine cannot produce NVML figures; these are the wire-format series the hooks'
    # system sampler sends on a GPU host (rank 1's device prefixed, as docs/design.md says).
    run, now = f"gpu-{uuid.uuid4().hex[:6]}", time.time()
    series = {
        "loss": [[s, now + s, 1.0 / s] for s in range(1, 21)],
        "gpu_util/cuda0": [[s, now + s, 90.0] for s in range(1, 21, 2)],
        "rank1.gpu_util/cuda1": [[s, now + s, 40.0] for s in range(1, 21, 2)],
        "gpu_mem_used/cuda0": [[s, now + s, 30e9] for s in range(1, 21, 2)],
        "gpu_mem_total/cuda0": [[s, now + s, 80e9] for s in range(1, 21, 2)],
        "cpu_util": [[s, now + s, 100.0] for s in range(1, 21, 2)],
        "rss": [[s, now + s, 4e9] for s in range(1, 21, 2)],
    }
    body = {"schema_version": 1, "project": PROJECT, "run": run, "seq": 0, "sent_at": now, "series": series,
            "events": [{"kind": "start", "time": now}]}
    httpx.post(world.url + "/api/v1/ingest", json=body, timeout=10).raise_for_status()
    open_run(page, world, run)
    assert page.inner_text("#card-util h2 .title") == "GPU utilization"
    util = json.loads(dataset(page, "#card-util .chart-body")["counts"])
    assert util == {"gpu_util/cuda0": 10, "rank1.gpu_util/cuda1": 10}
    assert page.inner_text("#card-mem h2 .title") == "GPU memory"
    mem = json.loads(dataset(page, "#card-mem .chart-body")["counts"])
    assert mem == {"gpu_mem_used/cuda0": 10, "gpu_mem_total/cuda0": 10}
    # Memory reads in bytes units: 30 GiB, not 32212254720.
    assert page.evaluate("window.txwCharts.mem.u.series[1].value(null, 30 * 2 ** 30)") == "30.0 GiB"


def test_a_run_named_without_its_project_opens_and_an_unknown_one_says_so(world, page):
    page.goto(world.url + f"/runs/{world.healthy.run}")  # as `txwatch show RUN` accepts a unique name
    page.wait_for_selector("body[data-loaded]")
    assert page.url.endswith(run_path(PROJECT, world.healthy.run))
    assert json.loads(dataset(page, "#card-loss .chart-body")["counts"])["loss"] == len(world.healthy.losses)

    page.goto(world.url + run_path(PROJECT, "no-such-run"))
    page.wait_for_selector("body[data-error]")
    assert "no-such-run" in page.inner_text("#errors")
    page.goto(world.url + "/runs/no-such-run")
    page.wait_for_selector("body[data-error]")
    assert "No run named no-such-run" in page.inner_text("#errors")


def test_heatmap_has_one_row_per_layer_and_the_dead_layer_is_a_black_band(world, page):
    faulty = world.faulty
    open_run(page, world, faulty.run)
    heat = dataset(page, "#card-heat-grad .chart-body")
    layers = json.loads(heat["layers"])
    # Rows in model order (named_parameters(): embed, hidden, branch, head), input to output, not by name.
    assert faulty.layers != sorted(faulty.layers)
    assert layers == faulty.layers
    assert api(world, f"/api/v1/runs/{PROJECT}/{faulty.run}/layers", metric="grad_norm")["layers"] == faulty.layers
    assert int(heat["rows"]) == len(faulty.layers)
    assert int(heat["cols"]) > 1
    update = dataset(page, "#card-heat-update .chart-body")
    assert json.loads(update["layers"]) == faulty.layers

    # Read the drawn pixels: every cell of a dead layer's row is black, no live layer's row is.
    rows = page.evaluate(
        """([layers]) => {
          const canvas = document.querySelector('#card-heat-grad canvas');
          const off = document.createElement('canvas');
          off.width = canvas.width; off.height = canvas.height;
          const ctx = off.getContext('2d');
          ctx.drawImage(canvas, 0, 0);
          const dpr = canvas.width / canvas.clientWidth;
          const box = canvas.getBoundingClientRect();
          const out = {};
          layers.forEach((name, r) => {
            const rowH = (canvas.clientHeight - 32) / layers.length;  // 6 px top, 26 px bottom margins
            const y = Math.round((6 + (r + 0.5) * rowH) * dpr);
            // sample the middle of the plot area, away from the labels and the colour bar
            const x0 = Math.round(canvas.width * 0.45), x1 = Math.round(canvas.width * 0.65);
            const px = ctx.getImageData(x0, y, x1 - x0, 1).data;
            let black = 0, n = 0;
            for (let i = 0; i < px.length; i += 4) { n++; if (px[i] + px[i + 1] + px[i + 2] === 0) black++; }
            out[name] = black / n;
          });
          return out;
        }""",
        [layers],
    )
    for name, black in rows.items():
        if name in DEAD_LAYERS:
            assert black == 1.0, f"dead layer {name} should be a black band, {black:.0%} black"
        else:
            assert black < 0.5, f"live layer {name} drawn {black:.0%} black"


def test_diagnosis_markers_sit_at_the_step_they_fired_and_explain_themselves(world, page):
    faulty = world.faulty
    ds = [d for d in diagnoses(world, faulty.run) if d.get("step") is not None]
    rules = {d["rule"] for d in ds}
    assert "dead-layer" in rules and rules & EXPLOSION_RULES, rules
    open_run(page, world, faulty.run)

    markers = page.eval_on_selector_all(
        "#card-loss .diag-marker",
        "ms => ms.map(m => ({rule: m.dataset.rule, step: Number(m.dataset.step), layer: m.dataset.layer, "
        "x: window.txwCharts.loss.u.posToVal(parseFloat(m.style.left), 'x'), hidden: m.hidden}))",
    )
    span = max(len(faulty.losses), 1)
    for d in ds:
        match = [m for m in markers if m["rule"] == d["rule"] and m["step"] == d["step"]
                 and m["layer"] == (d.get("layer") or "")]
        assert match, f"no marker for {d['rule']} at step {d['step']}: {markers}"
        assert not match[0]["hidden"]
        assert abs(match[0]["x"] - d["step"]) <= 0.01 * span, "the marker is drawn where the step is"
        if d["rule"] in EXPLOSION_RULES:
            assert d["step"] >= FAULT_STEP

    explosion = next(d for d in ds if d["rule"] in EXPLOSION_RULES)
    marker = page.locator(f'#card-loss .diag-marker[data-rule="{explosion["rule"]}"][data-step="{explosion["step"]}"]')
    marker.first.hover()
    pop = page.locator("#diag-popover")
    pop.wait_for(state="visible")
    assert explosion["symptom"] in pop.inner_text()
    assert explosion["cause"] in pop.inner_text()
    marker.first.click()
    assert pop.is_visible()
    text = pop.inner_text()
    for step in explosion["fix"]:
        assert str(step) in text
    assert "Evidence" in text
    screenshot(page, f"run-{world.db}-faulty-diagnosis")
    page.keyboard.press("Escape")
    pop.wait_for(state="hidden")


def test_healthy_run_page_shows_no_warning(world, page):
    open_run(page, world, world.healthy.run)
    serious = [d for d in diagnoses(world, world.healthy.run) if d["severity"] in ("warning", "critical")]
    assert not serious
    assert page.locator("#card-loss .diag-marker.sev-critical, #card-loss .diag-marker.sev-warning").count() == 0
    assert json.loads(dataset(page, "#card-loss .chart-body")["counts"])["loss"] == len(world.healthy.losses)
    screenshot(page, f"run-{world.db}-healthy")


# -- incidents: the root cause first ------------------------------------------------------------------------


def _incidents(world: World, run: str) -> list[dict]:
    resp = httpx.get(f"{world.url}/api/v1/runs/{quote(PROJECT)}/{quote(run)}/incidents", timeout=10)
    resp.raise_for_status()
    return resp.json()["incidents"]


def test_the_faulty_run_shows_each_incident_with_its_root_cause_fix_and_consequences(world, page):
    incidents = _incidents(world, world.faulty.run)
    assert incidents and incidents[0]["primary"], incidents
    open_run(page, world, world.faulty.run)
    box = page.locator("#run-incidents")
    assert box.is_visible()
    shown = box.locator(".incident")
    assert shown.count() == len(incidents)
    for i, inc in enumerate(incidents):
        item = shown.nth(i)
        assert item.get_attribute("data-primary") == inc["primary"]["rule"]
        text = item.inner_text()
        assert f"Incident {inc['number']}" in text
        cause = text.split("Root cause:", 1)[1]
        assert cause.lstrip().startswith(inc["primary"]["rule"])  # the root cause leads
        assert inc["primary"]["reason"] in text
        for step in inc["fix"]:
            assert str(step) in text
        for consequence in inc["consequences"]:
            assert consequence["rule"] in text.split("Consequences:", 1)[1].split("Also open", 1)[0]
        for other in inc["concurrent"]:  # the faulty run's branch is dead from the start, before the LR jump
            assert other["rule"] in text.split("Also open, not explained by it:", 1)[1]
    # both trainings have finished: an incident still open is unresolved when the run ended, not "open"
    for i, inc in enumerate(incidents):
        assert inc["state"] != "open"
        if inc["state"] == "ended":
            assert "unresolved when the run ended" in shown.nth(i).inner_text()
    # the root cause's rule opens its diagnosis in the list below
    first = incidents[0]["primary"]
    shown.first.locator(".incident-cause a.rule-link").click()
    detail = page.locator(f"#diag-{first['id']}")
    assert detail.get_attribute("open") is not None
    assert first["rule"] in detail.inner_text()
    screenshot(page, f"run-{world.db}-incidents")


def test_a_healthy_run_shows_no_incident(world, page):
    assert _incidents(world, world.healthy.run) == []
    open_run(page, world, world.healthy.run)
    assert page.locator("#run-incidents").is_hidden()
    assert page.locator("#run-incidents .incident").count() == 0


LONG_STEPS, SPIKE_STEP = 6_000, 4_321


@pytest.fixture(scope="module")
def long_run(world) -> str:
    """A run of 6,000 loss points (one spike of 100 at step 4,321), sent as one wire-format batch."""
    run = f"long-{uuid.uuid4().hex[:6]}"
    now = time.time()
    loss = [[s, now, 100.0 if s == SPIKE_STEP else 1.0 + 1.0 / (s + 1)] for s in range(LONG_STEPS)]
    body = {"schema_version": 1, "project": PROJECT, "run": run, "seq": 0, "sent_at": now,
            "series": {"loss": loss}, "events": [{"kind": "start", "time": now}]}
    httpx.post(world.url + "/api/v1/ingest", json=body, timeout=60).raise_for_status()
    return run


def loss_chart(page) -> dict:
    info = dataset(page, "#card-loss .chart-body")
    return {"points": json.loads(info["counts"])["loss"], "max_points": int(info["maxPoints"]),
            "downsampled": dataset(page, "#card-loss")["downsampled"] == "1"}


def test_long_series_are_downsampled_by_the_server_and_keep_their_spikes(world, page, long_run):
    open_run(page, world, long_run)
    shown = loss_chart(page)
    served = api(world, f"/api/v1/runs/{PROJECT}/{long_run}/series/loss", max_points=shown["max_points"])
    assert served["downsampled"] and shown["downsampled"]
    assert 100 <= shown["points"] == len(served["points"]) <= 2000 < LONG_STEPS
    assert page.evaluate("Math.max(...window.txwCharts.loss.u.data[1].filter(v => v != null))") == 100.0
    assert "min/max per bucket" in page.inner_text("#card-loss .sampling")


def test_zooming_in_fetches_every_point_of_the_window_on_every_chart(world, page, long_run):
    open_run(page, world, long_run)
    over = page.locator("#card-loss .u-over").bounding_box()
    y = over["y"] + over["height"] / 2
    page.mouse.move(over["x"] + over["width"] * 0.60, y)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.62, y, steps=5)
    page.mouse.up()
    # The page refetches the zoomed window at full detail: one point per step, no buckets.
    page.wait_for_selector('#card-loss[data-downsampled="0"]')
    lo, hi = page.evaluate("[window.txwCharts.loss.u.scales.x.min, window.txwCharts.loss.u.scales.x.max]")
    assert 0.58 * LONG_STEPS < lo < hi < 0.64 * LONG_STEPS
    expected = math.ceil(hi) - math.floor(lo) + 1
    assert abs(loss_chart(page)["points"] - expected) <= 1
    page.dblclick("#card-loss .u-over")
    page.wait_for_selector('#card-loss[data-downsampled="1"]')
    assert loss_chart(page)["points"] <= 2000


# -- diagnoses and silences ---------------------------------------------------------------------------------


def test_silence_added_from_the_page_takes_effect(world, page):
    from txwatch.alerts.silences import matching_silence

    faulty = world.faulty
    page.goto(world.url + f"/diagnoses?project={PROJECT}&run={faulty.run}")
    row = page.locator(f'#diagnoses tr.diag-row[data-run="{faulty.run}"][data-rule="dead-layer"]').first
    row.wait_for()
    rows = page.eval_on_selector_all("#diagnoses tr.diag-row", "rs => rs.map(r => r.dataset.run)")
    assert set(rows) == {faulty.run}
    row.locator("button", has_text="silence").click()
    assert page.input_value('#silence-form [name="run"]') == faulty.run
    assert page.input_value('#silence-form [name="project"]') == PROJECT
    assert page.input_value('#silence-form [name="rule"]') == "dead-layer"
    page.fill('#silence-form [name="duration"]', "3h")
    page.fill('#silence-form [name="comment"]', "known: branch is disabled on purpose")
    page.click('#silence-form button[type="submit"]')
    page.wait_for_selector("#silence-message.ok")
    screenshot(page, f"diagnoses-{world.db}")

    silences = api(world, "/api/v1/silences")["silences"]
    mine = [s for s in silences if s["run"] == faulty.run]
    assert len(mine) == 1
    assert mine[0]["project"] == PROJECT and mine[0]["rule"] == "dead-layer"
    assert mine[0]["comment"] == "known: branch is disabled on purpose"
    page.wait_for_selector(f'#silences tbody tr[data-id="{mine[0]["id"]}"]')
    # The silenced diagnoses say so; the others do not.
    silenced = page.eval_on_selector_all("#diagnoses tr.diag-row", "rs => rs.map(r => [r.dataset.rule, r.dataset.silenced])")
    assert {rule for rule, sid in silenced if sid} == {"dead-layer"}
    assert all(sid == str(mine[0]["id"]) for rule, sid in silenced if rule == "dead-layer")
    with world.collector.services.session_factory() as s:
        assert matching_silence(s, project=PROJECT, run=faulty.run, rule="dead-layer") is not None
        assert matching_silence(s, project=PROJECT, run=faulty.run, rule="gradient-explosion") is None

    page.locator(f'#silences tbody tr[data-id="{mine[0]["id"]}"] button', has_text="remove").click()
    page.wait_for_selector(f'#silences tbody tr[data-id="{mine[0]["id"]}"]', state="detached")
    assert not [s for s in api(world, "/api/v1/silences")["silences"] if s["run"] == faulty.run]


def test_bad_silence_is_refused_with_the_reason(world, page):
    page.goto(world.url + "/diagnoses")
    page.fill('#silence-form [name="project"]', PROJECT)
    page.fill('#silence-form [name="duration"]', "forever")
    page.click('#silence-form button[type="submit"]')
    page.wait_for_selector("#silence-message.error")
    assert "forever" in page.inner_text("#silence-message")


# -- the token ----------------------------------------------------------------------------------------------


def test_page_shell_is_public_but_data_needs_the_token(db_url, browser, tmp_path):
    token = "tok-" + uuid.uuid4().hex
    collector = start_collector(db_url, token=token)
    try:
        now = time.time()
        body = {"schema_version": 1, "project": PROJECT, "run": "secret-run", "seq": 0, "sent_at": now,
                "series": {"loss": [[1, now, 2.0]]}, "events": [{"kind": "start", "time": now}]}
        headers = {"Authorization": f"Bearer {token}"}
        httpx.post(collector.url + "/api/v1/ingest", json=body, headers=headers, timeout=10).raise_for_status()
        assert httpx.get(collector.url + "/api/v1/runs", timeout=10).status_code == 401
        assert httpx.get(collector.url + "/", timeout=10).status_code == 200

        context = browser.new_context()
        page = context.new_page()
        page.goto(collector.url + "/")
        page.wait_for_selector("#token-dialog", state="visible")
        assert page.locator("#runs tbody tr").count() == 0
        page.fill("#token-input", "wrong")
        page.click("#token-form button")
        page.wait_for_selector("#token-message:has-text('refused')")
        assert page.locator("#runs tbody tr").count() == 0
        page.fill("#token-input", token)
        page.click("#token-form button")
        page.wait_for_selector('#runs tbody tr[data-run="secret-run"]')
        assert page.evaluate("localStorage.getItem('txwatch.token')") == token

        # Kept in the browser: the run page opens without asking again.
        page.goto(collector.url + run_path(PROJECT, "secret-run"))
        page.wait_for_selector("body[data-loaded]")
        assert page.locator("#token-dialog").is_hidden()
        assert json.loads(dataset(page, "#card-loss .chart-body")["counts"])["loss"] == 1
        context.close()
    finally:
        collector.stop()
