"""Preflight on real small trainings (CPU): each check catches its fault and passes on a healthy model, and the
job trains exactly as it would have without preflight."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import txwatch_hooks
from txwatch_hooks.sanity import preflight
from txwatch_hooks.testing import MemorySender
from tests.hooks.conftest import FAST

STEPS = 40


def _data(n: int = 256, d: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _mlp(hidden: int = 16, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_a_healthy_setup_passes_every_check():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=100)
    report = preflight(model, opt, _data(), _ce, scheduler=sched, max_steps=1000)
    verdicts = {c.name: c.verdict for c in report.checks}
    assert verdicts == {"overfit": "pass", "gradient_flow": "pass", "shapes": "pass", "masking": "skipped",
                        "memory": "pass", "learning_rate": "pass", "schedule": "pass"}, str(report)
    assert report.ok
    assert report["overfit"].figures["drop"] >= 0.9
    assert report["schedule"].figures["warmup steps"] == 100
    shapes = {row["module"]: row["output"] for row in report["shapes"].table}
    assert shapes == {"Sequential": "256x2", "0": "256x16", "1": "256x16", "2": "256x2"}


def test_shuffled_labels_fail_the_single_batch_overfit():
    x, y = _data()
    model = _mlp(hidden=4)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    report = preflight(model, torch.optim.AdamW(model.parameters(), lr=1e-2), (x, shuffled), _ce, lr_steps=0)
    check = report["overfit"]
    assert check.verdict == "fail", str(report)
    assert check.figures["drop"] < 0.5
    assert any("labels" in c for c in check.causes)
    healthy = preflight(model, torch.optim.AdamW(model.parameters(), lr=1e-2), (x, y), _ce, lr_steps=0)
    assert healthy["overfit"].verdict != "fail"


class TwoBranches(torch.nn.Module):
    def __init__(self, detach: bool):
        super().__init__()
        self.detach = detach
        self.trunk = torch.nn.Linear(20, 16)
        self.side = torch.nn.Linear(20, 16)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        side = self.side(x)
        if self.detach:
            side = side.detach()  # the bug: the side branch never learns
        return self.head(torch.relu(self.trunk(x) + side))


def test_a_detached_branch_fails_the_gradient_flow_check():
    torch.manual_seed(0)
    bad = TwoBranches(detach=True)
    report = preflight(bad, torch.optim.SGD(bad.parameters(), lr=0.1), _data(), _ce, lr_steps=0)
    check = report["gradient_flow"]
    assert check.verdict == "fail"
    assert check.figures["no gradient"] == 2
    assert "side.weight" in check.causes[0] and "detach" in check.causes[0]
    torch.manual_seed(0)
    good = TwoBranches(detach=False)
    assert preflight(good, torch.optim.SGD(good.parameters(), lr=0.1), _data(), _ce,
                     lr_steps=0)["gradient_flow"].verdict == "pass"


def test_dead_relu_units_are_counted():
    model = _mlp(hidden=32)
    with torch.no_grad():
        model[0].bias[:20] = -100.0  # 20 of 32 units can never fire on unit-scale inputs
    report = preflight(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), _ce, lr_steps=0)
    check = report["gradient_flow"]
    assert check.verdict == "fail" and check.figures["dead ReLU units"].startswith("20/32")


class TinyEncoder(torch.nn.Module):
    """A transformer encoder classifier over token ids, with or without the attention mask applied."""

    def __init__(self, use_mask: bool, vocab: int = 50):
        super().__init__()
        self.use_mask = use_mask
        self.embed = torch.nn.Embedding(vocab, 16)
        self.encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        pad = (attention_mask == 0) if self.use_mask else None
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=pad)
        m = attention_mask.unsqueeze(-1).float()
        logits = self.head((h * m).sum(1) / m.sum(1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def _padded_batch(n: int = 16, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (n, seq), generator=g)
    lengths = torch.randint(4, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": (ids[:, 0] > 25).long()}


def test_padding_visible_through_the_mask_fails_the_masking_check():
    torch.manual_seed(0)
    unmasked = TinyEncoder(use_mask=False)
    report = preflight(unmasked, torch.optim.AdamW(unmasked.parameters(), lr=1e-3), _padded_batch(), lr_steps=0)
    check = report["masking"]
    assert check.verdict == "fail", str(report)
    assert check.figures["output change at real positions"] > 1e-3
    assert "masked_fill" in check.fix[0]
    torch.manual_seed(0)
    masked = TinyEncoder(use_mask=True)
    report = preflight(masked, torch.optim.AdamW(masked.parameters(), lr=1e-3), _padded_batch(), lr_steps=0)
    assert report["masking"].verdict == "pass", str(report)
    assert report["memory"].figures["dims"].startswith("batch 16 (the batch), seq 12 (the batch)")


def test_a_learning_rate_100x_too_low_fails_the_lr_check():
    model = _mlp()
    report = preflight(model, torch.optim.AdamW(model.parameters(), lr=1e-4), _data(), _ce)
    check = report["learning_rate"]
    assert check.verdict == "fail", str(report)
    assert check.figures["configured / suggested"] < 1 / 100
    assert report["overfit"].verdict == "fail"
    assert any("far too low" in c for c in report["overfit"].causes)


def test_the_guides_table_is_compared_when_the_config_names_the_family():
    model = _mlp()
    report = preflight(model, torch.optim.AdamW(model.parameters(), lr=1e-2), _data(32), _ce,
                       config={"model_family": "bert"})
    check = report["learning_rate"]
    assert check.figures["guide"].startswith("BERT fine-tuning: 1e-05-5e-05")
    assert check.verdict == "warn" and "guide's range" in check.causes[-1]


def test_no_warmup_warns_and_a_short_one_too():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    assert preflight(model, opt, _data(), _ce, lr_steps=0, max_steps=1000)["schedule"].verdict == "warn"
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    assert preflight(model, opt, _data(), _ce, lr_steps=0, scheduler=constant)["schedule"].verdict == "warn"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    short = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    check = preflight(model, opt, _data(), _ce, lr_steps=0, scheduler=short, max_steps=10_000)["schedule"]
    assert check.verdict == "warn" and check.figures["warmup steps"] == 10


def test_memory_estimate_against_the_measured_peak_on_cpu():
    """A model large enough for the step to show in the process's memory: the rule of thumb and the measured
    peak agree within a factor of 3 (the rule of thumb is for transformers; the peak is RSS on a CPU)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU()) for _ in range(8)],
                                torch.nn.Linear(512, 10))
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    report = preflight(model, torch.optim.AdamW(model.parameters(), lr=1e-3), (x, y), _ce, steps=2, lr_steps=0)
    figures = report["memory"].figures
    assert report["memory"].verdict == "pass"
    assert 1 / 3 <= figures["measured / estimate"] <= 3, figures
    assert figures["largest batch (estimate, 90% of the device)"] > 256


