"""The demo's runs are the same on every machine: their threads share torch's default generator."""

from __future__ import annotations

import threading

import torch

from txwatch.demo.scenarios import build, scenarios


def _fingerprint(scenario) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model's initial weights and the first batch of a few epochs (each epoch reshuffles, as in training,
    while the other runs are still being built)."""
    model, loader, _ = build(scenario)
    weights = [p.detach().clone() for p in model.parameters()]
    return weights, [next(iter(loader)) for _ in range(10)]


def test_runs_built_side_by_side_in_threads_get_the_weights_and_batches_they_get_alone():
    plan = scenarios(quick=True)
    alone = {sc.name: _fingerprint(sc) for sc in plan}
    for _ in range(3):  # the demo starts its four runs at once, each in its own thread
        together: dict[str, tuple] = {}
        threads = [threading.Thread(target=lambda sc=sc: together.__setitem__(sc.name, _fingerprint(sc)))
                   for sc in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sc in plan:
            weights, batches = together[sc.name]
            assert all(torch.equal(a, b) for a, b in zip(weights, alone[sc.name][0])), sc.name
            assert all(torch.equal(a, b) for a, b in zip(batches, alone[sc.name][1])), sc.name
