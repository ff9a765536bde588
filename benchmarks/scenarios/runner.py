"""One scenario end to end, in a worker process: train it under txwatch, diagnose what it sent, score it."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet() -> None:
    """Keep the frameworks' banners and warnings out of the benchmark's output; one thread per process."""
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers",
                 "txwatch", "txwatch_hooks", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def evaluate(name: str) -> dict[str, Any]:
    """Train, diagnose and score the scenario ``name``; returns its ``Row`` as a dict.

    With ``TXWATCH_BENCH_CACHE`` set to a folder, the recording (what the hooks sent) is kept there and reused
    while the hooks' and the scenarios' code is unchanged (``cache.key``): a change to the rules alone is
    then scored without training again."""
    quiet()
    from benchmarks.scenarios import cache
    from benchmarks.scenarios.diagnose import diagnose
    from benchmarks.scenarios.record import record
    from benchmarks.scenarios.registry import by_name
    from benchmarks.scenarios.score import as_dict, score

    scenario = by_name()[name]
    recording = cache.load(scenario)
    if recording is None:
        recording = record(scenario)
        cache.save(recording)
    found = diagnose(recording.batches)
    return as_dict(score(scenario, found, recording.batches, recording.wall_s, recording.error))


def verify(name: str) -> dict[str, Any]:
    """Train the scenario with every step captured and check its claim on the true values."""
    quiet()
    from benchmarks.scenarios.registry import by_name
    from benchmarks.scenarios.truth import check, true_values

    scenario = by_name()[name]
    truth = true_values(scenario)
    holds, figures = check(scenario, truth)
    return {"name": name, "holds": holds, "figures": figures, "error": truth.recording.error,
            "wall_s": round(truth.recording.wall_s, 1)}
