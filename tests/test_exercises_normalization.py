"""Tests for gradlab.exercises.normalization: check_batchnorm_backward."""

import pytest
import torch
from torch.nn import functional as F

from gradlab.exercises.normalization import BATCHNORM_SLIPS, _bn_case, check_batchnorm_backward


def _only_slip(word):
    (slip,) = [s for s in BATCHNORM_SLIPS if word in s]
    return slip


def _stats(x, eps, unbiased=False):
    std = torch.sqrt(x.var(dim=0, unbiased=unbiased) + eps)
    return (x - x.mean(dim=0)) / std, std


def right(x, g, eps):
    y, std = _stats(x, eps)
    return (g - g.mean(dim=0) - y * (g * y).mean(dim=0)) / std


def by_autograd(x, g, eps):
    x = x.clone().requires_grad_()
    F.batch_norm(x, None, None, training=True, eps=eps).backward(g)
    return x.grad


def eval_mode(x, g, eps):
    return g / _stats(x, eps)[1]


def no_variance_term(x, g, eps):
    return (g - g.mean(dim=0)) / _stats(x, eps)[1]


def no_mean_term(x, g, eps):
    y, std = _stats(x, eps)
    return (g - y * (g * y).mean(dim=0)) / std


def sums(x, g, eps):
    y, std = _stats(x, eps)
    return (g - g.sum(dim=0) - y * (g * y).sum(dim=0)) / std


def unbiased(x, g, eps):
    x = x.clone().requires_grad_()
    y = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=True) + eps)
    y.backward(g)
    return x.grad


def unbiased_formula(x, g, eps):
    """The exercise's formula written with x.var(dim=0), whose default is the unbiased variance."""
    y, std = _stats(x, eps, unbiased=True)
    return (g - g.mean(dim=0) - y * (g * y).mean(dim=0)) / std


def over_features(x, g, eps):
    return right(x.T, g.T, eps).T


WRONG = {
    "eval mode": eval_mode,
    "through the variance is missing": no_variance_term,
    "through the mean is missing": no_mean_term,
    "sums instead of means": sums,
    "unbiased variance (dividing by B - 1): BatchNorm normalizes": unbiased,
    "torch.var's default": unbiased_formula,
    "over the features": over_features,
}


def test_correct_solutions_pass():
    result = check_batchnorm_backward(right)
    assert result.passed and result.cases == 30
    assert result.message == ("BatchNorm backward: all 30 random cases match autograd through "
                              "torch.nn.functional.batch_norm.")
    assert check_batchnorm_backward(by_autograd, n_cases=10, seed=4)


@pytest.mark.parametrize("word", WRONG)
def test_each_slip_is_named(word):
    result = check_batchnorm_backward(WRONG[word])
    assert not result.passed and "x of shape" in result.message
    assert "Known slip" in result.message and _only_slip(word) in result.message


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(BATCHNORM_SLIPS)


def test_wrong_shape_and_exceptions_are_reported():
    result = check_batchnorm_backward(lambda x, g, eps: right(x, g, eps).sum(dim=0))
    assert not result.passed and "shape" in result.message
    result = check_batchnorm_backward(lambda x, g, eps: 1 / 0)
    assert not result.passed and "ZeroDivisionError" in result.message


def test_cases_cover_the_smallest_batch_and_every_eps_and_leave_the_rng_alone():
    torch.manual_seed(1)
    before = torch.rand(2)
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(0)
    cases = [_bn_case(g, i) for i in range(15)]
    assert torch.equal(torch.rand(2), before)
    assert {c.args[0].shape[0] for c in cases} >= {2} and max(c.args[0].shape[0] for c in cases) > 2
    assert {c.args[2] for c in cases} == {1e-5, 1e-3, 0.1}
    assert all(c.args[0].dtype == torch.float64 for c in cases)


def test_bad_input():
    with pytest.raises(TypeError, match="fn"):
        check_batchnorm_backward(3)
    with pytest.raises(ValueError, match="n_cases"):
        check_batchnorm_backward(right, n_cases=0)
    with pytest.raises(ValueError, match="seed"):
        check_batchnorm_backward(right, seed=-1)