def _train(model, opt, batches, monitor=None):
    losses = []
    for x, y in batches:
        noise = torch.tensor(np.random.rand() + random.random())  # the job draws from numpy and random too
        loss = F.cross_entropy(model(x), y) + 0 * noise
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if monitor is not None:
            monitor.log(loss=loss)
    return losses


class Dropped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(32, 2))

    def forward(self, x):
        return self.net(x) + 0.01 * torch.randn(x.shape[0], 2)  # draws from the global generator each step


def _seeded_run(with_preflight: bool) -> list[float]:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = Dropped()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [_data(32, seed=i) for i in range(15)]
    losses = _train(model, opt, batches[:3])  # preflight mid-run: Adam state and gradients exist
    model(batches[3][0]).sum().backward()  # gradients left accumulated when preflight runs
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state_dict()["state"][0].items()}
    if with_preflight:
        preflight(model, opt, batches[3], _ce, steps=5, lr_steps=20)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        after = opt.state_dict()["state"][0]
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(after[k])) for k, v in state.items())
    opt.zero_grad()
    return losses + _train(model, opt, batches[3:])


def test_preflight_leaves_the_training_exactly_as_it_was():
    assert _seeded_run(with_preflight=True) == _seeded_run(with_preflight=False)


def test_param_groups_keep_their_proportions_in_the_copies():
    from txwatch_hooks.sanity.state import configured_lrs, copies, set_lr

    model = _mlp()
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-2},
                             {"params": [], "lr": 0.0}], lr=1e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    assert configured_lrs(opt, sched) == [1e-3, 1e-2, 0.0]
    _, copy = copies(model, opt)
    set_lr(copy, 0.5, configured_lrs(opt, sched))
    assert [g["lr"] for g in copy.param_groups] == [0.5, 5.0, 0.0]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3, 0.0])  # the job's: untouched


