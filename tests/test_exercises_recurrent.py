"""Tests for gradlab.exercises.recurrent: check_bptt_jacobian."""

import re

import pytest
import torch

from gradlab.exercises.recurrent import BPTT_SLIPS, _bptt_case, check_bptt_jacobian
from gradlab.theory import bptt_jacobian


def _only_slip(word):
    (slip,) = [s for s in BPTT_SLIPS if word in s]
    return slip


def bptt_product(W, hs, t, *, order="right", slope_shift=0, transpose=False, columns=False):
    J = torch.eye(W.shape[0], dtype=torch.float64)
    for k in range(t + 1, hs.shape[0]):
        slope = 1.0 - hs[k - slope_shift] ** 2
        factor = W * slope[None, :] if columns else slope[:, None] * W
        J = factor @ J if order == "right" else J @ factor
    return J.T if transpose else J


BPTT_WRONG = {
    "transpose": lambda W, hs, t: bptt_product(W, hs, t, transpose=True),
    "the wrong order": lambda W, hs, t: bptt_product(W, hs, t, order="left"),
    "off by one step": lambda W, hs, t: bptt_product(W, hs, t, slope_shift=1),
    "multiply the columns": lambda W, hs, t: bptt_product(W, hs, t, columns=True),
    "slopes left out": lambda W, hs, t: torch.linalg.matrix_power(W, hs.shape[0] - 1 - t),
}


def test_check_bptt_jacobian_accepts_a_correct_solution():
    result = check_bptt_jacobian(lambda W, hs, t: bptt_product(W, hs, t))
    assert result.passed and result.cases == 40
    assert "all 40" in result.message
    assert check_bptt_jacobian(lambda W, hs, t: bptt_product(W, hs, t), n_cases=5, seed=3)


@pytest.mark.parametrize("word", BPTT_WRONG)
def test_check_bptt_jacobian_names_each_slip_with_t_T_and_shapes(word):
    result = check_bptt_jacobian(BPTT_WRONG[word])
    assert not result.passed and "is wrong" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message
    match = re.search(r"case \d+ \(t=(\d+), T=(\d+), W of shape \((\d), \3\), hs of shape \((\d+), \3\)\)",
                      result.message)
    assert match, result.message
    t, T, rows = int(match[1]), int(match[2]), int(match[4])
    assert 0 <= t <= T and rows == T + 1


def test_every_bptt_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in BPTT_WRONG) == sorted(BPTT_SLIPS)


def test_check_bptt_jacobian_reports_errors_and_shapes():
    def boom(W, hs, t):
        raise RuntimeError("not yet")

    result = check_bptt_jacobian(boom)
    assert not result.passed and "RuntimeError: not yet" in result.message
    result = check_bptt_jacobian(lambda W, hs, t: torch.zeros(W.shape[0] + 1))
    assert not result.passed and "returned shape" in result.message
    result = check_bptt_jacobian(lambda W, hs, t: W)
    assert not result.passed and "Known slip" not in result.message


def test_check_bptt_jacobian_reference_is_autograd():
    # The cases' expected answers equal gradlab.theory.bptt_jacobian on the preactivations
    # recovered from the states (a = atanh(h)), a second, independent route.
    g = torch.Generator().manual_seed(1)
    for i in range(20):
        case = _bptt_case(g, i)
        W, hs, t = case.args
        torch.testing.assert_close(bptt_jacobian(W, torch.atanh(hs[1:]), "tanh", t), case.expected,
                                   rtol=1e-8, atol=1e-10)
