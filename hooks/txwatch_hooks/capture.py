"""The hooks on the model and the optimizer: step counting, timing, learning rates, gradients, updates.

Timeline of one optimizer step k and what is captured where:

    [waiting for data] forward ─ backward ─ (clip) ─ optimizer.step() ─ [zero_grad, log, next batch] ...
     └ data_wait: from the end of the previous step (or backward) to the next forward
                        backward end: grad norms (sampled steps) ─┘   pre-hook: parameter copy (update steps)
                                                                       post-hook: step, lr, times, update sizes

Gradient norms are taken when backward finishes (an autograd engine callback, queued from a
post-accumulate-grad hook), which is before any clipping: ``clip_grad_norm_`` cannot hide a spike. With
gradient accumulation the last backward before the step wins, i.e. the accumulated gradient. With a
GradScaler attached (``txwatch_hooks.scaler``) the scale is taken along with them, and the scaler's skipped
steps are counted in the post-hook. Off-cadence steps cost O(1): one post-accumulate-grad hook on one
parameter, the forward watch (``txwatch_hooks.forwards``: nothing on the model between its forwards, so it
stays picklable and copyable) and the two step hooks.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from typing import Any, Callable

import torch
from torch.autograd import Variable

from txwatch_hooks import wire
from txwatch_hooks.forwards import EVALUATION, TRAINING, ForwardWatch
from txwatch_hooks.grads import GradInterval, Snapshot, grad_norms, grad_stats, groups_of
from txwatch_hooks.guard import Guard
from txwatch_hooks.options import DENSE_AFTER_LR_CHANGE, DENSE_FIRST_STEPS, Options
from txwatch_hooks.records import Points, SampledStep
from txwatch_hooks.scaler import ScalerWatch

_BAD_LAYER_CHARS = re.compile(r"[^A-Za-z0-9_.:\-/\[\]]")


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside framework wrappers (Lightning's LightningOptimizer, accelerate's
    AcceleratedOptimizer): the step hooks must sit on the object whose ``step`` really runs."""
    seen = 0
    while seen < 5:
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            optimizer, seen = inner, seen + 1
            continue
        break
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or a wrapper of one), not {type(optimizer)!r}")
    return optimizer


def layer_name(name: str) -> str:
    return _BAD_LAYER_CHARS.sub("_", name)[:300] or "_"


def layer_order(model: torch.nn.Module) -> list[str]:
    """The model's parameter names as the per-layer series name them, in ``named_parameters()`` order (input
    to output, as the model is written), so the collector can show layers in that order."""
    return [layer_name(n) for n, _ in itertools.islice(model.named_parameters(), wire.MAX_LAYERS)]


