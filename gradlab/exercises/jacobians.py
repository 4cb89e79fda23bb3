"""Checkers for "What explodes" and "Jacobians": the chain rule through a scalar network and the
Jacobian of one layer, both against autograd."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import activations
from .harness import Case, CheckResult, Slips, describe, run

# ---------------------------------------------------------------------------------------------
# What explodes: d h_L / d h_0 for h_l = tanh(a_l h_{l-1})
# ---------------------------------------------------------------------------------------------


def _chain_reference(weights: list[float], x: float) -> float:
    h = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = h
    for a in weights:
        out = torch.tanh(a * out)
    (grad,) = torch.autograd.grad(out, h)
    return float(grad)


def _chain_case(g: torch.Generator, i: int) -> Case:
    depth = int(torch.randint(1, 12, (1,), generator=g))
    weights = (torch.randn(depth, generator=g, dtype=torch.float64) * 1.5).tolist()
    x = float(torch.randn((), generator=g, dtype=torch.float64))
    return Case((weights, x), _chain_reference(weights, x), describe(L=depth, x=x, weights=weights))


def _chain_with_slope(case: Case, slope: Callable[[float, float, float], float]) -> float:
    """``prod_l a_l * slope(a_l, h_{l-1}, h_l)`` along the forward pass of the case."""
    weights, h = case.args
    grad = 1.0
    for a in weights:
        h_prev, h = h, math.tanh(a * h)
        grad *= a * slope(a, h_prev, h)
    return grad


def _chain_slopes_alone(case: Case) -> float:
    """``prod_l (1 - h_l²)``: the chain rule without the factors ``a_l``."""
    weights, h = case.args
    grad = 1.0
    for a in weights:
        h = math.tanh(a * h)
        grad *= 1.0 - h * h
    return grad


CHAIN_SLIPS: Slips = {
    "the product of the weights alone: each layer also contributes tanh'(a_l h_{l-1}) = 1 - h_l²":
        lambda c: math.prod(c.args[0]),
    "the slope 1 - h_{l-1}² of the layer's input: tanh' is taken where the layer evaluates it, "
    "giving 1 - h_l² with h_l its output": lambda c: _chain_with_slope(c, lambda a, hp, h: 1.0 - hp * hp),
    "1 - z² with the pre-activation z = a_l h_{l-1}: tanh'(z) = 1 - tanh(z)²":
        lambda c: _chain_with_slope(c, lambda a, hp, h: 1.0 - (a * hp) ** 2),
    "the slopes 1 - h_l² alone: the inner derivative of a_l h_{l-1} multiplies each layer by a_l too":
        _chain_slopes_alone,
}


def check_scalar_chain_gradient(fn: Callable, n_cases: int = 50, seed: int = 0) -> CheckResult:
    """Check ``fn(weights, x)`` returns ``d h_L / d h_0 = prod_l a_l (1 - h_l²)`` for
    ``h_l = tanh(a_l h_{l-1})``, ``h_0 = x``, against autograd, on random depths ``L`` (1 to 11),
    weights and inputs; a wrong answer is compared with :data:`CHAIN_SLIPS`."""
    return run("scalar chain gradient", fn, _chain_case, n_cases, seed, rtol=1e-6, atol=1e-10,
               slips=CHAIN_SLIPS)


# ---------------------------------------------------------------------------------------------
# Jacobians: d phi(W x + b) / d x = diag(phi'(W x + b)) W
# ---------------------------------------------------------------------------------------------

LAYER_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")
"""The activations of the exercise, cycled through in this order (registry names)."""


def _layer_case(g: torch.Generator, i: int) -> Case:
    n_in, n_out = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64)
    x = torch.randn(n_in, generator=g, dtype=torch.float64)
    activation = LAYER_ACTIVATIONS[i % len(LAYER_ACTIVATIONS)]
    expected = torch.autograd.functional.jacobian(lambda v: activations.apply(activation, w @ v + b), x)
    return Case((w, b, x, activation), expected, describe(activation, W=w, b=b, x=x))


def _slope(case: Case) -> torch.Tensor:
    w, b, x, activation = case.args
    return activations.derivative(activation, w @ x + b)


def _columns_scaled(case: Case) -> torch.Tensor | None:
    w = case.args[0]
    return w * _slope(case)[None, :] if w.shape[0] == w.shape[1] else None


def _slope_of(case: Case, slope: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """``diag(slope(z)) W`` with ``z = W x + b``, for the activations whose slope it misstates."""
    w, b, x, activation = case.args
    if activation not in ("tanh", "sigmoid"):
        return None
    return slope(w @ x + b)[:, None] * w


LAYER_SLIPS: Slips = {
    "the transpose: row i holds the derivatives of output i, so the Jacobian is (out x in)":
        lambda c: c.expected.T,
    "W alone: the chain rule also multiplies by the slopes, diag(phi'(W x + b)) W":
        lambda c: c.args[0],
    "the slopes scale the columns of W: diag(phi'(z)) W scales its rows, slope[:, None] * W":
        _columns_scaled,
    "the derivative written for the output, applied to z: tanh'(z) = 1 - tanh(z)², not 1 - z², "
    "and sigmoid'(z) = s(z)(1 - s(z)) with s the sigmoid, not z(1 - z)":
        lambda c: _slope_of(c, lambda z: 1 - z**2 if c.args[3] == "tanh" else z * (1 - z)),
    "the slopes at W x without the bias: phi' is evaluated at the pre-activation W x + b":
        lambda c: activations.derivative(c.args[3], c.args[0] @ c.args[2])[:, None] * c.args[0],
}


LAYER_ERROR_HINTS = {
    "must match the size of tensor": "slope * W multiplies the columns of W by the slopes, which "
    "fails unless W is square; diag(phi'(W x + b)) W scales its rows: slope[:, None] * W.",
}


def check_layer_jacobian(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(W, b, x, activation)`` returns the Jacobian ``diag(phi'(W x + b)) W`` of
    ``phi(W x + b)`` with respect to ``x`` (shape ``out x in``) for ``activation`` in
    :data:`LAYER_ACTIVATIONS`, against ``torch.autograd.functional.jacobian`` on random sizes
    (1 to 6); a wrong answer is compared with :data:`LAYER_SLIPS`."""
    return run("layer Jacobian", fn, _layer_case, n_cases, seed, rtol=1e-6, atol=1e-9,
               slips=LAYER_SLIPS, error_hints=LAYER_ERROR_HINTS)
