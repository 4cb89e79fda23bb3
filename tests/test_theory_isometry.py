"""Tests for gradlab.theory.isometry: critical_point, jacobian_spectrum_moments (against the
spectra of real networks), input_output_jacobian and jacobian_singular_values (against
torch.autograd.functional.jacobian)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradlab.models import mlp
from gradlab.theory import (
    chi1,
    critical_point,
    gaussian_expectation,
    input_output_jacobian,
    jacobian_singular_values,
    jacobian_spectrum_moments,
    q_star,
)
from gradlab.utils import seeded

# ---------------------------------------------------------------------------------------------
# critical_point
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [1 / 64, 0.25, 1.0, 3.0])
def test_critical_point_of_tanh_has_the_asked_fixed_point_and_chi1_one(q):
    sigma_w, sigma_b = critical_point("tanh", q)
    assert q_star("tanh", sigma_w, sigma_b) == pytest.approx(q, rel=1e-10)
    assert chi1("tanh", sigma_w, sigma_b) == pytest.approx(1.0, rel=1e-10)


def test_critical_point_tends_to_glorot_as_q_shrinks_and_relu_is_he():
    sigma_w, sigma_b = critical_point("tanh", 1e-6)
    assert sigma_w == pytest.approx(1.0, abs=1e-5) and sigma_b < 1e-5
    for q in (0.1, 1.0, 10.0):
        assert critical_point("relu", q) == pytest.approx((math.sqrt(2.0), 0.0), abs=1e-12)
        assert critical_point("linear", q) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_critical_point_bad_input():
    with pytest.raises(ValueError, match="no critical point"):
        critical_point("sigmoid", 0.5)  # sigma_w ~ 4.4 already gives a length above 0.5
    for q in (0.0, -1.0):
        with pytest.raises(ValueError, match="q"):
            critical_point("tanh", q)
    with pytest.raises(ValueError, match="activation"):
        critical_point("swish", 1.0)
    with pytest.raises(TypeError, match="q"):
        critical_point("tanh", "1")


# ---------------------------------------------------------------------------------------------
# jacobian_spectrum_moments: closed forms
# ---------------------------------------------------------------------------------------------


def test_linear_networks_closed_forms():
    for depth in (0, 1, 7, 200):
        assert jacobian_spectrum_moments("linear", 1.0, 0.0, depth, weights="orthogonal") == (1.0, 0.0)
        mean, var = jacobian_spectrum_moments("linear", 1.0, 0.0, depth, weights="gaussian")
        assert mean == 1.0 and var == pytest.approx(depth, abs=1e-12)
    # homogeneous activations need no fixed point: the slopes do not depend on the length
    mean, var = jacobian_spectrum_moments("linear", 1.1, 0.0, 5)
    assert mean == pytest.approx(1.1 ** 10) and var == pytest.approx(5 * 1.1 ** 20)
    mean, var = jacobian_spectrum_moments("relu", 1.5, 0.1, 4, weights="orthogonal")
    assert mean == pytest.approx(1.125 ** 4) and var == pytest.approx(4 * 1.125 ** 8)


def test_relu_spread_is_one_per_layer_for_orthogonal_and_two_for_gaussian_at_every_q():
    for q0 in (0.1, 1.0, 5.0):
        mean, var = jacobian_spectrum_moments("relu", math.sqrt(2.0), 0.0, 30, weights="orthogonal", q0=q0)
        assert mean == pytest.approx(1.0) and var == pytest.approx(30.0)
        mean, var = jacobian_spectrum_moments("relu", math.sqrt(2.0), 0.0, 30, weights="gaussian", q0=q0)
        assert var == pytest.approx(60.0)


def test_tanh_spread_from_the_slope_moments_and_vanishing_for_small_q():
    q = 0.25
    sigma_w, sigma_b = critical_point("tanh", q)
    mu1 = gaussian_expectation(lambda x: (1 - np.tanh(x) ** 2) ** 2, q)
    mu2 = gaussian_expectation(lambda x: (1 - np.tanh(x) ** 2) ** 4, q)
    for weights, s in (("gaussian", 1.0), ("orthogonal", 0.0)):
        mean, var = jacobian_spectrum_moments("tanh", sigma_w, sigma_b, 40, weights=weights)
        assert mean == pytest.approx(1.0, rel=1e-9)
        assert var == pytest.approx(40 * (mu2 / mu1**2 - 1 + s), rel=1e-9)
    # orthogonal tanh: the spread per layer vanishes as q* -> 0 (about 2 q*^2 ... in fact
    # mu2 / mu1^2 - 1 = O(q*^2)); Gaussian weights keep at least 1 per layer
    spreads = [jacobian_spectrum_moments("tanh", *critical_point("tanh", q), 1, weights="orthogonal")[1]
               for q in (1.0, 0.25, 1 / 16, 1 / 64, 1 / 256)]
    assert all(a > b for a, b in zip(spreads, spreads[1:], strict=False)) and spreads[-1] < 1e-3
    assert jacobian_spectrum_moments("tanh", *critical_point("tanh", 1 / 256), 1)[1] > 1.0


def test_spectrum_moments_bad_input():
    with pytest.raises(ValueError, match="weights"):
        jacobian_spectrum_moments("tanh", 1.0, 0.1, 3, weights="uniform")
    with pytest.raises(ValueError, match="depth"):
        jacobian_spectrum_moments("tanh", 1.0, 0.1, -1)
    with pytest.raises(TypeError, match="depth"):
        jacobian_spectrum_moments("tanh", 1.0, 0.1, 2.0)
    with pytest.raises(ValueError, match="sigma_w"):
        jacobian_spectrum_moments("tanh", -1.0, 0.1, 3)
    with pytest.raises(ValueError, match="q0"):
        jacobian_spectrum_moments("tanh", 1.0, 0.1, 3, q0=0.0)
    with pytest.raises(ValueError, match="activation"):
        jacobian_spectrum_moments("swish", 1.0, 0.1, 3)


# ---------------------------------------------------------------------------------------------
# jacobian_spectrum_moments against real networks
# ---------------------------------------------------------------------------------------------


def _measured_spread(activation, q, init, depth, width, seeds):
    """(Var lambda) / (mean lambda)^2 and mean lambda of J J^T for the hidden stack of
    gl.mlp on the critical point with fixed point q, input at q: one value per network."""
    sigma_w, sigma_b = critical_point(activation, q)
    input_std = math.sqrt((q - sigma_b**2) / sigma_w**2)
    spreads, means = [], []
    for seed in range(seeds):
        with seeded(seed):
            net = mlp(depth + 1, width, activation=activation, init=init, gain=sigma_w, bias_std=sigma_b)
            x = input_std * torch.randn(width)
        lam = jacobian_singular_values(net[:-1], x) ** 2
        spreads.append(float(lam.var(unbiased=False) / lam.mean() ** 2))
        means.append(float(lam.mean()))
    return np.array(spreads), np.array(means)


@pytest.mark.parametrize(
    ("activation", "q", "init", "depth", "width"),
    [
        ("tanh", 0.25, "orthogonal", 20, 128),
        ("tanh", 1 / 64, "orthogonal", 30, 128),
        ("tanh", 0.25, "gaussian", 10, 256),
        ("relu", 1.0, "orthogonal", 10, 256),
        ("linear", 1.0, "gaussian", 10, 256),
    ],
)
def test_predicted_spread_matches_real_networks(activation, q, init, depth, width):
    """Within 3 standard errors (over 4 networks) plus 5% of the prediction: the wide-limit
    formula has finite-width corrections of relative order depth / width."""
    spreads, means = _measured_spread(activation, q, init, depth, width, seeds=4)
    sigma_w, sigma_b = critical_point(activation, q)
    mean, var = jacobian_spectrum_moments(activation, sigma_w, sigma_b, depth, weights=init, q0=q)
    predicted = var / mean**2
    se = spreads.std(ddof=1) / math.sqrt(len(spreads))
    assert abs(spreads.mean() - predicted) < 3 * se + 0.05 * predicted, (spreads, predicted)
    assert abs(means.mean() - mean) < 3 * means.std(ddof=1) / 2 + 0.1, means  # chi_1^L = 1


def test_orthogonal_linear_stack_is_an_exact_isometry_at_any_depth_and_width():
    with seeded(0):
        net = mlp(60, 12, activation="linear", init="orthogonal", gain=1.0)
    # the weights are float32 orthogonal matrices: exact to float32 rounding, about 1e-7 a layer
    s = jacobian_singular_values(net, torch.randn(12))
    assert torch.allclose(s, torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-5)
    with seeded(0):
        scaled = mlp(5, 12, activation="linear", init="orthogonal", gain=1.3)
    s = jacobian_singular_values(scaled, torch.randn(12))
    assert torch.allclose(s, torch.full((12,), 1.3**5, dtype=torch.float64), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# input_output_jacobian and jacobian_singular_values
# ---------------------------------------------------------------------------------------------


def test_jacobian_matches_torch_autograd_functional_jacobian():
    torch.manual_seed(0)
    models = [
        mlp(4, 9, in_features=5, out_features=3, activation="tanh", bias_std=0.3),
        mlp(3, 7, in_features=7, out_features=7, activation="relu"),
        nn.Sequential(nn.Linear(6, 4), nn.Softplus(), nn.Linear(4, 8), nn.GELU()),
    ]
    for model in models:
        n = next(model.parameters()).shape[1]
        x = torch.randn(n)
        expected = torch.autograd.functional.jacobian(lambda v, m=model: m.double()(v[None])[0], x.double())
        got = input_output_jacobian(model, x)
        assert got.dtype == torch.float64 and got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
        s = jacobian_singular_values(model, x)
        assert torch.allclose(s, torch.linalg.svdvals(expected), rtol=1e-10, atol=1e-14)
        assert torch.all(s[:-1] >= s[1:])


def test_jacobian_leaves_the_model_alone():
    torch.manual_seed(0)
    model = mlp(3, 6, activation="tanh")
    before = [p.detach().clone() for p in model.parameters()]
    input_output_jacobian(model, torch.randn(6))
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_jacobian_bad_input():
    model = mlp(2, 4)
    with pytest.raises(TypeError, match="model"):
        input_output_jacobian(lambda v: v, torch.randn(4))
    with pytest.raises(TypeError, match="x"):
        input_output_jacobian(model, [0.0] * 4)
    with pytest.raises(ValueError, match="x must have 1 dimensions"):
        input_output_jacobian(model, torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        input_output_jacobian(model, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"map a batch \(m, n\) to \(m, k\)"):
        input_output_jacobian(nn.Sequential(nn.Linear(4, 4), nn.Flatten(0)), torch.randn(4))
