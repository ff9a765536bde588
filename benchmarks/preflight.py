"""What ``preflight=True`` costs a training job: whole runs with and without it, interleaved in one process.

    .venv/bin/python benchmarks/preflight.py                 # CPU, about a minute
    .venv/bin/python benchmarks/preflight.py --repeats 5 --steps 300 --device cuda

Each trial trains a fresh GPT-style model (``txwatch.demo``'s TinyGPT, 2 blocks, 64 tokens of vocabulary, 32
sequences of 32 tokens per step, AdamW with a warmup schedule) for ``--steps`` steps under ``watch()``:
``baseline`` with default sampling, ``preflight`` the same plus ``preflight=True`` (its default 50 overfit steps
and 100-step LR range test on the first batch). Trials alternate (baseline, preflight, preflight, baseline, ...)
so a neighbour's load hits both alike. Preflight runs inside the first step (on its forward), so its cost is
read there: the first step's median seconds with and without it (the difference, also in steady training
steps), beside the whole runs' medians and their ratio (noisier: a shared host's load moves 200 steps by more
than preflight costs) and preflight's own time from its report. Batches go to an in-memory sender: the
collector's work is not what is measured here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from txwatch.demo.model import TinyGPT
from txwatch_hooks import watch
from txwatch_hooks.testing import MemorySender

VOCAB, CONTEXT, BATCH = 64, 33, 32


def trial(preflight: bool, steps: int, device: str, seed: int) -> tuple[float, float, float, float | None]:
    """Seconds of one whole run (watch() to close()), of its first step, its median step after that, and
    preflight's own seconds from its report."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, VOCAB, (steps, BATCH, CONTEXT), generator=g).to(device)
    torch.manual_seed(seed)
    model = TinyGPT(VOCAB, context=CONTEXT - 1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    warmup = max(steps // 10, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    sink = MemorySender()
    option = {"scheduler": sched, "max_steps": steps} if preflight else False
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    steps_s = []
    with watch(model, opt, run=f"bench-{'pf' if preflight else 'base'}-{seed}", sender=sink, system_interval_s=0,
               crash_hooks=False, preflight=option, config={"max_steps": steps}) as monitor:
        for tokens in data:
            began = time.perf_counter()
            loss = model(tokens)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            monitor.log(loss=loss)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            steps_s.append(time.perf_counter() - began)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    reports = [b["run_info"]["preflight"] for b in sink.batches if "preflight" in (b.get("run_info") or {})]
    if preflight and not reports:
        raise SystemExit("preflight=True sent no report: the benchmark measures nothing")
    return seconds, steps_s[0], statistics.median(steps_s[1:]), (reports[-1]["seconds"] if reports else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU (1: steadier on a "
                        "shared host)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    trial(False, 5, args.device, 0)  # warm up allocators and kernels outside the measurement
    runs: dict[bool, list[tuple[float, float, float, float | None]]] = {False: [], True: []}
    for i in range(args.repeats):
        for preflight in ((False, True) if i % 2 == 0 else (True, False)):
            runs[preflight].append(trial(preflight, args.steps, args.device, seed=i))

    def median(preflight: bool, k: int) -> float:
        return statistics.median(r[k] for r in runs[preflight])

    step_s = statistics.median(r[2] for rs in runs.values() for r in rs)
    cost = median(True, 1) - median(False, 1)
    print(f"device {args.device}, {args.steps} steps per run, {args.repeats} runs each, interleaved; "
          f"a steady step {step_s * 1000:.1f} ms")
    print(f"first step                baseline {median(False, 1):6.2f} s   preflight=True {median(True, 1):6.2f} s")
    print(f"preflight's cost          {cost:6.2f} s = {cost / step_s:.0f} steady training steps "
          f"(its report: {median(True, 3):.2f} s)")
    print(f"whole run ({args.steps} steps)     baseline {median(False, 0):6.2f} s   preflight=True "
          f"{median(True, 0):6.2f} s   ratio {median(True, 0) / median(False, 0):.3f}x")
    print(f"steady step after it      ratio {median(True, 2) / median(False, 2):.3f}x (preflight leaves nothing "
          "running)")

if __name__ == "__main__":
    main()
