"""A gradient doctor for any PyTorch model: a few training passes on a copy, read for symptoms.

``report = gl.doctor(model, loss_fn, batch, optimizer=opt)`` deep-copies ``model`` and
``optimizer``, runs forward and backward passes (and optimizer steps) on the copies, and returns
a :class:`Report` whose :attr:`Report.findings` name what looks wrong, where, how it was
measured, what to try, and which chapter explains it. The caller's model, optimizer and random
state are left as they were.

What is measured, and the thresholds (module constants, so a reader can see and change them):

- ``exploding_gradient`` / ``vanishing_gradient``: ``||dL/d(output)||`` of every ``nn.Linear``
  and ``nn.Conv*d`` layer in execution order (read by :class:`gradlab.GradientMonitor`), and of
  every activation that one module applies three times or more in one forward pass (a recurrent
  cell over time: the gradient with respect to each ``h_t``; not when a different layer ran
  before each call, as in a feed-forward network applying ``F.relu`` in a loop: those calls are
  the layers, already measured). A least-squares line through
  ``log ||g_i||`` against the position ``i`` gives the growth from the last position to the
  first, ``G = exp(-slope (n - 1))``: ``G >= GROWTH_WARNING`` is a warning (``GROWTH_ERROR``
  an error), and ``1 / G`` the same for vanishing.
- ``non_finite``: the first module, in execution order, whose forward output holds a NaN/Inf;
  if the forward pass is finite, the module whose backward pass turned a finite gradient into a
  non-finite one (the gradient at its output was finite, the one at its input or parameters was
  not), or ``loss_fn``.
- ``update_ratio`` (given an optimizer): ``||W_new - W_old|| / ||W_old||`` of every weight
  (parameters with two or more dimensions) per step; the healthy band is about ``1e-3`` per
  step (:data:`UPDATE_BAND`); a median outside :data:`UPDATE_LIMITS` is a warning, above 1 an
  error; the evidence lists every step's ratio. A weight that starts at zero (a zero-initialized
  read-out) has no ratio at the start and is only noted.
- ``saturation``: the fraction of a tanh/sigmoid's inputs where its slope is below
  ``RAIL_SLOPE`` times its largest slope (from :mod:`gradlab.activations`); ``tanh``: ``|tanh|
  > 0.995``.
- ``dead_units``: ReLU-family units (ReLU, leaky ReLU, ELU, SELU, GELU, SiLU) whose input is
  never positive on the batch; a unit is a feature (the last dimension for inputs of up to three
  dimensions, dimension 1, the channel, for four or more and for a 3-D input straight out of a
  convolution or a channel norm, as in a ``Conv1d`` network). A leaky ReLU unit
  that is never positive still passes a gradient through its negative side: noted, never a
  warning.
- ``diverging_loss`` (given an optimizer and two steps or more): the loss grew ``LOSS_GROWTH``
  times or more over the steps.

Activations are seen wherever they are applied, as modules or as functions (``torch.tanh`` in a
recurrent cell), through a ``torch.overrides.TorchFunctionMode`` active during the forward pass.
A fused kernel (``nn.LSTM``, ``nn.RNN``) is one call: the doctor cannot look inside it.

The trend compares norms of tensors of different sizes. Averaging ``k`` positions (average
pooling, a mean over time) hands each of them ``1/k`` of the gradient, which divides the norm by
``sqrt(k)``: a convolutional network with global average pooling over many positions shows a
shrinkage toward the input that is the pooling's, not a vanishing gradient.
"""

from __future__ import annotations

import copy
import html
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ._validate import check_int
from .activations import ACTIVATIONS
from .monitor import LAYER_TYPES, GradientMonitor

SEVERITIES = ("info", "warning", "error")
"""Severities in increasing order; a healthy network has no finding above ``"info"``."""

GROWTH_INFO, GROWTH_WARNING, GROWTH_ERROR = 10.0, 30.0, 1e3
"""Gradient growth (or shrinkage) across a network's layers, or across a cell's time steps,
from which a trend is reported as info, warning, error."""

MIN_TREND_POINTS = 3
"""Positions (layers, or calls of one activation) needed to fit a trend."""

UPDATE_BAND = (1e-4, 1e-2)
"""A decade either side of the ``1e-3`` update/weight ratio per step that is healthy for Adam and
SGD with momentum (Karpathy's rule of thumb, CS231n); outside it an info finding."""

UPDATE_LIMITS = (1e-5, 1e-1)
"""Outside these ratios, a warning; a ratio above 1 (the step is larger than the weight) is an
error."""

RAIL_SLOPE = 0.01
"""A tanh/sigmoid input is at the rails when the slope there is below this fraction of the
largest slope (tanh: ``|tanh(a)| > 0.995``, ``|a| > 3.0``; sigmoid: ``|a| > 6.0``)."""

SATURATION_INFO, SATURATION_WARNING, SATURATION_ERROR = 0.05, 0.25, 0.5
"""Fraction of a tanh/sigmoid's inputs at the rails reported as info, warning, error."""

