"""Learning-rate faults: too high (SGD blow-up to NaN, Adam collapse to a high plateau, oscillation), too low,
and schedule bugs (stepped per micro-batch, stuck at 0, no warmup on a post-LN transformer)."""

from __future__ import annotations

import torch

from benchmarks.scenarios import checks, data, models, schedules
from benchmarks.scenarios.families import LR_HIGH, LR_LOW
from benchmarks.scenarios.spec import Job, Scenario, variants

JUMP_AT = 150


def _regression(seed: int) -> data.Task:
    """A linear-ish regression task (targets from a random linear map plus noise), as vectors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2560, 16, generator=g)
    y = (x @ torch.randn(16, 1, generator=g) + 0.1 * torch.randn(2560, 1, generator=g)).squeeze(1)
    return data.Task("regression", x[:2048], y[:2048], x[2048:], y[2048:])


def mse(model: torch.nn.Module, batch: data.Batch) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["inputs"]).squeeze(-1).float(), batch["labels"])


def sgd_jump_mlp(seed: int) -> Job:
    """A GELU MLP regressor trained well by SGD at 0.003, until a schedule bug multiplies the LR by 130 at
    step 150: the weights blow up to inf within a few steps."""
    task = _regression(seed)
    model = models.mlp([16, 64, 64, 1], torch.nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.003)
    return Job(model, [opt], task.batches(64, seed), mse, steps=300, val_batch=task.val_batch(), val_every=50,
               events={JUMP_AT: lambda: schedules.set_peak(None, opt, 130.0)})


def image_regression(seed: int) -> data.Task:
    """The images task with its class index as a regression target (a count to predict)."""
    task = data.images(seed=seed)
    task.y_train, task.y_val = task.y_train.float(), task.y_val.float()
    return task


def sgd_jump_cnn(seed: int) -> Job:
    """A residual CNN regressor under SGD with momentum at 0.01; its learning rate jumps 100x at step 150 (an
    LR-finder's value pasted in), and with no clipping the head's outputs overflow."""
    task = image_regression(seed)
    model = models.ResCNN(classes=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return Job(model, [opt], task.batches(32, seed), mse, steps=300, val_batch=task.val_batch(),
               val_every=50, events={JUMP_AT: lambda: schedules.set_peak(None, opt, 100.0)})


def adam_gpt(seed: int) -> Job:
    """The pre-LN GPT under AdamW at 0.5 (500x the usual 1e-3) from step 1, clipped at 1.0: the loss jumps
    4x in three steps, then sits on a high plateau near where it started without ever turning NaN."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.01)
    return Job(model, [opt], lm.batches(16, seed), data.next_token, steps=400, val_batch=lm.val_batch(),
               val_every=100, clip=1.0)


def adam_bert(seed: int) -> Job:
    """A tiny BERT fine-tuned by the HF Trainer with AdamW at 0.05 (1000x a fine-tuning LR), linear decay."""
    task = data.bert_texts(seed=seed)
    model = models.bert_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    return Job(model, [opt], task.batches(32, seed), data.hf_loss, steps=300,
               schedulers=[schedules.warmup_linear(opt, 10, 300)], val_batch=task.val_batch(), val_every=50,
               clip=1.0)


def restarts_mlp(seed: int) -> Job:
    """The MLP classifier under SGD+momentum with warm restarts (period 150) to a peak LR of 0.5."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=600,
               schedulers=[schedules.restarts(opt, 150, floor=1e-3)], val_batch=task.val_batch(), val_every=50)


def cyclic_vit(seed: int) -> Job:
    """The ViT under Lightning with a triangular cyclic LR between 1e-4 and 0.03 (Adam): every cycle's peak
    throws the loss back up."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=0.03, step_size_up=75,
                                              cycle_momentum=False)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=600, schedulers=[sched],
               val_batch=task.val_batch(), val_every=100)


def adam_tiny_mlp(seed: int) -> Job:
    """The MLP classifier under Adam at 1e-6: the weights barely move."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, val_batch=task.val_batch(),
               val_every=50)


def sgd_tiny_lstm(seed: int) -> Job:
    """The LSTM classifier under Lightning, SGD at 1e-4 without momentum."""
    task = data.sequences(seed=seed)
    model = models.RNNClassifier("lstm")
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return Job(model, [opt], task.batches(64, seed), data.classify, steps=400, val_batch=task.val_batch(),
               val_every=100)


def per_micro_gpt(seed: int) -> Job:
    """The GPT with gradient accumulation over 4 micro-batches and warmup+cosine planned over 600 steps, but
    the scheduler is stepped per micro-batch: warmup is over by step 8 and the LR is 0 from step 150 on."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return Job(model, [opt], lm.batches(8, seed), data.next_token, steps=600, accumulate=4, clip=1.0,
               schedulers=[schedules.warmup_cosine(opt, 30, 600)], sched_per_micro=True,
               val_batch=lm.val_batch(), val_every=100)


def per_micro_cnn(seed: int) -> Job:
    """The residual CNN under SGD+momentum with a linear decay planned over 500 steps, accumulation over 4,
    the scheduler stepped per micro-batch: the LR reaches 0 at step 125."""
    task = data.images(seed=seed)
    model = models.ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Job(model, [opt], task.batches(16, seed), data.classify, steps=500, accumulate=4,
               schedulers=[schedules.warmup_linear(opt, 10, 500)], sched_per_micro=True,
               val_batch=task.val_batch(), val_every=100)


