"""Synthetic text made on the spot (nothing is downloaded): sequences from a random, peaked Markov chain,
so a model can learn it, and a small training set can be memorised."""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset


def markov_chain(vocab: int, seed: int) -> torch.Tensor:
    """A transition matrix where each token has a few likely successors."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 3.0
    return torch.softmax(logits, dim=-1)


def sample_sequences(chain: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vocab = chain.shape[0]
    seqs = torch.empty(count, length, dtype=torch.long)
    seqs[:, 0] = torch.randint(vocab, (count,), generator=g)
    for t in range(1, length):
        seqs[:, t] = torch.multinomial(chain[seqs[:, t - 1]], 1, generator=g).squeeze(1)
    return seqs


class SequenceSet(Dataset):
    """Fixed sequences; ``delay_s`` makes each item slow to load, like a starved input pipeline."""

    def __init__(self, sequences: torch.Tensor, delay_s: float = 0.0):
        self.sequences = sequences
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.sequences[i]
