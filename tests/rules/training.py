"""Real small PyTorch trainings that produce txwatch's metrics, for the rules' end-to-end tests.

Each training computes the numbers the hooks send (docs/design.md, "Metric names") with torch itself: the
loss, per-parameter and total gradient norms before any clipping, the count of non-finite gradient values,
update-to-parameter ratios, learning rates, step time and data wait, and a validation loss where there is a
validation set. Models are built from config (nothing downloaded) and train on the CPU in seconds.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

Series = dict[str, list[tuple[int, float, float]]]

# These models are tiny: one thread is faster than several, and leaves the machine's other cores alone.
torch.set_num_threads(1)


@dataclass
class Recorded:
    series: Series = field(default_factory=dict)
    end: dict | None = None  # the run's end event, when it crashed

    def add(self, name: str, step: int, t: float, value: float) -> None:
        self.series.setdefault(name, []).append((step, t, float(value)))

    def values(self, name: str) -> list[float]:
        return [p[2] for p in self.series.get(name, [])]

    def first_nonfinite_step(self, name: str = "loss") -> int | None:
        for step, _, v in self.series.get(name, []):
            if not math.isfinite(v):
                return step
        return None


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator,
    steps: int,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    scheduler=None,
    clip: float | None = None,
    val_fn: Callable[[nn.Module], float] | None = None,
    val_every: int = 25,
    sample_every: int = 1,
    ratio_every: int = 1,
    stop_on_nonfinite: int = 5,
    rec: Recorded | None = None,
    watch: dict | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Recorded:
    """Train for ``steps`` optimizer steps, recording every metric the hooks would send (into ``rec``).

    With ``watch`` (keyword arguments for ``txwatch_hooks.watch``), the real hooks capture everything instead
    and send it to ``watch["sender"]``; only the loss and validation loss are logged by hand, as a user does.
    With ``scaler`` (hooks only), each of the ``steps`` iterations runs the forward pass under fp16 autocast
    and steps through the GradScaler, which is passed to ``watch`` too.
    """
    if scaler is not None and watch is None:
        raise ValueError("fp16 training with a GradScaler is recorded by the real hooks only: pass watch=")
    if watch is not None:
        return _train_watched(model, optimizer, batches, steps, loss_fn, scheduler, clip, val_fn, val_every,
                              stop_on_nonfinite, watch, rec if rec is not None else Recorded(), scaler)
    rec = rec if rec is not None else Recorded()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    last_end = time.time()
    nonfinite_seen = 0
    for step in range(1, steps + 1):
        wait_start = time.perf_counter()
        batch = next(batches)
        data_wait = time.perf_counter() - wait_start
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        now = time.time()
        if step % sample_every == 0:
            norms = []
            bad = 0
            for name, p in params:
                if p.grad is None:
                    continue
                g = p.grad.detach()
                n = torch.linalg.vector_norm(g.float()).item()
                norms.append(n)
                bad += int((~torch.isfinite(g)).sum().item())
                rec.add(f"grad_norm/{name}", step, now, n)
            rec.add("grad_norm_total", step, now, math.sqrt(sum(n * n for n in norms)) if norms else 0.0)
            rec.add("grad_nonfinite", step, now, bad)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for i, group in enumerate(optimizer.param_groups):
            rec.add(f"lr/{i}", step, now, group["lr"])
        ratio_step = step % ratio_every == 0
        before = {}
        if ratio_step:
            before = {name: p.detach().clone() for name, p in params}
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ratio_step:
            ratios = []
            for name, p in params:
                pn = torch.linalg.vector_norm(before[name].float()).item()
                dn = torch.linalg.vector_norm((p.detach() - before[name]).float()).item()
                rec.add(f"param_norm/{name}", step, now, pn)
                if pn > 0:
                    r = dn / pn
                    ratios.append(r)
                    rec.add(f"update_ratio/{name}", step, now, r)
            if ratios:
                rec.add("update_ratio_max", step, now, max(ratios))
        loss_value = loss.detach().item()
        end = time.time()
        step_time = end - last_end
        last_end = end
        rec.add("loss", step, end, loss_value)
        rec.add("step_time", step, end, step_time)
        rec.add("data_wait", step, end, data_wait)
        rec.add("data_wait_share", step, end, min(1.0, data_wait / step_time) if step_time > 0 else 0.0)
        if val_fn is not None and step % val_every == 0:
            model.eval()
            with torch.no_grad():
                rec.add("val_loss", step, end, val_fn(model))
        if not math.isfinite(loss_value):
            nonfinite_seen += 1
            if nonfinite_seen >= stop_on_nonfinite:
                break
    return rec


def _train_watched(model, optimizer, batches, steps, loss_fn, scheduler, clip, val_fn, val_every,
                   stop_on_nonfinite, watch, rec, scaler=None) -> Recorded:
    import txwatch_hooks

    nonfinite_seen = 0
    amp = scaler is not None
    with txwatch_hooks.watch(model, optimizer, scaler=scaler, **watch) as monitor:
        for step in range(1, steps + 1):
            batch = next(batches)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.float16) if amp else contextlib.nullcontext():
                loss = loss_fn(model, batch)
            (scaler.scale(loss) if amp else loss).backward()
            if clip is not None:
                if amp:
                    scaler.unscale_(optimizer)  # clip the gradients the optimizer will use
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if amp:
                scaler.step(optimizer)  # not stepped when the scaled gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            value = loss.detach()
            monitor.log(loss=value)
            if val_fn is not None and step % val_every == 0:
                model.eval()
                with torch.no_grad():
                    monitor.log(val_loss=val_fn(model))
            if not math.isfinite(value.item()):
                nonfinite_seen += 1
                if nonfinite_seen >= stop_on_nonfinite:
                    break
    return rec


# ---------------------------------------------------------------- models and data


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


@dataclass
class Classification:
    """A synthetic classification task: labels from a fixed random teacher network, with label noise."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def batches(self, batch_size: int, seed: int = 0, delay_s: float = 0.0) -> Iterator:
        g = torch.Generator().manual_seed(seed)
        n = len(self.x_train)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                idx = perm[i : i + batch_size]
                if delay_s:
                    time.sleep(delay_s)  # a slow input pipeline: decoding, augmentation, a remote store
                yield self.x_train[idx], self.y_train[idx]

    def val_loss(self, model: nn.Module) -> float:
        return nn.functional.cross_entropy(model(self.x_val), self.y_val).item()


