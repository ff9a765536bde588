"""The preflight report against the real (embedded) collector: stored in the run's info, shown by
``txwatch show``, and each failed or warning check a diagnosis."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import txwatch_hooks
from tests.hooks.test_preflight import TinyEncoder, _padded_batch

QUIET = {"system_interval_s": 0, "heartbeat_s": 60.0, "crash_hooks": False, "schedule_delay_s": 0.05}


def test_failed_checks_become_diagnoses_and_the_report_is_shown():
    from sqlalchemy import select

    from txwatch.cli import app
    from txwatch.store.db import make_engine, session_factory
    from txwatch.store.models import Diagnosis, Run

    torch.manual_seed(0)
    model = TinyEncoder(use_mask=False)  # padding visible: the masking check fails
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # no scheduler: the schedule check warns
    with txwatch_hooks.watch(model, opt, run="pf-stored", preflight={"steps": 5, "lr_steps": 10}, **QUIET) as m:
        for _ in range(3):
            loss = model(**_padded_batch())["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad()
            m.log(loss=loss)
    engine = make_engine(None)
    try:
        with session_factory(engine)() as s:
            run = s.scalars(select(Run).where(Run.name == "pf-stored")).one()
            report = run.info["preflight"]
            assert {c["name"]: c["verdict"] for c in report["checks"]}["masking"] == "fail"
            found = {(d.rule_id, d.layer, d.severity) for d in
                     s.scalars(select(Diagnosis).where(Diagnosis.run_id == run.id))}
    finally:
        engine.dispose()
    assert ("preflight-failed", "masking", "warning") in found
    assert ("preflight-warned", "schedule", "info") in found
    assert not any(layer in ("shapes", "gradient_flow") for _, layer, _ in found)

    result = CliRunner().invoke(app, ["show", "pf-stored"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "preflight" in result.output and "masking" in result.output and "fail" in result.output
    assert "masked_fill" in result.output
    shown = json.loads(CliRunner().invoke(app, ["show", "pf-stored", "--json"]).output)
    assert shown["info"]["preflight"]["checks"][3]["name"] == "masking"


def test_a_run_name_stores_a_run_holding_the_report():
    from sqlalchemy import select

    from tests.hooks.test_preflight import _ce, _data, _mlp
    from txwatch.store.db import make_engine, session_factory
    from txwatch.store.models import Run
    from txwatch_hooks.sanity import preflight

    model = _mlp()
    preflight(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), _ce, lr_steps=0, run="pf-named")
    engine = make_engine(None)
    try:
        with session_factory(engine)() as s:
            run = s.scalars(select(Run).where(Run.name == "pf-named")).one()
            assert [c["name"] for c in run.info["preflight"]["checks"]][0] == "overfit"
            assert run.steps == 0
    finally:
        engine.dispose()
