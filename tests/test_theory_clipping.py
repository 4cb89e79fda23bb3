"""Tests for gradlab.theory.clipping: the x⁴ divergence threshold and the clipped walk against
simulated gradient descent, the fixed point of clipped SGD against its defining equation, closed
forms and a simulation over many chains."""

import math

import numpy as np
import pytest

from gradlab.theory import clipped_sgd_fixed_point, quartic_clipped_steps, quartic_gd_threshold


def _quartic_descent(x0, eta, steps, c=None):
    """Gradient descent on x⁴ (clipped at c when given); the iterates, stopped once |x| > 1e6."""
    xs = [x0]
    for _ in range(steps):
        g = 4.0 * xs[-1] ** 3
        if c is not None:
            g *= min(1.0, c / abs(g)) if g != 0 else 1.0
        xs.append(xs[-1] - eta * g)
        if abs(xs[-1]) > 1e6:
            break
    return np.array(xs)


@pytest.mark.parametrize("eta", [0.01, 0.05, 0.3])
def test_quartic_threshold_separates_convergence_from_divergence(eta):
    threshold = quartic_gd_threshold(eta)
    assert threshold == pytest.approx(1 / math.sqrt(2 * eta), rel=1e-15)
    below = _quartic_descent(0.999 * threshold, eta, 5000)
    assert np.all(np.diff(np.abs(below)) < 0)  # |x_t| falls at every step
    assert abs(below[-1]) < 0.1 * threshold
    above = _quartic_descent(1.001 * threshold, eta, 5000)
    assert abs(above[-1]) > 1e6  # and it gets there within the 5000 steps


def test_quartic_threshold_is_a_two_cycle():
    eta = 0.125  # threshold exactly 2: x -> x (1 - 4 eta x²) = -x
    xs = _quartic_descent(quartic_gd_threshold(eta), eta, 6)
    assert np.allclose(xs, 2.0 * (-1.0) ** np.arange(7), rtol=0, atol=1e-12)


def test_the_chapters_numbers():
    # eta = 0.01: plain descent converges from 7.00 and diverges from 7.14; clipped with c = 1
    # converges from both, after the predicted number of fixed-length steps.
    assert quartic_gd_threshold(0.01) == pytest.approx(7.0711, abs=1e-4)
    assert abs(_quartic_descent(7.00, 0.01, 2000)[-1]) < 0.1
    assert abs(_quartic_descent(7.14, 0.01, 2000)[-1]) > 1e6
    for x0 in (7.00, 7.14):
        assert abs(_quartic_descent(x0, 0.01, 2000, c=1.0)[-1]) < 0.1


@pytest.mark.parametrize("x0, eta, c", [(7.14, 0.01, 1.0), (-7.0, 0.01, 1.0), (50.0, 0.003, 2.0),
                                        (3.01, 0.05, 0.5), (0.3, 0.01, 1.0)])
def test_quartic_clipped_steps_match_the_walk(x0, eta, c):
    r = (c / 4) ** (1 / 3)
    xs = _quartic_descent(x0, eta, 100_000, c=c)
    first_inside = int(np.argmax(np.abs(xs) <= r))
    assert first_inside == quartic_clipped_steps(x0, eta, c)
    # after the walk, plain descent inside |x| <= r: |x_t| keeps falling
    assert np.all(np.diff(np.abs(xs[first_inside:])) <= 0)


def test_quartic_clipped_steps_conditions():
    with pytest.raises(ValueError, match="overshoot"):
        quartic_clipped_steps(5.0, 2.0, 1.0)  # eta c = 2 > r = 0.63
    for bad in [{"eta": 0.0}, {"eta": -1.0}, {"c": 0.0}, {"x0": math.nan}]:
        kwargs = {"x0": 1.0, "eta": 0.01, "c": 1.0, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            quartic_clipped_steps(**kwargs)
    with pytest.raises(TypeError, match="eta"):
        quartic_gd_threshold("0.1")


def _phi(x, values, probs, c):
    return sum(p * max(-c, min(c, x - v)) for v, p in zip(values, probs, strict=True))


def test_fixed_point_two_point_closed_form():
    # xi = a w.p. p, -b w.p. 1 - p with p a = (1 - p) b (mean 0): when the large sample is
    # clipped and the small one is not, p (-c) + (1 - p)(x + b) = 0.
    for p, b, c in [(0.1, 1.0, 1.0), (0.2, 0.5, 0.3), (0.05, 2.0, 1.5)]:
        a = (1 - p) * b / p
        expected = p * c / (1 - p) - b
        assert clipped_sgd_fixed_point([a, -b], [p, 1 - p], c) == pytest.approx(expected, abs=1e-12)


def test_fixed_point_solves_phi_on_random_distributions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, 6))
        values = rng.uniform(-10, 10, k).tolist()
        probs = rng.dirichlet(np.ones(k)).tolist()
        c = float(10 ** rng.uniform(-1, 1))
        x = clipped_sgd_fixed_point(values, probs, c)
        assert abs(_phi(x, values, probs, c)) < 1e-9 * c


