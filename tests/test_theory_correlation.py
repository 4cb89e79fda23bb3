"""Tests for gradlab.theory.correlation: the correlation map and its slope against closed forms
(ReLU's arc-cosine kernel, linear) and an independent Gauss-Hermite product rule, the fixed point
c* and the depth scale xi_c in both phases, and the predictions against simulated networks."""

import math

import numpy as np
import pytest
import torch

from gradlab import propagation, theory
from gradlab.activations import ACTIVATIONS

SIGMA_W_TANH, SIGMA_B_TANH = math.sqrt(3.0), math.sqrt(0.05)  # the chapter's chaotic setting


def _hermite_pair(f, g, q, c, nodes=160):
    """E[f(u1) g(u2)] by an independent product Gauss-Hermite rule (smooth f, g only)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
    return float(np.sum(np.outer(w, w) * f(u1) * g(u2)))


@pytest.mark.parametrize("c", [-0.95, -0.3, 0.0, 0.4, 0.9, 0.999, 1.0])
def test_relu_map_and_slope_are_the_arc_cosine_kernel(c):
    """Cho & Saul (2009): E[relu(u1) relu(u2)] = q (sin t + (pi - t) cos t) / (2 pi) and
    E[1(u1 > 0) 1(u2 > 0)] = (pi - t) / (2 pi), with c = cos t."""
    sigma_w, sigma_b = 1.2, 0.1
    q = theory.q_star("relu", sigma_w, sigma_b)
    t = math.acos(c)
    kernel = q * (math.sin(t) + (math.pi - t) * c) / (2 * math.pi)
    assert math.isclose(theory.correlation_map("relu", c, sigma_w, sigma_b),
                        (sigma_w**2 * kernel + sigma_b**2) / q, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(theory.correlation_slope("relu", c, sigma_w, sigma_b),
                        sigma_w**2 * (math.pi - t) / (2 * math.pi), rel_tol=1e-12, abs_tol=1e-15)


def test_linear_map_is_affine():
    sigma_w, sigma_b = 0.9, 0.3
    q = theory.q_star("linear", sigma_w, sigma_b)
    for c in (-0.5, 0.2, 0.8):
        assert math.isclose(theory.correlation_map("linear", c, sigma_w, sigma_b),
                            (sigma_w**2 * q * c + sigma_b**2) / q, rel_tol=1e-13)
        assert math.isclose(theory.correlation_slope("linear", c, sigma_w, sigma_b), sigma_w**2,
                            rel_tol=1e-13)


@pytest.mark.parametrize("name, sigma_w, sigma_b", [("tanh", 1.7, 0.4), ("tanh", SIGMA_W_TANH, SIGMA_B_TANH),
                                                    ("sigmoid", 4.0, 0.2), ("silu", 1.3, 0.3)])
@pytest.mark.parametrize("c", [-0.6, 0.0, 0.5, 0.97])
def test_smooth_activations_match_an_independent_product_rule(name, sigma_w, sigma_b, c):
    act = ACTIVATIONS[name]
    q = theory.q_star(name, sigma_w, sigma_b)
    expected_map = (sigma_w**2 * _hermite_pair(act.np_fn, act.np_fn, q, c) + sigma_b**2) / q
    expected_slope = sigma_w**2 * _hermite_pair(act.np_derivative, act.np_derivative, q, c)
    assert math.isclose(theory.correlation_map(name, c, sigma_w, sigma_b), expected_map, rel_tol=1e-10)
    assert math.isclose(theory.correlation_slope(name, c, sigma_w, sigma_b), expected_slope, rel_tol=1e-10)


@pytest.mark.parametrize("name", ["tanh", "relu", "gelu", "elu", "selu", "leaky_relu", "sigmoid"])
def test_c_equal_one_is_fixed_with_slope_chi1(name):
    sigma_w, sigma_b = 1.1, 0.2
    assert math.isclose(theory.correlation_map(name, 1.0, sigma_w, sigma_b), 1.0, rel_tol=1e-12)
    assert math.isclose(theory.correlation_slope(name, 1.0, sigma_w, sigma_b),
                        theory.chi1(name, sigma_w, sigma_b), rel_tol=1e-10)


@pytest.mark.parametrize("name, sigma_w, sigma_b",
                         [("tanh", 2.0, 0.3), ("gelu", 1.2, 0.4), ("relu", 1.3, 0.2)])
def test_slope_is_the_derivative_of_the_map(name, sigma_w, sigma_b):
    h = 1e-5
    for c in (-0.4, 0.3, 0.8):
        difference = (theory.correlation_map(name, c + h, sigma_w, sigma_b)
                      - theory.correlation_map(name, c - h, sigma_w, sigma_b)) / (2 * h)
        assert math.isclose(theory.correlation_slope(name, c, sigma_w, sigma_b), difference, rel_tol=1e-6)


def test_c_star_in_both_phases():
    assert theory.c_star("tanh", 1.0, 0.3) == 1.0  # ordered
    assert theory.c_star("relu", math.sqrt(2), 0.0) == 1.0  # critical
    # chaotic, odd phi, no bias: C(0) = 0
    assert theory.c_star("tanh", 1.5, 0.0) == pytest.approx(0.0, abs=1e-12)
    for sigma_w, sigma_b in [(SIGMA_W_TANH, SIGMA_B_TANH), (2.5, 0.5), (1.6, 0.1)]:
        c = theory.c_star("tanh", sigma_w, sigma_b)
        assert 0.0 < c < 1.0
        assert math.isclose(theory.correlation_map("tanh", c, sigma_w, sigma_b), c, rel_tol=1e-12)
        assert 0.0 < theory.correlation_slope("tanh", c, sigma_w, sigma_b) < 1.0  # attracting


def test_correlation_depth_scale_equals_the_gradient_depth_scale_only_on_the_ordered_side():
    for sigma_w, sigma_b in [(1.0, 0.3), (0.9, 0.1), (1.2, 0.5)]:
        assert theory.chi1("tanh", sigma_w, sigma_b) < 1
        assert math.isclose(theory.correlation_depth_scale("tanh", sigma_w, sigma_b),
                            theory.depth_scale("tanh", sigma_w, sigma_b), rel_tol=1e-12)
    assert theory.correlation_depth_scale("relu", math.sqrt(2), 0.0) == math.inf
    # chaotic side: finite, set by the slope at c*, and longer than 1 / log chi_1
    xi_c = theory.correlation_depth_scale("tanh", SIGMA_W_TANH, SIGMA_B_TANH)
    slope = theory.correlation_slope("tanh", theory.c_star("tanh", SIGMA_W_TANH, SIGMA_B_TANH),
                                     SIGMA_W_TANH, SIGMA_B_TANH)
    assert math.isclose(xi_c, -1 / math.log(slope), rel_tol=1e-12)
    assert xi_c > 1.5 * theory.depth_scale("tanh", SIGMA_W_TANH, SIGMA_B_TANH)
    # it diverges at the critical line from both sides
    s = theory.critical_sigma_w("tanh", SIGMA_B_TANH)
    for side in (0.99, 1.01):
        assert theory.correlation_depth_scale("tanh", side * s, SIGMA_B_TANH) > 40


def _rate(mean, c_fixed, layers):
    """Per-layer factor of c* - c_l, fitted log-linearly over ``layers`` (1-based)."""
    return math.exp(np.polyfit(layers, np.log(c_fixed - mean[layers - 1]), 1)[0])


def test_simulated_correlations_follow_the_map_and_approach_c_star_at_its_slope():
    """48 tanh networks of width 256 and depth 20 in the chaotic phase (sigma_w² = 3,
    sigma_b² = 0.05), 8 pairs of independent inputs each. (a) The mean correlation follows the
    iterated correlation map from its measured first layer: within 4 standard errors (over
    networks) plus 0.005 for the O(1/width) bias at every layer; measured: at most 1.9 standard
    errors. (b) The fitted factor by which c* - c_l shrinks per layer (layers 1-15) is within
    3 bootstrap standard errors of C'(c*) = 0.895, and more than 3 away from exp(-1/|xi|) = 0.827
    that the gradient depth scale would give; measured: 0.903 +- 0.008."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = propagation.pair_correlations("tanh", SIGMA_W_TANH, SIGMA_B_TANH, depth=20, width=256,
                                             pairs=8, seeds=48)
    finally:
        torch.set_num_threads(threads)
    mean = rows.mean(axis=0)
    se = rows.std(axis=0, ddof=1) / math.sqrt(len(rows))
    predicted = [mean[0]]
    for _ in range(len(mean) - 1):
        predicted.append(theory.correlation_map("tanh", predicted[-1], SIGMA_W_TANH, SIGMA_B_TANH))
    assert np.all(np.abs(mean - predicted) < 4 * se + 0.005), (mean, predicted, se)

    c_fixed = theory.c_star("tanh", SIGMA_W_TANH, SIGMA_B_TANH)
    slope = theory.correlation_slope("tanh", c_fixed, SIGMA_W_TANH, SIGMA_B_TANH)
    gradient_factor = math.exp(-1 / theory.depth_scale("tanh", SIGMA_W_TANH, SIGMA_B_TANH))
    layers = np.arange(1, 16)
    measured = _rate(mean, c_fixed, layers)
    rng = np.random.default_rng(0)
    boot = [_rate(rows[rng.integers(0, len(rows), len(rows))].mean(axis=0), c_fixed, layers)
            for _ in range(200)]
    rate_se = float(np.std(boot))
    assert abs(measured - slope) < 3 * rate_se, (measured, slope, rate_se)
    assert abs(measured - gradient_factor) > 3 * rate_se, (measured, gradient_factor, rate_se)


BAD_INPUTS = [
    (ValueError, "c must lie", lambda: theory.correlation_map("tanh", 1.5, 1.0, 0.1)),
    (ValueError, "c must lie", lambda: theory.correlation_slope("tanh", -1.01, 1.0, 0.1)),
    (TypeError, "c", lambda: theory.correlation_map("tanh", "0.5", 1.0, 0.1)),
    (ValueError, "activation", lambda: theory.c_star("softsign", 1.0, 0.1)),
    (ValueError, "sigma_w", lambda: theory.correlation_depth_scale("tanh", -1.0, 0.1)),
    (ValueError, "sigma_b", lambda: theory.correlation_map("tanh", 0.5, 1.0, -0.1)),
    (ValueError, "q0", lambda: theory.c_star("tanh", 1.0, 0.1, q0=0.0)),
    (ValueError, "no fixed point", lambda: theory.c_star("relu", 1.6, 0.1)),
    (ValueError, "no fixed point", lambda: theory.correlation_depth_scale("gelu", 2.5, 0.3)),
]


@pytest.mark.parametrize("error, match, call", BAD_INPUTS)
def test_bad_inputs_raise_and_name_the_problem(error, match, call):
    with pytest.raises(error, match=match):
        call()
