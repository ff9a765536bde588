"""The run page shows a run's preflight report: each check's verdict and fix, and the shapes per module."""

from __future__ import annotations

import uuid

import pytest
import torch

import txwatch_hooks
from tests.hooks.test_preflight import TinyEncoder, _padded_batch
from tests.web.conftest import PROJECT, screenshot
from tests.web.test_pages import dataset, open_run

pytestmark = pytest.mark.slow


def test_run_page_shows_the_preflight_report(world, page):
    run = f"preflight-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    model = TinyEncoder(use_mask=False)  # padding visible: the masking check fails
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with txwatch_hooks.watch(model, opt, run=run, project=PROJECT, endpoint=world.url, system_interval_s=0,
                             crash_hooks=False, preflight={"steps": 5, "lr_steps": 10}) as monitor:
        loss = model(**_padded_batch())["loss"]
        loss.backward()
        opt.step()
        monitor.log(loss=loss)
    open_run(page, world, run)
    assert page.is_visible("#card-preflight")
    assert "failed" in page.inner_text("#preflight-summary")
    masking = dataset(page, '#preflight-checks tr[data-check="masking"]')
    assert masking["verdict"] == "fail"
    assert "masked_fill" in page.inner_text('#preflight-checks tr[data-check="masking"]')
    assert page.inner_text('#preflight-checks tr[data-check="shapes"] .pf-verdict') == "pass"
    assert "preflight/" not in page.inner_text("#other-charts")  # the card shows the verdicts, not a chart
    page.click("#preflight-shapes summary")
    assert "TransformerEncoderLayer" in page.inner_text("#preflight-shapes")
    screenshot(page, "run-preflight")


def test_a_run_without_a_report_hides_the_card(world, page):
    open_run(page, world, world.healthy.run)
    assert not page.is_visible("#card-preflight")
