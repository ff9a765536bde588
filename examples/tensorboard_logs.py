import math
import os

from torch.utils.tensorboard import SummaryWriter

# Two runs logged the way many training scripts log: one healthy, one whose learning rate is too high.
for name, lr in (("lr-1e-3", 1e-3), ("lr-3e-1", 3e-1)):
    writer = SummaryWriter(os.path.expanduser(f"~/tb-example/{name}"))
    for step in range(1, 301):
        loss = 2 * math.exp(-step / 80) + 0.1
        if lr > 0.1 and step > 200:
            loss = 0.3 * 1.05 ** (step - 200)  # climbing: diverging
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/learning_rate", lr, step)
    writer.close()
