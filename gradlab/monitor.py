"""Gradient, output and update statistics of any network, recorded with hooks.

One row per backward pass, in two views:

- per layer (every ``nn.Linear`` and ``nn.Conv*d`` module): the weight-gradient norm, the norm of
  the gradient with respect to the layer's output, the mean and standard deviation of the output
  in the forward pass before, and the weight's update ratio;
- per parameter (every trainable parameter: norms, embeddings, attention projections, biases):
  the gradient norm and the update ratio.

The update ratio ``||W_new - W_old|| / ||W_old||`` of an optimizer step (when the monitor knows
the optimizer) goes to the row of the backward pass before the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from ._validate import check_choice

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_EXACT = (torch.float32, torch.float64)  # reduced as they are; other dtypes in float32


@dataclass(frozen=True)
class NonFiniteEvent:
    """Where a NaN or Inf first showed up: the row (backward pass), the name and the quantity.

    ``where`` is ``"output"`` (a layer's output, forward), ``"output_grad"`` (the gradient with
    respect to a layer's output) or ``"param_grad"`` (a parameter's gradient; then ``layer`` is
    the parameter's name).
    """

    step: int
    layer: str
    where: str

    def __str__(self) -> str:
        kind = "parameter" if self.where == "param_grad" else "layer"
        return f"step {self.step}: non-finite {self.where} in {kind} {self.layer!r}"


class NonFiniteError(FloatingPointError):
    """Raised by a monitor with ``on_nonfinite="raise"`` the moment a NaN/Inf appears."""

    def __init__(self, event: NonFiniteEvent) -> None:
        super().__init__(str(event))
        self.event = event


# -- reductions ------------------------------------------------------------------------------
# Each hook reduces its tensor at once, while it is still in cache, and keeps no reference to
# it (a kept gradient would also make autograd copy it into .grad). On the CPU the result is read
# at once, which costs nothing there; on another device it stays a float64 device scalar and
# the pass's scalars are read together, in one transfer, when the pass ends.

def _on_host(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read at once (on the CPU: no device to wait for)."""
    return t.is_cpu


def _values(t: torch.Tensor) -> torch.Tensor:
    """The entries of ``t`` as a flat float32/float64 tensor (half precision upcast to float32)."""
    if t.dtype in _EXACT and t.layout == torch.strided:  # the common case, in few calls
        if t.requires_grad:
            t = t.detach()
        return t if t.dim() == 1 else t.reshape(-1)
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce().values()
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.reshape(-1)
    return t if t.dtype in _EXACT else t.float()


def _sumsq(t: torch.Tensor) -> float | torch.Tensor:
    """``sum(t**2)`` of flat values; non-finite exactly when an entry of ``t`` is.

    On the CPU a float: a float32 dot product, redone in float64 where the float32 sum overflowed
    (entries above ~1e19). Elsewhere a float64 device scalar, in which no finite float32 overflows.
    """
    if not _on_host(t):
        t = t.double()
        return torch.dot(t, t)
    value = torch.dot(t, t).item()
    if math.isinf(value) and t.dtype != torch.float64:
        t = t.double()
        value = torch.dot(t, t).item()
    return value


def _moments(t: torch.Tensor) -> tuple:
    """``(c, S1, S2) = (c, sum(t - c), sum((t - c)**2))`` of flat values about a shift ``c``:
    ``mean = c + S1/n`` and ``var = S2/n - (S1/n)**2``.

    The shift decides the precision: about ``c``, float sums lose a factor ``1 + (mean - c)**2
    / var`` of their relative accuracy, and ``E[t**2] - mean**2`` (``c = 0``) loses every digit
    when ``|mean| >> std``. On the CPU, ``c = 0`` (two reads, no temporary) where that factor is
    at most 2, that is ``|mean| <= std``, and otherwise the sums are taken again about the mean;
    the results are floats, redone in float64 where float32 overflowed. Elsewhere ``c`` is the
    mean, two passes in float64 on the device, and the results are device scalars.
    """
    n = max(t.numel(), 1)
    if not _on_host(t):
        t = t.double()
        c = t.sum() / n
        d = t - c
        return c, d.sum(), torch.dot(d, d)
    moments = (0.0, t.sum().item(), torch.dot(t, t).item())
    if 2 * moments[1] ** 2 > n * moments[2]:  # mean**2 > var: take them about the mean
        c = moments[1] / n
        if t.dtype == torch.float32:
            c = float(np.float32(c))  # the shift the kernel applies, so that mean = c + S1/n
        d = t - c
        moments = (c, d.sum().item(), torch.dot(d, d).item())
    if not math.isfinite(moments[1] + moments[2]) and t.dtype != torch.float64 and t.isfinite().all():
        return _moments(t.double())  # finite entries whose float32 sums overflowed
    return moments


def _read(values: list) -> list[float]:
    """Floats of a list of floats and device scalars; the device scalars are read together."""
    at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if not at:
        return values
    values = list(values)
    tensors = [values[i] for i in at]
    if len({t.device for t in tensors}) == 1:
        read = torch.stack(tensors).tolist()
    else:
        read = [t.item() for t in tensors]
    for i, v in zip(at, read, strict=True):
        values[i] = v
    return values


class GradientMonitor:
    """Record gradient, output and update statistics of every backward pass of ``model``.

    Use it as a context manager; the hooks are removed on exit::

        with GradientMonitor(model, optimizer) as mon:
            for x, y in batches:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(); loss.backward(); optimizer.step()
        mon.grad_norms          # steps x layers, layers in forward order
        mon.param_grad_norms    # steps x parameters, every trainable parameter

    Per layer (``layer_names``: the ``nn.Linear`` and ``nn.Conv*d`` modules, in the order of
    ``model.named_modules()``, the forward order for sequential models): :attr:`grad_norms`,
    :attr:`output_grad_norms`, :attr:`output_means`, :attr:`output_stds`,
    :attr:`update_ratios`. A layer called several times in one forward is measured over all its
    calls together: the output statistics pool the entries of every call's output, and the
    output-gradient norm is ``sqrt(sum over calls of ||dL/d(output of the call)||^2)``. The
    output statistics are those of the last forward pass before the backward pass.

    A layer whose forward method is not called (``nn.MultiheadAttention`` applies its
    ``out_proj`` functionally) has NaN output columns; its weight gradient is still recorded.

    Per parameter (``param_names``: every parameter that requires grad, in the order of
    ``model.named_parameters()``): :attr:`param_grad_norms`, :attr:`param_update_ratios`.

    To keep the cost at one read of each tensor, a weight's norm is taken in its backward hook
    and reused by the step if the weight's version counter and address are unchanged (likewise
    a gradient's norm, for SGD); an in-place change made through ``.data`` in between is
    invisible to the monitor, as it is to autograd.

    Args:
        model: any ``nn.Module``.
        optimizer: if given, each ``optimizer.step()`` records ``||W_new - W_old|| / ||W_old||``
            for every parameter with a gradient. For ``torch.optim.SGD`` without momentum and
            weight decay the change is read from the step itself, ``lr * ||grad||``, before
            ``W_new`` is rounded to its dtype (the ratio then differs from that of the stored
            weights by at most ``2**-24 * (1 + 3 * ratio)`` in float32: one rounding of
            ``W_new`` and one of ``lr * grad``); for any other optimizer, from a copy of the
            weights taken before the step.
        on_nonfinite: ``"record"`` notes the first NaN/Inf in :attr:`first_nonfinite` and goes
            on; ``"raise"`` raises :class:`NonFiniteError` at the end of the forward or
            backward pass that produced it.
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
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not layers and not params:
            raise ValueError("model has no trainable parameter and no nn.Linear or nn.Conv layer")
        self.model = model
        self.optimizer = optimizer
        self.layer_names: list[str] = [n for n, _ in layers]
        self.param_names: list[str] = [n for n, _ in params]
        self._layers: list[nn.Module] = [m for _, m in layers]
        self._params: list[torch.Tensor] = [p for _, p in params]
        self._column = {id(p): k for k, p in enumerate(self._params)}
        # column of each layer's weight in the per-parameter tables; -1 for a frozen weight
        self._layer_weight = np.array([self._column.get(id(m.weight), -1) for m in self._layers], int)
        # Backward records go to one column space: layers' outputs first, then parameters.
        n_layers = len(self._layers)
        self._param_column = [n_layers + k for k in range(len(self._params))]
        self._sgd = type(optimizer) is torch.optim.SGD
        self._handles: list = []
        self._copies: dict[int, torch.Tensor] = {}  # W before a step, where it must be copied
        self._flats: dict[int, torch.Tensor] = {}  # flat views of the parameters
        self.reset()

    # -- recording -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every recorded row and non-finite event."""
        self._rows: list[dict[str, np.ndarray]] = []
        self._forward = {f: np.full(len(self._layers), np.nan) for f in ("output_mean", "output_std")}
        self._calls: list[tuple] = []  # (layer, numel, c, S1, S2) per output, forward order
        self._grads: list[tuple] = []  # (column, squared norm) per gradient, backward order
        self._seen: dict[int, tuple] = {}  # which tensor .grad is, for an SGD update ratio
        self._weights: dict[int, tuple] = {}  # (||W||^2, version, address) from the backward
        self._step: tuple | None = None
        self._callback_queued = False
        self.nonfinite_events: list[NonFiniteEvent] = []

    def _flag(self, step: int, name: str, where: str) -> None:
        event = NonFiniteEvent(step, name, where)
        self.nonfinite_events.append(event)
        if self.on_nonfinite == "raise":
            raise NonFiniteError(event)

    def _start_forward(self, module, args) -> None:
        # A forward that no backward follows (evaluation) leaves no row: the next forward
        # replaces its statistics. A backward that raised before its end leaves no row either.
        self._calls.clear()
        self._grads.clear()
        self._callback_queued = False

    def _on_output(self, layer: int, module, args, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        values = _values(output)
        if n := values.numel():
            self._calls.append((layer, n, *_moments(values)))
        if output.grad_fn is not None:
            # A hook on the node that made the output receives dL/d(output); it is cheaper to
            # register than a tensor hook, and sees the output as it was before any in-place op.
            output.grad_fn.register_prehook(partial(self._on_output_grad, layer, output.output_nr))

    def _end_forward(self, module=None, args=None, output=None) -> None:
        """Each layer's output mean and std, pooled over its calls (Chan et al.'s update)."""
        if not self._calls:
            return
        calls, self._calls = self._calls, []
        layers = [call[0] for call in calls]
        moments = _read([m for call in calls for m in call[2:]])
        pooled: dict[int, tuple[int, float, float]] = {}  # layer: (count, mean, M2)
        for j, (layer, n) in enumerate((call[0], call[1]) for call in calls):
            c, s1, s2 = moments[3 * j: 3 * j + 3]
            mean, m2 = c + s1 / n, s2 - s1 * s1 / n
            if layer in pooled:
                count, pooled_mean, pooled_m2 = pooled[layer]
                delta, total = mean - pooled_mean, count + n
                mean = pooled_mean + delta * n / total
                m2 = pooled_m2 + m2 + delta * delta * count * n / total
                n = total
            pooled[layer] = (n, mean, m2)
        self._forward = {f: np.full(len(self._layers), np.nan) for f in ("output_mean", "output_std")}
        for layer, (n, mean, m2) in pooled.items():
            self._forward["output_mean"][layer] = mean
            self._forward["output_std"][layer] = math.sqrt(max(m2, 0.0) / n)
        if not math.isfinite(sum(moments)):  # calls arrive in forward order: name the first bad
            j = next(j for j in range(len(calls)) if not all(map(math.isfinite, moments[3 * j: 3 * j + 3])))
            self._flag(len(self._rows), self.layer_names[layers[j]], "output")

    def _on_output_grad(self, layer: int, output_nr: int, grad_outputs) -> None:
        grad = grad_outputs[output_nr]
        if grad is not None and self._handles:  # a graph built while attached may run later
            self._grads.append((layer, _sumsq(_values(grad))))
            self._queue_end_backward()

    def _on_param_grad(self, k: int, grad: torch.Tensor) -> None:
        self._grads.append((self._param_column[k], value := _sumsq(_values(grad))))
        if self.optimizer is not None:
            # ||W_old|| for the update ratio, while W is in cache (the backward just read it);
            # the step uses it if W has not changed since (same version counter and storage).
            p = self._params[k]
            self._weights[k] = (_sumsq(self._flat(k)), p._version, p.data_ptr())
        if self._sgd:
            if self._params[k].grad is None and grad.layout == torch.strided:
                # .grad will be this tensor (or a copy); remember which, so that the SGD step
                # can reuse its norm. Holding the storage keeps its address from being reused.
                self._seen[k] = (value, grad.untyped_storage(), grad.data_ptr(), grad._version)
            else:
                self._seen.pop(k, None)  # .grad accumulates: its norm is not this pass's
        self._queue_end_backward()

    def _queue_end_backward(self) -> None:
        if not self._callback_queued:
            # Runs once the whole backward pass is done, before any optimizer step.
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
            self._callback_queued = True

    def _end_backward(self) -> None:
        self._callback_queued = False
        self._end_forward()  # layers called outside the model's own forward
        grads, self._grads = self._grads, []
        if not grads:
            return
        values = _read([v for _, v in grads])
        sums: dict[int, float] = {}
        for (column, _), value in zip(grads, values, strict=True):
            sums[column] = sums.get(column, 0.0) + value
        norms = np.full(len(self._layers) + len(self._params), np.nan)  # NaN: no gradient
        norms[list(sums)] = np.sqrt(list(sums.values()))
        n_layers = len(self._layers)
        self._rows.append({**{f: v.copy() for f, v in self._forward.items()},
                           "output_grad_norm": norms[:n_layers], "grad_norm": norms[n_layers:],
                           "update_ratio": np.full(len(self._params), np.nan)})
        if not math.isfinite(sum(values)):  # hooks fire in backward order: name the first bad
            column = next(c for (c, _), v in zip(grads, values, strict=True) if not math.isfinite(v))
            step = len(self._rows) - 1
            if column < n_layers:
                self._flag(step, self.layer_names[column], "output_grad")
            else:
                self._flag(step, self.param_names[column - n_layers], "param_grad")

    def _grad_sumsq(self, k: int) -> float | torch.Tensor:
        """``||p.grad||^2``, from the backward hook when ``.grad`` is still the tensor it saw."""
        grad, seen = self._params[k].grad, self._seen.pop(k, None)
        if seen is not None and (grad.data_ptr(), grad._version) == seen[2:]:
            return seen[0]
        return _sumsq(_values(grad))

    def _flat(self, k: int) -> torch.Tensor:
        """Parameter ``k``'s values, flat: a view kept while the parameter keeps its storage."""
        p, flat = self._params[k], self._flats.get(k)
        if flat is None or flat.data_ptr() != p.data_ptr():
            flat = _values(p)
            if flat.data_ptr() == p.data_ptr():  # not a copy (half precision is upcast)
                self._flats[k] = flat
        return flat

    def _weight_sumsq(self, k: int) -> float | torch.Tensor:
        """``||W||^2`` before the step, from the backward hook when W has not changed since."""
        p, seen = self._params[k], self._weights.get(k)
        if seen is not None and seen[1:] == (p._version, p.data_ptr()):
            return seen[0]
        return _sumsq(_values(p))

    def _step_from_grad(self, group: dict, p: torch.Tensor) -> bool:
        """Whether ``p``'s step is ``-lr * p.grad`` (plain SGD), so that no copy is needed."""
        return (self._sgd and group["momentum"] == 0 and group["weight_decay"] == 0
                and not group.get("fused") and p.dtype in _EXACT)

    def _copy(self, columns: list[int]) -> None:
        """Copy these parameters into buffers that are kept, since allocating is slower."""
        params = [self._params[k].detach() for k in columns]
        for k, w in zip(columns, params, strict=True):
            buf = self._copies.get(k)
            if buf is None or (buf.shape, buf.dtype, buf.device) != (w.shape, w.dtype, w.device):
                self._copies[k] = torch.empty_like(w)
        if columns:
            torch._foreach_copy_([self._copies[k] for k in columns], params)

    def _before_step(self, optimizer, args, kwargs) -> None:
        """Prepare ``||W_new - W_old||``: an SGD step's size from the gradient, else a copy."""
        sgd, copied = [], []  # (column, lr) and columns
        for group in optimizer.param_groups:
            for p in group["params"]:
                k = self._column.get(id(p))
                if k is None or p.grad is None:
                    continue  # not the model's, or not stepped: its ratio stays NaN
                if self._step_from_grad(group, p):
                    sgd.append((k, float(group["lr"])))
                else:
                    copied.append(k)
        self._copy(copied)
        columns = [k for k, _ in sgd] + copied
        sums = _read([self._weight_sumsq(k) for k in columns] + [self._grad_sumsq(k) for k, _ in sgd])
        old = [math.sqrt(v) for v in sums[:len(columns)]]
        changes = [lr * math.sqrt(v) for (_, lr), v in zip(sgd, sums[len(columns):], strict=True)]
        self._step = (columns, old, changes)
        self._seen.clear()
        self._weights.clear()

    def _after_step(self, optimizer, args, kwargs) -> None:
        """Record each parameter's update ratio ``||W_new - W_old|| / ||W_old||``.

        :meth:`_before_step` left ``||W_old||`` of every parameter the step moves, the change
        ``||W_new - W_old||`` of those whose step it read from the gradient (plain SGD), and a
        copy of ``W_old`` of the others, which is compared here with ``W_new``.
        """
        if self._step is None or not self._rows:
            return
        columns, old, changes = self._step
        self._step = None
        copied = columns[len(changes):]
        if copied:
            diffs = [self._copies[k] for k in copied]
            torch._foreach_sub_(diffs, [self._params[k].detach() for k in copied])  # W_old - W_new
            changes = changes + [math.sqrt(v) for v in _read([_sumsq(_values(d)) for d in diffs])]
        ratios = self._rows[-1]["update_ratio"]  # the row of the backward pass before the step
        for k, change, before in zip(columns, changes, old, strict=True):
            # A zero parameter that moved has an infinite ratio; one that did not, ratio 0.
            ratios[k] = change / before if before != 0 else (math.inf if change > 0 else change)

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self) -> GradientMonitor:
        """Register the hooks (``with`` does this for you)."""
        if self._handles:
            raise RuntimeError("GradientMonitor is already attached")
        add = self._handles.append
        add(self.model.register_forward_pre_hook(self._start_forward))
        for i, m in enumerate(self._layers):
            add(m.register_forward_hook(partial(self._on_output, i)))
        # After the layers' hooks: when the model is itself a layer, its hook must run first.
        add(self.model.register_forward_hook(self._end_forward))
        for k, p in enumerate(self._params):
            if p.requires_grad:
                add(p.register_hook(partial(self._on_param_grad, k)))
        if self.optimizer is not None:
            add(self.optimizer.register_step_pre_hook(self._before_step))
            add(self.optimizer.register_step_post_hook(self._after_step))
        return self

    def detach(self) -> None:
        """Remove every hook; the records stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._calls.clear()
        self._seen.clear()
        self._weights.clear()
        self._copies.clear()
        self._flats.clear()

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # -- results -------------------------------------------------------------------------------
    def _table(self, field: str) -> np.ndarray:
        width = len(self._params) if field in ("grad_norm", "update_ratio") else len(self._layers)
        if not self._rows:
            return np.empty((0, width))
        return np.stack([r[field] for r in self._rows])

    def _layer_table(self, field: str) -> np.ndarray:
        """A per-parameter table's columns of the layers' weights (NaN for a frozen weight)."""
        table = self._table(field)
        columns = np.full((len(self._rows), len(self._layers)), np.nan)
        trained = self._layer_weight >= 0
        columns[:, trained] = table[:, self._layer_weight[trained]]
        return columns

    @property
    def steps(self) -> int:
        """Number of backward passes recorded."""
        return len(self._rows)

    @property
    def grad_norms(self) -> np.ndarray:
        """``||dL/dW||`` of each layer's weight, per backward pass (steps x layers)."""
        return self._layer_table("grad_norm")

    @property
    def output_grad_norms(self) -> np.ndarray:
        """``||dL/d(layer output)||`` per backward pass and layer (steps x layers)."""
        return self._table("output_grad_norm")

    @property
    def output_means(self) -> np.ndarray:
        """Mean of each layer's output (for an MLP block's linear layer, the pre-activation) in
        the forward pass before each backward pass (steps x layers)."""
        return self._table("output_mean")

    @property
    def output_stds(self) -> np.ndarray:
        """Population standard deviation of each layer's output (steps x layers)."""
        return self._table("output_std")

    @property
    def update_ratios(self) -> np.ndarray:
        """``||W_new - W_old|| / ||W_old||`` of each layer's weight; NaN where no step followed."""
        return self._layer_table("update_ratio")

    @property
    def param_grad_norms(self) -> np.ndarray:
        """``||dL/dp||`` per backward pass and trainable parameter (steps x parameters)."""
        return self._table("grad_norm")

    @property
    def param_update_ratios(self) -> np.ndarray:
        """``||p_new - p_old|| / ||p_old||`` per parameter (steps x parameters); NaN where no
        step followed or the parameter had no gradient, ``inf`` where a zero parameter moved."""
        return self._table("update_ratio")

    @property
    def first_nonfinite(self) -> NonFiniteEvent | None:
        """The first NaN/Inf seen, or ``None``."""
        return self.nonfinite_events[0] if self.nonfinite_events else None

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (f"GradientMonitor({len(self.layer_names)} layers, {len(self.param_names)} "
                f"parameters, {self.steps} steps, {state})")
