"""A watched model stays a plain model under the frameworks: DDP wrapping after ``watch()``, and the Lightning
and Hugging Face Trainer checkpointing paths (the cells of test_plain_model.py that need a trainer or two
processes). Each trains with and without txwatch and compares the losses bit for bit."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from tests.hooks.conftest import FAST, start_ranks, wait_ranks
from tests.hooks.test_plain_model import assert_plain
from txwatch_hooks.testing import MemorySender

pytestmark = pytest.mark.slow

WATCH = dict(FAST, grad_every=1, update_every=1)


def test_ddp_wrapping_after_watch(tmp_path):
    script = Path(__file__).with_name("ddp_wrap_job.py")
    jobs = {watched: start_ranks(script, str(tmp_path / f"ranks-{watched}"), watched) for watched in ("1", "0")}
    reports = {}
    for watched, procs in jobs.items():
        wait_ranks(procs)
        reports[watched] = [json.loads((tmp_path / f"ranks-{watched}.{rank}").read_text()) for rank in range(2)]
    for rank in range(2):
        watched, plain = reports["1"][rank], reports["0"][rank]
        assert watched["losses"] == plain["losses"]  # hex floats: bit for bit
        assert watched["copies_ok"] == [True, True]
    steps = list(range(1, 9))
    assert reports["1"][0]["reported"] == {"loss": steps, "grad_norm_total": steps}  # rank 0 reports the model


# -- Lightning --------------------------------------------------------------------------------------------

pl = pytest.importorskip("lightning.pytorch")


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class CopyMidway(pl.Callback):
    """What EMA callbacks and ad-hoc checkpoint code do in the middle of fit()."""

    def __init__(self):
        self.copies = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 4:
            buffer = io.BytesIO()
            torch.save(pl_module.net, buffer)
            assert b"txwatch" not in buffer.getvalue()
            self.copies.append(copy.deepcopy(pl_module))


def _lightning_fit(tmp_path, watched: bool):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from txwatch_hooks.integrations.lightning import TxwatchCallback

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    sink, midway = MemorySender(), CopyMidway()
    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1), midway]
    if watched:
        callbacks.append(TxwatchCallback(run="lightning-ckpt", project="plain", sender=sink, **WATCH))
    module = Regressor()
    trainer = pl.Trainer(max_steps=8, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, data)
    return module, sink, midway, trainer


def test_lightning_checkpointing(tmp_path):
    watched, sink, midway, trainer = _lightning_fit(tmp_path / "w", True)
    plain, *_ = _lightning_fit(tmp_path / "u", False)
    assert len(watched.losses) == len(plain.losses) == 8
    assert all(torch.equal(a, b) for a, b in zip(watched.losses, plain.losses))
    assert [s for s, _ in sink.series("loss")] == list(range(1, 9))
    assert sorted(dict(sink.series("grad_norm_total"))) == list(range(1, 9))
    checkpoints = sorted((tmp_path / "w").glob("*.ckpt"))
    assert len(checkpoints) >= 2
    restored = Regressor.load_from_checkpoint(checkpoints[0])
    assert_plain(restored)
    assert_plain(midway.copies[0])
    # a second fit resumed from the checkpoint, watched again, reports from where it resumed
    from txwatch_hooks.integrations.lightning import TxwatchCallback

    resumed_sink = MemorySender()
    trainer = pl.Trainer(max_steps=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, enable_checkpointing=False,
                         callbacks=[TxwatchCallback(run="lightning-resumed", project="plain", sender=resumed_sink,
                                                    **WATCH)])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    trainer.fit(Regressor(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)),
                                                         batch_size=8), ckpt_path=str(checkpoints[-1]))
    assert [s for s, _ in resumed_sink.series("loss")] == [7, 8, 9, 10]


# -- Hugging Face Trainer ---------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from tests.hooks.test_huggingface import TokenData  # noqa: E402


class HFCopyMidway(transformers.TrainerCallback):
    def __init__(self):
        self.copies, self.losses = [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            self.copies.append(copy.deepcopy(model))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _hf_trainer(tmp_path, callbacks, max_steps=6):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=64))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=max_steps,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                             max_grad_norm=1.0, logging_steps=1, save_strategy="steps", save_steps=3,
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return Trainer(model=model, args=args, train_dataset=TokenData(64, 0), callbacks=callbacks)


def test_hf_trainer_checkpointing(tmp_path):
    from txwatch_hooks.integrations.huggingface import TxwatchCallback

    sink, watched, plain = MemorySender(), HFCopyMidway(), HFCopyMidway()
    callback = TxwatchCallback(run="hf-ckpt", project="plain", sender=sink, **WATCH)
    _hf_trainer(tmp_path / "w", [callback, watched]).train()
    _hf_trainer(tmp_path / "u", [plain]).train()
    assert len(watched.losses) == 6 and watched.losses == plain.losses  # the Trainer's own figures, exactly
    assert [s for s, _ in sink.series("loss")] == list(range(1, 7))
    assert sorted(dict(sink.series("grad_norm_total"))) == list(range(1, 7))
    assert_plain(watched.copies[0])
    assert (tmp_path / "w" / "checkpoint-3" / "model.safetensors").exists()
    # resuming from the checkpoint with a new callback: watched again, from the checkpoint's step on
    resumed_sink = MemorySender()
    resumed = TxwatchCallback(run="hf-resumed", project="plain", sender=resumed_sink, **WATCH)
    _hf_trainer(tmp_path / "w", [resumed], max_steps=6).train(resume_from_checkpoint=str(tmp_path / "w" / "checkpoint-3"))
    assert [s for s, _ in resumed_sink.series("loss")] == [4, 5, 6]
