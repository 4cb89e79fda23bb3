"""Tests for gradlab.exercises.claims: check_first_overflow_step."""

import numpy as np
import pytest
import torch

from gradlab.exercises.claims import (
    OVERFLOW_SLIPS,
    _overflow_case,
    check_first_overflow_step,
    first_overflow_step,
)


def _only_slip(word):
    (slip,) = [s for s in OVERFLOW_SLIPS if word in s]
    return slip


def mine(norms, threshold):
    for i, v in enumerate(norms):
        if not np.isfinite(v) or v > threshold:
            return i
    return -1


def _first(mask):
    return int(np.argmax(mask)) if mask.any() else -1


WRONG = {
    "NaN > threshold": lambda norms, t: _first(np.nan_to_num(norms, nan=0.0) > t),
    "np.argmax of a mask": lambda norms, t: int(np.argmax(~np.isfinite(norms) | (norms > t))),
    "counted from 1": lambda norms, t: mine(norms, t) + 1 if mine(norms, t) >= 0 else -1,
    "equal to the threshold": lambda norms, t: _first(~np.isfinite(norms) | (np.nan_to_num(norms) >= t)),
}


def test_check_first_overflow_step_accepts_correct_solutions():
    result = check_first_overflow_step(mine)
    assert result.passed and result.cases == 30
    assert "first_overflow_step" in str(result)
    assert check_first_overflow_step(first_overflow_step, n_cases=10, seed=3)
    assert check_first_overflow_step(lambda n, t: np.int64(mine(n, t)), n_cases=5)


@pytest.mark.parametrize("word", WRONG)
def test_check_first_overflow_step_names_each_slip(word):
    result = check_first_overflow_step(WRONG[word])
    assert not result.passed
    assert "first overflow step: case " in result.message and " norms" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(OVERFLOW_SLIPS)


def test_cases_cover_nan_inf_ties_and_no_crossing():
    g = torch.Generator().manual_seed(0)
    cases = [_overflow_case(g, i) for i in range(30)]
    labels = " ".join(c.label for c in cases)
    for what in ("no crossing", "a NaN", "an Inf", "equal to the threshold", "a crossing"):
        assert what in labels
    assert any(c.expected == -1 for c in cases) and any(c.expected > 0 for c in cases)
    for c in cases:
        assert c.expected == mine(*c.args)


def test_reference_on_a_hand_made_history():
    assert first_overflow_step(np.array([1.0, 5.0, np.nan, 1e30]), 10.0) == 2
    assert first_overflow_step(np.array([1.0, 10.0, 11.0]), 10.0) == 2
    assert first_overflow_step(np.array([1.0, 2.0]), 10.0) == -1
    assert first_overflow_step(np.array([np.inf]), 10.0) == 0


def test_check_first_overflow_step_reports_exceptions_and_wrong_types():
    result = check_first_overflow_step(lambda n, t: 1 / 0)
    assert not result.passed and result.cases == 1 and "ZeroDivisionError" in result.message
    result = check_first_overflow_step(lambda n, t: "2")
    assert not result.passed and "returned str" in result.message
