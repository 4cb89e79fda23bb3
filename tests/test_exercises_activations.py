"""Tests for gradlab.exercises.activations: check_moment_map and its functions."""

import math

import numpy as np
import pytest
import torch

from gradlab import theory
from gradlab.exercises.activations import (
    MOMENT_MAP_ACTIVATIONS,
    MOMENT_MAP_SLIPS,
    _moment_map_case,
    check_moment_map,
)
from gradlab.theory import gaussian_expectation as E


def _moments(phi, shift, q):
    first = E(lambda x: phi(shift + x), q)
    return first, E(lambda x: phi(shift + x) ** 2, q) - first**2


def moment_map(phi, mu, nu, omega, tau):
    """A reader's solution: both moments by quadrature, without splitting at any kink."""
    return _moments(phi, mu * omega, nu * tau)


def _second_moment(phi, mu, nu, omega, tau):
    mean, var = moment_map(phi, mu, nu, omega, tau)
    return mean, var + mean**2


WRONG = {
    "the second moment": _second_moment,
    "as the standard deviation of z":
        lambda phi, mu, nu, omega, tau: _moments(phi, mu * omega, (nu * tau) ** 2),
    "mu used as the mean": lambda phi, mu, nu, omega, tau: _moments(phi, mu, nu * tau),
    "nu used as the variance": lambda phi, mu, nu, omega, tau: _moments(phi, mu * omega, nu),
    "wrong order": lambda *args: moment_map(*args)[::-1],
    "the standard deviation returned": lambda *args: (moment_map(*args)[0], math.sqrt(moment_map(*args)[1])),
}


def _only_slip(words):
    (slip,) = [s for s in MOMENT_MAP_SLIPS if words in s]
    return slip


def test_check_moment_map_accepts_a_correct_solution():
    result = check_moment_map(moment_map)
    assert result.passed and result.cases == 24
    assert str(result) == "moment_map: all 24 random cases match gradlab.theory.moment_map."
    assert check_moment_map(moment_map, n_cases=7, seed=11).cases == 7


def test_a_quadrature_that_ignores_kinks_stays_within_the_tolerance():
    # moment_map() above does not split at SELU's and ELU's kink (moved to -mu omega); the module
    # says that costs up to 7e-4 relative, inside the tolerance: checked on 120 more cases.
    assert check_moment_map(moment_map, n_cases=120, seed=5).passed


@pytest.mark.parametrize("words", WRONG)
def test_check_moment_map_names_each_slip(words):
    result = check_moment_map(WRONG[words])
    assert not result.passed and result.cases == 1
    assert "moment_map: case 1 (selu, mu=" in result.message and "tau=" in result.message
    assert f"Known slip: {_only_slip(words)}." in result.message


def test_every_moment_map_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(MOMENT_MAP_SLIPS)


def test_check_moment_map_reports_errors_and_wrong_forms():
    def crashes(phi, mu, nu, omega, tau):
        raise ZeroDivisionError("oops")

    result = check_moment_map(crashes)
    assert not result.passed and "raised ZeroDivisionError: oops" in result.message
    result = check_moment_map(lambda *args: 0.5)
    assert not result.passed and "returned float; return the pair (mu_new, nu_new)" in result.message
    result = check_moment_map(lambda *args: ("a", "b"))
    assert not result.passed and "mu_new is str, expected a number" in result.message
    result = check_moment_map(lambda *args: (0.5, 0.5))
    assert not result.passed and "mu_new is wrong" in result.message and "Known slip" not in result.message


def test_the_cases_agree_with_gradlab_theory():
    # SELU, tanh and ELU are registry activations: the checker's reference is theory.moment_map.
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        case = _moment_map_case(g, i)
        name = list(MOMENT_MAP_ACTIVATIONS)[i % len(MOMENT_MAP_ACTIVATIONS)]
        phi, mu, nu, omega, tau = case.args
        if name in ("selu", "tanh", "elu"):
            expected = theory.moment_map(name, mu, nu, weight_sum=omega, weight_square_sum=tau)
            assert np.allclose([case.expected["mu_new"], case.expected["nu_new"]], expected, rtol=1e-14)
        assert -1 <= mu <= 1 and 0.2 <= nu <= 3 and -1 <= omega <= 1 and 0.5 <= tau <= 1.5
