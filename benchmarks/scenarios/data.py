"""Synthetic tasks the scenarios make themselves (nothing is downloaded), each with a seed.

A ``Task`` holds a training and a validation set of one kind (feature vectors, 1x12x12 images, token
sequences to classify, or a Markov-chain language) and hands out batches as dicts: ``{"inputs": x,
"labels": y}`` (``{"input_ids": ..., "labels": ...}`` for the transformers models), so the same batch works in
the plain loop, under Lightning and under the Hugging Face Trainer. ``loss_for(kind)`` is the matching loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class Task:
    """A training and a validation set; ``kind`` names the input format and the loss."""

    kind: str  # "vector" | "image" | "sequence" | "lm" | "bert"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    key: str = "inputs"  # the input's name in a batch dict

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        """Shuffled epochs over the training set, forever (the last partial batch of an epoch is dropped)."""
        g = torch.Generator().manual_seed(seed + 7)
        n = len(self.x_train)
        size = min(batch_size, n)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - size + 1, size):
                idx = perm[i:i + size]
                yield {self.key: self.x_train[idx], "labels": self.y_train[idx]}

    def val_batch(self) -> Batch:
        return {self.key: self.x_val, "labels": self.y_val}


def _teacher_labels(x: torch.Tensor, classes: int, g: torch.Generator, noise: float) -> torch.Tensor:
    """Labels from a fixed random two-layer teacher network, with a share ``noise`` of them random."""
    flat = x.reshape(len(x), -1)
    dim = flat.shape[1]
    hidden = torch.tanh(flat @ torch.randn(dim, dim, generator=g) / math.sqrt(dim))
    y = (hidden @ torch.randn(dim, classes, generator=g)).argmax(dim=1)
    flip = torch.rand(len(y), generator=g) < noise
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    return y


def vectors(n_train: int = 2048, n_val: int = 512, dim: int = 20, classes: int = 4, seed: int = 0,
            noise: float = 0.05) -> Task:
    """Feature vectors (unit normal) labelled by a random teacher network."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, dim, generator=g)
    y = _teacher_labels(x, classes, g, noise)
    return Task("vector", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def images(n_train: int = 1024, n_val: int = 256, classes: int = 4, seed: int = 0, noise: float = 0.6) -> Task:
    """1x12x12 images: one of ``classes`` fixed smooth patterns, randomly shifted, plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    protos = torch.nn.functional.avg_pool2d(torch.randn(classes, 1, 16, 16, generator=g), 3, 1, 1)
    protos = protos / protos.std(dim=(1, 2, 3), keepdim=True)
    y = torch.randint(0, classes, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    dy = torch.randint(0, 5, (n,), generator=g)
    x = torch.stack([protos[c, :, i:i + 12, j:j + 12] for c, i, j in zip(y.tolist(), dx.tolist(), dy.tolist())])
    x = x + noise * torch.randn(x.shape, generator=g)
    return Task("image", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def sequences(n_train: int = 2048, n_val: int = 512, length: int = 16, vocab: int = 32, classes: int = 4,
              seed: int = 0) -> Task:
    """Token sequences whose class is the most frequent of ``classes`` signal tokens (the rest is filler)."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    x = torch.randint(classes, vocab, (n, length), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    for _ in range(3):  # three copies of the label's token at random positions
        pos = torch.randint(0, length, (n,), generator=g)
        x[torch.arange(n), pos] = y
    return Task("sequence", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def bert_texts(n_train: int = 1024, n_val: int = 256, length: int = 16, vocab: int = 64, seed: int = 0) -> Task:
    """Token sequences for a 2-class text classifier: positive when token 5 outnumbers token 6."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    x = torch.randint(7, vocab, (n, length), generator=g)
    a = torch.randint(0, 4, (n,), generator=g)
    b = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        pos = torch.randperm(length, generator=g)[: int(a[i] + b[i])]
        x[i, pos[: int(a[i])]] = 5
        x[i, pos[int(a[i]):]] = 6
    x[:, 0] = 1  # a [CLS]-like first token
    y = (a > b).long()
    return Task("bert", x[:n_train], y[:n_train], x[n_train:], y[n_train:], key="input_ids")


class MarkovLM:
    """A language from a fixed random Markov chain (each token has 4 likely successors, 10% noise): fresh
    sequences every batch, a floor on the loss, and a fixed validation batch."""

    kind = "lm"
    key = "input_ids"

    def __init__(self, vocab: int = 48, ctx: int = 16, seed: int = 0):
        self.vocab, self.ctx = vocab, ctx
        self.successors = torch.randint(0, vocab, (vocab, 4), generator=torch.Generator().manual_seed(1234))
        self.seed = seed

    def _sample(self, batch_size: int, g: torch.Generator) -> Batch:
        seq = torch.empty(batch_size, self.ctx + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, self.vocab, (batch_size,), generator=g)
        for i in range(1, self.ctx + 1):
            nxt = self.successors[seq[:, i - 1], torch.randint(0, 4, (batch_size,), generator=g)]
            noise = torch.rand(batch_size, generator=g) < 0.1
            nxt[noise] = torch.randint(0, self.vocab, (int(noise.sum()),), generator=g)
            seq[:, i] = nxt
        return {"input_ids": seq[:, :-1], "labels": seq[:, 1:]}

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 1000 + seed + 1)
        while True:
            yield self._sample(batch_size, g)

    def val_batch(self) -> Batch:
        return self._sample(128, torch.Generator().manual_seed(99))


def classify(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a classifier taking ``batch["inputs"]``."""
    return nn.functional.cross_entropy(model(batch["inputs"]).float(), batch["labels"])


def next_token(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy of a language model taking ``batch["input_ids"]``."""
    logits = model(batch["input_ids"]).float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))


def hf_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The loss a transformers model computes itself from ``labels``."""
    return model(**batch).loss


def loss_for(kind: str) -> LossFn:
    return {"vector": classify, "image": classify, "sequence": classify, "lm": next_token, "bert": hf_loss}[kind]
