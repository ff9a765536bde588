"""One rank of a 2-process job (gloo, CPU) that names its run, for tests/hooks/test_identity.py.

Env: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK. Args: ENDPOINT SPOOL_DIR RUN. Prints the run name
this rank was recorded under.
"""

import sys

import torch
import torch.distributed as dist

import txwatch_hooks

endpoint, spool, run = sys.argv[1:4]
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
monitor = txwatch_hooks.watch(model, opt, run=run, project="ident", endpoint=endpoint, spool_dir=spool,
                              schedule_delay_s=0.05, system_interval_s=0, crash_hooks=False)
for _ in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    monitor.log(loss=loss)
monitor.close(10)
print(monitor.run)
dist.destroy_process_group()
