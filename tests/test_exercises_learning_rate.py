"""Tests for gradlab.exercises.learning_rate: check_max_stable_lr, check_hvp."""

import math

import pytest
import torch

from gradlab.exercises.learning_rate import (
    HVP_SLIPS,
    MAX_LR_ERROR_HINTS,
    MAX_LR_SLIPS,
    _spd_case,
    check_hvp,
    check_max_stable_lr,
)


def _only_slip(table, word):
    (slip,) = [s for s in table if word in s]
    return slip


# --- the largest stable learning rate ----------------------------------------------------------


def eigvalsh_lr(a):
    lam = torch.linalg.eigvalsh(a)[-1].item()
    return 2.0 / lam if lam > 0 else math.inf


def power_iteration_lr(a, iters=3000):
    if not a.any():
        return math.inf
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
    "2/‖A‖_F": lambda a: 2 / torch.linalg.matrix_norm(a),
    "0 for A = 0": lambda a: 0.0 if not a.any() else eigvalsh_lr(a),
}


def test_check_max_stable_lr_accepts_eigvalsh_and_power_iteration():
    result = check_max_stable_lr(eigvalsh_lr)
    assert result.message == "max stable lr: all 30 random cases match 2/λ_max (math.inf for A = 0)."
    assert result
    result = check_max_stable_lr(power_iteration_lr, n_cases=12, seed=1)
    assert result.passed and result.cases == 12, result.message
    # A tensor division 2 / tensor(0.) is inf already: accepted as it is.
    assert check_max_stable_lr(lambda a: 2 / torch.linalg.eigvalsh(a).max())


def test_check_max_stable_lr_tests_the_zero_matrix_and_names_the_division_by_zero():
    # Cases 1-9 have curvature; case 10 is A = 0, where 2/λ_max divides by zero.
    assert check_max_stable_lr(lambda a: 2.0 / torch.linalg.eigvalsh(a)[-1].item(), n_cases=9)
    result = check_max_stable_lr(lambda a: 2.0 / torch.linalg.eigvalsh(a)[-1].item())
    assert not result and result.cases == 10
    assert "case 10 (A = 0, A of shape (" in str(result) and "ZeroDivisionError" in str(result)
    assert MAX_LR_ERROR_HINTS["division by zero"] in str(result)
    nan = check_max_stable_lr(lambda a: math.nan if not a.any() else eigvalsh_lr(a))
    assert not nan and nan.cases == 10 and "expected: inf" in str(nan) and "returned: nan" in str(nan)


@pytest.mark.parametrize("word", MAX_LR_WRONG)
def test_check_max_stable_lr_names_each_slip(word):
    result = check_max_stable_lr(MAX_LR_WRONG[word])
    assert not result and "expected: " in str(result) and "A of shape (" in str(result)
    assert "λ_max=" in str(result)
    assert f"Known slip: {_only_slip(MAX_LR_SLIPS, word)}." in str(result)


def test_every_max_lr_slip_has_a_wrong_solution():
    assert sorted(_only_slip(MAX_LR_SLIPS, w) for w in MAX_LR_WRONG) == sorted(MAX_LR_SLIPS)


def test_check_max_stable_lr_reports_errors_and_non_numbers():
    broken = check_max_stable_lr(lambda a: a.nope)
    assert not broken and "AttributeError" in str(broken) and broken.cases == 1
    text = check_max_stable_lr(lambda a: "big")
    assert not text and "returned str, expected a number" in str(text)


def test_max_lr_cases_are_positive_semi_definite_with_flat_directions_and_zero():
    g = torch.Generator().manual_seed(0)
    singular = zero = 0
    for i in range(30):
        case = _spd_case(g, i)
        (a,) = case.args
        eigenvalues = case.data["eigenvalues"]
        assert torch.equal(a, a.T) and eigenvalues.min() > -1e-12
        if not a.any():
            zero += 1
            assert case.expected == math.inf and "A = 0" in case.label
            assert all(wrong(case) is None for slip, wrong in MAX_LR_SLIPS.items() if "A = 0" not in slip)
            continue
        assert case.expected == pytest.approx(2 / float(eigenvalues.max()), rel=1e-12)
        singular += bool(eigenvalues.min() < 1e-12)
    assert singular >= 2 and zero == 3


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