def test_missing_loss_is_a_clear_error():
    model = _mlp()
    with pytest.raises(ValueError, match="loss_fn"):
        preflight(model, torch.optim.SGD(model.parameters(), lr=0.1), _data()[0])


# -- watch(preflight=True) and the report stored with the run -------------------------------------------


def _hf_style_run(preflight_option, sink=None) -> list[float]:
    torch.manual_seed(0)
    model = TinyEncoder(use_mask=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    with txwatch_hooks.watch(model, opt, run="pf-watch", sender=sink or MemorySender(), preflight=preflight_option,
                             **FAST) as monitor:
        for _ in range(5):
            loss = model(**_padded_batch())["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss)
            losses.append(loss.item())
    return losses


def test_watch_runs_preflight_on_the_first_batch_and_stores_the_report():
    sink = MemorySender()
    with_preflight = _hf_style_run({"steps": 5, "lr_steps": 10}, sink)
    assert with_preflight == _hf_style_run(False)  # bit for bit
    infos = [b["run_info"] for b in sink.batches if b.get("run_info") and "preflight" in b["run_info"]]
    assert infos, "the report is sent in run_info"
    report = infos[-1]["preflight"]
    assert [c["name"] for c in report["checks"]] == ["overfit", "gradient_flow", "shapes", "masking", "memory",
                                                     "learning_rate", "schedule"]
    assert {c["name"]: c["verdict"] for c in report["checks"]}["masking"] == "fail"
    levels = {name: pts for b in sink.batches for name, pts in b["series"].items() if name.startswith("preflight/")}
    assert levels["preflight/masking"][0][0] == 0 and levels["preflight/masking"][0][2] == 2.0
    assert levels["preflight/shapes"][0][2] == 0.0


def test_watch_preflight_without_a_loss_says_what_to_call(caplog):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(32)
    with txwatch_hooks.watch(model, opt, run="pf-noloss", sender=MemorySender(), preflight=True, **FAST):
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert "txwatch.preflight(model, optimizer, batch, loss_fn" in caplog.text


def test_bad_preflight_option_raises_at_watch():
    model = _mlp()
    with pytest.raises(TypeError, match="preflight"):
        txwatch_hooks.watch(model, run="pf-bad", sender=MemorySender(), preflight="yes", **FAST)
    with pytest.raises(TypeError, match="unexpected argument 'stepz'"):
        txwatch_hooks.watch(model, run="pf-bad", sender=MemorySender(), preflight={"stepz": 3}, **FAST)


def test_the_report_prints_as_text_and_as_a_rich_table():
    from rich.console import Console

    model = _mlp()
    report = preflight(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), _ce, lr_steps=0)
    assert "[   PASS] gradient_flow" in str(report)
    console = Console(width=200, record=True)
    console.print(report)
    text = console.export_text()
    assert "gradient_flow" in text and "shapes: per module" in text
