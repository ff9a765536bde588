"""One rank of a 2-process job (gloo, CPU) that wraps an already watched model in DistributedDataParallel.

For tests/hooks/test_plain_model.py. Env: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK.
Args: OUT_JSON WATCHED(0|1). Each rank trains 8 steps; halfway it saves the whole module and deep-copies the
DDP-wrapped model, as checkpointing and EMA code do. It writes its losses (as exact hex floats) and, when
watched, the steps of what its monitor reported.
"""

import copy
import io
import json
import sys

import torch
import torch.distributed as dist

import txwatch_hooks
from txwatch_hooks.testing import MemorySender

out, watched = sys.argv[1], sys.argv[2] == "1"
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
base = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.AdamW(base.parameters(), lr=0.01)
sink = MemorySender()
monitor = None
if watched:
    monitor = txwatch_hooks.watch(base, opt, sender=sink, run="ddp-wrap", project="plain", grad_every=1,
                                  update_every=1, schedule_delay_s=0.02, system_interval_s=0, crash_hooks=False)
model = torch.nn.parallel.DistributedDataParallel(base)  # wrapped after watch()
losses, copies_ok = [], []
g = torch.Generator().manual_seed(100 + rank)
for step in range(1, 9):
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)
    if step == 5:
        buffer = io.BytesIO()
        torch.save(model.module, buffer)
        copies_ok.append(b"txwatch" not in buffer.getvalue())
        ema = copy.deepcopy(model.module)
        copies_ok.append(not ema._forward_pre_hooks and not ema._forward_hooks)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    losses.append(loss.item().hex())
    if monitor is not None:
        monitor.log(loss=loss)
report = {"losses": losses, "copies_ok": copies_ok}
if monitor is not None:
    monitor.close(10)
    report["reported"] = {name: [s for s, _ in sink.series(name)] for name in ("loss", "grad_norm_total")}
with open(f"{out}.{rank}", "w") as fh:
    json.dump(report, fh)
dist.destroy_process_group()
