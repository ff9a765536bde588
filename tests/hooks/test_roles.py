"""Parameter roles in run_info: kinds from the owning modules, tied aliases, param groups, frozen parameters."""

from __future__ import annotations

import pytest
import torch

import txwatch_hooks
from txwatch.wire.batch import Batch
from txwatch_hooks import roles, wire
from tests.hooks.conftest import FAST

transformers = pytest.importorskip("transformers")


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)  # lm_head.weight is tied to transformer.wte.weight


def _fine_tuning_optimizer(model):
    """The usual grouping: decayed matrices, undecayed biases and norms, the position table frozen, and
    the first block's attention at lr 0 (a backbone held still)."""
    model.transformer.wpe.weight.requires_grad_(False)
    held = list(model.transformer.h[0].attn.parameters())
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in held)]
    return torch.optim.AdamW([
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        {"params": held, "lr": 0.0},
    ], lr=1e-3)


def _train_lm(model, opt, monitor, steps=3):
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        monitor.log(loss=loss)


def _roles_by_name(info):
    return {p["name"]: p for p in info["params"]}


def test_a_tied_gpt2_fine_tuning_sends_kinds_aliases_groups_and_frozen_parameters(sink):
    model = _gpt2()
    opt = _fine_tuning_optimizer(model)
    with txwatch_hooks.watch(model, opt, sender=sink, **FAST) as monitor:
        _train_lm(model, opt, monitor)
    info = Batch.model_validate(sink.batches[0]).run_info.model_dump()
    params = _roles_by_name(info)
    # one entry per distinct tensor, named as the per-layer series name it, in the model's order
    assert list(params) == info["layers"] == [n for n, _ in model.named_parameters()]
    wte = params["transformer.wte.weight"]
    assert wte["kind"] == "embedding" and wte["aliases"] == ["lm_head.weight"]
    assert wte["shape"] == [64, 16] and wte["numel"] == 64 * 16
    assert params["transformer.wpe.weight"]["requires_grad"] is False
    assert params["transformer.wpe.weight"]["group"] is None  # frozen and in no group
    block = "transformer.h.1."
    assert params[block + "ln_1.weight"]["kind"] == params[block + "ln_1.bias"]["kind"] == "norm"
    assert params[block + "attn.c_attn.weight"]["kind"] == "weight"  # transformers' Conv1D, not nn.Linear
    assert params[block + "attn.c_attn.bias"]["kind"] == "bias"
    assert params[block + "mlp.c_proj.weight"]["kind"] == "weight"
    assert [params[block + "attn.c_attn.weight"]["group"], params[block + "ln_1.bias"]["group"],
            params["transformer.h.0.attn.c_attn.bias"]["group"]] == [0, 1, 2]
    assert all("aliases" not in p for n, p in params.items() if n != "transformer.wte.weight")
    groups = info["param_groups"]
    assert [(g["index"], g["optimizer"], g["optimizer_group"], g["optimizer_class"]) for g in groups] == \
        [(0, 0, 0, "AdamW"), (1, 0, 1, "AdamW"), (2, 0, 2, "AdamW")]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.1), (1e-3, 0.0), (0.0, 0.01)]
    assert [g["params"] for g in groups] == [len(opt.param_groups[i]["params"]) for i in range(3)]


