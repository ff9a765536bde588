"""Run identity: which stored run a job's batches go to (``watch(resume=...)``), and the job id ranks share.

``resume`` works as in Weights & Biases:

- ``"never"`` (the default): a run name already stored by another job gets a new run, ``name-2`` (then
  ``name-3``...), and a warning; a script run twice never merges into its first run silently.
- ``"allow"``: continue the stored run of that name (or start it).
- ``"must"``: continue the stored run; ``watch()`` raises ValueError when there is none.

"Another job" is told by the job id every process stores in ``run_info.job``: the ranks of one torchrun job
(and an elastic restart of it) share ``TORCHELASTIC_RUN_ID``, a Slurm job's tasks ``SLURM_JOB_ID``; a static
launch without either shares ``MASTER_ADDR:MASTER_PORT``, which identifies the job only while its run is still
running (a later job may reuse the port). A single process gets a fresh id, so only its own ranks match it.

Deciding takes one read of the store at ``watch()`` (the daemon's run API, or the local database), bounded by
``LOOKUP_TIMEOUT_S``. When the store cannot say (not reachable, too slow, a test sender without a memory), the
job warns and proceeds as ``"allow"``: monitoring must never stop or stall the training.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger("txwatch_hooks")

RESUME_CHOICES = ("never", "allow", "must")
LOOKUP_TIMEOUT_S = 3.0  # the whole decision, every read included: what a slow store may cost a job, once
MAX_SUFFIX = 100  # name-2 ... name-100 are tried in turn; past that a random suffix
LIVE_STATUSES = ("running", "stalled")  # a MASTER_ADDR:MASTER_PORT id matches a run only while it is live

# A lookup: (project, name) -> the stored run as {"status": ..., "job": ...}, None when there is none.
# It raises Unknown (or anything) when the store cannot say.
Lookup = Callable[[str, str], "dict[str, Any] | None"]


class Unknown(Exception):
    """The store could not say whether a run exists (unreachable, not answering, no such API)."""


def check_resume(resume: Any) -> str:
    """``resume=`` (default: TXWATCH_RESUME, else "never"), validated; raises ValueError naming the choices."""
    value = resume if resume is not None else (os.environ.get("TXWATCH_RESUME") or "never")
    if not isinstance(value, str) or value.strip().lower() not in RESUME_CHOICES:
        source = "resume" if resume is not None else "TXWATCH_RESUME"
        raise ValueError(f"{source} must be one of {', '.join(map(repr, RESUME_CHOICES))}, not {value!r}")
    return value.strip().lower()


def job_id(world_size: int) -> tuple[str, bool]:
    """(this job's id, whether it is shared by every rank of the job)."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        return f"torchelastic:{elastic}", True
    if world_size > 1:
        if os.environ.get("SLURM_JOB_ID"):
            return f"slurm:{os.environ['SLURM_JOB_ID']}", True
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if addr and port:
            return f"master:{addr}:{port}", True
        return f"process:{uuid.uuid4().hex}", False
    return f"process:{uuid.uuid4().hex}", True


def same_job(stored: dict[str, Any], job: str) -> bool:
    if stored.get("job") != job:
        return False
    return not job.startswith("master:") or stored.get("status") in LIVE_STATUSES


def candidates(name: str) -> list[str]:
    """``name``, then ``name-2`` ... ``name-MAX_SUFFIX`` (the base shortened to keep within 200 characters)."""
    out = [name]
    for n in range(2, MAX_SUFFIX + 1):
        suffix = f"-{n}"
        out.append(name[: 200 - len(suffix)] + suffix)
    return out


def choose_run(project: str, name: str, resume: str, job: str, lookup: Lookup) -> str:
    """The run name this job's batches go to; raises ValueError for ``resume="must"`` and no stored run,
    ``Unknown`` when the store cannot say."""
    if resume == "allow":
        return name
    if resume == "must":
        if _find(lookup, project, name) is None:
            raise ValueError(
                f"resume='must': no run {project}/{name} is stored to continue; check the name (`txwatch runs "
                f"--project {project}` lists them), or pass resume='allow' to start it if absent"
            )
        return name
    for candidate in candidates(name):
        stored = _find(lookup, project, candidate)
        if stored is None or same_job(stored, job):
            return candidate
    return f"{name[:190]}-{uuid.uuid4().hex[:8]}"


def _find(lookup: Lookup, project: str, name: str) -> dict[str, Any] | None:
    try:
        return lookup(project, name)
    except Unknown:
        raise
    except Exception as exc:
        raise Unknown(f"{type(exc).__name__}: {exc}") from exc


def resolve_run(project: str, name: str, resume: str, job: str, lookup: Lookup | None, *, shared: bool,
                generated: bool, rank: int, timeout_s: float | None = None) -> str:
    """``choose_run`` within ``timeout_s``; when the store cannot say, a warning and ``name`` ("allow")."""
    if resume == "must" and generated:
        raise ValueError("resume='must' continues a stored run: pass its name, run='...' (or set TXWATCH_RUN)")
    if resume == "allow" or (resume == "never" and generated):
        return name  # no read needed: a generated name is fresh (or, under torchrun, this job's own)
    if lookup is None:
        return name  # a sender with nothing to ask (a test double without a memory): as before
    if not shared and resume == "never":
        _warn(rank, "this rank shares no job id with the others (no TORCHELASTIC_RUN_ID, SLURM_JOB_ID or "
              "MASTER_ADDR/MASTER_PORT), so resume='never' cannot keep them on one new run; continuing %s/%s "
              "as with resume='allow'", project, name)
        return name
    timeout_s = LOOKUP_TIMEOUT_S if timeout_s is None else timeout_s
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["name"] = choose_run(project, name, resume, job, lookup)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=work, name="txwatch.resume", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _warn(rank, "could not check within %g s whether run %s/%s is already stored; continuing it as with "
              "resume='allow'", timeout_s, project, name)
        return name
    error = box.get("error")
    if isinstance(error, Unknown):
        _warn(rank, "could not check whether run %s/%s is already stored (%s); continuing it as with "
              "resume='allow'", project, name, error)
        return name
    if error is not None:
        raise error
    chosen = box["name"]
    if chosen != name and rank == 0:
        log.warning("txwatch: run %s/%s is already stored by another job; this job is recorded as the new run "
                    "%s/%s (pass resume='allow' to continue the stored run instead)", project, name, project, chosen)
    return chosen


def _warn(rank: int, message: str, *args: Any) -> None:
    if rank == 0:
        log.warning("txwatch: " + message, *args)
