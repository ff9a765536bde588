"""A watched model stays a plain model: every way real programs copy, save, wrap or export a model mid-training.

Each cell trains a small model twice, with ``watch()`` attached before the operation and without it, runs the
operation in the middle of training and trains on afterwards. It asserts that the operation works, that the
losses are bit for bit those of the unwatched run, that monitoring still reports after it (losses, gradient
norms and update ratios at every step, the run ending as finished), and that every copy the operation made is
an ordinary model: no hook of txwatch's, nothing in its pickle that names txwatch.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.hooks.conftest import FAST, TinyNet, batch_of
from txwatch_hooks import watch
from txwatch_hooks.testing import MemorySender

pytestmark = pytest.mark.slow

WATCH = dict(FAST, grad_every=1, update_every=1)
STEPS, AT = 10, 5  # the operation runs before step AT's batch
HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class Trained:
    losses: list[torch.Tensor]
    sink: MemorySender | None
    state: SimpleNamespace
    copies: list[Any] = field(default_factory=list)


def train(operation: Callable[[SimpleNamespace], None] | None, *, watched: bool, tmp_path, steps: int = STEPS,
          at: int = AT, model: torch.nn.Module | None = None) -> Trained:
    """``steps`` AdamW steps of TinyNet on fixed batches; ``operation(state)`` runs before step ``at``.

    ``state`` carries model, optimizer, the callable the loop trains through (``forward``, which an operation
    may replace, e.g. by a compiled module), the batches' dtype, per-step callbacks (``each_step``), the copies
    the operation made (``copies``), and what it measured (``seen``)."""
    torch.manual_seed(0)
    model = model if model is not None else TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sink = MemorySender() if watched else None
    monitor = watch(model, opt, sender=sink, run=f"plain-{'w' if watched else 'u'}", project="plain",
                    **WATCH) if watched else None
    state = SimpleNamespace(model=model, opt=opt, forward=model, dtype=torch.float32, each_step=[], copies=[],
                            seen={}, monitor=monitor, tmp=tmp_path)
    losses = []
    for step in range(1, steps + 1):
        if step == at and operation is not None:
            operation(state)
        x, y = batch_of(seed=step)
        loss = torch.nn.functional.mse_loss(state.forward(x.to(state.dtype)), y.to(state.dtype))
        loss.backward()
        opt.step()
        opt.zero_grad()
        for callback in state.each_step:
            callback()
        losses.append(loss.detach().clone())
        if step == 2:
            state.seen["checkpoint"] = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict()})
        if monitor is not None:
            monitor.log(loss=loss)
    if monitor is not None:
        monitor.close()
    return Trained(losses, sink, state, state.copies)


def assert_plain(module: torch.nn.Module) -> None:
    """An ordinary model: no hooks at all on any submodule, and a pickle that does not need txwatch."""
    for sub in module.modules():
        assert "__reduce_ex__" not in sub.__dict__
        for name in HOOK_DICTS:
            assert not getattr(sub, name), (type(sub).__name__, name, getattr(sub, name))
    for p in module.parameters():
        assert not p._post_accumulate_grad_hooks and not p._backward_hooks
    assert b"txwatch" not in pickle.dumps(module)


def assert_same_training(watched: Trained, plain: Trained) -> None:
    assert len(watched.losses) == len(plain.losses)
    for step, (a, b) in enumerate(zip(watched.losses, plain.losses), start=1):
        assert torch.equal(a, b), f"step {step}: watched {a.item()!r} != unwatched {b.item()!r}"


def assert_reports(trained: Trained, steps: int = STEPS) -> None:
    """The original stayed watched: every step's loss, gradient norm and update ratio arrived, and it ended."""
    sink = trained.sink
    everything = list(range(1, steps + 1))
    assert [s for s, _ in sink.series("loss")] == everything
    assert sorted(dict(sink.series("grad_norm_total"))) == everything
    assert sorted(dict(sink.series("update_ratio_max"))) == everything
    assert [e["status"] for e in sink.events("end")] == ["finished"]
    assert trained.state.monitor.step == steps
    assert not any(trained.state.monitor.dropped.values())


def run_cell(operation, tmp_path, **kwargs) -> tuple[Trained, Trained]:
    watched = train(operation, watched=True, tmp_path=tmp_path / "w", **kwargs)
    plain = train(operation, watched=False, tmp_path=tmp_path / "u", **kwargs)
    assert_same_training(watched, plain)
    assert_reports(watched, kwargs.get("steps", STEPS))
    for made in watched.copies:
        assert_plain(made)
    return watched, plain


# -- the operations ---------------------------------------------------------------------------------------


def save_whole_module(state):
    path = state.tmp / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state.model, path)
    loaded = torch.load(path, weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), state.model.state_dict().values()))
    assert b"txwatch" not in path.read_bytes()
    state.copies.append(loaded)


def save_state_dicts(state):
    path = state.tmp / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state.model.state_dict(), "optimizer": state.opt.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    fresh = TinyNet()
    fresh.load_state_dict(checkpoint["model"])
    torch.optim.AdamW(fresh.parameters(), lr=1e-2).load_state_dict(checkpoint["optimizer"])
    state.copies.append(fresh)


def deepcopy_model_and_optimizer(state):
    model_copy = copy.deepcopy(state.model)
    opt_copy = copy.deepcopy(state.opt)
    assert not opt_copy._optimizer_step_pre_hooks and not opt_copy._optimizer_step_post_hooks
    assert opt_copy.state_dict()["state"].keys() == state.opt.state_dict()["state"].keys()
    state.copies.append(model_copy)


