"""Dropout: what inverted dropout does to a gradient's second moment, the variance shift between
training and evaluation in front of batch normalization (Li et al. 2019), and the gradient's
growth per layer in a batch-normalized network with dropout (the chapter "Dropout").

Notation: ``p`` is the drop probability. Inverted dropout (``torch.nn.Dropout(p)``) multiplies
a unit by ``d = m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``, so ``E[d] = 1`` and
``E[d²] = 1 / (1 - p)``; in evaluation mode it is the identity.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int, check_probability, check_real
from ..activations import get as get_activation
from .mean_field import gaussian_expectation


def dropout_gradient_factor(p: float, masks: int = 1) -> float:
    """``(1 - p)^(-masks)``: the factor by which independent dropout masks multiply the expected
    squared norm of a gradient whose path crosses ``masks`` of them.

    One mask: for ``h_hat = d * h`` and an upstream gradient ``u = dL/dh_hat`` that does not
    depend on the mask, ``dL/dh = d * u`` has ``E[dL/dh] = u`` and
    ``E ||dL/dh||² = E[d²] ||u||² = ||u||² / (1 - p)``. Independent masks multiply: in a wide
    random network (the mean-field average) the gradient of the pre-activations of layer ``l``
    crosses the ``L - l`` masks above it, and the gradient of ``W_l``, the outer product of that
    gradient with the layer's input, crosses those and the ``l - 1`` masks below, so
    ``masks = L - 1`` for every weight matrix of an ``L``-layer network with dropout after each
    hidden activation. A recurrence ``h_t = W (d_t * h_{t-1})`` with orthogonal ``W`` and a fresh
    mask per step gives exactly ``E ||(dh_T/dh_{T-k}) v||² = (1 - p)^(-k) ||v||²``.
    """
    p = check_probability("p", p)
    masks = check_int("masks", masks, minimum=0)
    return (1.0 - p) ** -masks


def variance_shift(p: float, mean: float, variance: float) -> float:
    """``Var_eval / Var_train`` of a unit ``h`` (mean ``c = mean``, variance ``v = variance``
    over the data) after inverted dropout (Li et al. 2019, who write it with the keep
    probability ``1 - p``):

        Var_train(d h) = E[d²] E[h²] - c² = v + p / (1 - p) (c² + v),    Var_eval(h) = v,

        shift = v / (v + p / (1 - p) (c² + v)).

    A batch normalization after the dropout learns its running variance in training mode, so in
    evaluation mode its output has variance ``shift`` instead of 1. The same ratio holds, on
    average over the weights, for a BN after a linear layer with independent zero-mean weights
    whose inputs all have mean ``c`` and variance ``v``. For ``c = 0`` it is ``1 - p``.
    """
    p = check_probability("p", p)
    mean = check_real("mean", mean)
    variance = check_real("variance", variance, minimum=0.0)
    if variance == 0.0 and mean == 0.0:
        raise ValueError("mean and variance are both 0: a unit that is always 0 has no variance "
                         "to shift")
    return variance / (variance + p / (1.0 - p) * (mean**2 + variance))


def _moments(activation: str) -> tuple[float, float, float]:
    """``E phi(y)``, ``Var phi(y)`` and ``E phi'(y)²`` for ``y ~ N(0, 1)``."""
    act = get_activation(activation)
    mean = gaussian_expectation(act.np_fn, 1.0, kinks=act.kinks)
    second = gaussian_expectation(lambda z: act.np_fn(z) ** 2, 1.0, kinks=act.kinks)
    slope = gaussian_expectation(lambda z: np.square(act.np_derivative(z)), 1.0, kinks=act.kinks)
    return mean, max(second - mean**2, 0.0), slope


def bn_dropout_variance_shift(activation: str, p: float) -> float:
    """:func:`variance_shift` for ``phi(y)``, ``y ~ N(0, 1)``: the shift at a BN that follows
    ``BN -> phi -> dropout -> linear`` (the BN before ``phi`` puts ``y`` at mean 0 and variance
    1). For ReLU, ``c² = 1/(2 pi)`` and ``v = 1/2 - 1/(2 pi)``, so
    ``shift = (pi - 1)(1 - p) / (pi - 1 + p)``.
    """
    p = check_probability("p", p)
    mean, variance, _ = _moments(activation)
    return variance_shift(p, mean, variance)


def bn_dropout_gradient_rate(activation: str, p: float) -> float:
    """The factor by which ``E ||dL/dz||²`` grows per layer, toward the input, in a wide network
    of layers ``z -> BN -> phi -> dropout(p) -> W``, in training mode (mean-field):

        rate = E[phi'(y)²] / (Var phi(y) + p (E phi(y))²),        y ~ N(0, 1).

    Backward through one layer (weights ``N(0, sigma_w² / n)``): ``W^T`` multiplies ``E||.||²`` by
    ``sigma_w²``, the mask by ``1 / (1 - p)``, ``phi'`` by ``E[phi'²]``; the BN divides by its batch
    variance ``sigma_w² (v + p (c² + v) / (1 - p))``, the training-mode variance of its dropped
    inputs (:func:`variance_shift`), with ``c = E phi(y)`` and ``v = Var phi(y)``. At ``p = 0`` the
    rate is batch normalization's own factor ``E[phi'²] / Var phi >= 1``,
    :func:`gradlab.theory.norm_gradient_growth` (``pi / (pi - 1)`` for ReLU). Dropout adds
    ``p c²`` to the denominator: it lowers the rate of an activation with ``c != 0`` (ReLU:
    ``1 / (1 - (1 - p) / pi)``) and leaves a zero-mean one (tanh) unchanged. A large-batch limit:
    at a finite batch the measured factor is a little larger.
    """
    p = check_probability("p", p)
    mean, variance, slope = _moments(activation)
    return slope / (variance + p * mean**2)


__all__ = ["bn_dropout_gradient_rate", "bn_dropout_variance_shift", "dropout_gradient_factor",
           "variance_shift"]