def step_zero_vit(seed: int) -> Job:
    """The ViT with a step decay meant as x0.1 every 150 steps, written ``gamma=0.0``: the LR is 0 from step 150."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=500,
               schedulers=[schedules.step_decay(opt, 150, gamma=0.0)], val_batch=task.val_batch(), val_every=50)


def step_zero_bert(seed: int) -> Job:
    """The tiny BERT under the HF Trainer with the same ``gamma=0.0`` step decay, from step 100."""
    task = data.bert_texts(seed=seed)
    model = models.bert_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    return Job(model, [opt], task.batches(32, seed), data.hf_loss, steps=400,
               schedulers=[schedules.step_decay(opt, 100, gamma=0.0)], val_batch=task.val_batch(), val_every=50,
               clip=1.0)


def post_ln_nowarmup(seed: int, trainer_precision: str = "fp32") -> Job:
    """A post-LN transformer LM (6 layers, width 64) under Adam at 0.3 from step 1, no warmup or clipping:
    the loss quadruples within three steps."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT(dim=64, layers=6, post_ln=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    return Job(model, [opt], lm.batches(16, seed), data.next_token, steps=300, val_batch=lm.val_batch(),
               val_every=50, precision=trainer_precision)


def post_ln_nowarmup_bf16(seed: int) -> Job:
    return post_ln_nowarmup(seed, "bf16")


# Adam at 0.3 without warmup blows the post-LN model up in its first steps and it never recovers: on its true
# values (--truth) the loss stays within 5% of where it started for all 300 steps, the median update ratio
# falls to 1e-7 and the smallest layer gradient to 1e-15 from step 100. The warmup is missing, and the learning
# rate is too high for the whole run as well: a first diagnosis naming either cause is right.
NO_WARMUP_AT_0_3 = ("no-warmup",) + LR_HIGH

SCENARIOS: list[Scenario] = [
    *variants("lr-too-high.sgd-nan", "mlp", "plain", sgd_jump_mlp, onset=JUMP_AT, quick=True,
              primary=LR_HIGH, shows=checks.nan_from(JUMP_AT), what=sgd_jump_mlp.__doc__),
    *variants("lr-too-high.sgd-nan", "rescnn", "lightning", sgd_jump_cnn, onset=JUMP_AT,
              primary=LR_HIGH, shows=checks.nan_from(JUMP_AT), what=sgd_jump_cnn.__doc__),
    *variants("lr-too-high.adam-plateau", "gpt-preln", "plain", adam_gpt, onset=1, quick=True,
              primary=LR_HIGH, secondary=("no-warmup", "loss-oscillating"),
              shows=checks.all_of(checks.loss_rises(1, 2.0), checks.stays_high(0.9)), what=adam_gpt.__doc__),
    *variants("lr-too-high.adam-plateau", "bert", "hf", adam_bert, onset=1, quick=True,
              primary=LR_HIGH, secondary=("no-warmup", "loss-oscillating"),
              shows=checks.stays_high(0.9), what=adam_bert.__doc__),
    *variants("lr-too-high.oscillation", "mlp", "plain", restarts_mlp, onset=1, quick=True,
              primary=("loss-oscillating", "update-ratio-high"), secondary=("loss-diverging", "gradient-explosion"),
              shows=checks.oscillates(), what=restarts_mlp.__doc__),
    *variants("lr-too-high.oscillation", "vit", "lightning", cyclic_vit, onset=1,
              primary=("loss-oscillating", "update-ratio-high"), secondary=("loss-diverging", "gradient-explosion"),
              shows=checks.oscillates(), what=cyclic_vit.__doc__),
    *variants("lr-too-low", "mlp", "plain", adam_tiny_mlp, onset=1, quick=True, primary=LR_LOW,
              shows=checks.flat(), what=adam_tiny_mlp.__doc__),
    *variants("lr-too-low", "lstm", "lightning", sgd_tiny_lstm, onset=1, quick=True, primary=LR_LOW,
              shows=checks.flat(), what=sgd_tiny_lstm.__doc__),
    *variants("schedule.per-micro-batch", "gpt-preln", "plain", per_micro_gpt, onset=150, quick=True, primary=LR_LOW,
              shows=checks.lr_zero_from(151), what=per_micro_gpt.__doc__),
    *variants("schedule.per-micro-batch", "rescnn", "plain", per_micro_cnn, onset=125, primary=LR_LOW,
              shows=checks.lr_zero_from(126), what=per_micro_cnn.__doc__),
    *variants("schedule.stuck-at-0", "vit", "plain", step_zero_vit, onset=151, quick=True, primary=LR_LOW,
              shows=checks.all_of(checks.lr_zero_from(151), checks.stops_improving(151)), what=step_zero_vit.__doc__),
    *variants("schedule.stuck-at-0", "bert", "hf", step_zero_bert, onset=101, primary=LR_LOW,
              shows=checks.lr_zero_from(101), what=step_zero_bert.__doc__),
    *variants("schedule.no-warmup-post-ln", "post-ln", "plain", post_ln_nowarmup, onset=1, quick=True,
              primary=NO_WARMUP_AT_0_3, secondary=LR_HIGH, shows=checks.loss_rises(1, 1.5),
              what=post_ln_nowarmup.__doc__),
    *variants("schedule.no-warmup-post-ln", "post-ln", "lightning", post_ln_nowarmup_bf16, onset=1,
              primary=NO_WARMUP_AT_0_3, secondary=LR_HIGH, shows=checks.loss_rises(1, 1.5),
              what=post_ln_nowarmup.__doc__ + " (bf16-mixed)"),
]