def test_fixed_point_is_the_mean_when_clipping_is_symmetric():
    values, probs = [-3.0, 1.0, 5.0], [0.25, 0.5, 0.25]  # symmetric about 1
    assert clipped_sgd_fixed_point(values, probs, 0.5) == pytest.approx(1.0, abs=1e-12)
    skewed, weights = [9.0, -1.0], [0.1, 0.9]  # mean 0; c above every |x* - xi|: no bias
    assert clipped_sgd_fixed_point(skewed, weights, 9.5) == pytest.approx(0.0, abs=1e-12)


def test_fixed_point_accepts_arrays():
    assert clipped_sgd_fixed_point(np.array([9.0, -1.0]), np.array([0.1, 0.9]), 1.0) == pytest.approx(-8 / 9)


def test_fixed_point_on_a_flat_interval_is_its_midpoint():
    # half the mass at -4, half at 6, c = 1: phi = 0 for every x in [-3, 5]
    assert clipped_sgd_fixed_point([-4.0, 6.0], [0.5, 0.5], 1.0) == pytest.approx(1.0, abs=1e-12)


def test_clipped_sgd_settles_at_the_fixed_point():
    """Measured: the time average of clipped SGD over 200 chains, against x̄ (tolerance 5
    standard errors plus 0.01 for the O(eta) shift of the stationary mean); plain SGD averages
    to the minimizer 0 instead."""
    values, probs, c, eta = np.array([9.0, -1.0]), np.array([0.1, 0.9]), 1.0, 0.02
    rng = np.random.default_rng(1)
    chains, steps = 200, 3000
    x = np.zeros(chains)
    plain = np.zeros(chains)
    sums, plain_sums = np.zeros(chains), np.zeros(chains)
    for t in range(steps):
        xi = np.where(rng.random(chains) < probs[0], values[0], values[1])
        x -= eta * np.clip(x - xi, -c, c)
        plain -= eta * (plain - xi)
        if t >= steps // 2:
            sums += x
            plain_sums += plain
    means, plain_means = sums / (steps - steps // 2), plain_sums / (steps - steps // 2)
    se, plain_se = means.std(ddof=1) / chains**0.5, plain_means.std(ddof=1) / chains**0.5
    x_bar = clipped_sgd_fixed_point(values.tolist(), probs.tolist(), c)
    assert x_bar == pytest.approx(-8 / 9, abs=1e-12)
    assert abs(means.mean() - x_bar) < 5 * se + 0.01
    assert abs(plain_means.mean()) < 5 * plain_se
    assert abs(means.mean()) > 0.8  # far from the minimizer: the bias is not noise


def test_fixed_point_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        clipped_sgd_fixed_point([], [], 1.0)
    with pytest.raises(ValueError, match="probs has 1 entries for 2 values"):
        clipped_sgd_fixed_point([1.0, 2.0], [1.0], 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        clipped_sgd_fixed_point([1.0, 2.0], [0.5, 0.6], 1.0)
    with pytest.raises(ValueError, match=r"probs\[1\]"):
        clipped_sgd_fixed_point([1.0, 2.0], [1.5, -0.5], 1.0)
    with pytest.raises(ValueError, match=r"values\[0\]"):
        clipped_sgd_fixed_point([math.inf, 2.0], [0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="c must be > 0"):
        clipped_sgd_fixed_point([1.0], [1.0], 0.0)
    with pytest.raises(TypeError, match="values"):
        clipped_sgd_fixed_point(1.0, [1.0], 1.0)
    with pytest.raises(TypeError, match="probs"):
        clipped_sgd_fixed_point([1.0], "1", 1.0)
