"""Failures of the job rather than the optimization: slow input (a sleeping loader, CPU-bound transforms),
out of memory, a crash, a stall (the process vanishes), and fp16 overflow under a GradScaler."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from benchmarks.scenarios import checks, data, models, schedules
from benchmarks.scenarios.spec import Job, Scenario, variants

FAIL_AT = 120
STALL_AT = 400  # late enough that the run has been reporting for seconds (batches leave every 2 s)
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity; 13.10 GiB already "
               "allocated; 1.21 GiB free; 14.20 GiB reserved in total by PyTorch) If reserved memory is >> allocated "
               "memory try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")


def sleeping(batches: Iterator[data.Batch], delay_s: float) -> Iterator[data.Batch]:
    """A loader that takes ``delay_s`` per batch (a remote store, a decode in the main process)."""
    for batch in batches:
        time.sleep(delay_s)
        yield batch


def augmented(batches: Iterator[data.Batch], rounds: int = 24) -> Iterator[data.Batch]:
    """Per-image augmentation in Python in the main process (random shift, blur, jitter, one image at a time)."""
    for batch in batches:
        images = []
        for img in batch["inputs"]:
            out = img
            for _ in range(rounds):
                out = torch.roll(out, shifts=(int(torch.randint(-1, 2, ())), int(torch.randint(-1, 2, ()))),
                                 dims=(1, 2))
                out = torch.nn.functional.avg_pool2d(out[None], 3, 1, 1)[0] * 0.5 + out * 0.5
                out = out + 0.01 * torch.randn_like(out)
            images.append(out)
        yield {**batch, "inputs": torch.stack(images)}


def fails_at(batches: Iterator[data.Batch], at: int, exc: Exception) -> Iterator[data.Batch]:
    """``batches`` until the ``at``-th, whose collate raises ``exc``."""
    for i, batch in enumerate(batches, start=1):
        if i == at:
            raise exc
        yield batch


def slow_mlp(seed: int) -> Job:
    """The MLP classifier fed by a loader that sleeps 15 ms per batch: the CPU waits most of each step."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], sleeping(task.batches(64, seed), 0.015), data.classify, steps=300,
               val_batch=task.val_batch(), val_every=100)


def slow_gpt(seed: int) -> Job:
    """The GPT under Lightning fed by a loader that sleeps 30 ms per batch."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Job(model, [opt], sleeping(lm.batches(16, seed), 0.03), data.next_token, steps=300,
               schedulers=[schedules.warmup_cosine(opt, 30, 300, 0.1)], val_batch=lm.val_batch(), val_every=100)


def transforms_cnn(seed: int) -> Job:
    """The residual CNN with per-image Python augmentation in the training loop's process."""
    task = data.images(seed=seed)
    model = models.ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return Job(model, [opt], augmented(task.batches(32, seed)), data.classify, steps=300,
               val_batch=task.val_batch(), val_every=100)


def transforms_vit(seed: int) -> Job:
    """The ViT under the HF Trainer with the same per-image Python augmentation."""
    task = data.images(seed=seed)
    model = models.TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Job(model, [opt], augmented(task.batches(32, seed)), data.classify, steps=300,
               schedulers=[schedules.warmup_linear(opt, 20, 300)], val_batch=task.val_batch(), val_every=100,
               clip=1.0)


def oom_mlp(seed: int) -> Job:
    """The MLP classifier whose collate, at batch 120 (the longest padded batch), runs out of device memory."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    oom = torch.OutOfMemoryError(OOM_MESSAGE)
    return Job(model, [opt], fails_at(task.batches(64, seed), FAIL_AT, oom), data.classify, steps=300,
               val_batch=task.val_batch(), val_every=50)


def oom_gpt(seed: int) -> Job:
    """The GPT under Lightning, out of device memory at batch 120 (a RuntimeError saying so, as older
    torch and other backends raise it)."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Job(model, [opt], fails_at(lm.batches(16, seed), FAIL_AT, RuntimeError(OOM_MESSAGE)), data.next_token,
               steps=300, val_batch=lm.val_batch(), val_every=50)


def _drop_feature(batches: Iterator[data.Batch], at: int) -> Iterator[data.Batch]:
    for i, batch in enumerate(batches, start=1):
        yield {**batch, "inputs": batch["inputs"][:, :19]} if i == at else batch  # a column went missing upstream


