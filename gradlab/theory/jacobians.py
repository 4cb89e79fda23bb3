"""Backpropagation as a product of Jacobians: per-layer Jacobians, slopes, spectral bounds and
the growth rate of a gradient through random layers (the chapters "What explodes" and
"Jacobians")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validate import check_int, check_real, check_tensor
from ..activations import get as get_activation


def activation_derivative(activation: str, z: torch.Tensor) -> torch.Tensor:
    """``phi'(z)`` in closed form for any activation of :data:`gradlab.activations.ACTIVATIONS`.

    At a kink it takes the value autograd takes (ReLU's slope at 0 is 0).
    """
    return get_activation(activation).derivative(check_tensor("z", z))


def max_slope(activation: str) -> float:
    """``gamma = sup_z |phi'(z)|``, the constant in the spectral-norm bound.

    1 for linear, ReLU, leaky ReLU, tanh and ELU; 1/4 for the sigmoid; above 1 for GELU (at
    ``z = sqrt(2)``), SiLU and SELU (``lambda alpha``, approached from below 0).
    """
    return get_activation(activation).max_slope


def layer_jacobians(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    x: torch.Tensor,
    activation: str,
) -> list[torch.Tensor]:
    """Jacobians ``J_l = d h_l / d h_{l-1}`` of an MLP at the single input ``x``.

    The network is ``h_l = phi(W_l h_{l-1} + b_l)`` for every layer but the last, which is
    linear (a read-out), as in :func:`gradlab.models.mlp`. Then ``J_l = diag(phi'(z_l)) W_l``
    for hidden layers and ``J_L = W_L`` for the read-out.
    """
    if len(weights) == 0:
        raise ValueError("weights must hold at least one matrix")
    if len(biases) != len(weights):
        raise ValueError(f"biases must have one entry per weight, got {len(biases)} for {len(weights)}")
    h = check_tensor("x", x, ndim=1)
    act = get_activation(activation)
    jacobians = []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        w = check_tensor(f"weights[{i}]", w, ndim=2).detach()
        z = w @ h + (b.detach() if b is not None else 0.0)
        if i == len(weights) - 1:
            jacobians.append(w.clone())
            h = z
        else:
            jacobians.append(act.derivative(z)[:, None] * w)
            h = act.fn(z)
    return jacobians


def jacobian_product(jacobians: Sequence[torch.Tensor]) -> torch.Tensor:
    """``J_L ... J_2 J_1``: the Jacobian of the whole network from a list in forward order."""
    if len(jacobians) == 0:
        raise ValueError("jacobians must hold at least one matrix")
    product = check_tensor("jacobians[0]", jacobians[0], ndim=2)
    for i, j in enumerate(jacobians[1:], start=1):
        j = check_tensor(f"jacobians[{i}]", j, ndim=2)
        if j.shape[1] != product.shape[0]:
            raise ValueError(
                f"jacobians[{i}] has {j.shape[1]} columns but the product so far has "
                f"{product.shape[0]} rows"
            )
        product = j @ product
    return product


def spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value ``||A||_2`` of a matrix."""
    matrix = check_tensor("matrix", matrix, ndim=2)
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2))


def spectral_bound(weights: Sequence[torch.Tensor], slope: float = 1.0) -> float:
    """Upper bound ``prod_k ||W_k||_2 * slope`` on the gain of backprop through ``weights``.

    Since ``dL/dh_{l-1} = W_l^T diag(phi'(z_l)) dL/dh_l`` and ``|phi'| <= slope``, each layer
    multiplies the gradient's norm by at most ``||W_l||_2 * slope``. Every matrix is paired with
    one activation derivative: for a network whose last layer is a linear read-out, bound the
    read-out separately (``spectral_norm(W_L)``) or pair each ``W_k`` with the derivative of the
    layer below it, as the chapter on Jacobians does. An empty list gives 1.
    """
    slope = check_real("slope", slope, minimum=0.0)
    bound = 1.0
    for i, w in enumerate(weights):
        bound *= spectral_norm(check_tensor(f"weights[{i}]", w, ndim=2)) * slope
    return bound


def average_growth_factor(weight: torch.Tensor) -> float:
    """Root-mean-square gain ``||W||_F / sqrt(fan_out)`` of ``g -> W^T g`` over random ``g``.

    For a direction ``g`` drawn uniformly from the sphere, ``E ||W^T g||^2 = ||W||_F^2 / fan_out``
    ``* ||g||^2``: the mean of the squared singular values, for a square ``W``. This is the
    average case, against the worst case ``||W||_2`` of :func:`spectral_norm`.
    """
    weight = check_tensor("weight", weight, ndim=2).detach().double()
    return float(torch.linalg.matrix_norm(weight) / math.sqrt(weight.shape[0]))


def log_growth_rate(gain: float, width: int) -> float:
    """Exact ``E log(||W^T g|| / ||g||)`` for a ``width x width`` Gaussian ``W`` of variance
    ``gain**2 / width``.

    ``||W^T g||^2 / ||g||^2`` is ``gain**2 / width`` times a chi-square variable with ``width``
    degrees of freedom, whose log has mean ``digamma(width/2) + log 2``. Layers are independent,
    so ``log ||g_l||`` is a random walk with this drift: the typical per-layer factor is
    ``exp(rate)``, a little below ``gain``, and tends to ``gain`` as the width grows.
    """
    gain = check_real("gain", gain, minimum=0.0, strict=True)
    width = check_int("width", width, minimum=1)
    digamma = float(torch.special.digamma(torch.tensor(width / 2.0, dtype=torch.float64)))
    return math.log(gain) + 0.5 * (digamma + math.log(2.0) - math.log(width))


def log_growth_variance(width: int) -> float:
    """Per-layer variance of ``log(||W^T g|| / ||g||)`` for a Gaussian ``W``: ``trigamma(width/2)/4``.

    It does not depend on the gain; the spread of ``log ||g_l||`` grows like ``sqrt(l)``.
    """
    width = check_int("width", width, minimum=1)
    x = torch.tensor(width / 2.0, dtype=torch.float64)
    return float(torch.special.polygamma(1, x)) / 4.0


def matrix_power_norms(matrix: torch.Tensor, max_power: int) -> torch.Tensor:
    """``||A^k||_2`` for ``k = 0, ..., max_power`` (a 1-D float64 tensor).

    For a non-normal ``A`` these can grow for a while even when every eigenvalue has modulus
    below 1; they decay only once ``k`` is large (Trefethen & Embree 2005).
    """
    matrix = check_tensor("matrix", matrix, ndim=2).detach().double()
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    max_power = check_int("max_power", max_power, minimum=0)
    norms = []
    power = torch.eye(matrix.shape[0], dtype=torch.float64)
    for _ in range(max_power + 1):
        norms.append(torch.linalg.matrix_norm(power, ord=2))
        power = matrix @ power
    return torch.stack(norms)


def spectral_radius(matrix: torch.Tensor) -> float:
    """Largest eigenvalue modulus of a square matrix."""
    matrix = check_tensor("matrix", matrix, ndim=2).detach().double()
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    return float(torch.linalg.eigvals(matrix).abs().max())
