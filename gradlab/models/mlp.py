"""Fully connected networks whose depth, width, initialization and activation are the knobs.

:func:`mlp` builds any of them; :func:`exploding_mlp` is the one network the book keeps coming
back to when it needs gradients that grow layer by layer at initialization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_probability, check_real
from ..activations import ACTIVATIONS
from ..utils import seeded

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


RESIDUAL_SCALES = ("sqrt_depth", "rezero")


class Block(nn.Module):
    """One layer of an :func:`mlp`: ``linear -> norm -> activation -> dropout``, optionally
    residual.

    With ``residual=True`` the block returns ``x + residual_scale * f(x)``, which needs equal
    input and output widths; the dropout is then on the branch ``f``, not on the skip.
    ``residual_scale="rezero"`` gives the block a learnable scalar gate ``alpha`` (the parameter
    ``gate``), initialized at 0, and returns ``x + alpha * f(x)`` (Bachlechner et al. 2020): the
    identity at initialization.
    """

    def __init__(
        self,
        linear: nn.Linear,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
        residual: bool = False,
        residual_scale: float | str = 1.0,
        dropout: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if residual and linear.in_features != linear.out_features:
            raise ValueError(
                "residual=True needs in_features == out_features, got "
                f"{linear.in_features} -> {linear.out_features}"
            )
        if isinstance(residual_scale, str):
            check_choice("residual_scale", residual_scale, ["rezero"])
        else:
            residual_scale = check_real("residual_scale", residual_scale)
        self.linear = linear
        self.norm = norm if norm is not None else nn.Identity()
        self.activation = activation if activation is not None else nn.Identity()
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.residual = residual
        self.residual_scale = residual_scale
        self.gate = (nn.Parameter(torch.zeros((), dtype=linear.weight.dtype))
                     if residual and residual_scale == "rezero" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.activation(self.norm(self.linear(x))))
        if not self.residual:
            return out
        return x + (self.gate if self.gate is not None else self.residual_scale) * out

    def extra_repr(self) -> str:
        if not self.residual:
            return ""
        scale = "rezero" if self.gate is not None else self.residual_scale
        return f"residual=True, residual_scale={scale}"


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
    residual_scale: float | str = 1.0,
    bias: bool = True,
    bias_std: float = 0.0,
    dropout: float = 0.0,
) -> MLP:
    """Build a fully connected network with ``depth`` linear layers.

    Layer ``i`` maps ``d_i -> d_{i+1}`` with ``d_0 = in_features`` (default ``width``),
    ``d_1 = ... = d_{depth-1} = width`` and ``d_depth = out_features`` (default ``width``).
    Every layer but the last is ``linear -> norm -> activation -> dropout``; the last is a plain
    linear read-out, so ``depth=1`` is a linear model.

    Args:
        depth: number of linear layers, at least 1.
        width: hidden width, at least 1.
        in_features, out_features: input and output sizes (default ``width``).
        activation: one of :data:`ACTIVATIONS` (``linear``, ``relu``, ``tanh``, ...).
        init: ``gaussian``, ``xavier``, ``he`` or ``orthogonal``; see :func:`init_linear_`.
        gain: multiplies the initialization's standard deviation.
        norm: ``None``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm), after the linear.
        residual: wrap each hidden ``width -> width`` layer as ``x + residual_scale * f(x)``.
        residual_scale: the branch multiplier of residual layers: a number ``s``;
            ``"sqrt_depth"``, ``s = 1 / sqrt(K)`` for the ``K`` residual layers of the network,
            which keeps the squared gradient gain ``(1 + s² chi)^K <= e^chi`` at any depth;
            or ``"rezero"``, a learnable scalar gate per residual layer, initialized at 0, so
            that the residual layers are the identity at initialization (Bachlechner et al.
            2020). The strings need ``residual=True``; a number is ignored without it.
        bias: give the linear layers biases.
        bias_std: biases are drawn from N(0, bias_std²) (zero by default).
        dropout: the drop probability ``p`` of an ``nn.Dropout(p)`` after every hidden
            activation (none for ``p = 0``). In training mode it zeroes each unit with
            probability ``p`` and multiplies the kept ones by ``1 / (1 - p)`` (inverted dropout);
            in eval mode it is the identity. ``0 <= p < 1``: at ``p = 1`` every unit is dropped.
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
    if isinstance(residual_scale, str):
        check_choice("residual_scale", residual_scale, RESIDUAL_SCALES)
        if not residual:
            raise ValueError(f"residual_scale={residual_scale!r} needs residual=True")
    else:
        residual_scale = check_real("residual_scale", residual_scale)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    bias_std = check_real("bias_std", bias_std, minimum=0.0)
    dropout = check_probability("dropout", dropout)

    dims = [in_features] + [width] * (depth - 1) + [out_features]
    if residual_scale == "sqrt_depth":
        n_residual = sum(dims[i] == dims[i + 1] for i in range(depth - 1))
        residual_scale = 1.0 / math.sqrt(max(n_residual, 1))
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
                dropout=nn.Dropout(dropout) if dropout > 0 else None,
            )
        )
    return MLP(blocks, activation, init, gain)


def exploding_mlp(
    *,
    depth: int = 16,
    width: int = 32,
    in_features: int = 16,
    out_features: int = 1,
    gain: float = 1.4,
    seed: int = 0,
    dropout: float = 0.0,
) -> MLP:
    """The book's exploding network: ``depth`` ReLU layers of width ``width``, He init times ``gain``.

    Every weight is drawn from ``N(0, gain² · 2 / fan_in)`` (He et al. 2015 times ``gain²``),
    biases are zero, the last layer is a linear read-out. For a ReLU layer ``h_l = relu(W_l h_{l-1})``
    the backward signal ``delta_{l-1} = W_l^T (relu'(a_l) * delta_l)`` then has, averaging over
    the weights with half of the units active,

        E ||delta_{l-1}||² = fan_in · (2 gain² / fan_in) · ||delta_l||² / 2 = gain² ||delta_l||²,

    so the gradient with respect to the hidden states grows by about ``gain`` per layer toward the
    input (and the forward signal by ``gain`` per layer toward the output); with the defaults,
    ``1.4^15 ≈ 155`` across the 15 hidden layers. ``gain=1`` is He's critical initialization.

    The weights come from the global CPU generator seeded with ``seed`` inside
    :func:`gradlab.utils.seeded`, so the same arguments give the same network and the caller's
    random state is left untouched. ``exploding_mlp(seed=s)`` equals ``torch.manual_seed(s)``
    followed by ``mlp(depth, width, in_features=in_features, out_features=out_features,
    activation="relu", init="he", gain=gain)``. ``dropout=p`` adds ``nn.Dropout(p)`` after every
    hidden activation (see :func:`mlp`) and leaves the weights as they are: the same seed gives
    the same weights for every ``p``.
    """
    seed = check_int("seed", seed, minimum=0)
    with seeded(seed):
        return mlp(
            depth, width, in_features=in_features, out_features=out_features,
            activation="relu", init="he", gain=gain, dropout=dropout,
        )
