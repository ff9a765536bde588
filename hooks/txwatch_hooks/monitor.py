"""``watch()`` and the ``Monitor`` it returns: the one object a training script holds."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import operator
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import torch

from txwatch_hooks import crash, wire
from txwatch_hooks.capture import Capture, layer_order, unwrap_optimizer
from txwatch_hooks.distributed import rank_info, shared_run_name
from txwatch_hooks.guard import Guard
from txwatch_hooks.identity import check_resume, job_id, resolve_run
from txwatch_hooks.means import StepMeans
from txwatch_hooks.options import Options, resolve_endpoint, resolve_token
from txwatch_hooks.records import Event, Points
from txwatch_hooks.roles import RunInfoUpdate, describe
from txwatch_hooks.scaler import check_scaler, find_scaler
from txwatch_hooks.senders import EmbeddedSender, HttpSender, NullSender, ObjectSender
from txwatch_hooks.spool import Spool
from txwatch_hooks.system import SystemSampler, memory_figures
from txwatch_hooks.transport import Transport

log = logging.getLogger("txwatch_hooks")

DEFAULT_PROJECT = "default"


def watch(model: torch.nn.Module, optimizer: Any = None, *, run: str | None = None, project: str | None = None,
          config: Mapping[str, Any] | None = None, endpoint: str | None = None, token: str | None = None,
          scaler: Any = None, resume: str | None = None, tags: Any = None, **sampling: Any) -> Monitor:
    """Start watching a training job; returns a ``Monitor`` (also a context manager).

    Args:
        model: the ``torch.nn.Module`` being trained (its parameter names label the per-layer series).
        optimizer: the ``torch.optim.Optimizer`` (or a Lightning/accelerate wrapper); its ``step()`` counts
            steps. Several (``[opt_g, opt_d]``): all are watched, the first counts the steps, the others'
            series are named per optimizer (``lr/opt1.0``, ``update_ratio_max.opt1``). Without one, each
            ``monitor.log()`` without ``step=`` is a new step.
        run: run name (default: TXWATCH_RUN, else a generated readable one; see ``distributed`` for torchrun).
        project: project name (default: TXWATCH_PROJECT, else "default").
        config: the run's hyperparameters (JSON-able; other values are recorded as their ``str()``).
        endpoint: collector URL (default: TXWATCH_ENDPOINT). Without one, the collector runs in this process
            when the full ``txwatch`` package is installed; otherwise batches wait in the local spool.
        token: the collector's bearer token (default: TXWATCH_TOKEN).
        scaler: the ``torch.amp.GradScaler`` of an fp16 run (default: the one an accelerate-wrapped optimizer
            carries, else none). Gradient norms are then those of the unscaled gradients, a step the scaler
            skips is counted in ``scaler_skipped`` instead of being reported as non-finite gradients, and
            ``loss_scale`` is sent. A disabled scaler is the same as none.
        resume: what a run name already stored means (default: TXWATCH_RESUME, else "never"): "never" records
            this job as a new run (``name-2``, with a warning) unless the stored run is this job's own (the
            other ranks of a torchrun job, an elastic restart); "allow" continues the stored run; "must"
            continues it and raises ValueError when there is none. See ``txwatch_hooks.identity``.
        tags: words to find the run by (``txwatch runs --where "tags has 'sweep'"``), added to any it has.
        **sampling: sampling and transport options, see ``txwatch_hooks.options.Options``.

    Raises TypeError/ValueError at once for bad arguments (unknown option, bad name, bad endpoint, a scaler
    that is not a GradScaler). Nothing that happens later, while training, raises: failures are logged once
    and monitoring degrades.
    """
    options = Options.from_kwargs(sampling)
    return Monitor(model, optimizer, run=run, project=project, config=config, endpoint=endpoint, token=token,
                   scaler=scaler, resume=resume, tags=tags, options=options)


class Monitor:
    """A watched run. Use ``log()`` for your own metrics, ``close()`` (or ``with``) when training ends.

    Attributes: ``run``, ``project``, ``rank``, ``world_size``, ``step`` (current step), ``dropped`` (what was
    dropped, by reason). Under torchrun, rank 0 reports model metrics and ``log()`` values; every rank
    reports its own device figures and lifecycle events.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any = None, *, run: str | None = None,
                 project: str | None = None, config: Mapping[str, Any] | None = None, endpoint: str | None = None,
                 token: str | None = None, scaler: Any = None, resume: str | None = None, tags: Any = None,
                 options: Options | None = None):
        options = options or Options()
        resume = check_resume(resume)
        tags = wire.check_tags(tags)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        optimizers = _optimizer_list(optimizer)
        for each in optimizers:
            unwrap_optimizer(each)  # raises TypeError now, before any hook is registered
        scaler = check_scaler(scaler) if scaler is not None else find_scaler(optimizers[0] if optimizers else None)
        config = _config_dict(config)
        ranks = rank_info()
        self.rank, self.world_size = ranks.rank, ranks.world_size
        self.project = wire.check_name("project", project or os.environ.get("TXWATCH_PROJECT") or DEFAULT_PROJECT)
        named = run or os.environ.get("TXWATCH_RUN")
        self.run = wire.check_name("run", named or shared_run_name(ranks))
        url = resolve_endpoint(endpoint)
        secret = resolve_token(token)
        self.options = options
        self._guard = Guard()
        self._means = StepMeans()  # log()'s values within one optimizer step
        self._closed = False
        self._close_result = False
        self._crash: tuple[str, dict[str, str], dict[str, Any]] | None = None
        self.started = time.time()

        sender = self._sender(options, url, secret)
        job, shared = job_id(self.world_size)
        self.run = resolve_run(self.project, self.run, resume, job, sender.lookup(), shared=shared,
                               generated=not named, rank=self.rank)
        spool = Spool(options.spool_root() / self.project / self.run / f"rank{self.rank}", options.spool_max_bytes,
                      owner=sender.describe())  # where its batches go: only a process sending there adopts them
        run_info = {
            "config": wire.jsonable(dict(config or {})),
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "world_size": self.world_size,
            "started": self.started,
            "hooks_version": wire.HOOKS_VERSION,
            "torch_version": torch.__version__,
            "device": _device_of(model),
            "job": job,  # which job wrote the run: watch(resume=) tells this job's ranks from another job
        }
        if tags:
            run_info["tags"] = tags
        if model is not None and self.rank == 0 and options.layers:  # the rank that sends per-layer series
            run_info["layers"] = layer_order(model)
        if model is not None and self.rank == 0:
            run_info.update(self._roles(model, optimizers))
        self._run_info = run_info  # what a later run_info update repeats (the collector merges it field by field)
        builder = wire.BatchBuilder(self.run, self.project, self.rank, run_info=run_info)
        self._transport = Transport(builder, sender, spool, options, self._guard)
        if isinstance(sender, NullSender):
            self._guard.warn_once(
                "no-collector", "txwatch: no collector endpoint is set (endpoint= or TXWATCH_ENDPOINT) and the "
                "full txwatch package is not installed; run %s is kept in %s", self.run, spool.folder,
            )
        self._capture = Capture(model, options, self._guard, self._transport.submit, model_metrics=self.rank == 0)
        for each in optimizers:
            self._capture.attach_optimizer(each)
        self._capture.attach_scaler(scaler)
        if options.preflight and model is not None and self.rank == 0:
            from txwatch_hooks.sanity.armed import FirstBatch

            arguments = options.preflight if isinstance(options.preflight, dict) else {}
            FirstBatch(self, model, optimizers[0] if optimizers else None, arguments)
        self._transport.submit(Event({"kind": "start", "time": self.started}))
        self._sampler = SystemSampler(
            self._transport.submit, lambda: self._capture.step, self._guard,
            interval_s=options.system_interval_s, heartbeat_s=options.heartbeat_s, rank=self.rank,
            local_rank=ranks.local_rank, world_size=self.world_size,
        )
        try:
            self._sampler.start()
            if options.crash_hooks:
                crash.register(self)
        except Exception as exc:
            self._guard.fail("monitor start", exc, disable=False)
        log.info("txwatch: watching run %s/%s (rank %d of %d), sending to %s", self.project, self.run,
                 self.rank, self.world_size, sender.describe())

    @staticmethod
    def _sender(options: Options, url: str | None, secret: str | None) -> Any:
        guard = Guard()
        if options.sender is not None:
            return ObjectSender(options.sender)
        if url is not None:
            return HttpSender(url, secret, guard)
        try:
            embeddable = importlib.util.find_spec("txwatch.collector.embedded") is not None
        except (ImportError, ValueError):
            embeddable = False
        return EmbeddedSender(guard) if embeddable else NullSender()

    # -- public surface -----------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The current step: the number of optimizer steps taken (or the last ``log(step=...)``)."""
        return self._capture.step

    @property
    def dropped(self) -> dict[str, int]:
        """Points and events dropped so far, by reason (queue_full, spool_full, rejected, bad_value...)."""
        return self._transport.client_stats()["dropped"]

    @property
    def closed(self) -> bool:
        return self._closed

    def log(self, step: int | None = None, **metrics: Any) -> None:
        """Record metrics at ``step`` (default: the current step). Values: numbers or one-element tensors.

        Tensors are not read here (no host-device sync): the background worker reads them later. ``loss``
        and ``val_loss`` are the names the built-in rules read. Bad names or values are dropped, counted
        and logged once; nothing raises.

        Without ``step=``, a name logged several times before the next optimizer step (once per
        micro-batch under gradient accumulation) is stored as the mean of those values, with their number
        as ``<name>_count`` (``txwatch_hooks.means``); said once in the log. With ``step=``, each call is
        stored as given (a later value at the same step replaces an earlier one).
        """
        if self._closed or self.rank != 0:
            return
        try:
            capture = self._capture
            if step is not None:
                try:
                    step = operator.index(step)
                    if step < 0:
                        raise ValueError
                except (TypeError, ValueError):
                    self._bad("bad-step", "step", step, "a step must be a non-negative integer", len(metrics))
                    return
                self._submit_means()  # the step being averaged, if any, is complete
                capture.set_step(step)
            elif capture.optimizer is None:
                capture.step += 1  # nothing else counts steps: each log() is one
            now = time.time()
            values: dict[str, Any] = {}
            for name, value in metrics.items():
                converted = self._value(name, value)
                if converted is not None:
                    values[name] = converted
            if step is None:
                values, done = self._means.split(capture.step, now, values)
                if done is not None:
                    self._transport.submit(done)
            if values:
                self._transport.submit(Points(capture.step, now, values))
        except Exception as exc:
            self._guard.fail("log()", exc, disable=False)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Deliver everything logged so far (default timeout: ``close_timeout_s``). True when all arrived."""
        if self._closed:
            return self._close_result
        self._submit_means()
        try:
            return self._transport.flush(self.options.close_timeout_s if timeout_s is None else timeout_s)
        except Exception as exc:
            self._guard.fail("flush()", exc, disable=False)
            return False

    def close(self, timeout_s: float | None = None) -> bool:
        """End the run (status finished, or how it crashed), deliver within ``timeout_s``, remove the hooks.

        Returns True when everything was delivered; what was not stays in the spool. Safe to call twice.
        """
        if self._closed:
            return self._close_result
        self._closed = True
        timeout = self.options.close_timeout_s if timeout_s is None else timeout_s
        # each part on its own: one failing must not leave hooks registered or threads running
        for part, action in (
            ("close(): crash hooks", lambda: crash.unregister(self)),
            ("close(): removing hooks", self._capture.close),
            ("close(): system sampler", self._sampler.stop),
            ("close(): logged means", self._submit_means),
            ("close(): end event", self._submit_end),
        ):
            try:
                action()
            except Exception as exc:
                self._guard.fail(part, exc, disable=False)
        try:
            self._close_result = self._transport.close(timeout)
        except Exception as exc:
            self._guard.fail("close(): transport", exc, disable=False)
            self._close_result = False
        return self._close_result

    def _submit_end(self) -> None:
        event: dict[str, Any] = {"kind": "end", "time": time.time(), "step": self._capture.step}
        if self._crash is not None:
            status, error, memory = self._crash
            event.update(status=status, error=error, memory=memory)
        else:
            event.update(status="finished", memory=memory_figures(0, self.world_size))
        self._transport.submit(Event(event))

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self._note_crash(exc)
        self.close()
        return False  # the exception, if any, goes on to the caller unchanged

    def __repr__(self) -> str:
        return f"<Monitor {self.project}/{self.run} rank {self.rank} step {self.step}{' closed' if self._closed else ''}>"

    # -- for integrations and the crash hooks -------------------------------------------------------------

    def _attach_optimizer(self, optimizer: Any) -> None:
        try:
            self._capture.attach_optimizer(optimizer)
            if self._capture.scaler is None:
                self._capture.attach_scaler(find_scaler(optimizer))
        except Exception as exc:
            self._guard.fail("attaching the optimizer", exc)
        self._send_roles()

    def _send_roles(self) -> None:
        """Re-send ``run_info`` when the parameter roles changed (an optimizer attached after the start)."""
        model = self._capture.model
        if model is None or self.rank != 0 or self._closed:
            return
        try:
            roles = self._roles(model, self._capture.optimizers)
            if roles and any(self._run_info.get(k) != v for k, v in roles.items()):
                self._run_info = {**self._run_info, **roles}
                self._transport.submit(RunInfoUpdate(self._run_info))
        except Exception as exc:
            self._guard.fail("parameter roles", exc, disable=False)

    def _note_preflight(self, report: Any) -> None:
        """Store a preflight report with the run: whole in its info (``preflight``), and one
        ``preflight/<check>`` point per check (0 pass, 1 warn, 2 fail) for the rules that diagnose it."""
        if self.rank != 0 or self._closed:
            return
        try:
            self._run_info = {**self._run_info, "preflight": report.to_dict()}
            self._transport.submit(RunInfoUpdate(self._run_info))
            self._transport.submit(Points(self._capture.step, time.time(), report.levels()))
        except Exception as exc:
            self._guard.fail("preflight report", exc, disable=False)

    def _submit_means(self) -> None:
        """Send the means of the step ``log()`` is averaging (``txwatch_hooks.means``), if it has any."""
        try:
            done = self._means.take()
            if done is not None:
                self._transport.submit(done)
        except Exception as exc:
            self._guard.fail("log() means", exc, disable=False)

    def _set_step(self, step: int) -> None:
        try:
            if step != self._capture.step:
                self._capture.set_step(int(step))
        except Exception as exc:
            self._guard.fail("step sync", exc, disable=False)

    def _listen_forward(self, listener: Any) -> None:
        """``listener(module, args, kwargs, output)`` after each training forward of the model."""
        try:
            self._capture.listen_forward(listener)
        except Exception as exc:
            self._guard.fail("forward listener", exc)

    def _note_batch_start(self) -> None:
        try:
            self._capture.note_batch_start()
        except Exception as exc:
            self._guard.fail("data-wait timing", exc)

    def _note_crash(self, exc: BaseException) -> None:
        """Record how the run is ending (called at once, so the memory figures are those of the moment)."""
        try:
            if self._crash is None and not self._closed:
                status = "oom" if crash.is_oom(exc) else "crashed"
                self._crash = (status, wire.error_info(exc), memory_figures(0, self.world_size))
        except Exception as exc2:
            self._guard.fail("crash report", exc2, disable=False)

    def _end_at_exit(self) -> None:
        self.close(self.options.exit_timeout_s)

    # -- helpers ------------------------------------------------------------------------------------------

    def _roles(self, model: torch.nn.Module, optimizers: Any) -> dict[str, Any]:
        """``params`` and ``param_groups`` for run_info (``txwatch_hooks.roles``); empty if that fails."""
        try:
            return describe(model, optimizers)
        except Exception as exc:
            self._guard.fail("parameter roles", exc)
            return {}

    def _value(self, name: str, value: Any) -> Any:
        if not isinstance(name, str) or not wire.is_metric_name(name):
            self._bad(f"bad-name:{name}", "name", name,
                      "metric names are letters, digits and _.:- (optionally /<layer>), starting with a letter")
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                self._bad(f"bad-value:{name}", "value of", name,
                          f"a tensor of shape {tuple(value.shape)}; log one number (e.g. .mean())")
                return None
            # clone: a copy the user cannot change in place before the worker reads it (async, no sync)
            return value.detach().clone()
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)):
            return float(value)
        item = getattr(value, "item", None)
        if callable(item):  # numpy scalars
            try:
                return float(item())
            except (TypeError, ValueError):
                pass
        self._bad(f"bad-value:{name}", "value of", name, f"{type(value).__name__} is not a number")
        return None

    def _bad(self, key: str, what: str, name: Any, why: str, count: int = 1) -> None:
        self._transport.count_drop("bad_value", count)
        self._guard.warn_once(key, "txwatch: dropped the %s %r: %s (counted as 'bad_value')", what, name, why)


def _config_dict(config: Any) -> Mapping[str, Any] | None:
    """The run's config as a mapping: a dict, a dataclass, or an object with attributes (argparse)."""
    if config is None or isinstance(config, Mapping):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):  # argparse.Namespace, simple objects
        return vars(config)
    raise TypeError(f"config must be a dict of the run's settings, not {type(config).__name__}")


def _optimizer_list(optimizer: Any) -> list[Any]:
    """``watch()``'s optimizer argument as a list: none, one, or several (``[opt_g, opt_d]``)."""
    if optimizer is None:
        return []
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise ValueError("optimizer is an empty list; pass the optimizer(s) the loop steps, or None")
        return list(optimizer)
    return [optimizer]


def _device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except Exception:
        return "cpu"
