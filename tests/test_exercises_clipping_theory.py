"""Tests for gradlab.exercises.clipping_theory: check_clipped_sgd_fixed_point."""

import pytest
import torch

from gradlab.exercises.clipping_theory import (
    FIXED_POINT_SLIPS,
    _fixed_point_case,
    check_clipped_sgd_fixed_point,
)


def _only_slip(word):
    (slip,) = [s for s in FIXED_POINT_SLIPS if word in s]
    return slip


def _bisect(phi, values, c):
    lo, hi = min(values) - c - 100.0, max(values) + c + 100.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if phi(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def fixed_point(values, probs, c, *, clip=None, weights=None):
    clip = clip or (lambda g: max(-c, min(c, g)))
    weights = probs if weights is None else weights
    return _bisect(lambda x: sum(p * clip(x - v) for v, p in zip(values, weights, strict=True)), values, c)


WRONG = {
    "mean gradient clipped": lambda v, p, c: sum(a * b for a, b in zip(v, p, strict=True)),
    "probabilities ignored": lambda v, p, c: fixed_point(v, p, c, weights=[1 / len(v)] * len(v)),
    "from above only": lambda v, p, c: fixed_point(v, p, c, clip=lambda g: min(g, c)),
    "c sign(g)": lambda v, p, c: fixed_point(v, p, c, clip=lambda g: c * ((g > 0) - (g < 0))),
}


def test_a_correct_solution_passes():
    result = check_clipped_sgd_fixed_point(fixed_point)
    assert result.passed and result.cases == 40
    assert check_clipped_sgd_fixed_point(fixed_point, n_cases=10, seed=4)


@pytest.mark.parametrize("word", list(WRONG))
def test_each_slip_is_named(word):
    result = check_clipped_sgd_fixed_point(WRONG[word])
    assert not result.passed
    assert _only_slip(word) in result.message


def test_the_wrong_solutions_cover_the_slip_table():
    assert {_only_slip(word) for word in WRONG} == set(FIXED_POINT_SLIPS)


def test_a_wrong_type_and_an_exception_are_reported():
    result = check_clipped_sgd_fixed_point(lambda v, p, c: "x")
    assert not result.passed and "returned str, expected a number" in result.message
    result = check_clipped_sgd_fixed_point(lambda v, p, c: v[10])
    assert not result.passed and "raised IndexError" in result.message


def test_cases_are_reproducible_unique_and_include_the_edge_cases():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kinds = {"single": 0, "no bias": 0}
    for i in range(42):
        a = b = None
        while a is None:
            a, b = _fixed_point_case(g1, i), _fixed_point_case(g2, i)
        assert a.args == b.args and a.expected == b.expected
        values, probs, c = a.args
        # the root is unique: some sample is unclipped there
        assert any(abs(a.expected - v) < c for v, p in zip(values, probs, strict=True) if p > 0)
        mean = sum(v * p for v, p in zip(values, probs, strict=True))
        kinds["single"] += len(values) == 1
        kinds["no bias"] += len(values) > 1 and abs(a.expected - mean) < 1e-9
    assert kinds["single"] >= 5 and kinds["no bias"] >= 8
