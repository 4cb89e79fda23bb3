"""Checker for "The RNN cliff": the backpropagation-through-time Jacobian d h_T / d h_t."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run


def _bptt_case(g: torch.Generator, i: int) -> Case:
    """A random tanh recurrence ``h_k = tanh(W h_{k-1} + c_k)`` with states ``h_0 .. h_T`` as the
    rows of ``hs``, a lag ``0 <= t <= T``, and ``d h_T / d h_t`` by autograd."""
    n = int(torch.randint(1, 6, (1,), generator=g))
    steps = int(torch.randint(1, 9, (1,), generator=g))
    scale = 0.5 + 1.5 * float(torch.rand((), generator=g))  # spectral radius about 0.5 to 2
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * scale / n**0.5
    drives = 0.5 * torch.randn(steps, n, generator=g, dtype=torch.float64)
    states = [0.5 * torch.randn(n, generator=g, dtype=torch.float64)]
    for c in drives:
        states.append(torch.tanh(W @ states[-1] + c))
    hs = torch.stack(states)
    t = int(torch.randint(0, steps + 1, (1,), generator=g))

    def run_from_t(h: torch.Tensor) -> torch.Tensor:
        for c in drives[t:]:
            h = torch.tanh(W @ h + c)
        return h

    expected = torch.autograd.functional.jacobian(run_from_t, hs[t].clone())
    return Case((W, hs, t), expected, describe(t=t, T=steps, W=W, hs=hs))


def _product(case: Case, steps: range, *, later_on_left: bool = True, rows: bool = True) -> torch.Tensor:
    """``prod_k diag(1 - h_k²) W`` over ``steps``; the slips change the order or the scaling."""
    W, hs, _ = case.args
    out = torch.eye(W.shape[0], dtype=torch.float64)
    for k in steps:
        slope = 1.0 - hs[k] ** 2
        factor = slope[:, None] * W if rows else W * slope[None, :]
        out = factor @ out if later_on_left else out @ factor
    return out


def _lags(case: Case) -> tuple[int, int]:
    _, hs, t = case.args
    return t, hs.shape[0] - 1


BPTT_SLIPS: Slips = {
    "the transpose of d h_T / d h_t: rows index h_T, columns h_t": lambda c: c.expected.T,
    "the factors in the wrong order: the factor of step T stands on the left, "
    "d h_T / d h_t = D_T W D_{T-1} W ... D_{t+1} W":
        lambda c: _product(c, range(_lags(c)[0] + 1, _lags(c)[1] + 1), later_on_left=False),
    "the slopes off by one step: the factor of step k uses phi'(a_k) = 1 - h_k², the state it "
    "produces, not h_{k-1}": lambda c: _product(c, range(*_lags(c))),
    "the slopes multiply the columns: diag(phi'(a_k)) W scales the rows of W (slope[:, None] * W), "
    "not its columns": lambda c: _product(c, range(_lags(c)[0] + 1, _lags(c)[1] + 1), rows=False),
    "the slopes left out: W^(T - t) is the Jacobian of a linear network; each factor of the tanh "
    "network is diag(1 - h_k²) W":
        lambda c: torch.linalg.matrix_power(c.args[0], _lags(c)[1] - _lags(c)[0]),
}


def check_bptt_jacobian(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(W, hs, t)`` returns ``d h_T / d h_t = D_T W D_{T-1} W ... D_{t+1} W`` with
    ``D_k = diag(1 - h_k²)`` (an ``n x n`` tensor) for the tanh recurrence
    ``h_k = tanh(W h_{k-1} + U x_k + b)``, given ``W`` (``n x n``), the states ``hs`` (rows
    ``h_0, ..., h_T``) and ``0 <= t <= T``.

    The reference is autograd on the recurrence that produced ``hs``; random sizes (1 to 5),
    lengths (1 to 8), lags and scales of ``W``. A failure names ``t``, ``T`` and the shapes, and
    the slip of :data:`BPTT_SLIPS` it matches.
    """
    return run("BPTT Jacobian", fn, _bptt_case, n_cases, seed, rtol=1e-6, atol=1e-9, slips=BPTT_SLIPS)
