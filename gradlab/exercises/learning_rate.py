"""Checkers for "Learning rate, schedules and warm-up": the stability threshold 2 / lambda_max and
Hessian-vector products."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run

# ---------------------------------------------------------------------------------------------
# The largest stable learning rate of gradient descent on 1/2 x^T A x
# ---------------------------------------------------------------------------------------------


def _spd_case(g: torch.Generator, i: int) -> Case:
    """A random symmetric positive semi-definite matrix, spectrum spanning four decades; every
    fourth one singular (a flat direction must not matter), and every tenth the zero matrix
    (no direction curves: every learning rate is stable, the answer is ``math.inf``)."""
    n = int(torch.randint(1, 9, (1,), generator=g))
    if i % 10 == 9:
        a = torch.zeros(n, n, dtype=torch.float64)
        return Case((a,), math.inf, describe("A = 0", A=a, λ_max=0.0),
                    {"eigenvalues": torch.zeros(n, dtype=torch.float64)})
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = 10.0 ** torch.empty(n, dtype=torch.float64).uniform_(-2, 2, generator=g)
    if i % 4 == 3 and n > 1:
        eigenvalues[0] = 0.0
    a = q @ torch.diag(eigenvalues) @ q.T
    a = (a + a.T) / 2
    spectrum = torch.linalg.eigvalsh(a)
    return Case((a,), 2.0 / float(spectrum[-1]), describe(A=a, λ_max=float(spectrum[-1])),
                {"eigenvalues": spectrum})


def _is_zero(case: Case) -> bool:
    return not bool(case.args[0].any())


def _smallest_positive(case: Case) -> float:
    eigenvalues = case.data["eigenvalues"]
    return float(eigenvalues[eigenvalues > 1e-12][0])


def _curved(slip: Callable[[Case], float]) -> Callable[[Case], float | None]:
    """A slip of the formula, which cannot be told apart on A = 0 (every formula divides by 0)."""
    return lambda case: None if _is_zero(case) else slip(case)


MAX_LR_SLIPS: Slips = {
    "1/λ_max: the threshold has a factor 2, as 1 - ηλ may reach -1":
        _curved(lambda c: 1.0 / float(c.data["eigenvalues"][-1])),
    "2/λ_min: the smallest nonzero eigenvalue; the largest one limits the step":
        _curved(lambda c: 2.0 / _smallest_positive(c)),
    "2/trace(A): the sum of all eigenvalues, not the largest":
        _curved(lambda c: 2.0 / float(c.args[0].trace())),
    "2/max|A_ij|: a matrix entry, not an eigenvalue": _curved(lambda c: 2.0 / float(c.args[0].abs().max())),
    "2/‖A‖_F: the Frobenius norm is the root of the sum of all squared eigenvalues, at least "
    "λ_max": _curved(lambda c: 2.0 / float(torch.linalg.matrix_norm(c.args[0]))),
    "0 for A = 0: with no curvature gradient descent never diverges, so every learning rate is "
    "stable; return math.inf": lambda c: 0.0 if _is_zero(c) else None,
}

MAX_LR_ERROR_HINTS = {
    "division by zero": "A = 0 has λ_max = 0: gradient descent on it never moves, so no learning "
    "rate diverges; return math.inf when λ_max is 0.",
}


def check_max_stable_lr(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(A)`` returns ``2 / λ_max(A)``, the largest learning rate for which gradient
    descent on ``f(x) = ½ xᵀAx`` does not diverge, for random symmetric positive semi-definite
    ``A`` (float64, sizes 1 to 8), to relative accuracy 1e-4 (power iteration is fine); for
    ``A = 0`` (cases 10, 20, ...) no learning rate diverges and the answer is ``math.inf``. A
    wrong answer is compared with :data:`MAX_LR_SLIPS`."""
    return run("max stable lr", fn, _spd_case, n_cases, seed, rtol=1e-4, atol=0.0, slips=MAX_LR_SLIPS,
               error_hints=MAX_LR_ERROR_HINTS, reference="2/λ_max (math.inf for A = 0)")


# ---------------------------------------------------------------------------------------------
# Hessian-vector products by double backward
# ---------------------------------------------------------------------------------------------


def _hvp_functions(g: torch.Generator, n: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Smooth scalar test functions of x in R^n, with random coefficients."""
    w = torch.randn(3, n, generator=g, dtype=torch.float64)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return [
        ("½ xᵀAx + bᵀx", lambda x: 0.5 * x @ (a @ x) + b @ x),
        ("sum tanh(Wx)", lambda x: torch.tanh(w @ x).sum()),
        ("logsumexp(Wx)", lambda x: torch.logsumexp(w @ x, 0)),
        ("½‖tanh(Wx)‖² + (bᵀx)³/6", lambda x: 0.5 * (torch.tanh(w @ x) ** 2).sum() + (b @ x) ** 3 / 6),
    ]


def _hvp_case(g: torch.Generator, i: int) -> Case:
    n = int(torch.randint(1, 7, (1,), generator=g))
    label, f = _hvp_functions(g, n)[i % 4]
    x = torch.randn(n, generator=g, dtype=torch.float64)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    _, expected = torch.autograd.functional.hvp(f, x, v)
    return Case((f, x, v), expected, describe(f"f = {label}", x=x, v=v))


def _gradient(case: Case) -> torch.Tensor:
    f, x, _ = case.args
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(xg), xg)
    return grad


HVP_SLIPS: Slips = {
    "the gradient ∇f(x): differentiate ∇f(x)·v once more": _gradient,
    "∇f(x) * v entrywise: the Hessian product needs a second derivative":
        lambda c: _gradient(c) * c.args[2],
}

HVP_ERROR_HINTS = {
    "does not require grad": "differentiate with respect to a copy that requires grad, "
    "x = x.detach().requires_grad_(), and keep the first gradient's graph with "
    "torch.autograd.grad(..., create_graph=True).",
}


def check_hvp(fn: Callable, n_cases: int = 24, seed: int = 0) -> CheckResult:
    """Check ``fn(f, x, v)`` returns the Hessian-vector product ``∇²f(x) v`` of a scalar
    function ``f`` of a 1-D tensor ``x`` (float64; ``x`` does not require grad), against
    ``torch.autograd.functional.hvp``, on random quadratics, tanh and log-sum-exp functions of
    1 to 6 variables. A wrong answer is compared with :data:`HVP_SLIPS`."""
    return run("hvp", fn, _hvp_case, n_cases, seed, rtol=1e-6, atol=1e-9, slips=HVP_SLIPS,
               error_hints=HVP_ERROR_HINTS, reference="torch.autograd.functional.hvp")
