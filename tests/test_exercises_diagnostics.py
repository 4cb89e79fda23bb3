"""Tests for gradlab.exercises.diagnostics: check_gradient_growth."""

import math

import numpy as np
import pytest
import torch

from gradlab.doctor import gradient_growth
from gradlab.exercises.diagnostics import GROWTH_SLIPS, _growth_case, check_gradient_growth


def _only_slip(word):
    (slip,) = [s for s in GROWTH_SLIPS if word in s]
    return slip


def _slope(norms):
    return np.polyfit(np.arange(len(norms)), np.log(norms), 1)[0]


def growth(norms):
    return math.exp(-_slope(norms) * (len(norms) - 1))


WRONG = {
    "the first norm to the last": lambda norms: norms[0] / norms[-1],
    "wrong way round": lambda norms: math.exp(_slope(norms) * (len(norms) - 1)),
    "per position instead": lambda norms: math.exp(-_slope(norms)),
    "a span of n positions": lambda norms: math.exp(-_slope(norms) * len(norms)),
    "base-10 slope": lambda norms: math.exp(
        -np.polyfit(np.arange(len(norms)), np.log10(norms), 1)[0] * (len(norms) - 1)),
}


def test_check_gradient_growth_accepts_correct_solutions():
    result = check_gradient_growth(growth)
    assert result.passed and result.cases == 30
    assert "gradlab.doctor.gradient_growth" in str(result)
    assert check_gradient_growth(lambda norms: gradient_growth(norms)[0], n_cases=10, seed=4)
    assert check_gradient_growth(lambda norms: torch.tensor(growth(norms)), n_cases=5)


@pytest.mark.parametrize("word", WRONG)
def test_check_gradient_growth_names_each_slip(word):
    result = check_gradient_growth(WRONG[word])
    assert not result.passed
    assert "gradient growth: case " in result.message and " norms" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(GROWTH_SLIPS)


def test_cases_cover_exact_geometric_sequences_and_both_directions():
    g = torch.Generator().manual_seed(0)
    cases = [_growth_case(g, i) for i in range(30)]
    assert min(len(c.args[0]) for c in cases) >= 3 and max(len(c.args[0]) for c in cases) <= 30
    exact = [c for c in cases if c.label.endswith("noise=0")]
    assert exact
    for c in exact:
        norms = c.args[0]
        assert c.expected == pytest.approx(norms[0] / norms[-1], rel=1e-9)
    assert min(c.expected for c in cases) < 1 < max(c.expected for c in cases)


def test_check_gradient_growth_reports_exceptions_and_wrong_types():
    result = check_gradient_growth(lambda norms: 1 / 0)
    assert not result.passed and result.cases == 1 and "ZeroDivisionError" in result.message
    result = check_gradient_growth(lambda norms: "2")
    assert not result.passed and "returned str, expected a number" in result.message
    result = check_gradient_growth(lambda norms: growth(norms) * 1.01)
    assert not result.passed and "Known slip" not in result.message
