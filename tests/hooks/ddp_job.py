"""One rank of a 2-process DDP job (gloo, CPU) for tests/hooks/test_distributed.py.

Env: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK. Args: ENDPOINT SPOOL_DIR OUT_JSON.
Rank 0 writes the norms it computed itself: of the all-reduced gradients before clipping, and of its own
local gradients (what a capture that ran before DDP's all-reduce would have seen).
"""

import copy
import json
import sys

import torch
import torch.distributed as dist

import txwatch_hooks

endpoint, spool, out = sys.argv[1:4]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
base = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
local = copy.deepcopy(base)
model = torch.nn.parallel.DistributedDataParallel(base)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
monitor = txwatch_hooks.watch(model, opt, endpoint=endpoint, spool_dir=spool, grad_every=1, update_every=0,
                              schedule_delay_s=0.05, system_interval_s=0.1, crash_hooks=False)
expected, local_norms = {}, {}
g = torch.Generator().manual_seed(100 + rank)  # each rank its own data: local gradients differ from the mean
for step in range(1, 4):
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g) * (1 + 5 * rank)
    local.load_state_dict(model.module.state_dict())
    torch.nn.functional.mse_loss(local(x), y).backward()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    expected[step] = {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}
    local_norms[step] = {f"module.{n}": torch.linalg.vector_norm(p.grad).item() for n, p in local.named_parameters()}
    local.zero_grad()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    opt.step()
    opt.zero_grad()
    monitor.log(loss=loss)
import time

time.sleep(0.3)  # let the sampler take a sample on every rank
monitor.close(10)
if rank == 0:
    with open(out, "w") as fh:
        json.dump({"run": monitor.run, "expected": expected, "local": local_norms}, fh)
dist.destroy_process_group()
