"""Tests for gradlab.exercises.mean_field: check_chi1 and its activations."""

import math

import numpy as np
import pytest
import torch

from gradlab import activations, theory
from gradlab.exercises.mean_field import CHI1_ACTIVATIONS, CHI1_SLIPS, _chi1_case, check_chi1
from gradlab.theory import gaussian_expectation


def _only_slip(word):
    (slip,) = [s for s in CHI1_SLIPS if word in s]
    return slip


def chi1_by_iteration(phi, dphi, sigma_w, sigma_b):
    """A reader's solution: iterate the length map from q = 1, then average phi'² at q*."""
    q = 1.0
    for _ in range(5000):
        q_next = sigma_w**2 * gaussian_expectation(lambda x: phi(x) ** 2, q) + sigma_b**2
        if abs(q_next - q) <= 1e-14 * q_next:
            break
        q = q_next
    return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, q_next)


CHI1_WRONG = {
    "at q = 1": lambda phi, dphi, sigma_w, sigma_b: sigma_w**2 * gaussian_expectation(
        lambda x: dphi(x) ** 2, 1.0),
    "without the factor sigma_w": lambda phi, dphi, sigma_w, sigma_b: chi1_by_iteration(
        phi, dphi, sigma_w, sigma_b) / sigma_w**2,
    "E[phi'] where": lambda phi, dphi, sigma_w, sigma_b: chi1_by_iteration(
        phi, lambda x: np.sqrt(np.abs(dphi(x))) * np.sign(dphi(x)), sigma_w, sigma_b),
    "sqrt(chi_1)": lambda phi, dphi, sigma_w, sigma_b: chi1_by_iteration(phi, dphi, sigma_w, sigma_b) ** 0.5,
    "without sigma_b": lambda phi, dphi, sigma_w, sigma_b: chi1_by_iteration(phi, dphi, sigma_w, 0.0),
}


def test_check_chi1_accepts_a_correct_solution():
    result = check_chi1(chi1_by_iteration)
    assert result.passed and result.cases == 18 and "match" in str(result)
    assert check_chi1(chi1_by_iteration, n_cases=7, seed=5).cases == 7


@pytest.mark.parametrize("word", CHI1_WRONG)
def test_check_chi1_names_each_slip(word):
    result = check_chi1(CHI1_WRONG[word])
    assert not result.passed and result.cases == 1
    assert "chi1: case 1 (tanh, sigma_w=" in result.message and "q*=" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_chi1_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in CHI1_WRONG) == sorted(CHI1_SLIPS)


def test_check_chi1_reports_errors_and_non_numbers():
    def crashes(phi, dphi, sigma_w, sigma_b):
        raise RuntimeError("boom")

    result = check_chi1(crashes)
    assert not result.passed and "RuntimeError: boom" in result.message and result.cases == 1
    result = check_chi1(lambda phi, dphi, sigma_w, sigma_b: "one")
    assert not result.passed and "returned str, expected a number" in result.message


def test_check_chi1_cases_agree_with_gradlab_theory():
    # tanh and relu are in both tables: the checker's reference equals theory.chi1 there.
    for name in ("tanh", "relu"):
        phi, dphi = CHI1_ACTIVATIONS[name]
        for sigma_w, sigma_b in ((0.9, 0.2), (1.3, 0.6)):
            assert math.isclose(chi1_by_iteration(phi, dphi, sigma_w, sigma_b),
                                theory.chi1(name, sigma_w, sigma_b), rel_tol=1e-9)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        case = _chi1_case(g, i)
        if case is not None:
            assert math.isclose(case.expected, chi1_by_iteration(*case.args), rel_tol=1e-8)


def test_chi1_activations_are_derivative_pairs_taken_from_the_registry_where_it_has_them():
    x = np.linspace(-3, 3, 61)
    for name, (phi, dphi) in CHI1_ACTIVATIONS.items():
        numeric = (phi(x + 1e-6) - phi(x - 1e-6)) / 2e-6
        mask = np.abs(x) > 1e-3  # relu's kink
        np.testing.assert_allclose(dphi(x)[mask], numeric[mask], rtol=1e-6, atol=1e-8, err_msg=name)
    for name, entry in (("tanh", "tanh"), ("relu", "relu"), ("swish", "silu")):
        registered = activations.get(entry)
        assert CHI1_ACTIVATIONS[name] == (registered.np_fn, registered.np_derivative)


def test_chi1_activations_include_some_that_gradlab_theory_does_not_cover():
    # otherwise a reader could pass the checker by calling gradlab.theory.chi1
    uncovered = []
    for name in CHI1_ACTIVATIONS:
        try:
            theory.chi1(name, 1.0, 0.5)
        except ValueError:
            uncovered.append(name)
    assert {"erf", "sin", "softplus"} <= set(uncovered)
