"""Small real trainings that feed the live collector: one healthy, one faulty (a dead layer, then a learning
rate 100x too high with no clipping, so the gradients explode and the loss diverges)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

FAULT_STEP = 40  # the faulty run's learning rate jumps here; its diagnoses fire at or after it


class TinyNet(nn.Module):
    """An MLP with a residual branch whose output is multiplied by zero: its parameters get exactly zero
    gradient, which is what a dead layer looks like."""

    def __init__(self, dead: bool):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.hidden = nn.Linear(32, 32)
        self.branch = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)
        self.dead = dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        h = torch.relu(self.hidden(h))
        h = h + (0.0 if self.dead else 0.1) * self.branch(h)
        return self.head(h)


@dataclass
class Trained:
    project: str
    run: str
    layers: list[str]
    losses: list[float] = field(default_factory=list)  # one per optimizer step, in order
    val_steps: list[int] = field(default_factory=list)


def train(endpoint: str, project: str, run: str, *, faulty: bool, steps: int, token: str | None = None) -> Trained:
    """Train TinyNet for ``steps`` optimizer steps under ``txwatch_hooks.watch`` reporting to ``endpoint``."""
    from txwatch_hooks import watch

    torch.manual_seed(1 if faulty else 0)
    model = TinyNet(dead=faulty)
    lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, xv = torch.randn(256, 16), torch.randn(64, 16)
    w = torch.randn(16, 1)
    y, yv = x @ w, xv @ w
    out = Trained(project, run, [n for n, _ in model.named_parameters()])
    config = {"lr": lr, "optimizer": "SGD", "model": {"hidden": 32, "layers": 4}, "faulty": faulty}
    # Dense sampling (a tiny model costs nothing) so the heatmap has a column per step and the rules see the
    # fault at once; a fast system sampler and batch delay (the run takes well under a second: its CPU and
    # RSS figures may all come from the sampler's last sample, taken as the run ends).
    with watch(model, optimizer, run=run, project=project, config=config, endpoint=endpoint, token=token,
               grad_every=1, update_every=5, system_interval_s=0.2, schedule_delay_s=0.2,
               crash_hooks=False) as monitor:
        for step in range(1, steps + 1):
            if faulty and step == FAULT_STEP:
                for g in optimizer.param_groups:
                    g["lr"] = 1.0  # 100x too high, and nothing clips
            i = (step * 32) % 256
            loss = nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            value = loss.item()
            monitor.log(loss=value)
            out.losses.append(value)
            if step % 10 == 0:
                with torch.no_grad():
                    monitor.log(val_loss=nn.functional.mse_loss(model(xv), yv).item())
                out.val_steps.append(step)
            if faulty and not math.isfinite(value):
                break
    return out
