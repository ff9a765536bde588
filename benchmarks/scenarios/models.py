"""The corpus's architectures, each small enough to train a few hundred steps on one CPU thread in seconds.

Every model is built from code or from a transformers config class (nothing is downloaded). They take the
batch dicts of ``benchmarks.scenarios.data`` and are trained through the loss functions defined there.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain MLP: Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(width_in, width_out), act()]
    return nn.Sequential(*layers[:-1])  # no activation after the output layer


class ResBlock(nn.Module):
    """conv-norm-relu-conv-norm with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(2, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class ResCNN(nn.Module):
    """A residual CNN for 1x12x12 images: a stem, ``blocks`` residual blocks, global pooling, a linear head."""

    def __init__(self, classes: int = 4, channels: int = 8, blocks: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.stem(x)))
        return self.head(h.mean(dim=(2, 3)))


class PlainCNN(nn.Module):
    """A deep CNN without shortcuts or normalization, with a chosen activation (the vanishing-gradient case)."""

    def __init__(self, classes: int = 4, channels: int = 8, depth: int = 8, act: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), act()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), act()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class RNNClassifier(nn.Module):
    """Token sequences -> class, through an LSTM, a GRU or a plain tanh RNN; reads the last hidden state."""

    def __init__(self, kind: str = "lstm", vocab: int = 32, dim: int = 32, classes: int = 4, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cell(dim, dim, num_layers=layers, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out[:, -1])


class TinyGPT(nn.Module):
    """A GPT-style decoder: token + position embeddings, causal blocks (pre-LN, or post-LN with
    ``post_ln=True``), a final LayerNorm and an output head tied to the token embedding."""

    def __init__(self, vocab: int = 48, dim: int = 32, heads: int = 4, layers: int = 2, ctx: int = 16,
                 post_ln: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(ctx, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=not post_ln, activation="gelu")
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied weights: one parameter, two uses
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


class TinyViT(nn.Module):
    """A ViT-like classifier for 1x12x12 images: 3x3 patches embedded by a strided conv, a class token,
    pre-LN transformer blocks, a linear head on the class token."""

    def __init__(self, classes: int = 4, dim: int = 32, heads: int = 4, layers: int = 2, patch: int = 3,
                 image: int = 12):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1) + self.pos
        return self.head(self.norm(self.blocks(h))[:, 0])


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update ``B @ A`` (B starts at zero, as in LoRA)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def lora(model: nn.Module, rank: int = 4) -> nn.Module:
    """``model`` with every Linear inside replaced by a LoRALinear (its own weights frozen): a partly frozen
    model whose only trainable parameters are the adapters and whatever is not a Linear (norms, embeddings)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, LoRALinear(child, rank))
        else:
            lora(child, rank)
    return model


def bert_classifier(vocab: int = 64, classes: int = 2, hidden: int = 32, layers: int = 2) -> nn.Module:
    """A BERT-style encoder from its transformers config (``BertForSequenceClassification``), tiny."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=classes,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def freeze(module: nn.Module, frozen: bool = True) -> nn.Module:
    """Turn ``requires_grad`` off (or back on) for every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    return module
