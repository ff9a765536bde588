"""A training script the crash tests run in a subprocess: python crash_job.py MODE ENDPOINT SPOOL_DIR.

MODE: finish (no close(): the interpreter's exit ends the run), crash (uncaught RuntimeError), oom (uncaught
torch.OutOfMemoryError), cpu_oom (the CPU allocator's RuntimeError, for real), exit1 (sys.exit(1)).
"""

import sys

import torch

import txwatch_hooks

mode, endpoint, spool = sys.argv[1:4]
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
monitor = txwatch_hooks.watch(model, opt, run=f"crash-{mode}", endpoint=endpoint, spool_dir=spool,
                              schedule_delay_s=0.05, system_interval_s=0)
for _ in range(3):
    loss = model(torch.randn(2, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    monitor.log(loss=loss)
if mode == "crash":
    raise RuntimeError("the loader ran out of shards")
if mode == "oom":
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
if mode == "cpu_oom":
    # 2**60 bytes is more than any address space: the allocator fails at once and nothing is touched.
    # RuntimeError: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1152921504606846976 bytes"
    torch.empty(2**60, dtype=torch.uint8)
if mode == "exit1":
    sys.exit(1)
