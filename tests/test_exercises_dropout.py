"""Tests for gradlab.exercises.dropout: check_variance_shift."""

import pytest
import torch

from gradlab.exercises.dropout import SHIFT_SLIPS, _shift_case, check_variance_shift
from gradlab.theory import variance_shift


def _only_slip(word):
    (slip,) = [s for s in SHIFT_SLIPS if word in s]
    return slip


def shift(p, mean, variance):
    return variance / ((mean**2 + variance) / (1 - p) - mean**2)


def keep_probability(p, mean, variance):
    return variance / ((mean**2 + variance) / p - mean**2)  # kept units divided by p


def train_over_eval(p, mean, variance):
    return 1 / shift(p, mean, variance)


def mean_left_out(p, mean, variance):
    return variance / (variance / (1 - p))


def not_rescaled(p, mean, variance):
    train = (1 - p) * (mean**2 + variance) - ((1 - p) * mean) ** 2
    return variance / train


def difference(p, mean, variance):
    return (mean**2 + variance) / (1 - p) - mean**2 - variance


WRONG = {
    "keep probability": keep_probability,
    "train over eval": train_over_eval,
    "the mean left out": mean_left_out,
    "not rescaled": not_rescaled,
    "the difference": difference,
}


def test_check_variance_shift_accepts_correct_solutions():
    result = check_variance_shift(shift)
    assert result.passed and result.cases == 40
    assert "gradlab.theory.variance_shift" in str(result)
    assert check_variance_shift(variance_shift, n_cases=15, seed=3)
    # a float32 answer is accepted (rtol 1e-6)
    assert check_variance_shift(lambda p, c, v: torch.tensor(shift(p, c, v)), n_cases=5)


@pytest.mark.parametrize("word", WRONG)
def test_check_variance_shift_names_each_slip(word):
    result = check_variance_shift(WRONG[word])
    assert not result.passed
    assert "variance shift: case " in result.message and "(p=" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(SHIFT_SLIPS)


def test_cases_cover_no_dropout_and_zero_mean():
    g = torch.Generator().manual_seed(0)
    cases = [_shift_case(g, i) for i in range(40)]
    ps = [c.args[0] for c in cases]
    assert 0.0 in ps and max(ps) < 0.9
    zero_mean = [c for c in cases if c.args[1] == 0.0]
    assert zero_mean and all(c.expected == pytest.approx(1 - c.args[0]) for c in zero_mean)
    assert all(c.expected == 1.0 for c in cases if c.args[0] == 0.0)


def test_check_variance_shift_reports_exceptions_and_wrong_types():
    result = check_variance_shift(lambda p, c, v: 1 / 0)
    assert not result.passed and result.cases == 1 and "ZeroDivisionError" in result.message
    result = check_variance_shift(lambda p, c, v: "0.5")
    assert not result.passed and "returned str, expected a number" in result.message
    result = check_variance_shift(lambda p, c, v: shift(p, c, v) * 1.01)
    assert not result.passed and "Known slip" not in result.message
