"""A zoo of small networks for :func:`gradlab.doctor`: broken ones, one or more per symptom, and
healthy ones of every family the book uses.

Each entry is a :class:`Patient`: the model, its loss, one batch, an optimizer over the model,
the kind of finding the doctor should make (``None`` for a healthy network) and the module or
parameter it should name. The tests of the doctor and the chapter "Diagnosing a run" examine
the same patients, so the counts the chapter quotes are the ones the tests check. Every call
builds fresh models from ``seed`` without touching the caller's random stream.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import data
from .._validate import check_int, check_tensor
from ..theory.recurrent import cliff_bias
from ..utils import seeded
from .mlp import MLP, exploding_mlp, mlp
from .rnn import LSTM, SingleUnitRNN, VanillaRNN
from .transformer import Transformer, lm_loss

FLOAT16_MAX = 65504.0
"""The largest finite float16."""


@dataclass
class Patient:
    """One network for the doctor.

    Attributes:
        name: a short label; ``description``: what is wrong (or right) with it, in words.
        model, loss_fn, batch, optimizer: the doctor's arguments.
        expected: the kind of warning or error the doctor should report, ``None`` for none.
        where: the module or parameter that finding should name.
        chapter: the book's chapter (a file name in ``book/``) where the symptom comes from.
    """

    name: str
    description: str
    model: nn.Module
    loss_fn: Callable
    batch: tuple
    optimizer: torch.optim.Optimizer | None
    expected: str | None
    where: str | None
    chapter: str


class Sqrt(nn.Module):
    """``sqrt(x)`` elementwise: finite at 0 forward, an infinite slope at 0 backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class SmallConvNet(nn.Module):
    """Two 3x3 convolutions with ReLU, max pooling, and a linear read-out to ``classes`` logits."""

    def __init__(self, channels: int = 1, classes: int = 10, size: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.head(x.flatten(1))


class EncoderRegressor(nn.Module):
    """``torch.nn.TransformerEncoder`` (two layers) on (batch, time, d_model), mean over time, a
    linear read-out."""

    def __init__(self, d_model: int = 32, n_head: int = 4, n_layer: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, n_head, 2 * d_model, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def _regression(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.teacher_regression(n, d, seed=seed)
    return x, y.reshape(n, -1)


def _sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def _adam(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def broken(seed: int = 0) -> list[Patient]:
    """The broken networks, each with the symptom the doctor should find and where.

    - ``exploding_mlp``: the book's exploding network (16 ReLU layers, He init times 1.4);
    - ``batchnorm_at_init``: 50 ReLU layers with BatchNorm, He init: BatchNorm's own gradient
      growth at initialization;
    - ``vanishing_tanh``: 30 tanh layers, Xavier init times 0.6;
    - ``cliff_rnn``: the single-unit RNN of the cliff chapter on the wall (``w = 2``, ``h0 = 0.5``,
      50 steps), where the gradient grows like ``1.5^T`` back through time;
    - ``vanishing_rnn``: a tanh RNN with spectral radius 0.5 on the adding problem (50 steps);
    - ``float16_overflow``: the exploding network in float16 on inputs of scale 1000, so that a
      layer's output passes 65504;
    - ``sqrt_at_zero``: a ``sqrt`` after a ReLU: finite forward, ``inf * 0`` backward;
    - ``layer_lr_too_high``: Adam with learning rate 1 on one layer (1e-3 on the others);
    - ``saturated_tanh``: a tanh network whose second layer's weights are 8 times Xavier's;
    - ``dead_relu``: a ReLU network whose second layer has bias -10 on 48 of its 64 units.
    """
    seed = check_int("seed", seed, minimum=0)
    patients = []
    add = patients.append
    mse = F.mse_loss

    with seeded(seed):
        model = exploding_mlp(seed=seed)
        add(Patient("exploding_mlp", "16 ReLU layers, He init times 1.4", model, mse,
                    _regression(64, 16, seed), _sgd(model, 1e-3), "exploding_gradient", "0.linear",
                    "clipping"))

        model = mlp(50, 64, in_features=16, out_features=1, norm="batch")
        add(Patient("batchnorm_at_init", "50 ReLU layers with BatchNorm, He init", model, mse,
                    _regression(64, 16, seed), _sgd(model, 1e-3), "exploding_gradient", "0.linear",
                    "normalization"))

        model = mlp(30, 64, in_features=16, out_features=1, activation="tanh", init="xavier", gain=0.6)
        add(Patient("vanishing_tanh", "30 tanh layers, Xavier init times 0.6", model, mse,
                    _regression(64, 16, seed), _sgd(model, 1e-2), "vanishing_gradient", "0.linear",
                    "signal_propagation"))

        model = SingleUnitRNN(2.0, cliff_bias(2.0, 0.5), h0=0.5, steps=50)
        batch = (torch.tensor([0.5], dtype=torch.float64), torch.tensor([-0.5], dtype=torch.float64))
        add(Patient("cliff_rnn", "one tanh unit on the wall of its loss surface (w = 2, 50 steps)",
                    model, mse, batch, torch.optim.SGD(model.parameters(), lr=0.1), "exploding_gradient",
                    "(model)", "rnn_cliff"))

        model = VanillaRNN(2, 32, spectral_radius=0.5)
        add(Patient("vanishing_rnn", "tanh RNN, spectral radius 0.5, 50 steps of the adding problem",
                    model, mse, _adding(64, 50, seed), _adam(model), "vanishing_gradient", "(model)",
                    "gated_rnns"))

        model = exploding_mlp(seed=seed).half()
        x, y = _regression(64, 16, seed)
        add(Patient("float16_overflow", "the exploding network in float16, inputs of scale 1000",
                    model, mse, ((1000 * x).half(), y.half()), _sgd(model, 1e-3), "non_finite",
                    float16_overflow_layer(model, 1000 * x), "mixed_precision"))

        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), Sqrt(), nn.Linear(64, 1))
        add(Patient("sqrt_at_zero", "sqrt after a ReLU: an infinite slope where a unit is 0", model, mse,
                    _regression(64, 16, seed), _adam(model), "non_finite", "2", "mixed_precision"))

        model = mlp(4, 64, in_features=16, out_features=1)
        fast = list(model[1].parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in fast)]
        opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": fast, "lr": 1.0}])
        add(Patient("layer_lr_too_high", "Adam, learning rate 1 on layer 1 (1e-3 elsewhere)", model, mse,
                    _regression(64, 16, seed), opt, "update_ratio", "1.linear.weight", "learning_rate"))

        model = mlp(4, 64, in_features=16, out_features=1, activation="tanh", init="xavier")
        with torch.no_grad():
            model[1].linear.weight.mul_(8.0)
        add(Patient("saturated_tanh", "tanh network, layer 1's weights 8 times Xavier's", model, mse,
                    _regression(64, 16, seed), _sgd(model, 1e-2), "saturation", "1.activation",
                    "activations"))

        model = mlp(4, 64, in_features=16, out_features=1)
        with torch.no_grad():
            model[1].linear.bias[:48] = -10.0
        add(Patient("dead_relu", "ReLU network, bias -10 on 48 of layer 1's 64 units", model, mse,
                    _regression(64, 16, seed), _adam(model), "dead_units", "1.activation", "activations"))
    return patients


def healthy(seed: int = 0) -> list[Patient]:
    """Healthy networks of every family: the doctor should report no warning and no error.

    An MLP (ReLU, He init, Adam), a tanh MLP (Xavier, SGD with momentum), a small convolutional
    network, a tanh RNN (orthogonal, 10 steps of the adding problem: over 20 steps its gradient
    shrinks enough back through time for a warning), an LSTM, a two-layer
    ``nn.TransformerEncoder`` and the book's transformer (``gl.models.Transformer``, Pre-LN).
    """
    seed = check_int("seed", seed, minimum=0)
    patients = []
    add = patients.append
    mse = F.mse_loss
    with seeded(seed):
        model = mlp(4, 64, in_features=16, out_features=1)
        add(Patient("mlp", "4 ReLU layers of width 64, He init, Adam", model, mse,
                    _regression(64, 16, seed), _adam(model), None, None, "initialization"))

        model = mlp(4, 64, in_features=16, out_features=1, activation="tanh", init="xavier")
        add(Patient("tanh_mlp", "4 tanh layers, Xavier init, SGD with momentum", model, mse,
                    _regression(64, 16, seed), _sgd(model, 1e-2), None, None, "initialization"))

        model = SmallConvNet()
        g = torch.Generator().manual_seed(seed)
        batch = (torch.randn(32, 1, 12, 12, generator=g), torch.randint(0, 10, (32,), generator=g))
        add(Patient("convnet", "two 3x3 convolutions with ReLU, max pooling, SGD with momentum", model,
                    F.cross_entropy, batch, _sgd(model, 1e-2), None, None, "initialization"))

        model = VanillaRNN(2, 32, init="orthogonal")
        add(Patient("vanilla_rnn", "tanh RNN, orthogonal init, 10 steps of the adding problem", model, mse,
                    _adding(64, 10, seed), _adam(model), None, None, "rnn_cliff"))

        model = LSTM(2, 32)
        add(Patient("lstm", "LSTM, 50 steps of the adding problem", model, mse, _adding(64, 50, seed),
                    _adam(model), None, None, "gated_rnns"))

        model = EncoderRegressor()
        g = torch.Generator().manual_seed(seed)
        batch = (torch.randn(16, 12, 32, generator=g), torch.randn(16, 1, generator=g))
        add(Patient("transformer_encoder", "nn.TransformerEncoder, 2 layers of width 32", model, mse, batch,
                    _adam(model), None, None, "normalization"))

        model = Transformer(32, d_model=32, n_head=4, n_layer=2, context=16)
        tokens = torch.randint(0, 32, (8, 17), generator=torch.Generator().manual_seed(seed))
        add(Patient("gl_transformer", "gl.models.Transformer, Pre-LN, 2 layers of width 32", model, lm_loss,
                    (tokens[:, :-1], tokens[:, 1:]), _adam(model), None, None, "normalization"))
    return patients


def _adding(n: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.adding_problem(n, seq_len, seed=seed)
    return x, y.reshape(n, -1)


def float16_overflow_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The first linear layer of ``model`` (an :class:`~gradlab.models.MLP`) whose output,
    computed in float32, passes the largest float16: where a float16 forward pass overflows."""
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a gradlab.models.MLP, got {type(model).__name__}")
    h = check_tensor("x", x).float()
    with torch.no_grad():
        for name, block in copy.deepcopy(model).float().named_children():
            if block.linear(h).abs().max() > FLOAT16_MAX:
                return f"{name}.linear"
            h = block(h)
    raise ValueError("no layer of model overflows float16 on x")


__all__ = ["FLOAT16_MAX", "EncoderRegressor", "Patient", "SmallConvNet", "Sqrt", "broken",
           "float16_overflow_layer", "healthy"]
