"""A small training job watched by the real hooks (used by test_daemon: the daemon is killed under it)."""

import sys
import time

import torch

import txwatch_hooks

url, spool, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
mon = txwatch_hooks.watch(model, opt, run="hooked", project="p", endpoint=url, spool_dir=spool,
                          system_interval_s=0, schedule_delay_s=0.05)
for k in range(steps):
    loss = model(torch.randn(16, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    mon.log(loss=float(k))  # the value names the iteration, so the test can check each arrived once
    time.sleep(0.01)
print("delivered" if mon.close(timeout_s=90) else "NOT delivered", flush=True)
