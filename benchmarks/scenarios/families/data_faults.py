"""Data faults (shuffled labels, NaN in the inputs, unnormalized features) and overfitting (validation loss
turning up; the train/val gap growing under sparse validation)."""

from __future__ import annotations

import torch

from benchmarks.scenarios import checks, data, models, schedules
from benchmarks.scenarios.families.gradients import bad_batches
from benchmarks.scenarios.spec import Job, Scenario, variants

NAN_AT = 120


def shuffled(task: data.Task, seed: int) -> data.Task:
    """``task`` with its training labels permuted (a join on the wrong key): nothing left to learn."""
    g = torch.Generator().manual_seed(seed + 99)
    task.y_train = task.y_train[torch.randperm(len(task.y_train), generator=g)]
    return task


def shuffled_mlp(seed: int) -> Job:
    """The MLP classifier under Adam at 1e-3, on training labels shuffled against their inputs."""
    task = shuffled(data.vectors(seed=seed), seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=500, val_batch=task.val_batch(),
               val_every=50)


def shuffled_bert(seed: int) -> Job:
    """The tiny BERT fine-tuned by the HF Trainer (AdamW 5e-4, warmup + linear decay) on shuffled labels."""
    task = shuffled(data.bert_texts(seed=seed), seed)
    model = models.bert_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    return Job(model, [opt], task.batches(32, seed), data.hf_loss, steps=400,
               schedulers=[schedules.warmup_linear(opt, 40, 400)], val_batch=task.val_batch(), val_every=50,
               clip=1.0)


def _nan_rows(batch: data.Batch) -> data.Batch:
    x = batch["inputs"].clone()
    x[0] = float("nan")  # one corrupt record (a failed decode written as NaN)
    return {**batch, "inputs": x}


def nan_vit(seed: int) -> Job:
    """The ViT under AdamW with clipping; from step 120 every batch holds one NaN image (a corrupt shard)."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = bad_batches(task.batches(32, seed), tuple(range(NAN_AT, 100_000)), _nan_rows)
    return Job(model, [opt], batches, data.classify, steps=250, val_batch=task.val_batch(), val_every=50, clip=1.0)


def nan_mlp(seed: int) -> Job:
    """The MLP classifier under Lightning, Adam; from step 120 every batch holds one NaN record."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = bad_batches(task.batches(64, seed), tuple(range(NAN_AT, 100_000)), _nan_rows)
    return Job(model, [opt], batches, data.classify, steps=250, val_batch=task.val_batch(), val_every=50)


def unnormalized(task: data.Task, scale: torch.Tensor) -> data.Task:
    """``task`` with its features multiplied by ``scale`` (raw units: counts, prices, pixel values)."""
    task.x_train, task.x_val = task.x_train * scale, task.x_val * scale
    return task


def raw_features_mlp(seed: int) -> Job:
    """The MLP classifier under Adam on raw features: five columns in the ten thousands, the rest in unit
    scale (no standardization): the first layer's gradient dwarfs the others'."""
    scale = torch.ones(20)
    scale[:5] = 1e4
    task = unnormalized(data.vectors(seed=seed), scale)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, val_batch=task.val_batch(),
               val_every=50)


def raw_pixels_cnn(seed: int) -> Job:
    """The residual CNN under Adam on pixels in 0-255 with a +1000 offset channel bias (never normalized)."""
    task = unnormalized(data.images(seed=seed), torch.tensor(255.0))
    task.x_train, task.x_val = task.x_train + 1000, task.x_val + 1000
    model = models.ResCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=400, val_batch=task.val_batch(),
               val_every=50)


def memorize_mlp(seed: int) -> Job:
    """A wide MLP on 48 training examples (validated on 512, every 20 steps): it memorizes them."""
    task = data.vectors(n_train=48, n_val=512, seed=seed, noise=0.2)
    model = models.mlp([20, 256, 256, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=600, val_batch=task.val_batch(),
               val_every=20)


def memorize_vit(seed: int) -> Job:
    """The ViT under Lightning on 64 noisy training images (validated every 25 steps): it memorizes them."""
    task = data.images(n_train=64, n_val=256, seed=seed, noise=1.5)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=600, val_batch=task.val_batch(),
               val_every=25)


def sparse_val_lstm(seed: int) -> Job:
    """The LSTM on 96 training sequences, a third of their labels wrong (noisy annotation), validated only
    every 120 steps: it memorizes the noise and the gap grows between evaluations."""
    task = data.sequences(n_train=96, n_val=512, seed=seed)
    wrong = torch.rand(96, generator=torch.Generator().manual_seed(seed)) < 0.33
    task.y_train = torch.where(wrong, (task.y_train + 1) % 4, task.y_train)
    model = models.RNNClassifier("lstm", dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=720, val_batch=task.val_batch(),
               val_every=120)


def sparse_val_cnn(seed: int) -> Job:
    """The residual CNN under the HF Trainer on 64 noisy images, evaluated every 100 steps."""
    task = data.images(n_train=64, n_val=256, seed=seed, noise=1.5)
    model = models.ResCNN(channels=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=700, val_batch=task.val_batch(),
               val_every=100, clip=1.0)


LABELS = dict(onset=1, primary=("loss-not-decreasing",), secondary=("overfitting",), shows=checks.stays_high(0.9))
NAN = dict(onset=NAN_AT, primary=("loss-nonfinite",), shows=checks.nan_from(NAN_AT))
# Raw features give every layer a huge gradient from the first step (3,500 and 1,200 at step 1 against at most 38
# in any other run), not only an imbalance: under the role-aware rules the MLP's weight layers are all within
# a decade of each other (the 4+ decades of the check are weights against biases). The root cause a person
# reads off step 1, before any update, is the input scale.
RAW = dict(onset=1, primary=("unscaled-inputs",), secondary=("gradient-imbalance", "gradient-explosion",
           "update-ratio-high", "loss-diverging"), shows=checks.imbalance(4))
OVERFIT = dict(onset=1, primary=("overfitting",))

SCENARIOS: list[Scenario] = [
    *variants("data.shuffled-labels", "mlp", "plain", shuffled_mlp, quick=True, what=shuffled_mlp.__doc__, **LABELS),
    *variants("data.shuffled-labels", "bert", "hf", shuffled_bert, quick=True, what=shuffled_bert.__doc__, **LABELS),
    *variants("data.nan-inputs", "vit", "plain", nan_vit, quick=True, what=nan_vit.__doc__, **NAN),
    *variants("data.nan-inputs", "mlp", "lightning", nan_mlp, what=nan_mlp.__doc__, **NAN),
    *variants("data.unnormalized", "mlp", "plain", raw_features_mlp, quick=True, what=raw_features_mlp.__doc__,
              **RAW),
    *variants("data.unnormalized", "rescnn", "plain", raw_pixels_cnn, what=raw_pixels_cnn.__doc__, **RAW),
    *variants("overfitting.val-up", "mlp", "plain", memorize_mlp, quick=True, shows=checks.val_turns_up(),
              what=memorize_mlp.__doc__, **OVERFIT),
    *variants("overfitting.val-up", "vit", "lightning", memorize_vit, shows=checks.val_turns_up(),
              what=memorize_vit.__doc__, **OVERFIT),
    *variants("overfitting.sparse-val", "lstm", "plain", sparse_val_lstm, shows=checks.gap_grows(),
              what=sparse_val_lstm.__doc__, **OVERFIT),
    *variants("overfitting.sparse-val", "rescnn", "hf", sparse_val_cnn, quick=True, shows=checks.gap_grows(),
              what=sparse_val_cnn.__doc__, **OVERFIT),
]
