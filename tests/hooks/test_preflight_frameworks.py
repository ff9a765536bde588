"""``preflight=True`` of the Lightning and transformers callbacks: the report on the first batch, before it
trains, and the training unchanged bit for bit."""

from __future__ import annotations

import pytest
import torch

from txwatch_hooks.testing import MemorySender

pytestmark = pytest.mark.slow
QUIET = {"schedule_delay_s": 0.02, "system_interval_s": 0, "crash_hooks": False}
CHECKS = ["overfit", "gradient_flow", "shapes", "masking", "memory", "learning_rate", "schedule"]


def _report(sink: MemorySender) -> dict:
    infos = [b["run_info"]["preflight"] for b in sink.batches if "preflight" in (b.get("run_info") or {})]
    assert len(infos) == 1 or infos[0] == infos[-1]
    return {c["name"]: c for c in infos[-1]["checks"]}


def test_huggingface_callback_runs_preflight_on_the_first_batch(tmp_path):
    pytest.importorskip("transformers")
    from tests.hooks.test_huggingface import _trainer
    from txwatch_hooks.integrations.huggingface import TxwatchCallback

    def train(preflight):
        sink = MemorySender()
        losses = []

        class Keep(__import__("transformers").TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    losses.append(logs["loss"])

        callback = TxwatchCallback(run="hf-preflight", sender=sink, preflight=preflight, **QUIET)
        _trainer(tmp_path, [callback, Keep()], warmup_steps=2, eval_strategy="no").train()
        return sink, losses

    sink, with_preflight = train({"steps": 5, "lr_steps": 10})
    _, without = train(False)
    assert with_preflight == without
    report = _report(sink)
    assert list(report) == CHECKS
    assert report["schedule"]["verdict"] == "pass" and report["schedule"]["figures"]["warmup steps"] == 2
    assert report["schedule"]["figures"]["planned steps"] == 6
    assert report["memory"]["figures"]["dims"] == ("batch 4 (the batch), seq 16 (the batch), hidden 32 (model.config."
                                                   "hidden_size), layers 1 (model.config.num_hidden_layers)")
    assert report["learning_rate"]["figures"]["guide"].startswith("GPT fine-tuning")


def test_lightning_callback_runs_preflight_with_training_step(tmp_path):
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    from txwatch_hooks.integrations.lightning import TxwatchCallback

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                           torch.nn.Linear(32, 2))
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def fit(preflight):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(256, 20, generator=g)
        data = TensorDataset(x, (x[:, 0] > 0).long())
        sink = MemorySender()
        module = Classifier()
        trainer = L.Trainer(max_epochs=1, callbacks=[TxwatchCallback(run="pl-preflight", sender=sink,
                                                                     preflight=preflight, **QUIET)],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, DataLoader(data, batch_size=32, shuffle=True))
        return sink, [v for v in module.losses]

    sink, with_preflight = fit({"lr_steps": 30})
    _, without = fit(False)
    report = _report(sink)
    assert list(report) == CHECKS
    assert with_preflight == without  # the copies log their training_step losses to their own lists
    assert report["overfit"]["verdict"] == "pass", report["overfit"]
    assert report["gradient_flow"]["verdict"] == "pass"
    assert report["schedule"]["figures"]["warmup steps"] == 3 and report["schedule"]["figures"]["planned steps"] == 8