DEAD_WARNING, DEAD_ERROR = 0.5, 0.9
"""Fraction of a ReLU-family activation's units never active reported as warning, error (any
dead unit below that is info). High, because deep narrow ReLU networks have many units that are
inactive on a whole batch already at a critical initialization: their inputs grow more
correlated with depth, so a unit tends to be on for every input or for none."""

MIN_DEAD_SAMPLES = 16
"""Samples per unit needed to call a unit dead: a unit with a symmetric input is inactive on
``k`` samples by chance with probability ``2**-k``."""

LOSS_GROWTH = 10.0
"""Loss growth over the steps reported as ``diverging_loss``."""

ROOT = "(model)"
"""The name ``where`` gives the model itself (``named_modules()`` calls it ``""``)."""

CHAPTERS = {
    "exploding_gradient": "initialization",
    "exploding_through_time": "rnn_cliff",
    "vanishing_gradient": "signal_propagation",
    "vanishing_through_time": "gated_rnns",
    "non_finite": "mixed_precision",
    "update_ratio": "learning_rate",
    "saturation": "activations",
    "dead_units": "activations",
    "diverging_loss": "learning_rate",
}
"""The chapter (a file name in ``book/``) that explains each finding."""

_SATURATING = ("tanh", "sigmoid")
_RELU_FAMILY = ("relu", "leaky_relu", "elu", "selu", "gelu", "silu")
_LEAKY = ("leaky_relu",)  # a slope bounded away from 0 on the negative side (ELU's decays to 0)

# The functions (and tensor methods) through which PyTorch applies each activation; the
# modules (nn.Tanh, nn.ReLU, ...) call these too.
_ACTIVATION_FUNCTIONS: dict[Callable, str] = {}
for _name, _fns in {
    "tanh": (torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_, F.tanh),
    "sigmoid": (torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, F.sigmoid),
    "relu": (torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu, F.relu_),
    "leaky_relu": (F.leaky_relu, F.leaky_relu_),
    "elu": (F.elu, F.elu_),
    "selu": (F.selu, F.selu_, torch.selu),
    "gelu": (F.gelu,),
    "silu": (F.silu,),
}.items():
    for _fn in _fns:
        _ACTIVATION_FUNCTIONS[_fn] = _name


@dataclass(frozen=True)
class Finding:
    """One symptom.

    Attributes:
        kind: ``"exploding_gradient"``, ``"vanishing_gradient"``, ``"non_finite"``,
            ``"update_ratio"``, ``"saturation"``, ``"dead_units"`` or ``"diverging_loss"``.
        where: the module or parameter name (``"(model)"`` for the model itself, ``"batch"``,
            ``"loss_fn"``), or ``None``.
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        evidence: what was measured, in words and numbers.
        advice: what to try.
        chapter: the file name, in ``book/``, of the chapter that explains it.
        values: the measured numbers behind ``evidence``, by name (left out of the repr, which
            is one line; the per-layer norms and names in it run to hundreds of numbers).
    """

    kind: str
    where: str | None
    severity: str
    evidence: str
    advice: str
    chapter: str
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def level(self) -> int:
        """0, 1, 2 for info, warning, error."""
        return SEVERITIES.index(self.severity)


@dataclass(frozen=True)
class ActivationSite:
    """What the doctor saw of one activation: a function applied by one module.

    ``calls`` applications in the first pass (a recurrent cell: one per time step), inputs of
    ``units`` units pooled over ``samples`` samples each; ``saturated`` is the fraction of
    inputs at the rails (tanh/sigmoid; NaN otherwise), ``dead`` the fraction of units never
    active (ReLU family; NaN otherwise), ``grad_norms`` the norm of the gradient with respect to
    each call's output, in call order. ``across_layers``: between consecutive calls a different
    ``nn.Linear``/``nn.Conv*d`` ran each time (a feed-forward network applying ``F.relu`` in a
    loop): the calls are layers, not time steps, and the layers' own trend reports them.
    """

    module: str
    function: str
    calls: int
    units: int
    samples: int
    saturated: float
    dead: float
    grad_norms: tuple[float, ...]
    across_layers: bool = False


