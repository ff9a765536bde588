"""Gradient faults: spikes with no clipping (landing between txwatch's sampled steps), vanishing gradients,
dead ReLU units, and a dead branch (a layer whose gradient is exactly zero)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from benchmarks.scenarios import checks, data, models, schedules
from benchmarks.scenarios.families import LR_HIGH
from benchmarks.scenarios.families.lr import _regression, mse
from benchmarks.scenarios.spec import Job, Scenario, variants

SPIKES = (103, 157, 211, 263, 317)  # optimizer steps with a bad batch: none is a multiple of 10
DEAD_AT = 150


def bad_batches(batches: Iterator[data.Batch], at: tuple[int, ...], corrupt) -> Iterator[data.Batch]:
    """``batches`` with the ones drawn for steps ``at`` (counting from 1) passed through ``corrupt``."""
    for i, batch in enumerate(batches, start=1):
        yield corrupt(batch) if i in at else batch


def spikes_mlp(seed: int) -> Job:
    """The MLP regressor under SGD+momentum, no clipping; five batches have targets 30x too large (a unit
    mix-up upstream) at steps that are not multiples of 10, so txwatch's sampled steps miss the spikes."""
    task = _regression(seed)
    model = models.mlp([16, 64, 64, 1], nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = bad_batches(task.batches(64, seed), SPIKES, lambda b: {**b, "labels": b["labels"] * 30})
    return Job(model, [opt], batches, mse, steps=400, val_batch=task.val_batch(), val_every=50)


def spikes_cnn(seed: int) -> Job:
    """The residual CNN under Lightning, SGD+momentum, no clipping; five batches come through undivided
    (pixels 255x too large, a decode path that skipped the /255) at steps between the sampled ones."""
    task = data.images(seed=seed)
    model = models.ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = bad_batches(task.batches(32, seed), SPIKES, lambda b: {**b, "inputs": b["inputs"] * 255})
    return Job(model, [opt], batches, data.classify, steps=400, val_batch=task.val_batch(), val_every=100)


def sigmoid_mlp(seed: int) -> Job:
    """A 12-layer sigmoid MLP without normalization under Adam: the early layers get almost no gradient."""
    task = data.vectors(seed=seed)
    model = models.mlp([20] + [64] * 11 + [4], nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=300, val_batch=task.val_batch(),
               val_every=50)


def sigmoid_cnn(seed: int) -> Job:
    """An 8-layer sigmoid CNN without shortcuts or normalization, under Lightning with Adam."""
    task = data.images(seed=seed)
    model = models.PlainCNN(depth=8, act=nn.Sigmoid)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=300, val_batch=task.val_batch(),
               val_every=100)


def _spike_lr(job: Job, at: int, factor: float, length: int = 5) -> None:
    """The learning rate ``factor`` x for ``length`` steps from step ``at``, then back."""
    sched, opt = (job.schedulers or [None])[0], job.optimizers[0]
    job.events[at] = lambda: schedules.set_peak(sched, opt, factor)
    job.events[at + length] = lambda: schedules.set_peak(sched, opt, 1 / factor)