def averaged_model(state):
    swa = torch.optim.swa_utils.AveragedModel(state.model)
    state.each_step.append(lambda: swa.update_parameters(state.model))
    state.copies.append(swa)


def hand_written_ema(state):
    ema = copy.deepcopy(state.model).requires_grad_(False)

    def update():
        with torch.no_grad():
            for e, p in zip(ema.parameters(), state.model.parameters()):
                e.lerp_(p, 0.1)
            ema(batch_of(seed=99)[0])  # the copy's forwards are not the watched model's

    state.each_step.append(update)
    state.copies.append(ema)


def pickle_round_trip(state):
    restored = pickle.loads(pickle.dumps(state.model))
    x = batch_of(seed=7)[0]
    assert torch.equal(restored(x), state.model(x))
    state.copies.append(restored)


def _forward_in_worker(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def hand_to_a_worker_process(state):
    x = batch_of(seed=7)[0]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_forward_in_worker, (state.model, x))
    with torch.no_grad():
        assert torch.equal(out, state.model(x))


def compile_after_watch(state):
    state.forward = torch.compile(state.model, backend="aot_eager", fullgraph=True)


def to_float64(state):
    state.model.to(torch.float64)
    state.dtype = torch.float64


def load_earlier_checkpoint(state):
    """Back to the state after step 2 (``train`` keeps it), as a job that reloads its last good checkpoint."""
    state.model.load_state_dict(state.seen["checkpoint"]["model"])
    state.opt.load_state_dict(state.seen["checkpoint"]["optimizer"])


def evaluation_loop(state):
    state.model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(5):
            time.sleep(0.04)  # the validation loader
            state.model(batch_of(seed=50 + i)[0])
    state.model.train()
    state.seen["busy"] = time.perf_counter() - started


def export_mid_training(state):
    x = batch_of(seed=7)[0]
    started = time.perf_counter()
    exported = torch.export.export(state.model, (x,))
    assert torch.allclose(exported.module()(x), state.model(x))
    onnx = torch.onnx.export(state.model, (x,), dynamo=True, verbose=False)
    assert onnx is not None
    state.seen["busy"] = time.perf_counter() - started


# -- the matrix -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [
    save_whole_module, save_state_dicts, deepcopy_model_and_optimizer, averaged_model, hand_written_ema,
    pickle_round_trip, load_earlier_checkpoint, to_float64,
], ids=lambda op: op.__name__)
def test_copying_saving_and_converting_mid_training(operation, tmp_path):
    watched, _ = run_cell(operation, tmp_path, at=1 if operation is to_float64 else AT)
    if operation is averaged_model:
        assert watched.copies[0].n_averaged.item() == STEPS - AT + 1
    if operation is to_float64:
        assert watched.state.model.head.weight.dtype == torch.float64


def test_a_worker_process_gets_a_plain_model(tmp_path):
    """multiprocessing (as DataLoader workers do) pickles what it hands over; the worker has no txwatch state."""
    run_cell(hand_to_a_worker_process, tmp_path)


def test_compile_after_watch_stays_one_graph(tmp_path):
    """fullgraph=True: a hook that broke the graph would fail here; and no recompiles beyond the unwatched run."""
    from torch._dynamo.utils import counters

    graphs = []
    for watched in (True, False):
        torch._dynamo.reset()
        counters.clear()
        graphs.append(train(compile_after_watch, watched=watched, tmp_path=tmp_path))
        graphs[-1].graphs = counters["stats"]["unique_graphs"]
    assert_same_training(*graphs)
    assert_reports(graphs[0])
    assert graphs[0].graphs == graphs[1].graphs >= 1


def test_compile_before_watch(tmp_path):
    torch._dynamo.reset()
    runs = []
    for watched in (True, False):
        torch.manual_seed(0)
        compiled = torch.compile(TinyNet(), backend="aot_eager")
        runs.append(train(None, watched=watched, tmp_path=tmp_path, model=compiled))
    assert_same_training(*runs)
    assert_reports(runs[0])
    assert "grad_norm/_orig_mod.head.weight" in runs[0].sink.names()
    assert len(runs[0].sink.series("data_wait")) == STEPS - 1  # the wrapper's calls are seen, eagerly


@pytest.mark.parametrize("operation", [evaluation_loop, export_mid_training], ids=lambda op: op.__name__)
def test_other_forwards_are_not_training(operation, tmp_path):
    """Evaluation under no_grad and an export's traces between two steps: no step counted, and their time is
    not taken for waiting on the input pipeline."""
    watched, _ = run_cell(operation, tmp_path)
    wait = dict(watched.sink.series("data_wait"))
    assert watched.state.seen["busy"] > 0.15
    assert wait[AT] < 0.05, (wait[AT], watched.state.seen["busy"])


def test_state_dict_keys_and_parameter_names_are_the_unwatched_ones():
    torch.manual_seed(0)
    model = TinyNet()
    before = (list(model.state_dict()), [n for n, _ in model.named_parameters()], list(model.__dict__))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, sender=MemorySender(), **WATCH):
        assert list(model.state_dict()) == before[0]
        assert [n for n, _ in model.named_parameters()] == before[1]
        assert [n for n, _ in copy.deepcopy(model).named_parameters()] == before[1]
    assert list(model.__dict__) == before[2]  # close() leaves nothing behind
    assert_plain(model)
