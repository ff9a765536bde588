"""watch(tags=[...]): the run's tags travel in its run info; bad ones fail at watch()."""

import pytest
import torch

import txwatch_hooks
from txwatch_hooks.testing import MemorySender

from .conftest import FAST, TinyNet


def test_tags_are_sent_with_the_run_info_sorted_once_each():
    sink = MemorySender()
    with txwatch_hooks.watch(TinyNet(), run="t", tags=["sweep", "lr-3e-4", "sweep"], sender=sink, **FAST):
        pass
    (info,) = [b["run_info"] for b in sink.batches if b.get("run_info")]
    assert info["tags"] == ["lr-3e-4", "sweep"]


@pytest.mark.parametrize("tags, error", [
    ("sweep", "tags must be a list of words"),
    (["two words"], "tag 'two words' is not allowed"),
    ([""], "tag '' is not allowed"),
    ([f"t{i}" for i in range(101)], "at most 100 tags"),
])
def test_bad_tags_fail_at_watch(tags, error):
    with pytest.raises((TypeError, ValueError), match=error):
        txwatch_hooks.watch(TinyNet(), torch.optim.SGD(TinyNet().parameters(), lr=0.1), run="t", tags=tags,
                            sender=MemorySender(), **FAST)


def test_the_callbacks_check_tags_when_made():
    from txwatch_hooks.integrations.huggingface import TxwatchCallback

    with pytest.raises(ValueError, match="tag 'a b' is not allowed"):
        TxwatchCallback(tags=["a b"])