def classification(n_train: int = 2048, n_val: int = 512, dim: int = 20, classes: int = 4, seed: int = 0, noise: float = 0.05) -> Classification:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=g)
    x = torch.randn(n_train + n_val, dim, generator=g)
    logits = torch.tanh(x @ torch.randn(dim, dim, generator=g) / math.sqrt(dim)) @ teacher
    y = logits.argmax(dim=1)
    flip = torch.rand(len(y), generator=g) < noise
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    return Classification(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def ce_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


class TinyGPT(nn.Module):
    """A GPT-style decoder: token + position embeddings, pre-LayerNorm causal blocks, tied output head."""

    def __init__(self, vocab: int = 64, dim: int = 64, heads: int = 4, layers: int = 2, ctx: int = 32, post_ln: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(ctx, dim)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=not post_ln, activation="gelu"
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def token_batches(vocab: int = 64, ctx: int = 32, batch_size: int = 16, seed: int = 0, chain_seed: int = 0) -> Iterator:
    """Sequences from a fixed random Markov chain (``chain_seed``): learnable structure, a floor on the loss."""
    # each token has 4 likely successors; the chain is the task, the seed only picks the samples
    successors = torch.randint(0, vocab, (vocab, 4), generator=torch.Generator().manual_seed(chain_seed))
    g = torch.Generator().manual_seed(seed + 1000)
    while True:
        seq = torch.empty(batch_size, ctx + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, vocab, (batch_size,), generator=g)
        for i in range(1, ctx + 1):
            choice = torch.randint(0, 4, (batch_size,), generator=g)
            nxt = successors[seq[:, i - 1], choice]
            noise = torch.rand(batch_size, generator=g) < 0.1
            nxt[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=g)
            seq[:, i] = nxt
        yield seq[:, :-1], seq[:, 1:]


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
