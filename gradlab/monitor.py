"""Per-layer gradient, activation and update statistics, recorded with hooks.

A row is recorded for every backward pass: the forward that precedes it fills the activation
columns, the backward fills the gradient columns, and an optimizer step (when the monitor knows
the optimizer) fills the update/weight ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._validate import check_choice

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FIELDS = ("grad_norm", "output_grad_norm", "activation_mean", "activation_std", "update_ratio")


@dataclass(frozen=True)
class NonFiniteEvent:
    """Where a NaN or Inf first showed up: the row (backward pass), the layer and the quantity."""

    step: int
    layer: str
    where: str  # "activation", "output_grad" or "weight_grad"

    def __str__(self) -> str:
        return f"step {self.step}: non-finite {self.where} in layer {self.layer!r}"


class NonFiniteError(FloatingPointError):
    """Raised by a monitor with ``on_nonfinite="raise"`` the moment a NaN/Inf appears."""

    def __init__(self, event: NonFiniteEvent) -> None:
        super().__init__(str(event))
        self.event = event


def _norms(tensors) -> list[float]:
    """2-norms of many tensors in one fused call; non-finite only where a NaN/Inf entry is."""
    tensors = [t.detach() for t in tensors]
    norms = torch.stack(torch._foreach_norm(tensors)).tolist()
    for k, (t, norm) in enumerate(zip(tensors, norms, strict=True)):
        if not np.isfinite(norm) and t.dtype != torch.float64:
            # A float32 sum of squares overflows for entries near 1e19 although every entry is
            # finite; redo that rare case in float64 so "non-finite" means a NaN/Inf entry.
            norms[k] = float(torch.linalg.vector_norm(t, dtype=torch.float64))
    return norms


def _sums(tensors) -> list[float]:
    """Sums of many tensors; like :func:`_norms`, redone in float64 where float32 overflows."""
    sums = torch.stack([t.sum() for t in tensors]).tolist()
    for k, (t, total) in enumerate(zip(tensors, sums, strict=True)):
        if not np.isfinite(total) and t.dtype != torch.float64:
            sums[k] = float(t.sum(dtype=torch.float64))
    return sums


class GradientMonitor:
    """Record per-layer statistics of every backward pass of ``model``.

    Use it as a context manager; the hooks are removed on exit::

        with GradientMonitor(model, optimizer) as mon:
            for x, y in batches:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(); loss.backward(); optimizer.step()
        mon.grad_norms          # steps x layers, layers in forward order

    Args:
        model: the network. Its ``nn.Linear`` and ``nn.Conv*d`` modules are monitored, in the
            order of ``model.named_modules()`` (the forward order for sequential models).
        optimizer: if given, each ``optimizer.step()`` records ``||W_new - W_old|| / ||W_old||``.
        on_nonfinite: ``"record"`` notes the first NaN/Inf in :attr:`first_nonfinite` and goes
            on; ``"raise"`` raises :class:`NonFiniteError` at once, from the hook that saw it.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        on_nonfinite: str = "record",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ["record", "raise"])
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        if not named:
            raise ValueError("model has no nn.Linear or nn.Conv layer to monitor")
        self.model = model
        self.optimizer = optimizer
        self.layer_names: list[str] = [n for n, _ in named]
        self._layers: list[nn.Module] = [m for _, m in named]
        self._handles: list = []
        self._snapshot: list[torch.Tensor] | None = None
        self._old_norms: tuple[torch.Tensor, ...] | None = None
        self.reset()

    # -- recording -------------------------------------------------------------------------
    # Hooks only collect tensors; statistics are computed once per pass with fused
    # multi-tensor norms (one call for all layers), which keeps the overhead small.
    def reset(self) -> None:
        """Forget every recorded row and non-finite event."""
        self._rows: list[dict[str, np.ndarray]] = []
        self._row = self._empty_row()
        self._row_has_backward = False
        self._outputs: list[tuple[int, torch.Tensor]] = []
        self._grads: list[tuple[int, str, torch.Tensor]] = []
        self._callback_queued = False
        self._step_row: dict[str, np.ndarray] | None = None
        self.nonfinite_events: list[NonFiniteEvent] = []

    def _empty_row(self) -> dict[str, np.ndarray]:
        return {f: np.full(len(self._layers), np.nan) for f in _FIELDS}

    def _start_forward(self, module, args) -> None:
        # A new forward after a backward closes the previous row. A forward without a backward
        # (evaluation) leaves no row: its activations are overwritten by the next forward.
        if self._row_has_backward:
            self._rows.append(self._row)
            self._row = self._empty_row()
            self._row_has_backward = False
        self._outputs.clear()

    def _flag(self, layer: int, where: str) -> None:
        event = NonFiniteEvent(len(self._rows), self.layer_names[layer], where)
        self.nonfinite_events.append(event)
        if self.on_nonfinite == "raise":
            raise NonFiniteError(event)

    def _on_forward(self, layer: int, module, args, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        self._outputs.append((layer, output.detach()))
        if output.requires_grad:
            output.register_hook(lambda g, i=layer: self._on_grad(i, "output_grad", g))

    def _end_forward(self, module, args, output) -> None:
        if not self._outputs:
            return
        layers, outs = zip(*self._outputs, strict=True)
        self._outputs = []
        norms = _norms(outs)
        sums = _sums(outs)
        flagged = False
        for i, out, norm, total in zip(layers, outs, norms, sums, strict=True):
            # Population mean and std from the sum and the 2-norm: torch.std_mean is several
            # times slower on the CPU.
            n = out.numel()
            mean = total / n
            self._row["activation_mean"][i] = mean
            self._row["activation_std"][i] = np.sqrt(max(norm**2 / n - mean**2, 0.0))
            if not flagged and not (np.isfinite(norm) and np.isfinite(mean)):
                flagged = True  # the first layer, in forward order, is the one to name
                self._flag(i, "activation")

    def _on_grad(self, layer: int, where: str, grad: torch.Tensor) -> None:
        if not self._handles:
            # A graph built while attached keeps its output hooks; a backward through it after
            # detach() must not add a (half-filled) row to a detached monitor.
            return
        self._row_has_backward = True
        # The optimizer step that follows belongs to this row, even if an evaluation forward
        # (which opens a new row) runs between backward() and step().
        self._step_row = self._row
        self._grads.append((layer, where, grad))
        if not self._callback_queued:
            # Runs once the whole backward pass is done, before any optimizer step.
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
            self._callback_queued = True

    def _end_backward(self) -> None:
        self._callback_queued = False
        if not self._grads:
            return
        grads, self._grads = self._grads, []
        norms = _norms([g for _, _, g in grads])
        flagged = False
        for (i, where, _), norm in zip(grads, norms, strict=True):
            field = "grad_norm" if where == "weight_grad" else "output_grad_norm"
            self._row[field][i] = norm
            if not flagged and not np.isfinite(norm):
                flagged = True  # hooks fire output-side first: this is the first bad layer
                self._flag(i, where)

    def _weights(self) -> list[torch.Tensor]:
        return [m.weight.detach() for m in self._layers]

    def _before_step(self, optimizer, args, kwargs) -> None:
        weights = self._weights()
        # Persistent buffers: allocating fresh copies every step costs ~10x more than copying.
        if self._snapshot is None or any(
            b.shape != w.shape or b.dtype != w.dtype or b.device != w.device
            for b, w in zip(self._snapshot, weights, strict=True)
        ):
            self._snapshot = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._snapshot, weights)
        self._old_norms = torch._foreach_norm(weights)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._old_norms is None:
            return
        torch._foreach_sub_(self._snapshot, self._weights())  # snapshot := W_old - W_new
        changes = torch.stack(torch._foreach_norm(self._snapshot)).tolist()
        olds = torch.stack(self._old_norms).tolist()
        row = self._step_row if self._step_row is not None else self._row
        for i, (change, old) in enumerate(zip(changes, olds, strict=True)):
            row["update_ratio"][i] = change / old if old > 0 else np.inf
        self._old_norms = None

    # -- hooks -----------------------------------------------------------------------------
    def attach(self) -> GradientMonitor:
        """Register the hooks (``with`` does this for you)."""
        if self._handles:
            raise RuntimeError("GradientMonitor is already attached")
        self._handles.append(self.model.register_forward_pre_hook(self._start_forward))
        self._handles.append(self.model.register_forward_hook(self._end_forward))
        for i, m in enumerate(self._layers):
            self._handles.append(
                m.register_forward_hook(lambda mod, a, o, i=i: self._on_forward(i, mod, a, o))
            )
            if m.weight.requires_grad:
                self._handles.append(
                    m.weight.register_hook(lambda g, i=i: self._on_grad(i, "weight_grad", g))
                )
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(self.optimizer.register_step_post_hook(self._after_step))
        return self

    def detach(self) -> None:
        """Remove every hook; the records stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._start_forward(None, None)  # close the last row

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # -- results ---------------------------------------------------------------------------
    def _stack(self, field: str) -> np.ndarray:
        rows = self._rows + ([self._row] if self._row_has_backward else [])
        if not rows:
            return np.empty((0, len(self._layers)))
        return np.stack([r[field] for r in rows])

    @property
    def steps(self) -> int:
        """Number of backward passes recorded."""
        return len(self._rows) + int(self._row_has_backward)

    @property
    def grad_norms(self) -> np.ndarray:
        """``||dL/dW||`` per backward pass and layer (steps x layers)."""
        return self._stack("grad_norm")

    @property
    def output_grad_norms(self) -> np.ndarray:
        """``||dL/d(layer output)||`` per backward pass and layer (steps x layers)."""
        return self._stack("output_grad_norm")

    @property
    def activation_means(self) -> np.ndarray:
        """Mean of each layer's output in the forward pass of each step (steps x layers)."""
        return self._stack("activation_mean")

    @property
    def activation_stds(self) -> np.ndarray:
        """Standard deviation of each layer's output (steps x layers)."""
        return self._stack("activation_std")

    @property
    def update_ratios(self) -> np.ndarray:
        """``||W_new - W_old|| / ||W_old||`` of each optimizer step; NaN where none followed."""
        return self._stack("update_ratio")

    @property
    def first_nonfinite(self) -> NonFiniteEvent | None:
        """The first NaN/Inf seen, or ``None``."""
        return self.nonfinite_events[0] if self.nonfinite_events else None

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"GradientMonitor({len(self.layer_names)} layers, {self.steps} steps, {state})"
