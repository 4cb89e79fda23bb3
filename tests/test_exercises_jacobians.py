"""Tests for gradlab.exercises.jacobians: check_scalar_chain_gradient, check_layer_jacobian."""

import math

import pytest
import torch

from gradlab import activations
from gradlab.exercises.jacobians import (
    CHAIN_SLIPS,
    LAYER_SLIPS,
    _layer_case,
    check_layer_jacobian,
    check_scalar_chain_gradient,
)


def _only_slip(table, word):
    (slip,) = [s for s in table if word in s]
    return slip


# --- the scalar chain --------------------------------------------------------------------------


def chain_gradient(weights, x):
    grad, h = 1.0, x
    for a in weights:
        h = math.tanh(a * h)
        grad *= a * (1.0 - h * h)
    return grad


def _chain_with(slope):
    def wrong(weights, x):
        grad, h = 1.0, x
        for a in weights:
            h_prev, h = h, math.tanh(a * h)
            grad *= a * slope(a, h_prev, h)
        return grad

    return wrong


CHAIN_WRONG = {
    "weights alone": lambda weights, x: math.prod(weights),
    "layer's input": _chain_with(lambda a, h_prev, h: 1.0 - h_prev**2),
    "pre-activation": _chain_with(lambda a, h_prev, h: 1.0 - (a * h_prev) ** 2),
    "inner derivative": _chain_with(lambda a, h_prev, h: (1.0 - h * h) / a),
}


def test_check_scalar_chain_gradient_passes_a_correct_implementation():
    result = check_scalar_chain_gradient(chain_gradient)
    assert result and result.cases == 50
    assert result.message == "scalar chain gradient: all 50 random cases match."
    assert check_scalar_chain_gradient(chain_gradient, n_cases=7, seed=3).cases == 7


@pytest.mark.parametrize("word", CHAIN_WRONG)
def test_check_scalar_chain_gradient_names_each_slip(word):
    result = check_scalar_chain_gradient(CHAIN_WRONG[word])
    assert not result
    assert "scalar chain gradient: case 1 (L=" in result.message and ", x=" in result.message
    assert "is wrong" in result.message and "expected:" in result.message and "returned:" in result.message
    assert f"Known slip: {_only_slip(CHAIN_SLIPS, word)}." in result.message


def test_every_chain_slip_has_a_wrong_solution():
    assert sorted(_only_slip(CHAIN_SLIPS, w) for w in CHAIN_WRONG) == sorted(CHAIN_SLIPS)


def test_check_scalar_chain_gradient_fails_other_wrong_implementations():
    def off_by_one_layer(weights, x):
        return chain_gradient(weights[:-1], x)

    assert not check_scalar_chain_gradient(off_by_one_layer)
    result = check_scalar_chain_gradient(lambda weights, x: weights[100])
    assert not result and "raised IndexError" in result.message


# --- the layer Jacobian ------------------------------------------------------------------------


def layer_jacobian(w, b, x, activation):
    return activations.derivative(activation, w @ x + b)[:, None] * w


LAYER_WRONG = {
    "transpose": lambda w, b, x, activation: layer_jacobian(w, b, x, activation).T,
    "W alone": lambda w, b, x, activation: w,
    # slope * W scales the columns; it runs only where W is square (the hint test covers the rest)
    "columns": lambda w, b, x, activation: (
        w * activations.derivative(activation, w @ x + b) if w.shape[0] == w.shape[1]
        else layer_jacobian(w, b, x, activation)),
    "written for the output": lambda w, b, x, activation: (
        (1 - (w @ x + b) ** 2)[:, None] * w if activation == "tanh"
        else ((w @ x + b) * (1 - (w @ x + b)))[:, None] * w if activation == "sigmoid"
        else layer_jacobian(w, b, x, activation)),
    "without the bias": lambda w, b, x, activation: layer_jacobian(w, torch.zeros_like(b), x, activation),
}


def test_check_layer_jacobian_passes_a_correct_implementation():
    result = check_layer_jacobian(layer_jacobian)
    assert result and result.cases == 40
    assert result.message == "layer Jacobian: all 40 random cases match."
    assert check_layer_jacobian(layer_jacobian, n_cases=8, seed=5)


@pytest.mark.parametrize("word", LAYER_WRONG)
def test_check_layer_jacobian_names_each_slip(word):
    result = check_layer_jacobian(LAYER_WRONG[word])
    assert not result
    assert "W of shape" in result.message
    assert f"Known slip: {_only_slip(LAYER_SLIPS, word)}." in result.message


def test_every_layer_slip_has_a_wrong_solution():
    assert sorted(_only_slip(LAYER_SLIPS, w) for w in LAYER_WRONG) == sorted(LAYER_SLIPS)


def test_check_layer_jacobian_explains_a_broadcasting_error():
    def slope_times_w(w, b, x, activation):
        return activations.derivative(activation, w @ x + b) * w

    result = check_layer_jacobian(slope_times_w)
    assert not result and result.cases == 1 and "raised RuntimeError" in result.message
    assert "Hint: slope * W multiplies the columns" in result.message


def test_check_layer_jacobian_fails_a_transposed_jacobian_by_shape_or_value():
    result = check_layer_jacobian(LAYER_WRONG["transpose"])
    assert "layer Jacobian: case 1 (linear, W of shape (4, 3)" in result.message
    assert "returned shape (3, 4), expected (4, 3)" in result.message


def test_check_layer_jacobian_fails_when_the_activation_derivative_is_forgotten():
    result = check_layer_jacobian(LAYER_WRONG["W alone"])
    assert not result
    # the first case uses the identity activation, for which W is right: case 2 (relu) fails
    assert result.cases == 2
    assert "case 2 (relu, " in result.message and "is wrong" in result.message

    def wrong_slope(w, b, x, activation):  # uses tanh' whatever the activation
        return layer_jacobian(w, b, x, "tanh")

    assert not check_layer_jacobian(wrong_slope)


def test_check_layer_jacobian_reference_is_the_closed_form():
    # the checker's autograd reference equals diag(phi'(Wx + b)) W from the activation registry
    g = torch.Generator().manual_seed(2)
    for i in range(12):
        case = _layer_case(g, i)
        torch.testing.assert_close(case.expected, layer_jacobian(*case.args), rtol=1e-12, atol=1e-14)
