"""Tests for the checker of the chapter "Activations": check_moment_map."""

import math

import numpy as np
import pytest

from gradlab import theory
from gradlab.exercises_activations import MOMENT_MAP_SLIPS, check_moment_map

E = theory.gaussian_expectation


def correct(phi, mu, nu, omega, tau):
    shift, q = mu * omega, nu * tau
    first = E(lambda x: phi(shift + x), q)
    return first, E(lambda x: phi(shift + x) ** 2, q) - first**2


def second_moment(phi, mu, nu, omega, tau):
    shift, q = mu * omega, nu * tau
    return E(lambda x: phi(shift + x), q), E(lambda x: phi(shift + x) ** 2, q)


def _moments(phi, shift, q):
    first = E(lambda x: phi(shift + x), q)
    return first, E(lambda x: phi(shift + x) ** 2, q) - first**2


WRONG = {
    "the second moment E[phi(z)²] returned as nu_new": second_moment,
    "nu tau used as the standard deviation of z":
        lambda phi, mu, nu, omega, tau: _moments(phi, mu * omega, (nu * tau) ** 2),
    "mu used as the mean of z": lambda phi, mu, nu, omega, tau: _moments(phi, mu, nu * tau),
    "nu used as the variance of z": lambda phi, mu, nu, omega, tau: _moments(phi, mu * omega, nu),
    "the pair returned in the wrong order": lambda *args: correct(*args)[::-1],
    "the standard deviation returned as nu_new":
        lambda *args: (correct(*args)[0], math.sqrt(correct(*args)[1])),
}


def test_a_correct_solution_passes():
    result = check_moment_map(correct)
    assert result.passed and result.cases == 24 and "all 24 random cases match" in str(result)
    assert check_moment_map(correct, n_cases=7, seed=11).passed


def test_the_wrong_solutions_cover_every_slip():
    assert {key.split(":")[0] for key in MOMENT_MAP_SLIPS} == set(WRONG)


@pytest.mark.parametrize("slip", list(WRONG))
def test_each_slip_is_named(slip):
    result = check_moment_map(WRONG[slip])
    assert not result.passed
    assert "known slip: " + slip in str(result), str(result)


def test_a_wrong_answer_without_a_known_slip_shows_both_values():
    result = check_moment_map(lambda phi, mu, nu, omega, tau: (0.5, 0.5))
    assert not result.passed and result.cases == 1
    assert "expected (mu_new, nu_new)" in str(result) and "known slip" not in str(result)


def test_the_readers_exception_and_wrong_types_are_reported():
    def crashes(phi, mu, nu, omega, tau):
        raise ZeroDivisionError("oops")

    result = check_moment_map(crashes)
    assert not result.passed and "raised ZeroDivisionError: oops" in str(result)
    assert "expected a pair" in str(check_moment_map(lambda *args: None))
    assert "returned 3 values" in str(check_moment_map(lambda *args: (0.0, 1.0, 2.0)))
    assert "returned 1 values" in str(check_moment_map(lambda *args: np.array([1.0])))


def test_unsplit_kinks_are_within_the_tolerance():
    # correct() does not split the integral at SELU's and ELU's kink (moved to -mu omega): the
    # tolerance must accept it over many cases, which the checker's comment claims (up to 7e-4).
    assert check_moment_map(correct, n_cases=120, seed=5).passed


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fn": "not a function"}, TypeError, "fn must be callable"),
    ({"fn": correct, "n_cases": 0}, ValueError, "n_cases must be >= 1"),
    ({"fn": correct, "seed": -1}, ValueError, "seed must be >= 0"),
    ({"fn": correct, "n_cases": 2.5}, TypeError, "n_cases must be an int"),
])
def test_bad_input_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_moment_map(**kwargs)
