# Run with: torchrun --nproc_per_node=2 examples/ddp_example.py
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import txwatch

dist.init_process_group("gloo")  # "nccl" on GPUs
model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(),
                                                    torch.nn.Linear(32, 2)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

# Every rank calls watch() with the same run name; rank 0 reports the model, every rank its own device.
with txwatch.watch(model, optimizer, run="ddp-example", project="examples") as monitor:
    for _ in range(30):
        x, y = torch.randn(16, 20), torch.randint(0, 2, (16,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.log(loss=loss)
dist.destroy_process_group()
