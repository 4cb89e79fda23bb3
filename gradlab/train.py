"""A small training loop that records what the chapters plot and never trains through NaN/Inf.

``fit`` runs ``steps`` optimizer steps and returns a :class:`History` with, per step, the loss,
the gradient norm before and after clipping, the learning rate and the time taken. A non-finite
loss or gradient stops the run (or skips the step, or raises), names the layer where it showed
up, and warns, so an explosion is always visible.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: no ipywidgets output in the built book

from . import clip as _clip
from ._validate import check_choice, check_int, check_real
from .monitor import GradientMonitor

ON_NONFINITE = ("stop", "skip", "raise")


@dataclass
class History:
    """What :func:`fit` recorded, one entry per step (arrays of equal length).

    Attributes:
        loss: mean loss over the step's micro-batches.
        grad_norm: global 2-norm of the accumulated gradient, before clipping.
        clipped_grad_norm: the same after clipping (NaN for a step that was not applied).
        lr: learning rate of parameter group 0 used by the step.
        step_time: wall-clock seconds of the step.
        skipped: True where the optimizer step was not taken because of a NaN/Inf (skipped
            steps, and the step a run stopped at).
        stopped_at: the step where the run stopped on a NaN/Inf, or ``None``.
        stop_reason: why it stopped, e.g. ``"loss is nan at step 12"``, or ``None``.
        nonfinite_layer: the parameter (or, with a monitor, the layer) where the first
            non-finite value of the run was found, or ``None``.
        steps: the number of steps asked for.
    """

    loss: np.ndarray
    grad_norm: np.ndarray
    clipped_grad_norm: np.ndarray
    lr: np.ndarray
    step_time: np.ndarray
    skipped: np.ndarray
    stopped_at: int | None = None
    stop_reason: str | None = None
    nonfinite_layer: str | None = None
    steps: int = 0

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def stopped(self) -> bool:
        """Whether the run ended early on a NaN/Inf."""
        return self.stopped_at is not None

    def _skipped_steps(self) -> np.ndarray:
        """Steps skipped and gone past (the step a run stopped at is not counted)."""
        steps = np.flatnonzero(self.skipped)
        return steps[steps != self.stopped_at] if self.stopped_at is not None else steps

    def summary(self) -> str:
        """A few readable lines: steps run, losses, gradient norms, skips and the stop reason."""
        n = len(self)
        lines = [f"{n} of {self.steps} steps run"]
        finite = self.loss[np.isfinite(self.loss)]
        if len(finite):
            lines.append(f"loss: first {finite[0]:.4g}, last finite {finite[-1]:.4g}, "
                         f"min {finite.min():.4g}")
        norms = self.grad_norm[np.isfinite(self.grad_norm)]
        if len(norms):
            lines.append(f"gradient norm before clipping: median {np.median(norms):.3g}, "
                         f"max {norms.max():.3g}")
            clipped = int(np.sum(self.clipped_grad_norm < self.grad_norm * (1 - 1e-6)))
            if clipped:
                lines.append(f"clipped on {clipped} of {n} steps")
        skipped = self._skipped_steps()
        if len(skipped):
            lines.append(f"skipped {len(skipped)} steps with NaN/Inf: {_few(skipped)}")
        if self.stop_reason is not None:
            lines.append(f"stopped: {self.stop_reason}")
        if self.nonfinite_layer is not None:
            lines.append(f"first non-finite value seen in: {self.nonfinite_layer!r}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.4g}" if len(self) else "-"
        parts = [f"steps={len(self)}/{self.steps}", f"final_loss={last}"]
        if len(self._skipped_steps()):
            parts.append(f"skipped={len(self._skipped_steps())}")
        if self.stop_reason is not None:
            parts.append(f"stopped={self.stop_reason!r}")
        return f"History({', '.join(parts)})"


def _few(steps: np.ndarray, k: int = 8) -> str:
    shown = ", ".join(str(s) for s in steps[:k])
    return shown + (", ..." if len(steps) > k else "")


def _batches(data, accumulate: int) -> Callable[[int], list[tuple]]:
    """Turn ``data`` into ``draw(step) -> [accumulate micro-batches]``."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        return lambda step: [data] * accumulate
    if callable(data):
        # The callable gets the micro-batch counter, which is the step when accumulate=1.
        return lambda step: [data(step * accumulate + j) for j in range(accumulate)]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a tuple (x, y) of tensors, an iterable of (x, y) batches or a callable "
            f"step -> (x, y), got {type(data).__name__}"
        )
    state = {"it": iter(data), "drawn": 0}

    def next_batch():
        try:
            batch = next(state["it"])
        except StopIteration:
            if state["drawn"] == 0:
                raise ValueError("data is an empty iterable") from None
            state["it"], state["drawn"] = iter(data), 0  # start the next pass (epoch)
            try:
                batch = next(state["it"])
            except StopIteration:
                raise ValueError(
                    "data ran out and could not be restarted; pass a list or a re-iterable "
                    "object (a DataLoader), not a generator"
                ) from None
        state["drawn"] += 1
        return batch

    return lambda step: [next_batch() for _ in range(accumulate)]


