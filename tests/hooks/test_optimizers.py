"""Several optimizers on one model (a GAN under a plain loop and under Lightning's manual optimization):
every one is watched, the first counts the steps, each other's series are named after it."""

from __future__ import annotations

import pytest
import torch

import txwatch_hooks
from tests.hooks.conftest import FAST, points
from txwatch_hooks.testing import MemorySender


class GAN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def _gan_step(gan, opt_g, opt_d, g: torch.Generator) -> None:
    real, z = torch.randn(16, 6, generator=g) + 2, torch.randn(16, 4, generator=g)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fake = gan.generator(z)
    d_loss = bce(gan.discriminator(real), torch.ones(16, 1)) + bce(gan.discriminator(fake.detach()), torch.zeros(16, 1))
    d_loss.backward()
    opt_d.step()
    opt_d.zero_grad()
    g_loss = bce(gan.discriminator(fake), torch.ones(16, 1))
    g_loss.backward()
    opt_g.step()
    opt_g.zero_grad()
    opt_d.zero_grad()


@pytest.mark.parametrize("order", ["generator-first", "discriminator-first"])
def test_both_optimizers_of_a_gan_are_watched(order):
    torch.manual_seed(0)
    gan, sink = GAN(), MemorySender()
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=2e-4)
    opt_d = torch.optim.SGD(gan.discriminator.parameters(), lr=1e-2)
    optimizers = [opt_g, opt_d] if order == "generator-first" else [opt_d, opt_g]
    g = torch.Generator().manual_seed(0)
    with txwatch_hooks.watch(gan, optimizers, sender=sink, grad_every=1, update_every=1, **FAST) as monitor:
        for _ in range(6):
            _gan_step(gan, opt_g, opt_d, g)
        assert monitor.step == 6  # iterations, not optimizer steps
    first, other = ("generator", "discriminator") if order == "generator-first" else ("discriminator", "generator")
    steps = list(range(1, 7))
    assert sorted(points(sink, "lr/0")) == steps and sorted(points(sink, "lr/opt1.0")) == steps
    assert sorted(points(sink, "update_ratio_max")) == steps
    assert sorted(points(sink, "update_ratio_max.opt1")) == steps  # labelled with the iteration, either order
    for name in (f"{first}.0.weight", f"{other}.0.weight"):
        ratios = points(sink, f"update_ratio/{name}")
        assert sorted(ratios) == steps and all(r > 0 for r in ratios.values()), name  # its own step, measured
    assert {f"grad_norm/{first}.2.weight", f"grad_norm/{other}.2.weight"} <= sink.names()
    assert sorted(points(sink, "grad_norm_total")) == steps and sorted(points(sink, "grad_norm_total.opt1")) == steps
    # each optimizer's gradients as its own backward left them: the discriminator's from its own loss
    for step, values in ((s, [v for n, v in sink.series(f"grad_norm/{other}.0.weight") if n == s]) for s in steps):
        assert len(values) == 1, (step, values)  # sent once a step, by the optimizer that owns it
    assert points(sink, "lr/opt1.0")[1] == (1e-2 if order == "generator-first" else 2e-4)


def test_lightning_manual_optimization_with_two_optimizers():
    pl = pytest.importorskip("lightning.pytorch")
    from txwatch_hooks.integrations.lightning import TxwatchCallback

    class LitGAN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.gan = GAN()
            self.g = torch.Generator().manual_seed(0)

        def training_step(self, batch, batch_idx):
            opt_g, opt_d = self.optimizers()
            _gan_step(self.gan, opt_g, opt_d, self.g)

        def configure_optimizers(self):
            return [torch.optim.Adam(self.gan.generator.parameters(), lr=2e-4),
                    torch.optim.SGD(self.gan.discriminator.parameters(), lr=1e-2)]

    torch.manual_seed(0)
    sink = MemorySender()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 1)), batch_size=1)
    trainer = pl.Trainer(max_epochs=1, callbacks=[TxwatchCallback(run="gan", project="frameworks", sender=sink,
                                                                  grad_every=1, update_every=1, **FAST)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(LitGAN(), data)
    assert points(sink, "lr/0") and points(sink, "lr/opt1.0")
    for name in ("gan.generator.0.weight", "gan.discriminator.0.weight"):
        assert all(r > 0 for r in points(sink, f"update_ratio/{name}").values()), name
    assert len(points(sink, "update_ratio_max.opt1")) >= 8