@dataclass
class Report:
    """What :func:`doctor` measured and found.

    Attributes:
        findings: the :class:`Finding` list, errors first.
        model: the model's class name; ``optimizer``: the optimizer's (or ``None``).
        losses: the loss of each pass.
        layer_names: the ``nn.Linear``/``nn.Conv*d`` layers in execution order.
        output_grad_norms: ``||dL/d(layer output)||``, passes x layers, in that order.
        param_names: every trainable parameter; ``update_ratios``: steps x parameters
            (empty without an optimizer).
        activations: an :class:`ActivationSite` per activation seen in the first pass.
        seconds: the doctor's wall-clock time.
    """

    findings: list[Finding]
    model: str
    optimizer: str | None
    losses: list[float]
    layer_names: list[str]
    output_grad_norms: np.ndarray
    param_names: list[str]
    update_ratios: np.ndarray
    activations: list[ActivationSite]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when no finding is a warning or an error."""
        return all(f.level == 0 for f in self.findings)

    def of_kind(self, kind: str, *, at_least: str = "warning") -> list[Finding]:
        """The findings of ``kind`` with severity ``at_least`` or worse."""
        level = SEVERITIES.index(at_least)
        return [f for f in self.findings if f.kind == kind and f.level >= level]

    @property
    def kinds(self) -> set[str]:
        """The kinds of the warnings and errors."""
        return {f.kind for f in self.findings if f.level > 0}

    def _header(self) -> str:
        opt = f", optimizer {self.optimizer}" if self.optimizer else ", no optimizer"
        loss = " -> ".join(f"{v:.4g}" for v in self.losses)
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return (f"gl.doctor: {self.model}{opt}, {len(self.losses)} pass(es), loss {loss}, "
                f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s), "
                f"{self.seconds:.2f} s")

    def __str__(self) -> str:
        lines = [self._header()]
        if not self.findings:
            return lines[0] + "\nno finding"
        rows = [(f.severity.upper(), f.kind, f.where or "-", f.evidence) for f in self.findings]
        widths = [max(len(r[i]) for r in rows + [("severity", "kind", "where", "")]) for i in range(3)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(("severity", "kind", "where"), widths, strict=True))
                     + "  evidence")
        pad = " " * (sum(widths) + 6)
        for f, row in zip(self.findings, rows, strict=True):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
            lines.append(f"{pad}advice: {f.advice} (chapter: {f.chapter})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colors = {"error": "#c0392b", "warning": "#d68910", "info": "#5d6d7e"}
        head = f"<p><b>{html.escape(self._header())}</b></p>"
        if not self.findings:
            return head + "<p>no finding</p>"
        cells = "".join(
            f"<tr><td style='color:{colors[f.severity]};font-weight:bold'>{f.severity}</td>"
            f"<td>{html.escape(f.kind)}</td><td><code>{html.escape(f.where or '-')}</code></td>"
            f"<td>{html.escape(f.evidence)}</td><td>{html.escape(f.advice)}</td>"
            f"<td>{html.escape(f.chapter)}</td></tr>"
            for f in self.findings)
        return (head + "<table><thead><tr><th>severity</th><th>kind</th><th>where</th><th>evidence</th>"
                f"<th>advice</th><th>chapter</th></tr></thead><tbody>{cells}</tbody></table>")


# -- input checks ------------------------------------------------------------------------------

def _is_tensors(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, tuple | list):
        return len(x) > 0 and all(isinstance(t, torch.Tensor) for t in x)
    if isinstance(x, Mapping):
        return len(x) > 0 and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in x.items())
    return False


def _tensors(x: object) -> list[torch.Tensor]:
    """The tensors in a tensor, a (nested) tuple/list or a dict."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _shapes(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in x.items()) + "}"
    if isinstance(x, tuple | list):
        return "(" + ", ".join(_shapes(v) for v in x) + ")"
    return type(x).__name__


def _check_batch(batch: object) -> tuple[Any, Any]:
    if not isinstance(batch, tuple | list):
        raise TypeError(f"batch must be a pair (x, y), got {type(batch).__name__}")
    if len(batch) != 2:
        raise ValueError(f"batch must be a pair (x, y), got {len(batch)} items")
    x, y = batch
    if not _is_tensors(x):
        raise TypeError("batch[0] (x) must be a tensor, a tuple of tensors or a dict of tensors, got "
                        f"{type(x).__name__}")
    if not _is_tensors(y):
        raise TypeError("batch[1] (y) must be a tensor, a tuple of tensors or a dict of tensors, got "
                        f"{type(y).__name__}")
    return x, y


