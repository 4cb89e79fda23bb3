"""Tests for gradlab.exercises.residual: check_stream_growth."""

import math

import pytest
import torch

from gradlab.exercises.residual import GROWTH_SLIPS, _growth_case, check_stream_growth
from gradlab.theory import residual_growth


def _only_slip(word):
    (slip,) = [s for s in GROWTH_SLIPS if word in s]
    return slip


def growth(scales, chi):
    return float(torch.prod(1.0 + scales**2 * chi))


WRONG = {
    "s in place of s²": lambda s, chi: float(torch.prod(1.0 + s * chi)),
    "a sum 1 + Σ": lambda s, chi: 1.0 + float((s**2).sum()) * chi,
    "the skip forgotten": lambda s, chi: float(torch.prod(s**2 * chi)),
    "(1 + s_l sqrt(chi))²": lambda s, chi: float(torch.prod((1.0 + s * math.sqrt(chi)) ** 2)),
    "the gain instead of its square": lambda s, chi: math.sqrt(growth(s, chi)),
}


def test_check_stream_growth_accepts_correct_solutions():
    result = check_stream_growth(growth)
    assert result.passed and result.cases == 30
    assert "gradlab.theory.residual_growth" in str(result)
    assert check_stream_growth(lambda s, chi: torch.prod(1 + s**2 * chi), n_cases=10, seed=3)
    assert check_stream_growth(lambda s, chi: math.prod(1 + float(x) ** 2 * chi for x in s), n_cases=5)


@pytest.mark.parametrize("word", WRONG)
def test_check_stream_growth_names_each_slip(word):
    result = check_stream_growth(WRONG[word])
    assert not result.passed
    assert "stream growth: case " in result.message and " blocks" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(GROWTH_SLIPS)


def test_cases_match_residual_growth_for_equal_scales_and_cover_chi_1():
    g = torch.Generator().manual_seed(0)
    cases = [_growth_case(g, i) for i in range(20)]
    equal = [c for i, c in enumerate(cases) if i % 5 == 4]
    for c in equal:
        scales, chi = c.args
        assert c.expected == pytest.approx(residual_growth(float(scales[0]), chi, len(scales)))
    assert any(c.args[1] == 1.0 for c in cases)
    assert all(1 <= len(c.args[0]) <= 40 for c in cases)


def test_reader_errors_and_wrong_types_are_reported():
    def broken(scales, chi):
        raise RuntimeError("oops")

    result = check_stream_growth(broken)
    assert not result.passed and "RuntimeError" in result.message
    assert not check_stream_growth(lambda s, chi: "big").passed
    with pytest.raises(TypeError):
        check_stream_growth(3)