class _Zoo(torch.nn.Module):
    """One of each kind, with no parameter named after its kind (the names say nothing)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Embedding(10, 8)
        self.b = torch.nn.Conv2d(1, 4, 3)
        self.c = torch.nn.BatchNorm2d(4)
        self.d = torch.nn.MultiheadAttention(8, 2)
        self.e = torch.nn.GroupNorm(2, 4)
        self.f = torch.nn.PReLU()
        self.g = torch.nn.Parameter(torch.zeros(1, 3, 8))  # a bare parameter on a container: a position table
        self.h = torch.nn.Linear(8, 10, bias=False)
        self.h.weight = self.a.weight  # tied the other way round: the linear layer owns the embedding's table


def test_kinds_come_from_the_owning_module_and_the_number_of_dimensions():
    info = roles.describe(_Zoo())
    kinds = {p["name"]: p["kind"] for p in info["params"]}
    assert kinds == {
        "g": "other", "a.weight": "embedding", "b.weight": "weight", "b.bias": "bias", "c.weight": "norm",
        "c.bias": "norm", "d.in_proj_weight": "weight", "d.in_proj_bias": "bias", "d.out_proj.weight": "weight",
        "d.out_proj.bias": "bias", "e.weight": "norm", "e.bias": "norm", "f.weight": "other",
    }
    assert {p["name"]: p.get("aliases") for p in info["params"]}["a.weight"] == ["h.weight"]
    assert info["param_groups"] == [] and all(p["group"] is None for p in info["params"])


def test_a_library_norm_class_is_a_norm_by_its_type():
    class LlamaStyleRMSNorm(torch.nn.Module):  # model libraries write their own norms
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))

    class Scale(torch.nn.Module):  # the same shape of parameter, not a norm
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))

    kinds = [p["kind"] for p in roles.describe(torch.nn.Sequential(LlamaStyleRMSNorm(), Scale()))["params"]]
    assert kinds == ["norm", "other"]


def test_an_optimizer_attached_later_resends_run_info_with_the_groups(sink):
    """The integrations may attach the optimizer after the start: run_info goes again, whole, with groups."""
    model = _gpt2()
    with txwatch_hooks.watch(model, sender=sink, **FAST) as monitor:
        monitor.log(step=0, loss=1.0)
        assert monitor.flush(5)
        opt = _fine_tuning_optimizer(model)
        monitor._attach_optimizer(opt)
        monitor._attach_optimizer(opt)  # the same again: nothing new to send
        _train_lm(model, opt, monitor, steps=2)
    infos = [b["run_info"] for b in sink.batches if "run_info" in b]
    assert len(infos) == 2
    first, second = infos
    assert first["param_groups"] == [] and all(p["group"] is None for p in first["params"])
    assert [g["lr"] for g in second["param_groups"]] == [1e-3, 1e-3, 0.0]
    assert {k: v for k, v in second.items() if k not in ("params", "param_groups")} == \
        {k: v for k, v in first.items() if k not in ("params", "param_groups")}  # nothing reset to a default
    assert _roles_by_name(second)["transformer.h.0.attn.c_attn.weight"]["group"] == 2


def test_roles_are_bounded_like_the_layer_order(sink):
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1)) for _ in range(wire.MAX_LAYERS + 5)])
    with txwatch_hooks.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), sender=sink, **FAST) as monitor:
        monitor.log(loss=1.0)
    info = Batch.model_validate(sink.batches[0]).run_info.model_dump()
    assert len(info["params"]) == wire.MAX_LAYERS
    assert info["params"][-1] == {"name": str(wire.MAX_LAYERS - 1), "shape": [1], "numel": 1, "kind": "other",
                                  "group": 0, "requires_grad": True}


def test_roles_reach_the_store_and_an_update_keeps_the_other_run_info():
    """Embedded collector: the late groups land in the run's info; world_size and layers stay as sent."""
    from sqlalchemy import select

    from txwatch.store.db import make_engine, session_factory
    from txwatch.store.models import Run

    model = _gpt2()
    with txwatch_hooks.watch(model, run="roles-stored", **FAST) as monitor:
        monitor.log(step=0, loss=1.0)
        assert monitor.flush(10)
        opt = _fine_tuning_optimizer(model)
        monitor._attach_optimizer(opt)
        _train_lm(model, opt, monitor, steps=1)
    engine = make_engine(None)
    try:
        with session_factory(engine)() as s:
            info = s.scalars(select(Run).where(Run.name == "roles-stored")).one().info
    finally:
        engine.dispose()
    assert [g["lr"] for g in info["param_groups"]] == [1e-3, 1e-3, 0.0]
    assert _roles_by_name(info)["transformer.wte.weight"]["aliases"] == ["lm_head.weight"]
    assert info["world_size"] == 1 and info["layers"][0] == "transformer.wte.weight"


def test_roles_that_fail_leave_the_run_and_the_training_alone(sink, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("roles exploded")

    monkeypatch.setattr(txwatch_hooks.monitor, "describe", boom)
    model = _gpt2()
    opt = _fine_tuning_optimizer(model)
    with txwatch_hooks.watch(model, sender=sink, **FAST) as monitor:
        monitor._attach_optimizer(opt)  # the late path fails too
        _train_lm(model, opt, monitor, steps=2)
    info = sink.batches[0]["run_info"]
    assert "params" not in info and info["layers"][0] == "transformer.wte.weight"
    assert sorted(dict(sink.series("loss"))) == [1, 2]
    assert sum("parameter roles failed" in r.getMessage() for r in caplog.records) == 1