def dead_relu_mlp(seed: int) -> Job:
    """The ReLU MLP regressor under SGD at 0.01 whose LR jumps 40x at step 150 (a schedule bug): within a
    few steps every hidden unit is off for good, and only the output bias still gets a gradient."""
    task = _regression(seed)
    model = models.mlp([16, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return Job(model, [opt], task.batches(64, seed), mse, steps=350, val_batch=task.val_batch(), val_every=50,
               events={DEAD_AT: lambda: schedules.set_peak(None, opt, 40.0)})


def dead_relu_cnn(seed: int) -> Job:
    """A 4-layer ReLU CNN without normalization under SGD+momentum; five steps at 40x the LR from step 150
    switch its ReLUs off for good."""
    task = data.images(seed=seed)
    model = models.PlainCNN(depth=4, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    job = Job(model, [opt], task.batches(32, seed), data.classify, steps=350, val_batch=task.val_batch(),
              val_every=50)
    _spike_lr(job, DEAD_AT, 40.0)
    return job


class TwoTower(nn.Module):
    """Two feature branches summed into one head; the second is gated by a padding mask that, by a bug
    (``lengths > max_len`` instead of ``<``), is all zeros: its branch gets exactly zero gradient."""

    def __init__(self, branch_a: nn.Module, branch_b: nn.Module, dim: int, classes: int = 4):
        super().__init__()
        self.branch_a, self.branch_b = branch_a, branch_b
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.full((len(x), 1), 8) > 16).float()  # all False: the bug
        return self.head(self.branch_a(x) + mask * self.branch_b(x))


class SeqFeatures(nn.Module):
    """Tokens -> the last hidden state of a GRU (a branch of ``TwoTower``)."""

    def __init__(self, vocab: int = 32, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(tokens))[0][:, -1]


class BagFeatures(nn.Module):
    """Tokens -> the mean of their embeddings through a ReLU layer."""

    def __init__(self, vocab: int = 32, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.embed(tokens).mean(dim=1)))


def dead_branch_mlp(seed: int) -> Job:
    task = data.vectors(seed=seed)
    model = TwoTower(models.mlp([20, 64, 32]), models.mlp([20, 64, 32]), 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=300, val_batch=task.val_batch(),
               val_every=50)


def dead_branch_gru(seed: int) -> Job:
    task = data.sequences(seed=seed)
    model = TwoTower(SeqFeatures(), BagFeatures(), 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=300,
               schedulers=[schedules.warmup_linear(opt, 30, 300)], val_batch=task.val_batch(), val_every=50,
               clip=1.0)


dead_branch_mlp.__doc__ = dead_branch_gru.__doc__ = TwoTower.__doc__

# An unclipped spike shows first in the gradient norm where txwatch sees every step's norm. On a CPU, where
# reading every gradient every step costs more than the hooks' every_step_cost allows (the ResCNN's 10 ms
# steps), the norms are read on sampled steps only and the spike at step 103 (128 against a median of ~1) is
# not captured: what shows is the loss jumping 20x. loss-diverging names the same cause (gradients not
# clipped) and the same fix (clip to 1.0), so it is a right first diagnosis too.
SPIKE_TRUTH = dict(onset=SPIKES[0], primary=("gradient-explosion", "loss-diverging"),
                   secondary=("loss-nonfinite", "update-ratio-high", "loss-oscillating"),
                   shows=checks.grad_spikes(SPIKES[0]))
DEAD_TRUTH = dict(primary=("dead-layer",), secondary=("loss-not-decreasing",))
# The dead-ReLU runs die of a learning-rate jump: naming the jump names the root cause (an LR too high explains
# dead layers), the dead layers its consequence; either is a right first diagnosis.
DEAD_BY_LR = ("lr-jump",) + DEAD_TRUTH["primary"]

SCENARIOS: list[Scenario] = [
    *variants("no-clipping.spikes", "mlp", "plain", spikes_mlp, quick=True, what=spikes_mlp.__doc__, **SPIKE_TRUTH),
    *variants("no-clipping.spikes", "rescnn", "lightning", spikes_cnn, quick=True, what=spikes_cnn.__doc__, **SPIKE_TRUTH),
    *variants("vanishing-gradients", "mlp", "plain", sigmoid_mlp, onset=1, quick=True,
              primary=("vanishing-gradients",), secondary=("gradient-imbalance", "loss-not-decreasing"),
              shows=checks.vanishing(), what=sigmoid_mlp.__doc__),
    *variants("vanishing-gradients", "cnn", "lightning", sigmoid_cnn, onset=1, quick=True,
              primary=("vanishing-gradients",), secondary=("gradient-imbalance", "loss-not-decreasing"),
              shows=checks.vanishing(), what=sigmoid_cnn.__doc__),
    *variants("dead-relu", "mlp", "plain", dead_relu_mlp, onset=DEAD_AT, quick=True, what=dead_relu_mlp.__doc__,
              shows=checks.zero_grads_from(DEAD_AT + 10), primary=DEAD_BY_LR,
              secondary=DEAD_TRUTH["secondary"] + LR_HIGH),
    *variants("dead-relu", "cnn", "plain", dead_relu_cnn, onset=DEAD_AT, what=dead_relu_cnn.__doc__,
              shows=checks.zero_grads_from(DEAD_AT + 5), primary=DEAD_BY_LR,
              secondary=DEAD_TRUTH["secondary"] + LR_HIGH),
    *variants("dead-branch", "mlp", "plain", dead_branch_mlp, onset=1, shows=checks.zero_grads_from(1),
              what=TwoTower.__doc__, **DEAD_TRUTH),
    *variants("dead-branch", "gru", "hf", dead_branch_gru, onset=1, quick=True, shows=checks.zero_grads_from(1),
              what=TwoTower.__doc__, **DEAD_TRUTH),
]
