"""Models whose depth, width, initialization and activation are the experiment's knobs."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_choice, check_int, check_real
from .activations import ACTIVATIONS

INITS = ("gaussian", "xavier", "he", "orthogonal")
NORMS = (None, "batch", "layer")


def init_linear_(
    layer: nn.Linear, init: str = "he", gain: float = 1.0, bias_std: float = 0.0
) -> nn.Linear:
    """Initialize ``layer`` in place and return it.

    With ``n = fan_in`` and ``m = fan_out`` the weight standard deviations are

    - ``gaussian``:   ``gain / sqrt(n)``            (variance gain²/fan_in)
    - ``xavier``:     ``gain * sqrt(2 / (n + m))``  (Glorot & Bengio 2010)
    - ``he``:         ``gain * sqrt(2 / n)``        (He et al. 2015, for ReLU)
    - ``orthogonal``: a (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014)

    Biases are drawn from N(0, bias_std²); ``bias_std=0`` gives zero biases.
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    init = check_choice("init", init, INITS)
    gain = check_real("gain", gain, minimum=0.0)
    bias_std = check_real("bias_std", bias_std, minimum=0.0)
    fan_out, fan_in = layer.weight.shape
    with torch.no_grad():
        if init == "orthogonal":
            nn.init.orthogonal_(layer.weight, gain=gain)
        else:
            std = {
                "gaussian": gain / math.sqrt(fan_in),
                "xavier": gain * math.sqrt(2.0 / (fan_in + fan_out)),
                "he": gain * math.sqrt(2.0 / fan_in),
            }[init]
            layer.weight.normal_(0.0, std)
        if layer.bias is not None:
            layer.bias.normal_(0.0, bias_std) if bias_std > 0 else layer.bias.zero_()
    return layer


class Block(nn.Module):
    """One layer of an :func:`mlp`: ``linear -> norm -> activation``, optionally residual.

    With ``residual=True`` the block returns ``x + residual_scale * f(x)``, which needs equal
    input and output widths.
    """

    def __init__(
        self,
        linear: nn.Linear,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
        residual: bool = False,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if residual and linear.in_features != linear.out_features:
            raise ValueError(
                "residual=True needs in_features == out_features, got "
                f"{linear.in_features} -> {linear.out_features}"
            )
        self.linear = linear
        self.norm = norm if norm is not None else nn.Identity()
        self.activation = activation if activation is not None else nn.Identity()
        self.residual = residual
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.norm(self.linear(x)))
        return x + self.residual_scale * out if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}, residual_scale={self.residual_scale}" if self.residual else ""


class MLP(nn.Sequential):
    """A stack of :class:`Block` layers; the last one is a plain linear read-out."""

    def __init__(self, blocks: list[Block], activation: str, init: str, gain: float) -> None:
        super().__init__(*blocks)
        self.activation_name = activation
        self.init_name = init
        self.gain = gain

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            # nn.Sequential slices with self.__class__(OrderedDict), which MLP's signature does
            # not take; build the slice here, keeping the knobs and the blocks' names.
            sub = MLP([], self.activation_name, self.init_name, self.gain)
            for name, block in list(self._modules.items())[idx]:
                sub.add_module(name, block)
            return sub
        return super().__getitem__(idx)

    @property
    def linears(self) -> list[nn.Linear]:
        """The linear layers, input to output."""
        return [block.linear for block in self]

    @property
    def weights(self) -> list[torch.Tensor]:
        """The weight matrices, input to output."""
        return [block.linear.weight for block in self]


