"""Recurrent networks: an Elman network with the cell written out, LSTM/GRU wrappers with the same
interface, and the single-unit network whose loss surface has a wall (Pascanu et al. 2013).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_probability, check_real
from ..activations import ACTIVATIONS

RNN_INITS = ("gaussian", "orthogonal", "identity")


def _check_sequence(x: object, in_features: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (batch, time, {in_features}), got {tuple(x.shape)}"
        )
    if x.shape[1] < 1:
        raise ValueError("x must have at least one time step")
    return x


class VanillaRNN(nn.Module):
    """An Elman recurrent network with the cell written out, and a linear read-out.

    For an input sequence ``x_1, ..., x_T`` (the rows of ``x[b]``) and ``h_0 = 0``::

        a_t = W h_{t-1} + U x_t + b,     h_t = phi(a_t),     output = V h_T + c

    The recurrent matrix ``W`` is drawn by ``init`` with scale ``gain``:

    - ``gaussian``:   entries N(0, gain² / hidden_size); its eigenvalues fill a disc of radius
      about ``gain`` (the circular law) while its largest singular value is about ``2 gain``;
    - ``orthogonal``: ``gain`` times a random orthogonal matrix (every singular value ``gain``);
    - ``identity``:   ``gain`` times the identity (Le et al. 2015's IRNN, with ``relu``).

    If ``spectral_radius`` is given, ``W`` is then rescaled so that its largest eigenvalue
    modulus equals it exactly; this is the knob of the chapter on recurrent networks.
    ``U`` has entries N(0, 1 / in_features), ``b`` starts at zero, the read-out is PyTorch's
    default ``nn.Linear``.

    Args:
        in_features, hidden_size, out_features: sizes of ``x_t``, ``h_t`` and the output.
        activation: any name of :data:`gradlab.activations.ACTIVATIONS` (``tanh``, ``relu``, ...).
        init, gain: how ``W`` is drawn (see above).
        spectral_radius: if given (> 0), the exact spectral radius of ``W`` after init.
        bias: whether the cell has the bias ``b``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        out_features: int = 1,
        *,
        activation: str = "tanh",
        init: str = "gaussian",
        gain: float = 1.0,
        spectral_radius: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.init = check_choice("init", init, RNN_INITS)
        gain = check_real("gain", gain, minimum=0.0)
        if spectral_radius is not None:
            spectral_radius = check_real("spectral_radius", spectral_radius, minimum=0.0, strict=True)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.W = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.U = nn.Parameter(torch.empty(hidden_size, in_features))
        self.b = nn.Parameter(torch.zeros(hidden_size)) if bias else None
        self.readout = nn.Linear(hidden_size, out_features)
        self.reset_recurrent_(init, gain, spectral_radius)
        with torch.no_grad():
            self.U.normal_(0.0, 1.0 / math.sqrt(in_features))

    def reset_recurrent_(
        self, init: str = "gaussian", gain: float = 1.0, spectral_radius: float | None = None
    ) -> VanillaRNN:
        """Redraw ``W`` in place (see the class docstring) and return the model."""
        init = check_choice("init", init, RNN_INITS)
        gain = check_real("gain", gain, minimum=0.0)
        n = self.hidden_size
        with torch.no_grad():
            if init == "gaussian":
                self.W.normal_(0.0, gain / math.sqrt(n))
            elif init == "orthogonal":
                nn.init.orthogonal_(self.W, gain=gain)
            else:
                self.W.copy_(gain * torch.eye(n))
            if spectral_radius is not None:
                spectral_radius = check_real("spectral_radius", spectral_radius, minimum=0.0, strict=True)
                # eigvals in float64: the float32 solver is off by ~1e-6, visible in the tests
                current = float(torch.linalg.eigvals(self.W.double()).abs().max())
                if current == 0.0:
                    raise ValueError("spectral_radius cannot be set: W has spectral radius 0 (gain=0)")
                self.W.mul_(spectral_radius / current)
        self.init = init
        return self

    def _phi(self, a: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation].fn(a)

    def cell(self, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """One step ``h_t = phi(W h_{t-1} + U x_t + b)`` for ``h`` (..., hidden) and ``x_t``
        (..., in_features); handy for differentiating with respect to each ``h_t``."""
        a = h @ self.W.T + x_t @ self.U.T
        return self._phi(a + self.b if self.b is not None else a)

    def states(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the cell over ``x`` (batch, time, in_features).

        Returns ``(hs, preacts)``: ``hs`` of shape (batch, time + 1, hidden) holds
        ``h_0, ..., h_T`` and ``preacts`` of shape (batch, time, hidden) holds ``a_1, ..., a_T``.
        Both stay in the autograd graph, so ``hs[:, t]`` can be differentiated against.

        ``masks`` (batch, time, hidden), e.g. from :func:`dropout_masks`, applies dropout to the
        recurrent connection: ``a_t = W (d_t * h_{t-1}) + U x_t + b`` with ``d_t = masks[:, t-1]``.
        """
        x = _check_sequence(x, self.in_features)
        if masks is not None:
            masks = _check_masks(masks, (x.shape[0], x.shape[1], self.hidden_size))
        if h0 is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h = h0
            if not isinstance(h, torch.Tensor) or h.shape != (x.shape[0], self.hidden_size):
                raise ValueError(f"h0 must be a tensor of shape ({x.shape[0]}, {self.hidden_size})")
        inputs = x @ self.U.T  # every U x_t at once; only the recurrence is sequential
        if self.b is not None:
            inputs = inputs + self.b
        # W is read once per sequence: a parametrization registered on it (spectral_norm,
        # orthogonal) then runs once per forward pass, as it does for an nn.Linear's weight,
        # not once per time step.
        w_t = self.W.T
        hs, preacts = [h], []
        for t in range(x.shape[1]):
            a = (h if masks is None else masks[:, t] * h) @ w_t + inputs[:, t]
            h = self._phi(a)
            preacts.append(a)
            hs.append(h)
        return torch.stack(hs, dim=1), torch.stack(preacts, dim=1)

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``V h_T + c``, shape (batch, out_features); ``masks`` as in :meth:`states`."""
        hs, _ = self.states(x, h0, masks)
        return self.readout(hs[:, -1])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_size={self.hidden_size}, "
            f"activation={self.activation!r}, init={self.init!r}"
        )


def _check_masks(masks: object, shape: tuple[int, int, int]) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor or None, got {type(masks).__name__}")
    if tuple(masks.shape) != shape:
        raise ValueError(f"masks must have shape (batch, time, hidden) = {shape}, got "
                         f"{tuple(masks.shape)}")
    return masks


def dropout_masks(
    batch: int,
    steps: int,
    hidden: int,
    p: float,
    *,
    locked: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverted-dropout multipliers ``d = m / (1 - p)``, ``m ~ Bernoulli(1 - p)``, of shape
    (batch, steps, hidden), for :meth:`VanillaRNN.states`.

    ``locked=False`` draws a fresh mask for every step (dropout applied naively at each step);
    ``locked=True`` draws one mask per sequence and repeats it at every step, the variational
    dropout of Gal & Ghahramani (2016) (PyTorch-NLP's and AWD-LSTM's "locked dropout").
    Without ``generator`` the draw uses PyTorch's global stream exactly as ``torch.nn.Dropout(p)``
    does: after the same ``torch.manual_seed``, ``dropout_masks(b, t, n, p)`` equals
    ``nn.Dropout(p)(torch.ones(b, t, n))``.
    """
    batch = check_int("batch", batch, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    hidden = check_int("hidden", hidden, minimum=1)
    p = check_probability("p", p)
    if not isinstance(locked, bool):
        raise TypeError(f"locked must be a bool, got {type(locked).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    drawn = torch.empty(batch, 1 if locked else steps, hidden, dtype=dtype)
    drawn.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    return drawn.expand(batch, steps, hidden).clone() if locked else drawn


class _GatedRNN(nn.Module):
    """A ``torch.nn.LSTM``/``GRU`` (batch first) with a linear read-out of the last state."""

    _core: type[nn.Module]

    def __init__(
        self, in_features: int, hidden_size: int, out_features: int = 1, *, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        self.rnn = self._core(in_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.readout = nn.Linear(hidden_size, out_features)

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """The top layer's hidden states ``h_1, ..., h_T``, shape (batch, time, hidden)."""
        out, _ = self.rnn(_check_sequence(x, self.in_features))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``V h_T + c``, shape (batch, out_features)."""
        return self.readout(self.states(x)[:, -1])

    def _gate_inputs(self, h: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_i x_t + b_i`` and ``W_h h + b_h`` of the one-layer core, every gate stacked."""
        if self.rnn.num_layers != 1:
            raise ValueError(f"cell needs num_layers=1, this network has {self.rnn.num_layers}")
        rnn = self.rnn
        return x_t @ rnn.weight_ih_l0.T + rnn.bias_ih_l0, h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0


class LSTM(_GatedRNN):
    """``torch.nn.LSTM`` (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al.
    2000) with the :class:`VanillaRNN` interface: (batch, time, in_features) -> (batch,
    out_features), read out from the last hidden state.

    ``forget_bias``: if given, the forget gate's total bias starts at this value in every layer
    (:meth:`set_forget_bias_`; Jozefowicz et al. 2015 recommend 1). ``None`` keeps PyTorch's
    initialization, under which the forget gate starts near ``sigmoid(0) = 1/2``.
    """

    _core = nn.LSTM

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        out_features: int = 1,
        *,
        num_layers: int = 1,
        forget_bias: float | None = None,
    ) -> None:
        super().__init__(in_features, hidden_size, out_features, num_layers=num_layers)
        self.forget_bias: float | None = None
        if forget_bias is not None:
            self.set_forget_bias_(forget_bias)

    def set_forget_bias_(self, value: float) -> LSTM:
        """Make the forget gate's total bias ``b_if + b_hf`` equal ``value`` in every layer.

        ``torch.nn.LSTM`` keeps two bias vectors per layer, ``bias_ih`` and ``bias_hh``, each of
        length ``4 * hidden_size`` with the gates in the order input ``i``, forget ``f``, cell
        candidate ``g``, output ``o``; the forget gate's pre-activation adds both. This sets the
        forget slice ``[hidden_size : 2 * hidden_size]`` of ``bias_ih`` to ``value`` and the
        same slice of ``bias_hh`` to 0, so the sum is exactly ``value``; the other gates keep
        their biases. Returns the model.
        """
        value = check_real("forget_bias", value)
        n = self.hidden_size
        with torch.no_grad():
            for layer in range(self.rnn.num_layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[n : 2 * n].fill_(value)
                getattr(self.rnn, f"bias_hh_l{layer}")[n : 2 * n].zero_()
        self.forget_bias = value
        return self

    def cell(
        self, state: tuple[torch.Tensor, torch.Tensor], x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step ``(h_{t-1}, c_{t-1}) -> (h_t, c_t)`` of the one-layer LSTM, written out::

            i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
            c_t = f * c_{t-1} + i * g,        h_t = o * tanh(c_t)

        where ``a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` is split into the four gates in
        PyTorch's order ``i, f, g, o``. The same numbers as ``torch.nn.LSTM``, one step at a
        time, so each ``h_t`` and ``c_t`` can be differentiated against.
        """
        h, c = state
        a_x, a_h = self._gate_inputs(h, x_t)
        a_i, a_f, a_g, a_o = (a_x + a_h).chunk(4, dim=-1)
        c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        return torch.sigmoid(a_o) * torch.tanh(c), c

    def extra_repr(self) -> str:
        return f"forget_bias={self.forget_bias}" if self.forget_bias is not None else ""


class GRU(_GatedRNN):
    """``torch.nn.GRU`` (Cho et al. 2014) with the :class:`VanillaRNN` interface:
    (batch, time, in_features) -> (batch, out_features), read out from the last hidden state."""

    _core = nn.GRU

    def cell(self, h: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """One step ``h_{t-1} -> h_t`` of the one-layer GRU, written out as PyTorch computes it::

            r, z = sigmoid(a_r), sigmoid(a_z)
            n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
            h_t = (1 - z) * n + z * h_{t-1}

        with the gates in PyTorch's order ``r, z, n``. The update gate ``z`` keeps the old state;
        the reset gate ``r`` acts after ``W_hn`` (Cho et al. apply it before).
        """
        a_x, a_h = self._gate_inputs(h, x_t)
        x_r, x_z, x_n = a_x.chunk(3, dim=-1)
        h_r, h_z, h_n = a_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h


def state_jacobian_norms(
    model: VanillaRNN | LSTM | GRU, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``||d h_T / d h_{T-k}||_2`` for every lag ``k = 0, ..., T``, by autograd; for an LSTM also
    the cell path ``||d c_T / d c_{T-k}||_2``.

    The network runs over ``x`` (batch, time, in_features) from the zero state, one
    :meth:`cell` step at a time, in float64 on a copy of ``model`` (long lags reach norms below
    float32's range). An LSTM's state is the pair ``(h_t, c_t)``, and each derivative holds the
    other half fixed: ``d h_T / d h_t`` with ``c_t`` fixed, ``d c_T / d c_t`` with ``h_t`` fixed
    (the diagonal blocks of the Jacobian of the pair). Autograd gets them from a zero "probe"
    added to each state before the next step reads it; one backward pass gives every lag,
    because the batch holds ``hidden_size`` copies of each sequence and copy ``i``
    differentiates unit ``i`` of the last state.

    Returns:
        ``{"h": norms}`` (``"c"`` too for an LSTM): float64 tensors of shape (batch, T + 1),
        column ``k`` for lag ``k`` (column 0 is the identity, norm 1).
    """
    if not isinstance(model, VanillaRNN | LSTM | GRU):
        raise TypeError(f"model must be a VanillaRNN, LSTM or GRU, got {type(model).__name__}")
    x = _check_sequence(x, model.in_features)
    is_lstm = isinstance(model, LSTM)
    model = copy.deepcopy(model).double()
    batch, steps, n = x.shape[0], x.shape[1], model.hidden_size
    xs = x.detach().double().repeat_interleave(n, dim=0)  # copy (b, i) differentiates unit i
    h = c = xs.new_zeros(batch * n, n)
    probes: dict[str, list[torch.Tensor]] = {"h": [], "c": []}

    def probe(path: str, state: torch.Tensor) -> torch.Tensor:
        p = torch.zeros_like(state, requires_grad=True)  # d(last)/dp = d(last)/d(state_t)
        probes[path].append(p)
        return state + p

    for t in range(steps):
        h = probe("h", h)
        if is_lstm:
            h, c = model.cell((h, probe("c", c)), xs[:, t])
        else:
            h = model.cell(h, xs[:, t])

    def norms(last: torch.Tensor, path: str, retain: bool) -> torch.Tensor:
        total = last.view(batch, n, n).diagonal(dim1=1, dim2=2).sum()
        grads = torch.autograd.grad(total, probes[path], retain_graph=retain, allow_unused=True)
        # grads[t][(b, i), j] = d last[b, i] / d state_t[b, j], for t = 0..T-1: lag T - t
        jac = torch.stack([xs.new_zeros(batch * n, n) if g is None else g for g in grads])
        out = torch.linalg.matrix_norm(jac.view(steps, batch, n, n), ord=2).flip(0).T
        return torch.cat([out.new_ones(batch, 1), out], dim=1)

    result = {"h": norms(h, "h", retain=is_lstm)}
    if is_lstm:
        result["c"] = norms(c, "c", retain=False)
    return result


# ---------------------------------------------------------------------------------------------
# The single-unit network of the cliff
# ---------------------------------------------------------------------------------------------

SINGLE_UNIT_H0 = 0.5
SINGLE_UNIT_STEPS = 50


def _as_float_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not torch.is_floating_point(value):
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        return value
    return torch.tensor(check_real(name, value), dtype=torch.float64)


def single_unit_last_state(
    w: torch.Tensor | float,
    b: torch.Tensor | float,
    *,
    h0: torch.Tensor | float = SINGLE_UNIT_H0,
    steps: int = SINGLE_UNIT_STEPS,
) -> torch.Tensor:
    """``h_T`` of the one-unit recurrent network ``h_t = tanh(w h_{t-1} + b)``, ``t = 1..T``.

    Elementwise: ``w``, ``b`` and ``h0`` are tensors (or numbers, taken as float64) that
    broadcast together, so one call evaluates the whole grid of a loss surface. The result stays
    in the autograd graph, so ``torch.autograd.grad(single_unit_last_state(w, b).sum(), [w, b])``
    gives ``dh_T/dw`` and ``dh_T/db`` at every grid point in one backward pass.

    On the wall ``b = gradlab.theory.cliff_bias(w, h0)`` the state stays at ``h0`` and, where
    ``s = w (1 - h0²) > 1``, the gradient grows like ``s^T``
    (:func:`gradlab.theory.cliff_gradient_norm`); compute in float64, since the band around the
    wall where the gradient is large is about ``s^-T`` wide.

    Args:
        w, b: the recurrent weight and the bias.
        h0: the initial state ``h_0``.
        steps: the number of steps ``T``, at least 1.
    """
    w = _as_float_tensor("w", w)
    b = _as_float_tensor("b", b)
    h0 = _as_float_tensor("h0", h0)
    steps = check_int("steps", steps, minimum=1)
    h = h0
    for _ in range(steps):
        h = torch.tanh(w * h + b)
    return h


class SingleUnitRNN(nn.Module):
    """The one-unit network ``h_t = tanh(w h_{t-1} + b)`` as a module with parameters ``w`` and ``b``.

    ``forward(h0)`` returns ``h_T`` (:func:`single_unit_last_state`) for a tensor of initial states,
    elementwise, or for the module's own ``h0`` when called without one; so
    ``gl.fit(rnn, mse, (torch.tensor([rnn.h0], dtype=torch.float64), target), opt, steps=...)``
    trains it. The parameters are float64 scalars: near the wall the loss changes over
    distances of order ``s^-T`` that float32 cannot resolve.

    Args:
        w, b: the initial recurrent weight and bias.
        h0: the default initial state.
        steps: the number of steps ``T``, at least 1.
    """

    def __init__(
        self, w: float, b: float, *, h0: float = SINGLE_UNIT_H0, steps: int = SINGLE_UNIT_STEPS
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(check_real("w", w), dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(check_real("b", b), dtype=torch.float64))
        self.h0 = check_real("h0", h0)
        self.steps = check_int("steps", steps, minimum=1)

    def forward(self, h0: torch.Tensor | None = None) -> torch.Tensor:
        """``h_T`` from the initial states ``h0`` (default: a one-element tensor holding ``self.h0``)."""
        if h0 is None:
            h0 = torch.tensor([self.h0], dtype=self.w.dtype, device=self.w.device)
        elif not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0 must be a torch.Tensor or None, got {type(h0).__name__}")
        return single_unit_last_state(self.w, self.b, h0=h0, steps=self.steps)

    def extra_repr(self) -> str:
        return f"w={self.w.item():.6g}, b={self.b.item():.6g}, h0={self.h0}, steps={self.steps}"
