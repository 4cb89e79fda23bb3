"""Dynamical isometry: the whole singular-value spectrum of a network's input-output Jacobian,
not only its mean square (the chapter "Initialization").

``chi_1 = 1`` makes the *mean* squared singular value of ``J = D_L W_L ... D_1 W_1`` equal to 1;
dynamical isometry (Saxe et al. 2014; Pennington, Schoenholz & Ganguli 2017) asks that *all*
of them be close to 1. :func:`jacobian_spectrum_moments` gives the mean and variance of the
squared singular values of a wide random network, for Gaussian and orthogonal weights;
:func:`critical_point` gives the weight and bias scales that put a network on the critical line
at a chosen ``q*``; :func:`input_output_jacobian` and :func:`jacobian_singular_values` measure the
spectrum of a real network exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_real, check_tensor
from ..activations import get as get_activation
from .mean_field import _check_signal_args, _expectation, q_star

WEIGHT_ENSEMBLES = ("gaussian", "orthogonal")
"""The weight distributions of :func:`jacobian_spectrum_moments`."""

# The spread one layer's weights add to (Var lambda) / (mean lambda)^2 of J J^T: the variance of
# the eigenvalues of W W^T / sigma_w^2, which is 1 for a square Gaussian W (Marchenko-Pastur) and
# 0 for an orthogonal one. Pennington et al. (2017) write it as -s_1, minus the first coefficient
# of the S-transform of W W^T.
_WEIGHT_SPREAD = {"gaussian": 1.0, "orthogonal": 0.0}


def _slope_moments(activation: str, q: float) -> tuple[float, float]:
    """``(mu_1, mu_2) = (E[phi'(sqrt(q) z)^2], E[phi'(sqrt(q) z)^4])``, ``z ~ N(0, 1)``."""
    act = get_activation(activation)
    mu1 = _expectation(lambda x: act.np_derivative(x) ** 2, q, act.kinks)
    mu2 = _expectation(lambda x: act.np_derivative(x) ** 4, q, act.kinks)
    return mu1, mu2


def critical_point(activation: str, q: float) -> tuple[float, float]:
    """The weight and bias scales ``(sigma_w, sigma_b)`` whose fixed point is ``q* = q`` and whose
    backward factor is ``chi_1 = 1``: a point of the critical line, labelled by its ``q*``.

    ``chi_1 = sigma_w² E[phi'(sqrt(q) z)²] = 1`` fixes ``sigma_w² = 1 / E[phi'(sqrt(q) z)²]``, and
    the fixed-point equation ``q = sigma_w² E[phi(sqrt(q) z)²] + sigma_b²`` then fixes
    ``sigma_b² = q - sigma_w² E[phi(sqrt(q) z)²]`` (Pennington et al. 2017 parametrize the
    critical line of tanh networks this way). tanh: ``sigma_w -> 1``, ``sigma_b -> 0`` as
    ``q -> 0``. ReLU: ``(sqrt 2, 0)`` for every ``q``.

    Raises:
        ValueError: for ``q <= 0``, or where no bias variance can do it (``sigma_b² < 0``: the
            weights that give ``chi_1 = 1`` already push the length above ``q``, as for the
            sigmoid) or ``phi'`` vanishes on the whole Gaussian.
    """
    act = get_activation(activation)
    q = check_real("q", q, minimum=0.0, strict=True)
    mu1 = _expectation(lambda x: act.np_derivative(x) ** 2, q, act.kinks)
    if mu1 <= 0.0:
        raise ValueError(f"E[phi'^2] = 0 for activation={act.name!r} at q={q:g}: no weight scale "
                         "gives chi_1 = 1")
    sigma_w2 = 1.0 / mu1
    second = act.homogeneous * q if act.homogeneous is not None else _expectation(
        lambda x: act.np_fn(x) ** 2, q, act.kinks)
    sigma_b2 = q - sigma_w2 * second
    if sigma_b2 < -1e-12 * q:
        raise ValueError(f"no critical point with q*={q:g} for activation={act.name!r}: the "
                         f"weights with chi_1 = 1 (sigma_w={math.sqrt(sigma_w2):.6g}) already "
                         f"give a length {sigma_w2 * second:.6g} > q without any bias")
    return math.sqrt(sigma_w2), math.sqrt(max(sigma_b2, 0.0))


def jacobian_spectrum_moments(
    activation: str,
    sigma_w: float,
    sigma_b: float,
    depth: int,
    *,
    weights: str = "gaussian",
    q0: float = 1.0,
) -> tuple[float, float]:
    """Mean and variance of the eigenvalues ``lambda`` of ``J J^T`` (the squared singular values
    of the input-output Jacobian ``J = D_L W_L ... D_1 W_1``) of a wide network at its fixed point.

    With ``mu_k = E[phi'(sqrt(q*) z)^(2k)]`` and ``chi_1 = sigma_w² mu_1``, in the limit of
    infinite width (the weights' variance ``sigma_w² / fan_in``, or ``sigma_w`` times an
    orthogonal matrix; biases ``N(0, sigma_b²)``; every layer's pre-activations at ``q*``)::

        mean = chi_1 ** L
        variance / mean² = L (mu_2 / mu_1² - 1 + s),   s = 1 (gaussian), 0 (orthogonal)

    (Pennington, Schoenholz & Ganguli 2017, with ``s = -s_1``). For ReLU ``mu_2 / mu_1² = 2`` at
    every ``q*``, so even orthogonal weights give ``variance / mean² = L``; for tanh it tends to
    1 as ``q* -> 0``, so orthogonal weights make the spread as small as wanted.

    Args:
        activation: a name of :data:`gradlab.activations.ACTIVATIONS`.
        sigma_w, sigma_b: the weight and bias scales (``q*`` from :func:`q_star`).
        depth: the number ``L`` of layers ``D_l W_l``, at least 0 (``J = I`` for 0).
        weights: ``"gaussian"`` or ``"orthogonal"``.
        q0: where the length map starts, for activations whose ``q*`` depends on it. For a
            positively homogeneous ``phi`` (linear, ReLU, leaky ReLU) the slopes' distribution
            does not depend on ``q`` at all, so no fixed point is needed (``sigma_w`` above the
            critical value, where ``q`` grows without bound, is allowed).

    Raises:
        ValueError: for bad arguments, or where ``q*`` does not exist (see :func:`q_star`).

    Returns:
        ``(mean, variance)`` of ``lambda``.
    """
    weights = check_choice("weights", weights, WEIGHT_ENSEMBLES)
    depth = check_int("depth", depth, minimum=0)
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    q = q0 if act.homogeneous is not None else q_star(act.name, sigma_w, sigma_b, q0=q0)
    mu1, mu2 = _slope_moments(activation, q)
    if mu1 == 0.0:
        return 0.0, 0.0
    mean = (sigma_w**2 * mu1) ** depth
    spread = depth * (mu2 / mu1**2 - 1.0 + _WEIGHT_SPREAD[weights])
    return mean, mean**2 * spread


def input_output_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``d model(x) / d x`` at one input ``x``, exactly, in float64.

    ``x`` is one example of shape ``(n,)``; ``model`` must map a batch ``(m, n)`` to ``(m, k)``
    row by row, each row on its own (an MLP; not a BatchNorm layer in training mode). The model
    is copied and cast to float64, so the caller's model is untouched. All ``k`` rows of the
    Jacobian come from one backward pass: the input is repeated ``k`` times and row ``i`` of the
    output is differentiated in copy ``i``. Equal to ``torch.autograd.functional.jacobian``
    (tested) without its one backward pass per output.

    Returns:
        a float64 tensor of shape ``(k, n)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_tensor("x", x, ndim=1)
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    model64 = copy.deepcopy(model).double()
    x64 = x.detach().double()
    with torch.no_grad():
        out = model64(x64[None])
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"model must map a batch (m, n) to (m, k); one input gave {tuple(out.shape)}")
    k = out.shape[1]
    inputs = x64.expand(k, -1).clone().requires_grad_(True)
    outputs = model64(inputs)
    (jacobian,) = torch.autograd.grad(outputs, inputs, torch.eye(k, dtype=torch.float64))
    return jacobian


def jacobian_singular_values(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The singular values of :func:`input_output_jacobian` ``(model, x)``, largest first (float64).

    Their squares are the eigenvalues ``lambda`` of ``J J^T`` whose mean and variance
    :func:`jacobian_spectrum_moments` predicts for wide random networks.
    """
    return torch.linalg.svdvals(input_output_jacobian(model, x))


__all__ = [
    "WEIGHT_ENSEMBLES",
    "critical_point",
    "input_output_jacobian",
    "jacobian_singular_values",
    "jacobian_spectrum_moments",
]