def _unpack(batch) -> tuple:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(f"each batch must be a pair (x, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def _check_clip(clip):
    if clip is None or callable(clip):
        return clip
    return check_real("clip", clip, minimum=0.0, allow_inf=True)  # inf: measure, never clip


def _grad_norm(grads: list[torch.Tensor]) -> float:
    """Global 2-norm of ``grads``; recomputed in float64 when float32 squares overflow."""
    if not grads:
        return 0.0
    norm = float(_clip.total_norm(grads))
    if not math.isfinite(norm):
        norm = float(_clip.total_norm([g.double() for g in grads]))
    return norm


def _kind(t: torch.Tensor) -> str:
    """'nan', 'inf' or '-inf' for a tensor known to hold a non-finite value."""
    if t.isnan().any():
        return "nan"
    return "inf" if (t == math.inf).any() else "-inf"


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    clip: float | Callable | None = None,
    scheduler=None,
    accumulate: int = 1,
    monitor: GradientMonitor | None = None,
    on_nonfinite: str = "stop",
    progress: bool | None = None,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and record each one.

    Each step draws ``accumulate`` micro-batches and, for each, back-propagates
    ``loss_fn(model(x), y) / accumulate``; so the accumulated gradient is the gradient of the
    mean loss. Then it measures the global gradient norm, checks for NaN/Inf, clips, measures
    again, calls ``optimizer.step()`` and ``scheduler.step()`` and zeroes the gradients.

    Args:
        model: the network (its mode, train or eval, is left as it is).
        loss_fn: ``loss_fn(model(x), y)`` returns a scalar tensor.
        data: a tuple ``(x, y)`` (the full batch, every step), an iterable of ``(x, y)`` batches
            (started again when exhausted), or a callable ``data(i) -> (x, y)`` called with the
            micro-batch counter ``i = step * accumulate + j``.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        steps: number of optimizer steps, at least 1.
        clip: ``None``; a number ``c`` for global 2-norm clipping
            (:func:`gradlab.clip.clip_grad_norm_`); or a callable ``clip(parameters)`` that
            modifies the gradients in place.
        scheduler: a learning-rate scheduler, stepped after every optimizer step that was taken.
        accumulate: micro-batches per optimizer step, at least 1.
        monitor: a :class:`~gradlab.monitor.GradientMonitor` of ``model``; attached for the run
            (unless already attached) and detached after. It records one row per micro-batch and
            names the layer of the first NaN/Inf (forward activations included).
        on_nonfinite: what a NaN/Inf loss or gradient does: ``"stop"`` ends the run before the
            optimizer step (the failing gradients stay in ``.grad`` for inspection), ``"skip"``
            zeroes the gradients and goes on without that step, ``"raise"`` raises
            ``FloatingPointError``. Stop and skip also warn (``RuntimeWarning``).
        progress: show a tqdm bar; ``None`` shows it only when stderr is a terminal.

    Returns:
        A :class:`History`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    steps = check_int("steps", steps, minimum=1)
    accumulate = check_int("accumulate", accumulate, minimum=1)
    on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
    clip = _check_clip(clip)
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
    if monitor is not None:
        if not isinstance(monitor, GradientMonitor):
            raise TypeError(f"monitor must be a GradientMonitor, got {type(monitor).__name__}")
        if monitor.model is not model:
            raise ValueError("monitor watches a different model than the one being trained")
    if progress is None:
        progress = sys.stderr.isatty()
    draw = _batches(data, accumulate)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]

    def zero_grad() -> None:  # model.zero_grad() walks the module tree: slow for small steps
        for p in params:
            p.grad = None
    # Backward runs output side first; for models built input to output (every gradlab model)
    # that is the reverse of the registration order.
    backward_order = named[::-1]
    record = {k: [] for k in ("loss", "grad_norm", "clipped_grad_norm", "lr", "step_time", "skipped")}
    stopped_at = stop_reason = nonfinite_layer = None

    attach = monitor is not None and not monitor.attached
    if attach:
        monitor.attach()
    bar = tqdm(total=steps, disable=not progress, unit="step", file=sys.stderr)
    zero_grad()
    try:
        for step in range(steps):
            start = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            events_before = len(monitor.nonfinite_events) if monitor is not None else 0
            losses = []
            for x, y in map(_unpack, draw(step)):
                loss = loss_fn(model(x), y)
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                    raise TypeError("loss_fn must return a scalar tensor, got "
                                    f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
                (loss / accumulate).backward()
                losses.append(loss.detach().reshape(()))
            loss_value = float(torch.stack(losses).mean())
            grads = [p.grad for p in params if p.grad is not None]
            norm = _grad_norm(grads)

            # -- NaN/Inf: find where, then stop, skip or raise; never step the optimizer. --
            reason = None
            if not (math.isfinite(loss_value) and math.isfinite(norm)):
                bad = [n for n, p in backward_order if p.grad is not None and not p.grad.isfinite().all()]
                layer = bad[0] if bad else None
                where = f"first non-finite gradient, output side first: {layer!r}"
                if monitor is not None and len(monitor.nonfinite_events) > events_before:
                    event = monitor.nonfinite_events[events_before]
                    layer = event.layer
                    where = f"first non-finite {event.where.replace('_', ' ')}: layer {layer!r}"
                if not math.isfinite(loss_value):
                    reason = f"loss is {loss_value} at step {step}"
                    if layer is not None:
                        reason += f" ({where})"
                elif bad:
                    grad = dict(named)[bad[0]].grad
                    reason = f"gradient of {bad[0]!r} is {_kind(grad)} at step {step}"
                # else: every entry is finite, only the float64 norm overflowed: carry on.
                if reason is not None and nonfinite_layer is None:
                    nonfinite_layer = layer

            if reason is not None:
                record["loss"].append(loss_value)
                record["grad_norm"].append(norm)
                record["clipped_grad_norm"].append(math.nan)
                record["lr"].append(lr)
                record["skipped"].append(True)
                if on_nonfinite == "raise":
                    raise FloatingPointError(reason)
                if on_nonfinite == "stop":
                    record["step_time"].append(time.perf_counter() - start)
                    stopped_at, stop_reason = step, reason
                    warnings.warn(f"fit stopped: {reason}; the optimizer step was not taken",
                                  RuntimeWarning, stacklevel=2)
                    break
                if sum(record["skipped"]) == 1:  # warn once; History.skipped lists them all
                    warnings.warn(f"fit skipped a step: {reason}; later skips are listed in "
                                  "History.skipped", RuntimeWarning, stacklevel=2)
                zero_grad()
                record["step_time"].append(time.perf_counter() - start)
                bar.update()
                continue

            if clip is not None:
                if callable(clip):
                    clip(params)
                else:
                    _clip.clip_grad_norm_(params, clip)
                clipped = _grad_norm([p.grad for p in params if p.grad is not None])
            else:
                clipped = norm
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            zero_grad()

            record["loss"].append(loss_value)
            record["grad_norm"].append(norm)
            record["clipped_grad_norm"].append(clipped)
            record["lr"].append(lr)
            record["skipped"].append(False)
            record["step_time"].append(time.perf_counter() - start)
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{loss_value:.3g}", grad=f"{norm:.3g}", refresh=False)
    finally:
        bar.close()
        if attach:
            monitor.detach()

    n_skipped = sum(record["skipped"]) - (stopped_at is not None)
    if n_skipped > 1:
        warnings.warn(f"fit skipped {n_skipped} of {steps} steps with a NaN/Inf loss or gradient",
                      RuntimeWarning, stacklevel=2)
    arrays = {k: np.asarray(v, dtype=bool if k == "skipped" else float) for k, v in record.items()}
    return History(**arrays, stopped_at=stopped_at, stop_reason=stop_reason,
                   nonfinite_layer=nonfinite_layer, steps=steps)


__all__ = ["History", "ON_NONFINITE", "fit"]
