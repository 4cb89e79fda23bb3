"""Tests for gradlab.theory.jacobians: Jacobians, slopes, spectral bounds, growth rates, each
compared with autograd, an SVD or a measurement."""

import math

import pytest
import torch

from gradlab import theory
from gradlab.activations import ACTIVATIONS
from gradlab.models import mlp

NAMES = list(ACTIVATIONS)


@pytest.mark.parametrize("activation", NAMES)
def test_activation_derivative_equals_autograd(activation):
    z = torch.cat([torch.linspace(-8, 8, 401, dtype=torch.float64),
                   torch.tensor([0.0, -1e-3, 1e-3, 30.0, -30.0], dtype=torch.float64)])
    zz = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ACTIVATIONS[activation].module()(zz).sum(), zz)
    got = theory.activation_derivative(activation, z)
    assert got.shape == z.shape and got.dtype == z.dtype
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_relu_derivative_at_zero_is_autograds():
    zero = torch.zeros(3, requires_grad=True)
    (relu_at_zero,) = torch.autograd.grad(torch.relu(zero).sum(), zero)
    torch.testing.assert_close(theory.activation_derivative("relu", torch.zeros(3)), relu_at_zero)


@pytest.mark.parametrize("activation", NAMES)
def test_max_slope_is_the_measured_supremum(activation):
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    measured = float(theory.activation_derivative(activation, grid).abs().max())
    assert measured <= theory.max_slope(activation) * (1 + 1e-12)
    # SELU's supremum lambda * alpha is approached from below 0, not attained: the grid's
    # value is within its spacing (1e-4) of it.
    rel = 2e-4 if activation == "selu" else 1e-9
    assert theory.max_slope(activation) == pytest.approx(measured, rel=rel)


def test_known_max_slopes():
    assert theory.max_slope("sigmoid") == 0.25
    for activation in ("linear", "relu", "leaky_relu", "tanh", "elu"):
        assert theory.max_slope(activation) == 1.0
    assert theory.max_slope("gelu") > 1.12
    # the peak is at z = sqrt(2), where gelu'' = pdf(z) (2 - z^2) vanishes
    z = torch.tensor(math.sqrt(2.0), dtype=torch.float64)
    peak = float(theory.activation_derivative("gelu", z))
    assert peak == pytest.approx(theory.max_slope("gelu"), rel=1e-14)


@pytest.mark.parametrize("activation", NAMES)
def test_layer_jacobians_and_product_equal_autograd_of_an_mlp(activation):
    torch.manual_seed(NAMES.index(activation))
    model = mlp(4, 6, in_features=3, out_features=2, activation=activation, bias_std=0.5).double()
    x = torch.randn(3, dtype=torch.float64)
    weights = [lin.weight for lin in model.linears]
    biases = [lin.bias for lin in model.linears]
    jacobians = theory.layer_jacobians(weights, biases, x, activation)
    assert [tuple(j.shape) for j in jacobians] == [(6, 3), (6, 6), (6, 6), (2, 6)]
    expected = torch.autograd.functional.jacobian(model, x)
    torch.testing.assert_close(theory.jacobian_product(jacobians), expected, rtol=1e-10, atol=1e-12)
    # each factor is the Jacobian of one block, at the hidden state that block sees
    h = x
    for block, jac in zip(model, jacobians, strict=True):
        torch.testing.assert_close(jac, torch.autograd.functional.jacobian(block, h),
                                   rtol=1e-10, atol=1e-12)
        h = block(h)
    assert not any(j.requires_grad for j in jacobians)


def test_layer_jacobians_without_biases():
    torch.manual_seed(0)
    model = mlp(3, 5, activation="tanh", bias=False).double()
    x = torch.randn(5, dtype=torch.float64)
    jacobians = theory.layer_jacobians(model.weights, [None] * 3, x, "tanh")
    torch.testing.assert_close(theory.jacobian_product(jacobians),
                               torch.autograd.functional.jacobian(model, x))