class Capture:
    """Registers the hooks and turns what they see into queued records (``submit``)."""

    def __init__(self, model: torch.nn.Module | None, options: Options, guard: Guard,
                 submit: Callable[[Any], bool], *, model_metrics: bool = True):
        self.model = model
        self.options = options
        self.guard = guard
        self._submit = submit
        self.model_metrics = model_metrics
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[torch.nn.Parameter] = []
        self._names: list[str] = []
        self._lr_names: list[str] = []
        self._handles: list[Any] = []
        self._grad_handles: list[Any] = []
        self._busy_end: float | None = None  # when the last forward/backward/step finished
        self._wait = 0.0  # data wait accumulated in the current step
        self._batch_seen = False  # a batch start was seen in it (a compiled call hides the model's forward)
        self._last_post: float | None = None
        self._bw_queued = False
        self._grads_armed = False  # the coming step is a gradient-sampling step
        self._pending: tuple[list, list] | None = None  # grad norms and non-finite counts, on a sampled step
        self._latest: tuple[list, Any] | None = None  # the latest backward's grad norms (and their scale)
        self._interval = GradInterval()  # every step's norms since the last gradient sample
        self._sentinel: tuple[int, Any] | None = None  # (index in _params, hook handle)
        self._sentinels: list[Any] = []  # further optimizers' sentinels (their hook handles)
        self._secondary: list[SecondaryOptimizer] = []
        self._primary_params = 0  # _params[:n] are the first optimizer's; the others' follow
        self._primary_names: set[str] = set()  # their names, once there are other optimizers
        self._norm_cost = 0.0  # seconds the every-step norms take on the training thread (moving average)
        self._step_cost = 0.0  # seconds a step takes (moving average)
        self._norm_stride = 1  # every-step norms on every Nth step (the cost governor, _govern)
        self._param_groups: list[list[int]] = []
        self._sparse = False  # the model may produce sparse gradients (left out of the norms)
        self._update_budget = 0  # bytes the update ratio's copy may take (Options.update_memory_bytes)
        self._lrs: list[float | None] = []  # each group's LR at the previous step
        self._dense_until = 0  # update ratios on every step up to this one (after an LR change)
        self.scaler: ScalerWatch | None = None
        self._pending_scale: tuple[Any, int | None] = (None, None)  # the scale those gradients carry
        self._snapshot: Snapshot | None = None
        self._gap_resumes = False  # an evaluation forward interrupted a data-wait gap, which resumes after it
        self._forward_listeners: list[Callable[[Any, Any, Any, Any], None]] = []
        self._closed = False
        # nothing on the model itself: it stays picklable and copyable (txwatch_hooks.forwards)
        self._forwards = ForwardWatch(model, self, guard) if model is not None else None

    # -- setup --------------------------------------------------------------------------------------------

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer followed: the first counts the steps, the others (``SecondaryOptimizer``) too."""
        return ([self.optimizer] if self.optimizer is not None else []) + [s.optimizer for s in self._secondary]

    def attach_optimizer(self, optimizer: Any) -> None:
        """Hook ``optimizer`` (once); its parameters are named after the model's ``named_parameters()``.
        The first one attached counts the steps; each further one is followed as a ``SecondaryOptimizer``."""
        optimizer = unwrap_optimizer(optimizer)
        if any(o is optimizer for o in self.optimizers):
            return
        start = len(self._params)
        self._add_params(optimizer)
        if self.optimizer is not None:
            self._secondary.append(SecondaryOptimizer(self, optimizer, len(self._secondary) + 1, start))
            self._primary_names = set(self._names[:self._primary_params])
            self._param_groups = groups_of(self._params)
            self._watch_backward(start)
            return
        self.optimizer = optimizer
        self._primary_params = len(self._params)
        self._lr_names = [f"{wire.LR}{g}" for g in range(len(optimizer.param_groups))]
        self._param_groups = groups_of(self._params)
        self._sparse = self.model is not None and any(
            getattr(m, "sparse", False) is True for m in self.model.modules())  # sparse embeddings' gradients
        self._update_budget = self.options.update_memory_bytes(sum(p.numel() * p.element_size() for p in self._params))
        self._handles.append(optimizer.register_step_pre_hook(self._on_step_pre))
        self._handles.append(optimizer.register_step_post_hook(self._on_step_post))
        self._watch_backward(0)
        self._arm(self.step + 1)

    def _add_params(self, optimizer: torch.optim.Optimizer) -> None:
        names = {}
        if self.model is not None:
            names = {id(p): layer_name(n) for n, p in self.model.named_parameters()}
        seen = {id(p) for p in self._params}
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                self._params.append(p)
                self._names.append(names.get(id(p), f"group{g}.param{i}"))

    def _watch_backward(self, index: int) -> None:
        """A sentinel on parameter ``index`` (one per optimizer: a GAN's two losses backward through
        different parameters): its gradient tells that a backward runs, so that its end can be observed."""
        if index >= len(self._params):
            return
        handle = self._params[index].register_post_accumulate_grad_hook(self._on_grad)
        if index == 0:
            self._sentinel = (0, handle)  # the first optimizer's, moved when it gets no gradient
        else:
            self._sentinels.append(handle)

    def attach_scaler(self, scaler: Any) -> None:
        """Follow an enabled GradScaler (``scaler.check_scaler``): unscaled norms, skipped steps counted."""
        if scaler is not None and (self.scaler is None or self.scaler.scaler is not scaler):
            self.scaler = ScalerWatch(scaler)

    def listen_forward(self, listener: Callable[[Any, Any, Any, Any], None]) -> None:
        """Call ``listener(module, args, kwargs, output)`` at the end of each training forward of the model."""
        self._forward_listeners.append(listener)

    def close(self) -> None:
        self._report_trailing_skips()
        self._closed = True
        if self._forwards is not None:
            self._forwards.close()
        self._forward_listeners = []
        if self._sentinel is not None:
            self._handles.append(self._sentinel[1])
            self._sentinel = None
        for secondary in self._secondary:
            self._handles.extend(secondary.handles)
        self._handles.extend(self._sentinels)
        self._secondary, self._sentinels = [], []
        for handle in self._handles + self._grad_handles:
            try:
                handle.remove()
            except Exception:
                pass
        self._handles, self._grad_handles = [], []
        self._snapshot = None
        self._pending = None
        self._pending_scale = (None, None)

    def _report_trailing_skips(self) -> None:
        """The GradScaler's skips after the last optimizer step (``ScalerWatch.trailing``), at that step: a run
        whose every later iteration overflowed ends with its collapsed scale on record."""
        if self._closed or self.scaler is None or not self.model_metrics or self.guard.is_off("loss scaling"):
            return
        try:
            values = self.scaler.trailing()
            if values:
                self._submit(Points(self.step, time.time(), values))
        except Exception as exc:
            self.guard.fail("loss scaling", exc, disable=False)

    def set_step(self, step: int) -> None:
        self.step = step
        if self._snapshot is not None and not self._updates_due(step + 1):
            self._snapshot = None
        if self.optimizer is not None and not self.guard.is_off("gradient capture"):
            try:
                self._arm(step + 1)
            except Exception as exc:
                self.guard.fail("gradient capture", exc)

    def note_batch_start(self) -> None:
        """A batch is in hand and compute starts now (integrations call this; forwards do it too)."""
        self._batch_seen = True
        busy_end = self._busy_end
        if busy_end is not None:
            self._wait += time.perf_counter() - busy_end
            self._busy_end = None
        self._bw_queued = False  # a backward that raised never ran its end callback

    # -- sampling -----------------------------------------------------------------------------------------

    @staticmethod
    def _due(step: int, every: int) -> bool:
        return every > 0 and (step == 1 or step % every == 0)

    def _updates_due(self, step: int) -> bool:
        """Update ratios: every ``update_every`` steps, and on every step early on and just after an LR change
        (warmup's end, a restart, a group unfrozen): when a bad learning rate does its harm."""
        every = self.options.update_every
        return every > 0 and (step <= DENSE_FIRST_STEPS or step <= self._dense_until or step % every == 0)

    def _arm(self, step: int) -> None:
        """Hook every parameter for the coming step if it samples gradients (robust to an unused sentinel)."""
        want = self.model_metrics and self._due(step, self.options.grad_every)
        self._grads_armed = want
        if want and not self._grad_handles:
            skip = self._sentinel[0] if self._sentinel is not None else -1
            self._grad_handles = [p.register_post_accumulate_grad_hook(self._on_grad)
                                  for i, p in enumerate(self._params) if i != skip]
        elif not want and self._grad_handles:
            for handle in self._grad_handles:
                handle.remove()
            self._grad_handles = []

    # -- hooks (training thread, or autograd's threads for backward) ---------------------------------------

    def forward_started(self, module: Any, kind: str) -> None:
        """The model is called (``ForwardWatch``). A training forward ends the wait for data; any other
        (evaluation, an export's trace) interrupts it: its own time is not waiting on the input pipeline."""
        if self._closed:
            return
        try:
            if kind == TRAINING:
                self.note_batch_start()
            else:
                self._gap_resumes = kind == EVALUATION and self._busy_end is not None
                self._busy_end = None
        except Exception as exc:  # pragma: no cover - arithmetic on floats
            self.guard.fail("data-wait timing", exc)

    @property
    def wants_forward_end(self) -> bool:
        return bool(self._forward_listeners) or self._gap_resumes

    def forward_ended(self, module: Any, kind: str, args: Any, kwargs: Any, output: Any) -> None:
        if self._closed:
            return
        if kind == EVALUATION and self._gap_resumes:
            self._gap_resumes = False
            self._busy_end = time.perf_counter()  # what follows an evaluation batch is waiting again
        if kind != TRAINING:
            return
        for listener in self._forward_listeners:
            try:
                listener(module, args, kwargs, output)
            except Exception as exc:
                self.guard.fail("forward listener", exc, disable=False)

    def _on_grad(self, param: Any) -> None:
        if self._bw_queued or self._closed:
            return
        try:
            self._bw_queued = True
            Variable._execution_engine.queue_callback(self._on_backward_end_first)
        except Exception as exc:
            self.guard.fail("backward hook", exc)

    def _on_backward_end_first(self) -> None:
        # Queued at this backward's first gradient. Go to the back of the queue once more, so that callbacks
        # queued later in the same backward run first: DDP's reducer writes the all-reduced gradients there.
        try:
            Variable._execution_engine.queue_callback(self._on_backward_end)
        except Exception:
            self._on_backward_end()

    def _on_backward_end(self) -> None:
        try:
            self._bw_queued = False
            self._busy_end = time.perf_counter()
            if self.model_metrics and not self.guard.is_off("gradient capture"):
                # every step: the norms (one foreach call per dtype), folded into the interval at the step;
                # on a sampled step also the non-finite counts and the per-layer series
                if not self._grads_armed and (self.step + 1) % self._norm_stride:
                    return  # the cost governor thins the every-step norms out (_govern)
                started = time.perf_counter()
                names, grads = self._names, [p.grad for p in self._params]  # no detach: norms run under no_grad
                groups = self._param_groups  # the parameters' (device, dtype) grouping: their gradients' too
                if self._sparse or any(g is None for g in grads):  # a layer without a gradient this step
                    kept = [(n, g) for n, g in zip(names, grads) if g is not None and not g.is_sparse]
                    names, grads = [n for n, _ in kept], [g for _, g in kept]
                    groups = None
                elif grads and grads[0].dtype != self._params[0].dtype:  # gradients in another dtype
                    groups = None
                norms = grad_norms(names, grads, groups) if grads else None
                self._rehome_sentinel()
                scale = self.scaler.capture() if norms is not None and self.scaler is not None else (None, None)
                self._latest = (norms, scale) if norms is not None else None
                self._norm_cost = 0.8 * self._norm_cost + 0.2 * (time.perf_counter() - started)
                if self._grads_armed:
                    self._pending = grad_stats(names, grads, norms, groups) if grads else None
                    self._pending_scale = scale
        except Exception as exc:  # never let it surface from loss.backward()
            self.guard.fail("gradient capture", exc)

    def _rehome_sentinel(self) -> None:
        """Every step's norms need every backward's end: if the sentinel got no gradient in this one (a
        parameter unused or frozen since), move it to one that did (seen thanks to a sampled step's hooks)."""
        sentinel = self._sentinel
        if sentinel is None or self._params[sentinel[0]].grad is not None:
            return
        index = next((i for i, p in enumerate(self._params) if p.grad is not None), None)
        if index is not None:
            sentinel[1].remove()
            self._sentinel = (index, self._params[index].register_post_accumulate_grad_hook(self._on_grad))

    def _on_step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed or not self.model_metrics or self.guard.is_off("update ratio"):
            return
        try:
            self._note_lr_change(self.step + 1)
            if self._updates_due(self.step + 1):
                # every trainable parameter: under Lightning this hook runs before the closure's backward,
                # so which ones get a gradient is only known in the post-hook
                if self._snapshot is None:
                    n = self._primary_params
                    self._snapshot = Snapshot(self._names[:n], self._params[:n], self._update_budget)
                self._snapshot.take()
        except Exception as exc:
            self._snapshot = None
            self.guard.fail("update ratio", exc)

    def _on_step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        self.step += 1
        step = self.step
        now = time.perf_counter()
        wall = time.time()
        found = None
        if self.scaler is not None and self.model_metrics and not self.guard.is_off("loss scaling"):
            try:
                found = self.scaler.on_step(optimizer)
            except Exception as exc:
                self.guard.fail("loss scaling", exc)
        if self.model_metrics and not self.guard.is_off("step metrics"):
            try:
                self._step_points(step, now, wall)
            except Exception as exc:
                self.guard.fail("step metrics", exc)
        self._last_post = now
        self._busy_end = now
        self._wait = 0.0
        self._batch_seen = False
        self._bw_queued = False
        try:
            self._sampled_points(step, wall, found)
        except Exception as exc:
            self.guard.fail("gradient capture", exc)
        finally:
            self._pending = None
            self._pending_scale = (None, None)
            if self._snapshot is not None and not self._updates_due(step + 1):
                self._snapshot = None  # free the copy: the next step does not sample updates
        if not self.guard.is_off("gradient capture"):
            try:
                self._arm(step + 1)
            except Exception as exc:
                self.guard.fail("gradient capture", exc)

    def _step_points(self, step: int, now: float, wall: float) -> None:
        values = lr_values(self._lr_names, self.optimizer)
        self._lrs = [group.get("lr") if isinstance(group.get("lr"), (int, float)) else None
                     for group in self.optimizer.param_groups]
        if self._last_post is not None:
            step_time = now - self._last_post
            values[wire.STEP_TIME] = step_time
            self._govern(step_time)
            if self._batch_seen:  # else unknown, not zero
                values[wire.DATA_WAIT] = self._wait
                if step_time > 0:
                    values[wire.DATA_WAIT_SHARE] = min(self._wait / step_time, 1.0)
        if values:
            self._submit(Points(step, wall, values))

    def _govern(self, step_time: float) -> None:
        """Hold the every-step gradient norms to ``every_step_cost`` of the step on the training thread. On an
        accelerator they are a few kernel launches and run on every step; on a CPU, reading every gradient
        every step can cost more than that, and then they run on every Nth step only (never sparser than
        the gradient samples): training is not slowed for them. ``grad_interval_steps`` says how many."""
        self._step_cost = step_time if self._step_cost == 0 else 0.8 * self._step_cost + 0.2 * step_time
        if self._step_cost > 0 and self._norm_cost > 0:
            stride = math.ceil(self._norm_cost / (self.options.every_step_cost * self._step_cost))
            self._norm_stride = max(1, min(stride, self.options.grad_every or 1))

    def _fold_latest(self, found: Any) -> None:
        """This step's gradient norms into the interval (not those of an iteration the scaler skipped)."""
        latest, self._latest = self._latest, None
        if latest is None:
            return
        norms, (scale, iteration) = latest
        if self.scaler is not None and self.scaler.stale(iteration):
            return
        self._interval.add(norms, scale, found)

    def _note_lr_change(self, step: int) -> None:
        """Before step ``step``: a group's LR more than 2x off its previous step's makes update ratios dense."""
        for lr, group in zip(self._lrs, self.optimizer.param_groups):
            now = group.get("lr")
            if lr is None or not isinstance(now, (int, float)):
                continue
            if (lr == 0) != (now == 0) or (lr > 0 and not 0.5 <= now / lr <= 2.0):
                self._dense_until = step + DENSE_AFTER_LR_CHANGE - 1
                return

    def _sampled_points(self, step: int, wall: float, found: Any = None) -> None:
        self._fold_latest(found)
        pending, snapshot = self._pending, self._snapshot
        if snapshot is not None and not snapshot.taken:
            snapshot = None
        scale, iteration = self._pending_scale
        if pending is not None and self.scaler is not None and self.scaler.stale(iteration):
            pending, scale = None, None  # from an iteration the scaler skipped: not this step's gradients
        if pending is None and snapshot is None:
            return
        updates = None
        if snapshot is not None and not self.guard.is_off("update ratio"):
            try:
                updates = snapshot.finish([p.grad is not None for p in self._params[:self._primary_params]])
            except Exception as exc:
                self.guard.fail("update ratio", exc)
        grads, nonfinite = pending if pending is not None else (None, None)
        if grads and self._secondary:  # the other optimizers' parameters are sampled at their own steps
            grads = only(grads, self._primary_names)
        interval = self._interval.take() if grads else None
        if grads or updates:
            scaled = None
            if self.scaler is not None and not self.guard.is_off("loss scaling"):
                scaled = self.scaler.sample(scale, found)
            self._submit(SampledStep(step, wall, grads, nonfinite, updates, self.options.layers, scaled,
                                     interval))


def lr_values(names: list[str], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Each param group's learning rate under its series name (a tensor LR copied: schedulers update it in
    place, and the worker reads it later)."""
    values: dict[str, Any] = {}
    for name, group in zip(names, optimizer.param_groups):
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            lr = lr.detach().clone()
        if lr is not None:
            values[name] = lr
    return values


def only(grads: list[tuple[list[str], torch.Tensor]], names: set[str]) -> list[tuple[list[str], torch.Tensor]]:
    """Gradient norms with every parameter not in ``names`` named None (the worker skips those)."""
    return [([n if n in names else None for n in group], norms) for group, norms in grads]


class SecondaryOptimizer:
    """A further optimizer of the same model (a GAN's discriminator, a separate optimizer for a head): its
    learning rates (``lr/opt<k>.<group>``), on gradient-sampling steps its parameters' gradient norms as they
    were at the end of the backward before its step (``grad_norm/<param>``, their total as
    ``grad_norm_total.opt<k>``), and their update ratios (``update_ratio/<param>``, the largest as
    ``update_ratio_max.opt<k>``), at the step count of the first optimizer.

    Its figures carry the number of the first optimizer's step of the same iteration: seen at its first step,
    the order of the two in the loop decides whether that step is the current count or the next one.
    """

    def __init__(self, capture: Capture, optimizer: torch.optim.Optimizer, index: int, start: int):
        self.capture, self.optimizer, self.index = capture, optimizer, index
        self.start, self.stop = start, len(capture._params)
        self.lr_names = [f"{wire.LR}opt{index}.{g}" for g in range(len(optimizer.param_groups))]
        self.suffix = f".opt{index}"
        self.own = set(capture._names[start:self.stop])
        self.offset: int | None = None  # 1: it steps before the first optimizer in each iteration
        self.snapshot: Snapshot | None = None
        self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _label(self) -> int:
        if self.offset is None:
            self.offset = 1 if self.capture.step == 0 else 0
        return self.capture.step + self.offset

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        capture = self.capture
        if capture._closed or not capture.model_metrics or capture.guard.is_off("update ratio"):
            return
        try:
            if capture._updates_due(self._label()):
                if self.snapshot is None:
                    self.snapshot = Snapshot(capture._names[self.start:self.stop], capture._params[self.start:self.stop],
                                             capture._update_budget)
                self.snapshot.take()
            else:
                self.snapshot = None
        except Exception as exc:
            self.snapshot = None
            capture.guard.fail("update ratio", exc)

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        capture = self.capture
        if capture._closed or not capture.model_metrics:
            return
        try:
            step, wall = self._label(), time.time()
            lrs = lr_values(self.lr_names, optimizer)
            if lrs:
                capture._submit(Points(step, wall, lrs))
            updates, grads = None, None
            snapshot = self.snapshot
            if snapshot is not None and snapshot.taken and not capture.guard.is_off("update ratio"):
                updates = snapshot.finish([p.grad is not None for p in capture._params[self.start:self.stop]])
            latest = capture._latest
            if latest is not None and capture._due(step, capture.options.grad_every):
                grads = only(latest[0], self.own)  # its parameters only, from the backward before its step
            if updates or grads:
                capture._submit(SampledStep(step, wall, grads, None, updates, capture.options.layers,
                                            suffix=self.suffix))
        except Exception as exc:
            capture.guard.fail("secondary optimizer", exc)
