"""Tests for gradlab.exercises.learning_rate: check_max_stable_lr, check_hvp."""

import pytest
import torch

from gradlab.exercises.learning_rate import (
    HVP_SLIPS,
    MAX_LR_SLIPS,
    _spd_case,
    check_hvp,
    check_max_stable_lr,
)


def _only_slip(table, word):
    (slip,) = [s for s in table if word in s]
    return slip


# --- the largest stable learning rate ----------------------------------------------------------


def power_iteration_lr(a, iters=3000):
    v = torch.ones(a.shape[0], dtype=a.dtype)
    for _ in range(iters):
        v = a @ v
        v = v / v.norm()
    return 2 / float(v @ a @ v)


MAX_LR_WRONG = {
    "1/λ_max": lambda a: 1 / torch.linalg.eigvalsh(a).max(),
    "2/λ_min": lambda a: 2 / torch.linalg.eigvalsh(a)[torch.linalg.eigvalsh(a) > 1e-12][0],
    "2/trace": lambda a: 2 / a.trace(),
    "2/max|A_ij|": lambda a: 2 / a.abs().max(),
}


def test_check_max_stable_lr_accepts_eigvalsh_and_power_iteration():
    result = check_max_stable_lr(lambda a: 2 / torch.linalg.eigvalsh(a).max())
    assert result and result.message == "max stable lr: all 30 random cases match 2/λ_max."
    result = check_max_stable_lr(power_iteration_lr, n_cases=12, seed=1)
    assert result.passed and result.cases == 12, result.message


@pytest.mark.parametrize("word", MAX_LR_WRONG)
def test_check_max_stable_lr_names_each_slip(word):
    result = check_max_stable_lr(MAX_LR_WRONG[word])
    assert not result and "expected: " in str(result) and "(A of shape (" in str(result)
    assert "λ_max=" in str(result)
    assert f"Known slip: {_only_slip(MAX_LR_SLIPS, word)}." in str(result)


def test_every_max_lr_slip_has_a_wrong_solution():
    assert sorted(_only_slip(MAX_LR_SLIPS, w) for w in MAX_LR_WRONG) == sorted(MAX_LR_SLIPS)


def test_check_max_stable_lr_reports_errors_and_non_numbers():
    broken = check_max_stable_lr(lambda a: a.nope)
    assert not broken and "AttributeError" in str(broken) and broken.cases == 1
    text = check_max_stable_lr(lambda a: "big")
    assert not text and "returned str, expected a number" in str(text)


def test_max_lr_cases_are_positive_semi_definite_with_flat_directions():
    g = torch.Generator().manual_seed(0)
    singular = 0
    for i in range(16):
        case = _spd_case(g, i)
        (a,) = case.args
        eigenvalues = case.data["eigenvalues"]
        assert torch.equal(a, a.T) and eigenvalues.min() > -1e-12
        assert case.expected == pytest.approx(2 / float(eigenvalues.max()), rel=1e-12)
        singular += bool(eigenvalues.min() < 1e-12)
    assert singular >= 2


# --- Hessian-vector products -------------------------------------------------------------------


def double_backward(f, x, v):
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hv,) = torch.autograd.grad(grad @ v, x)
    return hv


def gradient_only(f, x, v):
    x = x.detach().requires_grad_()
    return torch.autograd.grad(f(x), x)[0]


HVP_WRONG = {
    "the gradient ∇f(x)": gradient_only,
    "entrywise": lambda f, x, v: gradient_only(f, x, v) * v,
}


def test_check_hvp_accepts_double_backward_and_torch():
    assert check_hvp(double_backward)
    result = check_hvp(lambda f, x, v: torch.autograd.functional.hvp(f, x, v)[1], n_cases=10, seed=4)
    assert result.passed and result.cases == 10


@pytest.mark.parametrize("word", HVP_WRONG)
def test_check_hvp_names_each_slip(word):
    result = check_hvp(HVP_WRONG[word])
    assert not result and "expected" in str(result) and "(f = " in str(result)
    assert f"Known slip: {_only_slip(HVP_SLIPS, word)}." in str(result)


def test_every_hvp_slip_has_a_wrong_solution():
    assert sorted(_only_slip(HVP_SLIPS, w) for w in HVP_WRONG) == sorted(HVP_SLIPS)


def test_check_hvp_explains_errors_and_shapes():
    def no_requires_grad(f, x, v):
        return torch.autograd.grad(f(x), x)[0]

    raised = check_hvp(no_requires_grad)
    assert not raised and "raised RuntimeError" in str(raised) and "requires_grad_" in str(raised)
    shape = check_hvp(lambda f, x, v: torch.zeros(len(x) + 1, dtype=x.dtype))
    assert not shape and "returned shape" in str(shape)