def crash_mlp(seed: int) -> Job:
    """The MLP classifier; batch 120 lost a feature column upstream: the matmul raises."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], _drop_feature(task.batches(64, seed), FAIL_AT), data.classify, steps=300,
               val_batch=task.val_batch(), val_every=50)


def _bad_token(batches: Iterator[data.Batch], at: int) -> Iterator[data.Batch]:
    for i, batch in enumerate(batches, start=1):
        if i == at:
            batch = {**batch, "inputs": batch["inputs"].clone()}
            batch["inputs"][0, 0] = 40  # a token id past the vocabulary (a tokenizer/model mismatch)
        yield batch


def crash_lstm(seed: int) -> Job:
    """The LSTM classifier under Lightning; batch 120 holds a token id past the embedding: IndexError."""
    task = data.sequences(seed=seed)
    model = models.RNNClassifier("lstm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Job(model, [opt], _bad_token(task.batches(64, seed), FAIL_AT), data.classify, steps=300,
               val_batch=task.val_batch(), val_every=50)


def stall_cnn(seed: int) -> Job:
    """The residual CNN whose process is killed (kill -9) at step 400, after several seconds of reporting:
    nothing more reaches the collector, not even an end event."""
    task = data.images(seed=seed)
    model = models.ResCNN(channels=32, blocks=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return Job(model, [opt], task.batches(32, seed), data.classify, steps=500, val_batch=task.val_batch(),
               val_every=50, go_dark_at=STALL_AT)


def stall_gpt(seed: int) -> Job:
    """A wider GPT (4 layers, width 64) under Lightning, killed by the kernel's OOM killer at step 400: it
    goes silent."""
    lm = data.MarkovLM(seed=seed)
    model = models.TinyGPT(dim=64, layers=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Job(model, [opt], lm.batches(16, seed), data.next_token, steps=500, val_batch=lm.val_batch(),
               val_every=50, go_dark_at=STALL_AT)


def _loss_weight_bug(job: Job, at: int, factor: float = 1e9) -> Job:
    """From optimizer step ``at`` on, the loss is multiplied by ``factor`` (a loss weight off by orders of
    magnitude, or a sum where a mean was meant): its gradients overflow fp16 even unscaled."""
    weight = {"w": 1.0}
    inner = job.loss
    job.loss = lambda model, batch: inner(model, batch) * weight["w"]
    job.events[at] = lambda: weight.update(w=factor)
    return job


def fp16_mlp(seed: int) -> Job:
    """The MLP classifier in fp16 (CPU autocast, GradScaler), Adam; a loss weight 1e9x too large from step 150."""
    task = data.vectors(seed=seed)
    model = models.mlp([20, 64, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _loss_weight_bug(Job(model, [opt], task.batches(64, seed), data.classify, steps=350, precision="fp16",
                                val_batch=task.val_batch(), val_every=50), 150)


def fp16_cnn(seed: int) -> Job:
    """The residual CNN in fp16 with a GradScaler, SGD+momentum; the loss weight bug from step 150."""
    task = data.images(seed=seed)
    model = models.ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return _loss_weight_bug(Job(model, [opt], task.batches(32, seed), data.classify, steps=350, precision="fp16",
                                val_batch=task.val_batch(), val_every=50), 150)


SLOW = dict(onset=1, primary=("slow-training",), shows=checks.waits(), system=True)
OOM = dict(onset=FAIL_AT, primary=("out-of-memory",), secondary=("memory-pressure",),
           shows=checks.ended("oom", FAIL_AT))
CRASH = dict(onset=FAIL_AT, primary=("run-crashed",), shows=checks.ended("crashed", FAIL_AT))
STALL = dict(onset=STALL_AT, primary=("run-stalled",), shows=checks.vanished(STALL_AT))
FP16 = dict(onset=151, primary=("fp16-overflow",), secondary=("loss-diverging", "loss-nonfinite",
            "gradient-explosion"), shows=checks.scaler_collapses())

SCENARIOS: list[Scenario] = [
    *variants("slow-input.sleeping-loader", "mlp", "plain", slow_mlp, quick=True, what=slow_mlp.__doc__, **SLOW),
    *variants("slow-input.sleeping-loader", "gpt-preln", "lightning", slow_gpt, what=slow_gpt.__doc__, **SLOW),
    *variants("slow-input.cpu-transforms", "rescnn", "plain", transforms_cnn, quick=True, what=transforms_cnn.__doc__, **SLOW),
    *variants("slow-input.cpu-transforms", "vit", "hf", transforms_vit, what=transforms_vit.__doc__, **SLOW),
    *variants("out-of-memory", "mlp", "plain", oom_mlp, quick=True, what=oom_mlp.__doc__, **OOM),
    # Lightning fetches the next batch before the step that uses it: batch 120's collate runs during step 119
    *variants("out-of-memory", "gpt-preln", "lightning", oom_gpt, what=oom_gpt.__doc__,
              **{**OOM, "onset": FAIL_AT - 1, "shows": checks.ended("oom", FAIL_AT - 1)}),
    *variants("crash", "mlp", "plain", crash_mlp, quick=True, what=crash_mlp.__doc__, **CRASH),
    *variants("crash", "lstm", "lightning", crash_lstm, what=crash_lstm.__doc__, **CRASH),
    *variants("stall", "rescnn", "plain", stall_cnn, quick=True, what=stall_cnn.__doc__, **STALL),
    *variants("stall", "gpt-preln", "lightning", stall_gpt, what=stall_gpt.__doc__, **STALL),
    *variants("fp16-overflow", "mlp", "plain", fp16_mlp, quick=True, what=fp16_mlp.__doc__, **FP16),
    *variants("fp16-overflow", "rescnn", "plain", fp16_cnn, what=fp16_cnn.__doc__, **FP16),
]
