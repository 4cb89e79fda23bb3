"""A small training loop that records what the chapters plot and never trains through NaN/Inf.

``fit`` runs ``steps`` optimizer steps and returns a :class:`History` with, per step, the loss,
the gradient norm before and after clipping, the learning rate and the time taken. A non-finite
loss or gradient stops the run (or skips the step, or raises), names the layer where it showed
up, and warns, so an explosion is always visible. A ``callback`` sees each step's
:class:`StepRecord` with the applied gradients still in ``.grad``, records what a chapter needs
and can stop the run, so chapters need no training loop of their own.
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
        loss: the step's loss, the mean over its examples: ``sum_j (n_j / N) L_j`` over its
            micro-batches ``j`` of ``n_j`` examples and mean loss ``L_j``, ``N = sum_j n_j``.
        grad_norm: global 2-norm of the accumulated gradient, before clipping.
        clipped_grad_norm: the same after clipping (NaN for a step that was not applied).
        lr: learning rate of parameter group 0 used by the step.
        step_time: wall-clock seconds of the step.
        skipped: True where the optimizer step was not taken because of a NaN/Inf (skipped
            steps, and the step a run stopped at on a NaN/Inf).
        stopped_at: the step where the run ended early, or ``None``. On a NaN/Inf that step was
            not applied; when the callback stopped the run, it was.
        stop_reason: why it stopped, e.g. ``"loss is nan at step 12"``, or ``None``.
        stopped_by: ``"nonfinite"`` (a NaN/Inf), ``"callback"`` (the callback asked), or
            ``None`` when every step ran.
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
    stopped_by: str | None = None

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def stopped(self) -> bool:
        """Whether the run ended early, on a NaN/Inf or by the callback (see ``stopped_by``)."""
        return self.stopped_at is not None

    @property
    def diverged(self) -> bool:
        """Whether the run ended early on a NaN/Inf loss or gradient."""
        return self.stopped_by == "nonfinite"

    def _skipped_steps(self) -> np.ndarray:
        """Steps skipped and gone past (the step a run stopped at on a NaN/Inf is not counted)."""
        steps = np.flatnonzero(self.skipped)
        return steps[steps != self.stopped_at] if self.diverged else steps

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
            by = " by the callback" if self.stopped_by == "callback" else ""
            lines.append(f"stopped{by}: {self.stop_reason}")
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
    """Global 2-norm of ``grads``; finite whenever every entry is (see ``clip.total_norm``)."""
    return float(_clip.total_norm(grads)) if grads else 0.0


def _kind(t: torch.Tensor) -> str:
    """'nan', 'inf' or '-inf' for a tensor known to hold a non-finite value."""
    if t.isnan().any():
        return "nan"
    return "inf" if (t == math.inf).any() else "-inf"


def _n_examples(x, y) -> int | None:
    """Examples in a micro-batch: the length of ``y``'s first dimension (``x``'s when ``y`` has
    none), or ``None`` when neither is a tensor with a first dimension."""
    for t in (y, x):
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
    return None


def _shares(sizes: list[int | None]) -> list[float]:
    """``N / n_j`` for each micro-batch, so that ``sum_j L_j / (N / n_j)`` is the mean over all
    ``N`` examples. Dividing by ``N / n_j`` (not multiplying by ``n_j / N``) divides by exactly
    ``k`` when the ``k`` sizes are equal. Unknown or zero total sizes: equal weights ``1 / k``."""
    if any(n is None for n in sizes) or sum(sizes) == 0:
        return [float(len(sizes))] * len(sizes)
    total = sum(sizes)
    return [total / n if n else math.inf for n in sizes]


@dataclass(frozen=True)
class StepRecord:
    """One step of :func:`fit`, as the callback receives it (the values :class:`History` stores).

    Attributes:
        step: the step index, from 0.
        loss: the step's loss, the mean over its examples.
        grad_norm: global 2-norm of the accumulated gradient, before clipping.
        clipped_grad_norm: the same after clipping; NaN when the step was not applied.
        lr: learning rate of parameter group 0 used by the step.
        skipped: True when the optimizer step was not taken (a NaN/Inf).
        step_time: wall-clock seconds of the step, the callback not included.
        model: the model being trained.
        optimizer: its optimizer.
    """

    step: int
    loss: float
    grad_norm: float
    clipped_grad_norm: float
    lr: float
    skipped: bool
    step_time: float
    model: nn.Module
    optimizer: torch.optim.Optimizer


def _callback_stop(answer, step: int) -> str | None:
    """The reason to stop that the callback's return value gives, or ``None`` to go on."""
    if answer is None or answer is False or answer is np.False_:
        return None
    if answer is True or answer is np.True_:
        return f"the callback returned True after step {step}"
    if isinstance(answer, str):
        return answer or f"the callback returned True after step {step}"
    raise TypeError("callback must return None, a bool, or a str (the reason to stop), got "
                    f"{type(answer).__name__}")


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
    callback: Callable[[StepRecord], bool | str | None] | None = None,
    progress: bool | None = None,
) -> History:
    """Train ``model`` for ``steps`` optimizer steps and record each one.

    Each step draws ``accumulate`` micro-batches ``(x_j, y_j)`` of ``n_j`` examples,
    ``N = sum_j n_j``, and for each back-propagates ``L_j · n_j / N`` with
    ``L_j = loss_fn(model(x_j), y_j)``; so the accumulated gradient is the gradient of the mean
    loss over the step's ``N`` examples, and with equal sizes each ``L_j`` is divided by ``k``.
    Then it measures the global gradient norm, checks for NaN/Inf, clips, measures again, calls
    ``optimizer.step()`` and ``scheduler.step()``, calls ``callback`` and zeroes the gradients.

    Accumulation equals one step on the ``N`` examples together (up to rounding) only when
    ``loss_fn`` is a mean over examples of per-example terms (``reduction="mean"``) and no layer
    couples the examples of a batch. It is not exact for a BatchNorm layer in training mode (it
    normalizes each micro-batch by that micro-batch's statistics), and not for a loss averaged
    over the tokens of sequences of unequal length (a token-mean cross-entropy is a mean over
    tokens, so weighting micro-batches by their number of sequences is not the mean over all
    tokens). A loss that sums over examples (``reduction="sum"``) is not averaged at all; use
    the mean. ``n_j`` is the length of ``y_j``'s first dimension (of ``x_j``'s when ``y_j`` has
    none; equal weights ``1 / k`` when neither has).

    A short last micro-batch (an iterable such as a ``DataLoader`` without ``drop_last`` whose
    data set is not a multiple of the batch size) is weighted by its size like any other: each
    of its examples weighs as much as every other example of its step, and the step's gradient
    is the mean over the ``N`` examples that step drew, fewer than in a full step. Steps are not
    aligned with passes over ``data``: when an iterable runs out partway through a step, it is
    started again and the step is completed from the next pass, so a short last batch can share a
    step with the first batches of the next pass. With ``accumulate=1`` it is a step of its own,
    on the mean loss of its few examples, at the same learning rate as a full step.

    Args:
        model: the network (its mode, train or eval, is left as it is).
        loss_fn: ``loss_fn(model(x), y)`` returns a scalar tensor, the mean over the examples.
        data: a tuple ``(x, y)`` (the full batch, every step), an iterable of ``(x, y)`` batches
            (started again when exhausted), or a callable ``data(i) -> (x, y)`` called with the
            micro-batch counter ``i = step * accumulate + j``.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        steps: number of optimizer steps, at least 1.
        clip: ``None``; a number ``c`` for global 2-norm clipping
            (:func:`gradlab.clip.clip_grad_norm_`); or a callable ``clip(parameters)`` that
            modifies the gradients in place. A non-finite gradient after the clip counts as a
            NaN/Inf (see ``on_nonfinite``).
        scheduler: a learning-rate scheduler, stepped after every optimizer step that was taken.
        accumulate: micro-batches per optimizer step, at least 1.
        monitor: a :class:`~gradlab.monitor.GradientMonitor` of ``model``; attached for the run
            (unless already attached) and detached after. It records one row per micro-batch and
            names the layer of the first NaN/Inf (forward activations included).
        on_nonfinite: what a NaN/Inf loss or gradient does: ``"stop"`` ends the run before the
            optimizer step (the failing gradients stay in ``.grad`` for inspection), ``"skip"``
            zeroes the gradients and goes on without that step, ``"raise"`` raises
            ``FloatingPointError``. Stop and skip also warn (``RuntimeWarning``).
        callback: ``callback(record)`` with the step's :class:`StepRecord`, called once per
            recorded step (skipped ones and a step the run stops at included), after
            ``optimizer.step()`` and ``scheduler.step()`` and before the gradients are zeroed:
            ``.grad`` holds the gradients the step applied, clipped (on a skipped step, the
            non-finite ones it did not apply). Returning ``True`` or a string (the reason) ends
            the run after this step (``History.stopped_by == "callback"``); ``None`` or
            ``False`` goes on. Its time is not counted in ``step_time``.
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
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
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

    def first_nonfinite() -> list[str]:
        # Backward runs output side first; for models built input to output (every gradlab
        # model) that is the reverse of the registration order.
        return [n for n, p in named[::-1] if p.grad is not None and not p.grad.isfinite().all()]

    record = {k: [] for k in ("loss", "grad_norm", "clipped_grad_norm", "lr", "step_time", "skipped")}
    stopped_at = stop_reason = stopped_by = nonfinite_layer = None

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
            batches = [_unpack(b) for b in draw(step)]
            shares = _shares([_n_examples(x, y) for x, y in batches])
            loss_value = 0.0
            for (x, y), share in zip(batches, shares, strict=True):
                loss = loss_fn(model(x), y)
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                    raise TypeError("loss_fn must return a scalar tensor, got "
                                    f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
                (loss / share).backward()  # weight n_j / N: the sum is the mean over examples
                loss_value += float(loss.detach()) / share
            norm = _grad_norm([p.grad for p in params if p.grad is not None])

            # -- NaN/Inf: find where, then stop, skip or raise; never step the optimizer. --
            reason = None
            if not (math.isfinite(loss_value) and math.isfinite(norm)):
                bad = first_nonfinite()
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
                    reason = f"gradient of {bad[0]!r} is {_kind(dict(named)[bad[0]].grad)} at step {step}"
                else:  # every entry finite, the norm beyond float64 (> 1.8e308): no step to take
                    reason = f"gradient norm overflows float64 at step {step} (every entry is finite)"
                if nonfinite_layer is None:
                    nonfinite_layer = layer

            clipped = math.nan
            if reason is None:
                if clip is not None:
                    if callable(clip):
                        clip(params)
                    else:
                        _clip.clip_grad_norm_(params, clip)
                    clipped = _grad_norm([p.grad for p in params if p.grad is not None])
                    if not math.isfinite(clipped):
                        bad = first_nonfinite()
                        what = f"gradient of {bad[0]!r}" if bad else "gradient norm"
                        reason = f"{what} is {clipped} after clipping at step {step}"
                        if nonfinite_layer is None and bad:
                            nonfinite_layer = bad[0]
                        clipped = math.nan
                else:
                    clipped = norm

            if reason is not None and on_nonfinite == "raise":
                raise FloatingPointError(reason)
            if reason is None:
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            skipped = reason is not None
            step_time = time.perf_counter() - start
            for key, value in (("loss", loss_value), ("grad_norm", norm), ("clipped_grad_norm", clipped),
                               ("lr", lr), ("step_time", step_time), ("skipped", skipped)):
                record[key].append(value)
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{loss_value:.3g}", grad=f"{norm:.3g}", refresh=False)

            answer = None
            if callback is not None:
                answer = callback(StepRecord(step, loss_value, norm, clipped, lr, skipped, step_time,
                                             model, optimizer))
            if skipped and on_nonfinite == "stop":  # the failing gradients stay in .grad
                stopped_at, stop_reason, stopped_by = step, reason, "nonfinite"
                warnings.warn(f"fit stopped: {reason}; the optimizer step was not taken",
                              RuntimeWarning, stacklevel=2)
                break
            if skipped and sum(record["skipped"]) == 1:  # warn once; History.skipped lists them all
                warnings.warn(f"fit skipped a step: {reason}; later skips are listed in "
                              "History.skipped", RuntimeWarning, stacklevel=2)
            zero_grad()
            wanted = _callback_stop(answer, step)
            if wanted is not None:
                stopped_at, stop_reason, stopped_by = step, wanted, "callback"
                break
    finally:
        bar.close()
        if attach:
            monitor.detach()

    n_skipped = sum(record["skipped"]) - (stopped_by == "nonfinite")
    if n_skipped > 1:
        warnings.warn(f"fit skipped {n_skipped} of {steps} steps with a NaN/Inf loss or gradient",
                      RuntimeWarning, stacklevel=2)
    arrays = {k: np.asarray(v, dtype=bool if k == "skipped" else float) for k, v in record.items()}
    return History(**arrays, stopped_at=stopped_at, stop_reason=stop_reason,
                   nonfinite_layer=nonfinite_layer, steps=steps, stopped_by=stopped_by)


__all__ = ["History", "ON_NONFINITE", "StepRecord", "fit"]