def test_jacobian_product_order():
    a, b, c = torch.randn(4, 3), torch.randn(5, 4), torch.randn(2, 5)
    torch.testing.assert_close(theory.jacobian_product([a, b, c]), c @ b @ a)
    torch.testing.assert_close(theory.jacobian_product([a]), a)


def test_spectral_norm_equals_largest_singular_value():
    torch.manual_seed(0)
    for shape in ((5, 5), (3, 7), (8, 2)):
        a = torch.randn(*shape)
        largest = float(torch.linalg.svdvals(a.double()).max())
        assert theory.spectral_norm(a) == pytest.approx(largest, rel=1e-12)
    assert theory.spectral_norm(torch.diag(torch.tensor([3.0, -5.0, 1.0]))) == pytest.approx(5.0, rel=1e-12)
    assert theory.spectral_norm(torch.randn(4, 4, requires_grad=True)) > 0


@pytest.mark.parametrize("activation", NAMES)
def test_spectral_bound_bounds_the_measured_gradient_gain(activation):
    torch.manual_seed(10 + NAMES.index(activation))
    model = mlp(5, 12, in_features=6, out_features=4, activation=activation, gain=1.5,
                bias_std=0.5).double()
    # hidden layers are followed by phi (slope <= gamma); the read-out is linear
    bound = (theory.spectral_bound(model.weights[:-1], theory.max_slope(activation))
             * theory.spectral_norm(model.weights[-1]))
    x = torch.randn(64, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad(model(x), x, g)  # row i is J(x_i)^T g_i
    gains = grad.norm(dim=1) / g.norm(dim=1)
    assert (gains <= bound * (1 + 1e-12)).all()
    assert gains.max() > 1e-3 * bound  # a bound, but not a vacuous one here


def test_spectral_bound_of_a_product():
    torch.manual_seed(0)
    weights = [torch.randn(6, 6) for _ in range(4)]
    expected = 1.0
    for w in weights:
        expected *= float(torch.linalg.svdvals(w.double()).max()) * 0.5
    assert theory.spectral_bound(weights, 0.5) == pytest.approx(expected, rel=1e-12)
    assert theory.spectral_bound([]) == 1.0
    # the bound holds for the product of the matrices themselves
    product = weights[3] @ weights[2] @ weights[1] @ weights[0]
    assert theory.spectral_norm(product) <= theory.spectral_bound(weights) * (1 + 1e-6)


def test_average_growth_factor_is_rms_singular_value():
    torch.manual_seed(0)
    w = torch.randn(40, 40) / 6
    s = torch.linalg.svdvals(w.double())
    assert theory.average_growth_factor(w) == pytest.approx(float(s.pow(2).mean().sqrt()), rel=1e-10)
    assert theory.average_growth_factor(w) <= theory.spectral_norm(w)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    assert theory.average_growth_factor(2 * q) == pytest.approx(2.0, rel=1e-12)


def test_average_growth_factor_matches_monte_carlo():
    torch.manual_seed(1)
    for shape in ((30, 30), (20, 50), (50, 20)):
        w = torch.randn(*shape, dtype=torch.float64) * torch.linspace(0.1, 3, shape[1], dtype=torch.float64)
        g = torch.randn(40_000, shape[0], dtype=torch.float64)  # gradients w.r.t. the output
        ratios = (g @ w).pow(2).sum(1) / g.pow(2).sum(1)  # ||W^T g||^2 / ||g||^2
        assert float(ratios.mean()) == pytest.approx(theory.average_growth_factor(w) ** 2, rel=0.02), shape


def _measured_log_slopes(gain, width, depth, seeds):
    """Per-seed mean of log(||g_{l-1}|| / ||g_l||) backpropagated through Gaussian linear nets."""
    slopes = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = mlp(depth, width, activation="linear", init="gaussian", gain=gain, bias=False)
        g = torch.randn(width, dtype=torch.float64)
        start = g.norm().log()
        for w in reversed(model.weights):
            g = w.detach().double().T @ g
        slopes.append(float((g.norm().log() - start) / depth))
    return slopes


def test_log_growth_rate_matches_deep_gaussian_linear_nets():
    depth, seeds = 60, 20
    for gain, width in ((1.0, 64), (1.5, 8), (0.8, 16)):
        slopes = _measured_log_slopes(gain, width, depth, seeds)
        measured = sum(slopes) / seeds
        # every per-layer log ratio is independent: the mean of depth*seeds of them
        sigma = math.sqrt(theory.log_growth_variance(width) / (depth * seeds))
        predicted = theory.log_growth_rate(gain, width)
        assert abs(measured - predicted) < 4 * sigma, (gain, width, measured, predicted)
    # at width 8 the drift is visibly below log(gain): the correction is measured, not noise
    slopes = _measured_log_slopes(1.5, 8, depth, seeds)
    sigma = math.sqrt(theory.log_growth_variance(8) / (depth * seeds))
    assert math.log(1.5) - sum(slopes) / seeds > 5 * sigma


def test_log_growth_variance_matches_the_spread_of_one_layer():
    torch.manual_seed(0)
    width, n = 16, 20_000
    w = torch.randn(n, width, width, dtype=torch.float64) / width**0.5
    g = torch.randn(n, width, dtype=torch.float64)
    logs = (torch.einsum("nij,ni->nj", w, g).norm(dim=1) / g.norm(dim=1)).log()
    assert float(logs.mean()) == pytest.approx(theory.log_growth_rate(1.0, width), rel=0.1)
    assert float(logs.var()) == pytest.approx(theory.log_growth_variance(width), rel=0.05)


def test_log_growth_rate_tends_to_log_gain():
    for gain in (0.5, 1.0, 2.0):
        gaps = [math.log(gain) - theory.log_growth_rate(gain, w) for w in (1, 2, 8, 64, 1024, 10**6)]
        assert all(gap > 0 for gap in gaps)
        assert gaps == sorted(gaps, reverse=True)
        assert gaps[-1] < 1e-6
        # digamma(x) ~ log x - 1/(2x): the gap is about 1/(2 width)
        assert gaps[-2] == pytest.approx(1 / 2048, rel=0.01)
    assert theory.log_growth_variance(10**4) == pytest.approx(1 / (2 * 10**4), rel=0.01)


def test_matrix_power_norms_of_a_non_normal_matrix_grow_then_decay():
    a = torch.tensor([[0.9, 5.0], [0.0, 0.9]], dtype=torch.float64)
    assert theory.spectral_radius(a) == pytest.approx(0.9, rel=1e-12)
    norms = theory.matrix_power_norms(a, 150)
    assert norms.shape == (151,) and norms.dtype == torch.float64
    assert float(norms[0]) == pytest.approx(1.0, rel=1e-12)
    # A^k = [[l^k, k c l^(k-1)], [0, l^k]]: the off-diagonal entry peaks near k* = -1/log(l),
    # and the spectral norm lies between that entry and the Frobenius norm.
    lam, c = 0.9, 5.0
    k_star = -1.0 / math.log(lam)
    peak = int(norms.argmax())
    assert abs(peak - k_star) <= 1.0
    for k in (1, peak, 40, 150):
        off_diagonal = k * c * lam ** (k - 1)
        frobenius = math.sqrt(2 * lam ** (2 * k) + off_diagonal**2)
        assert off_diagonal <= float(norms[k]) <= frobenius + 1e-12
    assert float(norms[-1]) < 1.0
    assert (norms[peak:].diff() < 0).all()
    for k in (0, 1, 7, 150):
        expected = torch.linalg.matrix_norm(torch.linalg.matrix_power(a, k), ord=2)
        assert float(norms[k]) == pytest.approx(float(expected), rel=1e-9)
    # a normal matrix with the same eigenvalues only decays
    normal = torch.diag(torch.tensor([0.9, 0.9], dtype=torch.float64))
    assert (theory.matrix_power_norms(normal, 20).diff() < 0).all()


def test_spectral_radius():
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = torch.tensor([[c, -s], [s, c]]) * 1.7  # complex eigenvalues of modulus 1.7
    assert theory.spectral_radius(rotation) == pytest.approx(1.7, rel=1e-6)
    nilpotent = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert theory.spectral_radius(nilpotent) == 0.0 and theory.spectral_norm(nilpotent) == 1.0
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    expected = float(torch.linalg.eigvals(a.double()).abs().max())
    assert theory.spectral_radius(a) == pytest.approx(expected, rel=1e-12)
    assert theory.spectral_radius(a) <= theory.spectral_norm(a) + 1e-12


W, B, X = torch.randn(3, 3), torch.randn(3), torch.randn(3)
BAD_INPUTS = [
    (ValueError, "activation", lambda: theory.activation_derivative("softplus", X)),
    (TypeError, "z", lambda: theory.activation_derivative("relu", [1.0])),
    (ValueError, "activation", lambda: theory.max_slope("softplus")),
    (ValueError, "activation", lambda: theory.max_slope(None)),
    (ValueError, "weights", lambda: theory.layer_jacobians([], [], X, "relu")),
    (ValueError, "biases", lambda: theory.layer_jacobians([W, W], [B], X, "relu")),
    (ValueError, "x", lambda: theory.layer_jacobians([W], [B], X[None], "relu")),
    (TypeError, "x", lambda: theory.layer_jacobians([W], [B], [1.0, 2.0, 3.0], "relu")),
    (ValueError, r"weights\[1\]", lambda: theory.layer_jacobians([W, B], [B, B], X, "relu")),
    (ValueError, "activation", lambda: theory.layer_jacobians([W, W], [B, B], X, "swish")),
    (ValueError, "activation", lambda: theory.layer_jacobians([W], [B], X, "swish")),
    (ValueError, "jacobians", lambda: theory.jacobian_product([])),
    (ValueError, r"jacobians\[1\]", lambda: theory.jacobian_product([W, torch.randn(2, 4)])),
    (ValueError, r"jacobians\[0\]", lambda: theory.jacobian_product([B])),
    (TypeError, "matrix", lambda: theory.spectral_norm([[1.0]])),
    (ValueError, "matrix", lambda: theory.spectral_norm(B)),
    (ValueError, "slope", lambda: theory.spectral_bound([W], slope=-1.0)),
    (ValueError, r"weights\[0\]", lambda: theory.spectral_bound([B])),
    (ValueError, "weight", lambda: theory.average_growth_factor(B)),
    (ValueError, "gain", lambda: theory.log_growth_rate(0.0, 8)),
    (ValueError, "gain", lambda: theory.log_growth_rate(-1.0, 8)),
    (ValueError, "width", lambda: theory.log_growth_rate(1.0, 0)),
    (TypeError, "width", lambda: theory.log_growth_rate(1.0, 8.0)),
    (ValueError, "width", lambda: theory.log_growth_variance(0)),
    (ValueError, "matrix", lambda: theory.matrix_power_norms(torch.randn(2, 3), 3)),
    (ValueError, "max_power", lambda: theory.matrix_power_norms(W, -1)),
    (TypeError, "max_power", lambda: theory.matrix_power_norms(W, 2.5)),
    (ValueError, "matrix", lambda: theory.spectral_radius(torch.randn(2, 3))),
    (ValueError, "matrix", lambda: theory.spectral_radius(B)),
]


@pytest.mark.parametrize("error, name, call", BAD_INPUTS)
def test_bad_inputs_raise_and_name_the_argument(error, name, call):
    with pytest.raises(error, match=name):
        call()