def _call(model: nn.Module, x: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(x)


# -- measurements --------------------------------------------------------------------------------

def _all_finite(values: object) -> bool:
    """Whether every floating-point entry of the tensors in ``values`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in _tensors(values)
               if t.is_floating_point() or t.is_complex())


_CHANNEL_FIRST_MAKERS = ("Convolution", "BatchNorm", "GroupNorm", "InstanceNorm")
"""Backward-node names of the operations whose output has its channels in dimension 1."""


def _channel_first(a: torch.Tensor) -> bool:
    """Whether ``a`` (3-D) comes straight out of a convolution or a channel norm: then its units
    are dimension 1, (batch, channels, length), not the last, (batch, time, features)."""
    maker = type(a.grad_fn).__name__ if a.grad_fn is not None else ""
    return any(word in maker for word in _CHANNEL_FIRST_MAKERS)


def _units_view(a: torch.Tensor, channel_first: bool = False) -> torch.Tensor:
    """``a`` as (samples, units): a unit is the last dimension for up to 3 dims, else dim 1 (and
    dim 1 of a 3-D ``a`` with ``channel_first``: the output of a ``Conv1d``)."""
    if a.ndim <= 1:
        return a.reshape(1, -1)
    if a.ndim <= 3 and not (channel_first and a.ndim == 3):
        return a.reshape(-1, a.shape[-1])
    return a.transpose(0, 1).reshape(a.shape[1], -1).T


class _Site:
    """Running statistics of one activation site (module, function) in the first pass."""

    def __init__(self, module: str, function: str) -> None:
        self.module, self.function = module, function
        self.calls = 0
        self.units = -1  # -1: not yet seen; None: calls of differing unit counts
        self.samples = 0
        self.rails = 0  # inputs at the rails
        self.entries = 0
        self.active: torch.Tensor | None = None  # per unit: positive on some sample
        self.grad_sumsq: list[float] = []
        self.marks: list[int] = []  # per call: how many layers had been entered before it

    def add(self, a: torch.Tensor) -> int:
        channel_first = _channel_first(a)
        a = a.detach()
        view = _units_view(a, channel_first)
        if self.units == -1:
            self.units = view.shape[1]
        elif self.units != view.shape[1]:
            self.units = None
        self.calls += 1
        self.samples += view.shape[0]
        self.entries += a.numel()
        entry = ACTIVATIONS[self.function]
        if self.function in _SATURATING:
            slope = entry.derivative(a.float() if a.dtype in (torch.float16, torch.bfloat16) else a)
            self.rails += int((slope < RAIL_SLOPE * entry.max_slope).sum())
        elif self.units is not None:
            active = (view > 0).any(dim=0)
            self.active = active if self.active is None else self.active | active
        self.grad_sumsq.append(math.nan)
        return self.calls - 1

    def on_grad(self, call: int, grad_outputs: tuple) -> None:
        g = grad_outputs[0]
        if g is not None:
            self.grad_sumsq[call] = float(torch.linalg.vector_norm(g.detach().float())) ** 2

    def result(self, layer_log: list[str] | None = None) -> ActivationSite:
        saturated = self.rails / self.entries if self.function in _SATURATING and self.entries else math.nan
        units = self.units or 0
        per_unit = self.samples if units else 0
        dead = math.nan
        if self.function in _RELU_FAMILY and self.active is not None and per_unit >= MIN_DEAD_SAMPLES:
            dead = float((~self.active).float().mean())
        across = False
        if layer_log is not None and len(self.marks) >= 2:
            between = [set(layer_log[a:b]) for a, b in zip(self.marks, self.marks[1:], strict=False)]
            seen: set[str] = set()
            across = all(between)
            for names in between:
                across = across and not (names & seen)
                seen |= names
        return ActivationSite(self.module, self.function, self.calls, units, per_unit, saturated, dead,
                              tuple(math.sqrt(v) for v in self.grad_sumsq), across)


class _ActivationMode(TorchFunctionMode):
    """Sees every activation function applied inside a module during the first forward pass."""

    def __init__(self, probe: _Probe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _ACTIVATION_FUNCTIONS.get(func)
        site = None
        if name is not None and self.probe.stack and args and isinstance(args[0], torch.Tensor):
            site_key = (self.probe.stack[-1], name)
            site = self.probe.sites.get(site_key)
            if site is None:
                site = self.probe.sites[site_key] = _Site(*site_key)
            call = site.add(args[0])  # before the call: an in-place activation overwrites it
            site.marks.append(len(self.probe.layer_log))
        out = func(*args, **kwargs)
        if site is not None and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            nr = out.output_nr
            out.grad_fn.register_prehook(lambda grads, s=site, c=call, nr=nr: s.on_grad(c, grads[nr:]))
        return out


class _Probe:
    """Hooks on the doctor's copy: execution order, the module stack (for the activation mode),
    the first non-finite forward output, and the backward gradients in the order they arrive."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {m: (n or ROOT) for n, m in model.named_modules()}
        self.owner = {}  # parameter -> the module that holds it
        for n, m in model.named_modules():
            for p in m.parameters(recurse=False):
                self.owner.setdefault(p, n or ROOT)
        self.order: dict[str, int] = {}  # module -> position of its first call
        self.stack: list[str] = []
        self.sites: dict[tuple[str, str], _Site] = {}
        self.handles: list = []
        self.forward_bad: str | None = None
        # whether forward_bad's positional inputs were finite when it was called, and the module
        # that called it (None: the model itself was called on the batch)
        self.forward_bad_input_finite = True
        self.forward_bad_caller: str | None = None
        self.entry_finite: list[bool] = []  # per module on the stack: its inputs finite
        self.inputs_of: list[list[tuple[int, int]]] = []  # per module on the stack: its inputs' keys
        # (module, what, finite, key), backward order; key: the output's (node id, output_nr)
        self.backward: list[tuple[str, str, bool, tuple | None]] = []
        # (node id, output_nr) of a tensor -> the leaf modules that took it as an input, and the
        # nodes themselves (kept alive for the pass, so that no id is reused)
        self.consumers: dict[tuple[int, int], list[str]] = {}
        self.nodes: list = []
        self.layer_log: list[str] = []  # the nn.Linear/nn.Conv modules entered, in order

    def attach(self) -> None:
        for m, name in self.names.items():
            leaf = next(m.children(), None) is None or m is self.model
            self.handles.append(m.register_forward_pre_hook(partial(self._enter, name)))
            self.handles.append(m.register_forward_hook(partial(self._leave, name, leaf)))
        for p, name in self.owner.items():
            if p.requires_grad:
                self.handles.append(p.register_hook(partial(self._param_grad, name)))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def new_pass(self) -> None:
        self.stack.clear()
        self.forward_bad = None
        self.entry_finite = []
        self.inputs_of = []
        self.backward = []
        self.consumers = {}
        self.nodes = []

    def _enter(self, name: str, module, args) -> None:
        self.order.setdefault(name, len(self.order))
        if isinstance(module, LAYER_TYPES):
            self.layer_log.append(name)
        self.stack.append(name)
        # read before the call: an in-place operation may overwrite the input
        self.entry_finite.append(self.forward_bad is not None or _all_finite(args))
        inputs = [t for t in _tensors(args) if t.grad_fn is not None]
        self.nodes += [t.grad_fn for t in inputs]  # alive, so that their ids stay theirs
        self.inputs_of.append([_key(t) for t in inputs])

    def _leave(self, name: str, leaf: bool, module, args, output) -> None:
        input_finite, inputs = True, []
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
            input_finite = self.entry_finite.pop()
            inputs = self.inputs_of.pop()
        if self.forward_bad is None and not _all_finite(output):
            self.forward_bad = name  # hooks fire innermost first: the first is the origin
            self.forward_bad_input_finite = input_finite
            self.forward_bad_caller = self.stack[-1] if self.stack else None
        if leaf and torch.is_grad_enabled():
            outputs = [t for t in _tensors(output) if t.grad_fn is not None]
            for t in outputs:
                self.nodes.append(t.grad_fn)
                t.grad_fn.register_prehook(partial(self._output_grad, name, t.output_nr, _key(t)))
            out_keys = {_key(t) for t in outputs}
            for key in inputs:  # a module that hands its input on as is (nn.Identity) made nothing
                if key not in out_keys:
                    self.consumers.setdefault(key, []).append(name)

    def _output_grad(self, name: str, nr: int, key: tuple, grad_outputs: tuple) -> None:
        g = grad_outputs[nr] if nr < len(grad_outputs) else None
        if g is not None:
            self.backward.append((name, "output", bool(torch.isfinite(g).all()), key))

    def _param_grad(self, name: str, grad: torch.Tensor) -> None:
        self.backward.append((name, "parameter", bool(torch.isfinite(grad).all()), None))

    def backward_origin(self) -> tuple[str, str, str] | None:
        """(module that made the first non-finite gradient, module whose gradient holds it, what).

        A parameter's gradient is made by its module. The gradient at a module's output is made
        by the backward passes of the modules that took that output as an input: the first of
        them whose own output gradient was finite is named (if the output went only into code
        outside any submodule, the last module whose output gradient was finite, or loss_fn)."""
        last_finite, finite_outputs = "loss_fn", set()
        for name, what, finite, key in self.backward:
            if finite:
                if what == "output":
                    last_finite = name
                    finite_outputs.add(name)
                continue
            if what == "parameter":
                return name, name, what
            makers = [m for m in self.consumers.get(key, []) if m in finite_outputs]
            return (makers[0] if makers else last_finite), name, what
        return None


def _key(t: torch.Tensor) -> tuple[int, int]:
    """Which autograd output ``t`` is: its node's id and output number."""
    return id(t.grad_fn), t.output_nr


def gradient_growth(norms: Sequence[float] | np.ndarray) -> tuple[float, float] | None:
    """How much ``norms`` grow from the last position to the first, on a least-squares line.

    With ``i = 0 .. n-1`` the positions (layers in execution order, or calls of a recurrent cell)
    and ``slope`` that of the least-squares line through ``(i, log norms[i])``, returns
    ``(G, g) = (exp(-slope * span), exp(-slope))``, ``span`` the distance between the first and
    the last usable position: ``G > 1`` when the norms grow toward the first position (toward the
    input: exploding), ``G < 1`` when they shrink (vanishing); ``g`` is the factor per position.
    Zero and non-finite norms are left out; ``None`` when fewer than :data:`MIN_TREND_POINTS`
    remain. On an exact geometric sequence ``norms[i] = c r^(n-1-i)`` it returns ``(r^(n-1), r)``.
    """
    y = np.asarray(norms, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"norms must be a 1-D sequence, got shape {y.shape}")
    x = np.arange(len(y), dtype=float)
    keep = np.isfinite(y) & (y > 0)
    if keep.sum() < MIN_TREND_POINTS:
        return None
    slope = np.polyfit(x[keep], np.log(y[keep]), 1)[0]
    span = x[keep][-1] - x[keep][0]
    return float(np.exp(-slope * span)), float(np.exp(-slope))


def _growth_finding(where: str, norms: list[float], what: str, through_time: bool) -> Finding | None:
    fit = gradient_growth(norms)
    if fit is None:
        return None
    growth, per_step = fit
    exploding = growth >= 1.0
    size = growth if exploding else 1.0 / growth
    if size < GROWTH_INFO:
        return None
    severity = "error" if size >= GROWTH_ERROR else "warning" if size >= GROWTH_WARNING else "info"
    kind = "exploding_gradient" if exploding else "vanishing_gradient"
    trend = "grows" if exploding else "shrinks"
    used = [v for v in norms if math.isfinite(v) and v > 0]  # the positions the fit used
    evidence = (f"||dL/d(output)|| {trend} by {size:.3g}x from the last {what} to the first "
                f"({per_step:.3g}x per {what}, fitted over {len(used)}): "
                f"first {used[0]:.3g}, last {used[-1]:.3g}")
    if through_time:
        chapter = CHAPTERS["exploding_through_time" if exploding else "vanishing_through_time"]
        advice = ("clip the gradient norm, and keep the recurrent weight's spectral radius near 1"
                  if exploding else "a gated cell (LSTM/GRU) or a shorter dependency span")
    else:
        chapter = CHAPTERS[kind]
        advice = ("lower the initial weight scale to the critical one (He for ReLU, Xavier for tanh), "
                  "or add normalization / residual connections" if exploding else
                  "raise the initial weight scale to the critical one, use a non-saturating activation, "
                  "or add residual connections")
    return Finding(kind, where, severity, evidence, advice, chapter,
                   {"growth": growth, "per_step": per_step, "norms": list(norms)})


def _depth_findings(layers: list[str], norms: np.ndarray) -> list[Finding]:
    """The trend across ``layers``; those without a gradient (NaN, zero) are left out of the
    fit, and the first and last layers that have one are named."""
    have = [name for name, v in zip(layers, norms, strict=True) if math.isfinite(v) and v > 0]
    finding = _growth_finding(have[0], [float(v) for v in norms], "layer", False) if have else None
    if finding is not None:
        finding = Finding(finding.kind, finding.where, finding.severity,
                          finding.evidence + f" (layers {have[0]!r} ... {have[-1]!r})",
                          finding.advice, finding.chapter, {**finding.values, "layers": list(layers)})
    return [finding] if finding else []


def _site_findings(site: ActivationSite) -> list[Finding]:
    found = []
    if site.calls >= MIN_TREND_POINTS and not site.across_layers:
        f = _growth_finding(site.module, list(site.grad_norms), f"call of {site.function}", True)
        if f is not None:
            found.append(f)
    if not math.isnan(site.saturated) and site.saturated >= SATURATION_INFO:
        s = site.saturated
        severity = "error" if s >= SATURATION_ERROR else "warning" if s >= SATURATION_WARNING else "info"
        found.append(Finding(
            "saturation", site.module, severity,
            f"{s:.1%} of the inputs of {site.function} are at the rails (slope < {RAIL_SLOPE} x its "
            f"largest), over {site.calls} call(s)",
            "scale the weights (or the previous layer's output) down: Xavier init, normalization before "
            "the activation", CHAPTERS["saturation"],
            {"saturated": s, "calls": site.calls}))
    if not math.isnan(site.dead) and site.dead > 0:
        d = site.dead
        severity = "error" if d >= DEAD_ERROR else "warning" if d >= DEAD_WARNING else "info"
        advice = ("check the biases and the learning rate before this layer; a leaky ReLU or a lower "
                  "learning rate keeps units alive")
        evidence = f"{d:.1%} of {site.units} {site.function} units are never active on {site.samples} samples"
        if site.function in _LEAKY:
            severity = "info"
            evidence += " (its negative side still passes a gradient: inactive, not dead)"
            advice = "check the biases before this layer if so many units should not be negative"
        found.append(Finding(
            "dead_units", site.module, severity, evidence, advice, CHAPTERS["dead_units"],
            {"dead": d, "units": site.units, "samples": site.samples}))
    return found


def _update_findings(names: list[str], ratios: np.ndarray, weights: list[bool],
                     zero_start: list[bool]) -> list[Finding]:
    """Update-ratio findings of the weights; a weight that starts at zero (a zero-initialized
    output layer or residual branch) has no ratio to speak of in its first steps: its later
    ratios are steps against a weight the doctor's own steps made, so it is noted, not judged."""
    if ratios.size == 0:
        return []
    found = []
    zeroed = [n for n, w, z in zip(names, weights, zero_start, strict=True) if w and z]
    if zeroed:
        found.append(Finding(
            "update_ratio", zeroed[0], "info",
            f"{len(zeroed)} weight(s) start at zero ({', '.join(map(repr, zeroed[:3]))}): no update ratio "
            "is judged for them", "nothing to change if the zero initialization is intended",
            CHAPTERS["update_ratio"], {"zero_start": zeroed}))
    with np.errstate(all="ignore"):
        medians, steps = {}, {}
        for k, (name, is_weight) in enumerate(zip(names, weights, strict=True)):
            column = ratios[:, k]
            column = column[np.isfinite(column)]
            if is_weight and not zero_start[k] and column.size:
                medians[name] = float(np.median(column))
                steps[name] = [float(v) for v in column]
    if not medians:
        return found
    lo, hi = UPDATE_BAND
    band = f"healthy band about 1e-3 per step ({lo:g} to {hi:g})"
    outside = {n: v for n, v in medians.items() if not lo <= v <= hi}
    for name, v in sorted(outside.items(), key=lambda kv: -abs(math.log10(max(kv[1], 1e-300)) + 3))[:3]:
        if v > 1.0:
            severity = "error"
        elif not UPDATE_LIMITS[0] <= v <= UPDATE_LIMITS[1]:
            severity = "warning"
        else:
            severity = "info"
        high = v > hi
        found.append(Finding(
            "update_ratio", name, severity,
            f"median ||W_new - W_old|| / ||W_old|| = {v:.3g} per step (steps: "
            + ", ".join(f"{r:.3g}" for r in steps[name]) + f"); {band}",
            "lower the learning rate (or warm it up)" if high else
            "raise the learning rate, or check that this weight gets a gradient",
            CHAPTERS["update_ratio"], {"ratio": v, "per_step": steps[name], "band": UPDATE_BAND,
                                       "ratios": medians}))
    if not outside:
        values = np.array(list(medians.values()))
        found.append(Finding(
            "update_ratio", None, "info",
            f"every weight's median update ratio is in the {band}: {values.min():.3g} to {values.max():.3g}",
            "nothing to change", CHAPTERS["update_ratio"], {"band": UPDATE_BAND, "ratios": medians}))
    return found


# -- the doctor ----------------------------------------------------------------------------------

def doctor(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: tuple,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 3,
) -> Report:
    """Run ``model`` on ``batch`` a few times, on copies, and report what looks wrong.

    The doctor deep-copies ``model`` and ``optimizer`` together (the copy of the optimizer
    steps the copy of the model, with a copy of its state), puts the copy in training mode, and
    runs ``steps`` passes of ``loss = loss_fn(model(x), y)``, ``loss.backward()`` and
    ``optimizer.step()`` (one pass without an optimizer: nothing changes between passes). It
    stops at the first NaN/Inf and never steps on it. The random state of Python, NumPy and
    PyTorch is restored afterwards, so dropout in the copy draws nothing from the caller's
    stream. Hooks the caller registered on ``model`` are copied with it and run on the copy: one
    that writes to an outside object (a list it appends to) writes there. See the module
    docstring for what is measured and the thresholds.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(model(x), y)`` returns a scalar tensor.
        batch: ``(x, y)``; ``x`` a tensor (``model(x)``), a tuple of tensors (``model(*x)``)
            or a dict of tensors (``model(**x)``); ``y`` likewise, passed to ``loss_fn`` as is.
        optimizer: an optimizer over ``model``'s parameters, or ``None`` (then no update ratios).
        steps: optimizer steps (passes), at least 1.

    Returns:
        A :class:`Report`; ``print(report)`` shows the table, a notebook renders it as HTML.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    x, y = _check_batch(batch)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    steps = check_int("steps", steps, minimum=1)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameter: there is no gradient to diagnose")
    if optimizer is not None:
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("optimizer holds none of model's parameters")

    try:
        twin, twin_opt = copy.deepcopy((model, optimizer))
    except Exception as err:  # an attribute that cannot be copied: say which call failed
        raise TypeError(f"model (and optimizer) must be deep-copyable: {err}") from err
    twin.train()
    devices = sorted({p.device.index or 0 for p in twin.parameters() if p.device.type == "cuda"})
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            return _examine(twin, twin_opt, loss_fn, x, y, steps if optimizer else 1,
                            type(model).__name__, start)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _examine(model: nn.Module, optimizer, loss_fn, x, y, steps: int, model_name: str,
             start: float) -> Report:
    """The passes, on the copies, and the findings read off them."""
    findings: list[Finding] = []
    if not _all_finite(x):
        findings.append(Finding("non_finite", "batch", "error", "the input x holds NaN/Inf",
                                "clean the data: every later value is non-finite too",
                                CHAPTERS["non_finite"]))
    probe = _Probe(model)
    monitor = GradientMonitor(model, optimizer)
    zero_start = [p.ndim >= 2 and not bool(p.detach().any()) for p in monitor._params]
    losses: list[float] = []
    probe.attach()
    monitor.attach()
    try:
        for step in range(steps):
            probe.new_pass()
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            else:
                model.zero_grad(set_to_none=True)
            if step == 0:
                with _ActivationMode(probe):
                    loss = _forward(model, loss_fn, x, y)
            else:
                loss = _forward(model, loss_fn, x, y)
            losses.append(float(loss.detach()))
            if probe.forward_bad is not None or not math.isfinite(losses[-1]):
                if probe.forward_bad is not None:
                    where, evidence = probe.forward_bad, "the forward output of this module holds NaN/Inf"
                    if probe.forward_bad_input_finite:
                        evidence += ", its inputs were finite: it made the NaN/Inf"
                    else:
                        source = (f"the code of {probe.forward_bad_caller!r} before this call"
                                  if probe.forward_bad_caller else "the batch")
                        evidence += (", but its inputs already did (made by an operation outside any "
                                     f"submodule: {source}; or a mask of -inf)")
                else:
                    where, evidence = "loss_fn", f"the forward pass is finite but the loss is {losses[-1]}"
                findings.append(Finding(
                    "non_finite", where, "error", f"{evidence} (pass {step}; the first in execution order)",
                    "look at this module's inputs and weights: an overflow (float16 above 65504), a log or "
                    "division near 0, or weights already non-finite", CHAPTERS["non_finite"],
                    {"pass": step, "phase": "forward",
                     "input_finite": probe.forward_bad is None or probe.forward_bad_input_finite}))
                break
            loss.backward()
            origin = probe.backward_origin()
            if origin is not None:
                maker, holder, what = origin
                findings.append(Finding(
                    "non_finite", maker, "error",
                    f"the backward pass of this module made the first NaN/Inf gradient (pass {step}): "
                    f"the gradient at the {what} of {holder!r} is non-finite, every gradient before it "
                    "finite",
                    "look for sqrt/log/division at 0 or an overflow in this module's backward; scale the "
                    "loss down in float16", CHAPTERS["non_finite"],
                    {"pass": step, "phase": "backward", "holder": holder}))
                break
            if optimizer is not None:
                optimizer.step()
    finally:
        probe.detach()
        monitor.detach()

    # Gradient trend across layers, in execution order, from the first pass.
    layers = sorted((n for n in monitor.layer_names if (n or ROOT) in probe.order),
                    key=lambda n: probe.order[n or ROOT])
    columns = [monitor.layer_names.index(n) for n in layers]
    table = monitor.output_grad_norms[:, columns] if monitor.steps else np.empty((0, len(columns)))
    layer_names = [n or ROOT for n in layers]
    # The first pass's gradients, unless that pass made a NaN/Inf; a layer without a gradient (a
    # frozen first layer, an unused branch) is NaN there and is left out of the fit.
    first_pass_bad = any(f.kind == "non_finite" and f.values.get("pass") == 0 for f in findings)
    if table.shape[0] and not first_pass_bad and not np.isinf(table[0]).any():
        findings += _depth_findings(layer_names, table[0])
    sites = [s.result(probe.layer_log) for s in probe.sites.values()]
    if not any(f.kind == "non_finite" for f in findings):
        for site in sites:
            findings += _site_findings(site)
    ratios = monitor.param_update_ratios if optimizer is not None else np.empty((0, 0))
    is_weight = [p.ndim >= 2 for p in monitor._params]
    if optimizer is not None:
        findings += _update_findings(monitor.param_names, ratios, is_weight, zero_start)
    if optimizer is not None and len(losses) >= 2 and all(map(math.isfinite, losses)):
        if losses[0] > 0 and losses[-1] >= LOSS_GROWTH * losses[0]:
            findings.append(Finding(
                "diverging_loss", None, "warning",
                f"the loss grew {losses[-1] / losses[0]:.3g}x in {len(losses) - 1} step(s): "
                + " -> ".join(f"{v:.3g}" for v in losses),
                "lower the learning rate, warm it up, or clip the gradient norm", CHAPTERS["diverging_loss"],
                {"losses": list(losses)}))
    findings.sort(key=lambda f: -f.level)
    return Report(findings, model_name, type(optimizer).__name__ if optimizer is not None else None, losses,
                  layer_names, table, list(monitor.param_names), ratios, sites,
                  time.perf_counter() - start)


def _forward(model: nn.Module, loss_fn: Callable, x: Any, y: Any) -> torch.Tensor:
    try:
        out = _call(model, x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"model(x) failed on batch[0] (x) of shape {_shapes(x)}: {err}") from err
    try:
        loss = loss_fn(out, y)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"loss_fn(model(x), y) failed with model(x) of shape {_shapes(out)} and "
                         f"batch[1] (y) of shape {_shapes(y)}: {err}") from err
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    if loss.grad_fn is None:
        raise ValueError("loss_fn's result does not depend on the model's parameters (no grad_fn)")
    return loss.reshape(())


__all__ = ["CHAPTERS", "SEVERITIES", "ActivationSite", "Finding", "Report", "doctor", "gradient_growth"]

# ``gl.doctor`` is the function; its report and finding types travel with it.
doctor.Report = Report  # type: ignore[attr-defined]
doctor.Finding = Finding  # type: ignore[attr-defined]
