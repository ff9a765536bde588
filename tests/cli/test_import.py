"""`txwatch import tensorboard` on event files written by torch.utils.tensorboard.SummaryWriter, run as a user
runs it (a real process): tags mapped onto txwatch's names, runs stored, and what the rules would have fired."""

from __future__ import annotations

import json
import math

import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.cli.test_history import txwatch


def _healthy(s: int) -> float:
    return 2.0 * math.exp(-s / 80) + 0.1


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "logs"
    w = SummaryWriter(str(root / "hf-good"))  # as the HF Trainer names its scalars
    for s in range(1, 301):
        w.add_scalar("train/loss", _healthy(s), s)
        w.add_scalar("train/learning_rate", 1e-3, s)
        if s % 50 == 0:
            w.add_scalar("eval/loss", _healthy(s) + 0.05, s)
    w.close()
    w = SummaryWriter(str(root / "sweep" / "lr-3e-2"))  # a hand-written loop's names; diverges, then NaN
    for s in range(1, 301):
        loss = _healthy(s) if s < 200 else (0.4 * 1.05 ** (s - 200) if s < 260 else math.nan)
        w.add_scalar("Loss/train", loss, s)
        w.add_scalar("lr", 3e-2, s)
        w.add_scalar("acc/top1", 0.5, s)
    w.close()
    w = SummaryWriter(str(root / "custom"))  # a name only --map knows
    for s in range(1, 101):
        w.add_scalar("objective", 1.0 if s < 50 else math.inf, s)
    w.close()
    return root


def test_import_stores_runs_and_prints_what_would_have_fired(logdir, tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'tx.db'}"]
    r = txwatch("import", "tensorboard", str(logdir), "--json", *db)
    assert r.returncode == 0, r.stderr
    runs = {x["run"]: x for x in json.loads(r.stdout)}
    assert set(runs) == {"hf-good", "sweep.lr-3e-2", "custom"}
    good, bad = runs["hf-good"], runs["sweep.lr-3e-2"]
    assert good["series_from"] == {"loss": "train/loss", "lr/0": "train/learning_rate", "val_loss": "eval/loss"}
    assert good["points"] == 606 and good["fired"] == []
    assert bad["series_from"] == {"loss": "Loss/train", "lr/0": "lr", "acc_top1": "acc/top1"}
    fired = [(e["step"], e["rule"]) for e in bad["fired"] if e["state"] == "firing"]
    assert ("loss-nonfinite", 260) in [(rule, step) for step, rule in fired]
    diverging = [step for step, rule in fired if rule == "loss-diverging"]
    assert diverging and 200 < diverging[0] < 260  # warned before the NaN
    assert runs["custom"]["series_from"] == {"objective": "objective"} and runs["custom"]["fired"] == []

    listed = json.loads(txwatch("runs", "--project", "tensorboard", "--json", *db).stdout)
    assert {x["name"]: (x["status"], x["steps"], x["tags"]) for x in listed} == {
        "hf-good": ("finished", 300, ["tensorboard"]), "sweep.lr-3e-2": ("finished", 300, ["tensorboard"]),
        "custom": ("finished", 100, ["tensorboard"])}
    loss = json.loads(txwatch("metrics", "tensorboard/hf-good", "loss", "--json", *db).stdout)
    assert len(loss) == 300 and loss[0]["value"] == pytest.approx(_healthy(1))

    again = txwatch("import", "tensorboard", str(logdir), "--json", *db)  # nothing stored twice
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(r.stdout)
    assert len(json.loads(txwatch("metrics", "tensorboard/hf-good", "loss", "--json", *db).stdout)) == 300


def test_map_names_a_tag_the_defaults_do_not_know_and_the_table_says_when(logdir, tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'tx.db'}"]
    r = txwatch("import", "tensorboard", str(logdir / "custom"), "--map", "objective=loss", "--project", "old",
                "--prefix", "q3", *db)
    assert r.returncode == 0, r.stderr
    assert "old/q3.custom" in r.stdout and "loss <- objective" in r.stdout
    assert "step 50: loss-nonfinite firing: the loss is Inf at step 50" in r.stdout.replace("\n  ", " ")


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder"], "/no/such/folder is not a folder"),
    (["{empty}"], "no TensorBoard event files (events.out.tfevents.*) under"),
    (["{logs}", "--map", "loss"], "--map 'loss': write TAG=NAME"),
    (["{logs}", "--map", "a=b c"], "--map 'a=b c': write TAG=NAME"),
    (["{logs}", "--project", "a/b"], "--project 'a/b': use letters"),
])
def test_mistakes_are_one_line_and_exit_2(logdir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", logs=logdir) for a in args]
    r = txwatch("import", "tensorboard", *args, "--db", f"sqlite:///{tmp_path / 'tx.db'}")
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
