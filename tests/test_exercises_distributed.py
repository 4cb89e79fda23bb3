"""gradlab.exercises.distributed: the global-norm checker accepts a right answer, rejects the
usual slips with a hint that names them, and reports the reader's errors."""

import math

import pytest
import torch

from gradlab.exercises.distributed import GLOBAL_NORM_SLIPS, NORM_TYPES, _global_norm_case, check_global_norm


def right(local_norms, norm_type):
    if math.isinf(norm_type):
        return local_norms.max()
    return (local_norms ** norm_type).sum() ** (1 / norm_type)


def test_cases_are_sharded_vectors_with_their_local_norms():
    g = torch.Generator().manual_seed(3)
    cases = [_global_norm_case(g, i) for i in range(12)]
    assert {c.args[1] for c in cases} == set(NORM_TYPES)
    assert any(float(c.args[0].min()) == 0.0 for c in cases)  # some shard is empty
    for c in cases:
        assert float(right(*c.args)) == pytest.approx(c.expected, rel=1e-12)


def test_right_answer_passes():
    result = check_global_norm(right)
    assert result.passed and result.cases == 40
    assert check_global_norm(lambda n, p: float(right(n, p)), n_cases=8, seed=5).passed


@pytest.mark.parametrize("wrong, hint", [
    (lambda n, p: n.sum(), "local norms were added"),
    (lambda n, p: n.pow(2).sum().sqrt(), "2-norm rule"),
    (lambda n, p: n.max(), "largest local norm"),
    (lambda n, p: n.max() if math.isinf(p) else n.pow(p).sum(), "p-th root is missing"),
    (lambda n, p: n.max() if math.isinf(p) else n.pow(p).mean().pow(1 / p), "mean"),
    (lambda n, p: n.sum() if math.isinf(p) else n.pow(p).sum().pow(1 / p), "max over ranks, not a sum"),
])
def test_slips_fail_with_a_hint(wrong, hint):
    result = check_global_norm(wrong)
    assert not result.passed
    assert hint in result.message and "shards=" in result.message


def test_the_wrong_solutions_cover_the_slip_table():
    hints = ["local norms were added", "2-norm rule", "largest local norm", "p-th root is missing", "mean",
             "max over ranks, not a sum"]
    assert all(any(h in slip for h in hints) for slip in GLOBAL_NORM_SLIPS)


def test_in_place_edits_do_not_change_the_reference():
    def destructive(n, p):
        out = right(n, p)
        n.zero_()
        return out

    assert check_global_norm(destructive).passed


def test_errors_are_reported():
    assert "raised ZeroDivisionError" in check_global_norm(lambda n, p: 1 / 0).message
    assert "returned str" in check_global_norm(lambda n, p: "x").message
    with pytest.raises(TypeError, match="callable"):
        check_global_norm(3)
    with pytest.raises(ValueError, match="n_cases"):
        check_global_norm(right, n_cases=0)
    with pytest.raises(TypeError, match="seed"):
        check_global_norm(right, seed=1.5)


def test_a_sum_for_the_inf_norm_is_named_as_that_slip_only():
    """Right for p = 1, 2, 3 but a sum for p = inf: the first wrong case is an inf case, and the
    hint says to take the max, not that the norms were added (which is the p = 1 rule)."""
    result = check_global_norm(lambda n, p: n.sum() if math.isinf(p) else n.pow(p).sum().pow(1 / p))
    assert not result.passed and "p=inf" in result.message
    assert "Known slip: for p = inf the local norms were added" in result.message
    assert "right for p = 1 only" not in result.message
