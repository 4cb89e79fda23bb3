"""The one activation registry: every activation the book uses, defined once.

Each :class:`Activation` holds what the rest of the package needs of it: the PyTorch module that
models build, the function and its derivative in closed form (on tensors, and as NumPy functions
for the Gaussian quadrature of the mean-field theory), the points where it is not smooth (where
that quadrature splits its integral), the largest slope ``gamma = sup |phi'|`` of the spectral
bound, and, for positively homogeneous activations, the constant ``c`` with
``E[phi(sqrt(q) z)²] = c q`` and ``E[phi'(sqrt(q) z)²] = c`` for ``z ~ N(0, 1)``.

A new activation is one entry in :data:`ACTIVATIONS`; models, theory and exercises pick it up.
Constants are PyTorch's defaults: leaky ReLU slope 0.01, ELU ``alpha = 1``, SELU's ``alpha`` and
``lambda`` (Klambauer et al. 2017), exact (erf) GELU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._validate import check_choice, check_tensor

TensorFn = Callable[[torch.Tensor], torch.Tensor]
ArrayFn = Callable[[np.ndarray], np.ndarray]

LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """One activation ``phi``.

    Attributes:
        name: the registry key (``"relu"``, ...).
        module: builds the ``nn.Module`` that models use (``nn.ReLU``, ...).
        fn: ``phi`` on tensors, equal to ``module()`` (tested).
        derivative: ``phi'`` on tensors in closed form, equal to autograd (tested). At a kink
            it takes the value autograd takes (ReLU's slope at 0 is 0).
        kinks: the points where ``phi'`` jumps or ``phi''`` does (where quadrature splits).
        max_slope: ``gamma = sup_z |phi'(z)|``; for SELU a supremum approached from below 0.
        homogeneous: ``c`` if ``phi(a z) = a phi(z)`` for ``a > 0``, so that
            ``E[phi(sqrt(q) z)²] = c q`` and ``E[phi'(sqrt(q) z)²] = c`` for ``z ~ N(0, 1)``;
            ``None`` otherwise.
    """

    name: str
    module: Callable[[], nn.Module]
    fn: TensorFn
    derivative: TensorFn
    kinks: tuple[float, ...] = ()
    max_slope: float = 1.0
    homogeneous: float | None = None
    _np: tuple[ArrayFn, ArrayFn] | None = field(default=None, repr=False, compare=False)

    def np_fn(self, x: np.ndarray) -> np.ndarray:
        """``phi`` on a float64 NumPy array."""
        return self._np[0](x) if self._np else self.fn(torch.from_numpy(np.asarray(x, float))).numpy()

    def np_derivative(self, x: np.ndarray) -> np.ndarray:
        """``phi'`` on a float64 NumPy array."""
        if self._np:
            return self._np[1](x)
        return self.derivative(torch.from_numpy(np.asarray(x, float))).numpy()


def _sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + e^-x)


def _gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    # gelu(z) = z Phi(z)  =>  gelu'(z) = Phi(z) + z pdf(z)
    return torch.special.ndtr(z) + z * torch.exp(-0.5 * z * z) / _SQRT_2PI


def _silu_derivative(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _silu_max_slope() -> float:
    """``silu'`` peaks where ``silu'' = s(1 - s)(2 + z(1 - 2s)) = 0``, near z = 2.4: bisection."""
    lo, hi = 2.0, 3.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        s = 1.0 / (1.0 + math.exp(-mid))
        lo, hi = (mid, hi) if 2.0 + mid * (1.0 - 2.0 * s) > 0 else (lo, mid)
    s = 1.0 / (1.0 + math.exp(-lo))
    return s * (1.0 + lo * (1.0 - s))


def _registry() -> dict[str, Activation]:
    a, lam, al, elu = LEAKY_RELU_SLOPE, SELU_LAMBDA, SELU_ALPHA, ELU_ALPHA
    entries = [
        Activation("linear", nn.Identity, lambda z: z, torch.ones_like, homogeneous=1.0,
                   _np=(lambda x: x, np.ones_like)),
        Activation("relu", nn.ReLU, torch.relu, lambda z: (z > 0).to(z.dtype), kinks=(0.0,),
                   homogeneous=0.5,
                   _np=(lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float))),
        Activation("leaky_relu", nn.LeakyReLU, lambda z: nn.functional.leaky_relu(z, a),
                   lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)), kinks=(0.0,),
                   homogeneous=(1.0 + a * a) / 2.0,
                   _np=(lambda x: np.where(x > 0, x, a * x), lambda x: np.where(x > 0, 1.0, a))),
        Activation("tanh", nn.Tanh, torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2,
                   _np=(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2)),
        Activation("sigmoid", nn.Sigmoid, torch.sigmoid,
                   lambda z: torch.sigmoid(z) * (1.0 - torch.sigmoid(z)), max_slope=0.25,
                   _np=(_sigmoid_np, lambda x: _sigmoid_np(x) * (1.0 - _sigmoid_np(x)))),
        Activation("gelu", nn.GELU, nn.functional.gelu, _gelu_derivative,
                   max_slope=float(_gelu_derivative(torch.tensor(math.sqrt(2.0), dtype=torch.float64)))),
        Activation("elu", nn.ELU, lambda z: nn.functional.elu(z, elu),
                   lambda z: torch.where(z > 0, torch.ones_like(z), elu * torch.exp(torch.clamp(z, max=0.0))),
                   kinks=(0.0,), max_slope=max(1.0, elu)),
        Activation("selu", nn.SELU, nn.functional.selu,
                   lambda z: torch.where(z > 0, torch.full_like(z, lam),
                                         lam * al * torch.exp(torch.clamp(z, max=0.0))),
                   kinks=(0.0,), max_slope=lam * al),
        Activation("silu", nn.SiLU, nn.functional.silu, _silu_derivative, max_slope=_silu_max_slope()),
    ]
    return {e.name: e for e in entries}


ACTIVATIONS: dict[str, Activation] = _registry()
"""Every activation of the book, by name."""


def get(name: str) -> Activation:
    """The registry entry ``name``; a ``ValueError`` lists the names when it is unknown."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]


def apply(name: str, z: torch.Tensor) -> torch.Tensor:
    """``phi(z)`` for the activation ``name``."""
    return get(name).fn(check_tensor("z", z))


def derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """``phi'(z)`` in closed form for the activation ``name``."""
    return get(name).derivative(check_tensor("z", z))


__all__ = ["ACTIVATIONS", "Activation", "apply", "derivative", "get"]
