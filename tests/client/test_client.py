"""txwatch.Api as a notebook uses it: runs trained for real with watch(), read back from the local database and
from a daemon, as DataFrames and as plain lists."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import txwatch
from tests.live import start_live

STEPS = 20


def _train(name: str, lr: float, tags: list[str], nan_at: int | None = None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with txwatch.watch(model, opt, run=name, project="nb", config={"lr": lr, "optim": {"name": "sgd"}}, tags=tags,
                       system_interval_s=0, crash_hooks=False, schedule_delay_s=0.05) as monitor:
        for step in range(1, STEPS + 1):
            x = torch.randn(16, 4)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=math.nan if nan_at is not None and step >= nan_at else loss.item())
            if step % 5 == 0:
                monitor.log(val_loss=loss.item() * 1.1)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('nb') / 'txwatch.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXWATCH_DB_URL", url)
        _train("slow", 1e-4, ["sweep"])
        _train("fast", 1e-2, ["sweep", "best"])
        _train("blows-up", 1e-1, [], nan_at=12)
    live = start_live(db_url=url)
    yield {"db": url, "endpoint": live.url}
    live.stop()


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_runs_are_a_dataframe_with_the_config_as_columns(history, via):
    api = txwatch.Api(history["endpoint"]) if via == "endpoint" else txwatch.Api(db=history["db"])
    with api:
        frame = api.runs(where="tags has 'sweep'")
        assert list(frame["name"]) == ["fast", "slow"]  # newest first
        assert list(frame["config.lr"]) == [1e-2, 1e-4] and list(frame["config.optim.name"]) == ["sgd", "sgd"]
        assert list(frame["status"]) == ["finished", "finished"] and list(frame["steps"]) == [STEPS, STEPS]
        assert str(frame["started"].dtype).startswith("datetime64") and frame["tags"][0] == ["best", "sweep"]
        assert len(api.runs()) == 3


@pytest.mark.parametrize("via", ["db", "endpoint"])
def test_history_is_one_row_per_step_and_diagnoses_are_listed(history, via):
    api = txwatch.Api(history["endpoint"]) if via == "endpoint" else txwatch.Api(db=history["db"])
    with api:
        frame = api.history("fast", ["loss", "val_loss"])
        assert list(frame.columns) == ["loss", "val_loss"] and list(frame.index) == list(range(1, STEPS + 1))
        assert frame["val_loss"].notna().sum() == STEPS // 5 and frame["loss"].notna().all()
        assert frame.loc[5, "val_loss"] == pytest.approx(frame.loc[5, "loss"] * 1.1)
        everything = api.history("nb/fast")
        assert {"loss", "val_loss", "grad_norm_total", "lr/0"} <= set(everything.columns)
        assert not any(c.startswith(("grad_norm/", "update_ratio/")) for c in everything.columns)  # per parameter
        assert len(api.history("fast", "loss", max_points=4)) <= 8  # lowest and highest of each bucket
        diags = api.diagnoses("blows-up")
        assert "loss-nonfinite" in set(diags["rule"]) and set(diags["run"]) == {"blows-up"}
        assert math.isnan(api.history("blows-up", "loss").loc[STEPS, "loss"])


def test_without_pandas_the_same_answers_are_lists(history, monkeypatch):
    with txwatch.Api(db=history["db"], frames=False) as api:
        rows = api.runs(where="config.lr >= 1e-2")
        assert [r["name"] for r in rows] == ["blows-up", "fast"] and rows[1]["config"]["lr"] == 1e-2
        steps = api.history("fast", ["loss", "val_loss"])
        assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
        assert "val_loss" in steps[4] and "val_loss" not in steps[0]
        assert isinstance(api.diagnoses(rule="loss-nonfinite"), list)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with txwatch.Api(db=history["db"]) as api:
        assert isinstance(api.runs(), list) and isinstance(api.history("slow", "loss"), list)
        with pytest.raises(txwatch.ApiError, match=r"frames=True needs pandas: pip install \"txwatch\[pandas\]\""):
            txwatch.Api(db=history["db"], frames=True)


def test_mistakes_raise_api_error_saying_why(history, tmp_path):
    with pytest.raises(txwatch.ApiError, match="no txwatch database at"):
        txwatch.Api(db=str(tmp_path / "none.db"))
    with txwatch.Api(db=history["db"]) as api:
        with pytest.raises(txwatch.ApiError, match="no run 'nope' in any project"):
            api.history("nope")
        with pytest.raises(txwatch.ApiError, match="where: unknown field 'lr' at column 1"):
            api.runs(where="lr > 1")
        with pytest.raises(txwatch.ApiError, match="has no series 'accuracy'"):
            api.history("fast", "accuracy")