def mlp(
    depth: int,
    width: int,
    *,
    in_features: int | None = None,
    out_features: int | None = None,
    activation: str = "relu",
    init: str = "he",
    gain: float = 1.0,
    norm: str | None = None,
    residual: bool = False,
    residual_scale: float = 1.0,
    bias: bool = True,
    bias_std: float = 0.0,
) -> MLP:
    """Build a fully connected network with ``depth`` linear layers.

    Layer ``i`` maps ``d_i -> d_{i+1}`` with ``d_0 = in_features`` (default ``width``),
    ``d_1 = ... = d_{depth-1} = width`` and ``d_depth = out_features`` (default ``width``).
    Every layer but the last is ``linear -> norm -> activation``; the last is a plain linear
    read-out, so ``depth=1`` is a linear model.

    Args:
        depth: number of linear layers, at least 1.
        width: hidden width, at least 1.
        in_features, out_features: input and output sizes (default ``width``).
        activation: one of :data:`ACTIVATIONS` (``linear``, ``relu``, ``tanh``, ...).
        init: ``gaussian``, ``xavier``, ``he`` or ``orthogonal``; see :func:`init_linear_`.
        gain: multiplies the initialization's standard deviation.
        norm: ``None``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm), after the linear.
        residual: wrap each hidden ``width -> width`` layer as ``x + residual_scale * f(x)``.
        residual_scale: the branch multiplier of residual layers.
        bias: give the linear layers biases.
        bias_std: biases are drawn from N(0, bias_std²) (zero by default).
    """
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    in_features = width if in_features is None else check_int("in_features", in_features, minimum=1)
    out_features = (
        width if out_features is None else check_int("out_features", out_features, minimum=1)
    )
    activation = check_choice("activation", activation, ACTIVATIONS)
    init = check_choice("init", init, INITS)
    gain = check_real("gain", gain, minimum=0.0)
    if norm is not None:
        check_choice("norm", norm, ["batch", "layer"])
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    residual_scale = check_real("residual_scale", residual_scale)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    bias_std = check_real("bias_std", bias_std, minimum=0.0)

    dims = [in_features] + [width] * (depth - 1) + [out_features]
    blocks = []
    for i in range(depth):
        linear = init_linear_(nn.Linear(dims[i], dims[i + 1], bias=bias), init, gain, bias_std)
        if i == depth - 1:  # read-out: no norm, no activation, no skip
            blocks.append(Block(linear))
            continue
        layer_norm = {None: None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[norm]
        blocks.append(
            Block(
                linear,
                norm=layer_norm(dims[i + 1]) if layer_norm else None,
                activation=ACTIVATIONS[activation].module(),
                residual=residual and dims[i] == dims[i + 1],
                residual_scale=residual_scale,
            )
        )
    return MLP(blocks, activation, init, gain)


# ---------------------------------------------------------------------------------------------
# Recurrent models
# ---------------------------------------------------------------------------------------------

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
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the cell over ``x`` (batch, time, in_features).

        Returns ``(hs, preacts)``: ``hs`` of shape (batch, time + 1, hidden) holds
        ``h_0, ..., h_T`` and ``preacts`` of shape (batch, time, hidden) holds ``a_1, ..., a_T``.
        Both stay in the autograd graph, so ``hs[:, t]`` can be differentiated against.
        """
        x = _check_sequence(x, self.in_features)
        if h0 is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h = h0
            if not isinstance(h, torch.Tensor) or h.shape != (x.shape[0], self.hidden_size):
                raise ValueError(f"h0 must be a tensor of shape ({x.shape[0]}, {self.hidden_size})")
        inputs = x @ self.U.T  # every U x_t at once; only the recurrence is sequential
        if self.b is not None:
            inputs = inputs + self.b
        hs, preacts = [h], []
        for t in range(x.shape[1]):
            a = h @ self.W.T + inputs[:, t]
            h = self._phi(a)
            preacts.append(a)
            hs.append(h)
        return torch.stack(hs, dim=1), torch.stack(preacts, dim=1)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """``V h_T + c``, shape (batch, out_features)."""
        hs, _ = self.states(x, h0)
        return self.readout(hs[:, -1])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_size={self.hidden_size}, "
            f"activation={self.activation!r}, init={self.init!r}"
        )


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


class LSTM(_GatedRNN):
    """``torch.nn.LSTM`` (Hochreiter & Schmidhuber 1997) with the :class:`VanillaRNN` interface:
    (batch, time, in_features) -> (batch, out_features), read out from the last hidden state."""

    _core = nn.LSTM


class GRU(_GatedRNN):
    """``torch.nn.GRU`` (Cho et al. 2014) with the :class:`VanillaRNN` interface:
    (batch, time, in_features) -> (batch, out_features), read out from the last hidden state."""

    _core = nn.GRU
