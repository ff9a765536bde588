"""Rank, world size and the one run name all ranks of a job share.

The run name under torchrun, in order: ``run=`` (or TXWATCH_RUN) when given, the same on every rank; else a
readable name derived from TORCHELASTIC_RUN_ID (torchrun sets it; ``--standalone`` makes it unique per
launch), identical on every rank without any communication; else, when ``torch.distributed`` is already
initialized, rank 0's generated name broadcast to the others (``watch()`` is then a collective: call it on
every rank). With none of these (a static multi-node launch before ``init_process_group``), ``watch()`` asks
for ``run=``: guessing would split one job into several runs or merge separate jobs.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass

import torch

_ADJECTIVES = (
    "amber", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "daring", "eager", "fancy", "gentle",
    "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "misty", "noble", "polar", "proud",
    "quick", "quiet", "rapid", "rosy", "shiny", "silent", "silver", "snowy", "steady", "sunny", "swift",
    "tidy", "vivid", "warm", "wild", "witty", "young", "zesty",
)
_NOUNS = (
    "badger", "bison", "cedar", "comet", "crane", "dolphin", "falcon", "fern", "finch", "fox", "gecko",
    "heron", "ibis", "koala", "lark", "lynx", "maple", "meadow", "moose", "nebula", "orca", "otter", "owl",
    "panda", "pine", "quasar", "raven", "river", "robin", "sparrow", "spruce", "tiger", "walrus", "willow",
    "wolf", "yak", "zebra",
)


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def rank_info() -> RankInfo:
    """From an initialized ``torch.distributed``, else the RANK/WORLD_SIZE/LOCAL_RANK variables torchrun sets."""
    local = _env_int("LOCAL_RANK", 0)
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return RankInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local)
    except Exception:
        pass
    return RankInfo(_env_int("RANK", 0), max(_env_int("WORLD_SIZE", 1), 1), local)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def readable_name(rng: random.Random, stamp: str | None) -> str:
    words = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    tail = f"{rng.getrandbits(16):04x}"
    return f"{words}-{stamp}-{tail}" if stamp else f"{words}-{tail}"


def generated_name() -> str:
    """A fresh readable name, e.g. ``brisk-heron-20260510-1432-7f3a`` (unique enough for a sweep)."""
    return readable_name(random.Random(), time.strftime("%Y%m%d-%H%M"))


def shared_run_name(ranks: RankInfo) -> str:
    """The generated run name, the same on every rank of this job (see the module docstring)."""
    if ranks.world_size <= 1:
        return generated_name()
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        seed = int.from_bytes(hashlib.sha256(elastic.encode()).digest()[:8], "big")
        return readable_name(random.Random(seed), None)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [generated_name() if ranks.rank == 0 else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return str(box[0])
    raise ValueError(
        f"this is rank {ranks.rank} of {ranks.world_size}, and the ranks have no shared id to agree on a run "
        "name (no TORCHELASTIC_RUN_ID, torch.distributed not initialized yet). Pass run='...' to watch() "
        "(the same on every rank), set TXWATCH_RUN, or call watch() after init_process_group()."
    )
