"""Checker for "Clipping in theory": the point where clipped SGD settles under skewed noise."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..theory.clipping import clipped_sgd_fixed_point
from .harness import Case, CheckResult, Slips, describe, run


def _root(fn: Callable[[float], float], lo: float, hi: float) -> float:
    """A root of the nondecreasing ``fn`` with ``fn(lo) < 0 < fn(hi)``, by bisection."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if fn(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _bracket(case: Case) -> tuple[float, float]:
    values, _, c = case.args
    spread = max(values) - min(values) + 2 * c + 1.0
    return min(values) - 10 * spread, max(values) + 10 * spread


def _fixed_point_case(g: torch.Generator, i: int) -> Case | None:
    """A discrete ``ξ`` with 1 to 5 values in [-10, 10] and random probabilities, and a threshold
    ``c`` from 0.1 to 10. Every 7th case is symmetric about its mean, every 5th has ``c`` above
    every ``|E ξ - ξ_i|`` (both: no bias) and every 6th has a single value. Draws where the
    root is not unique (every sample clipped at it) are rejected."""
    k = 1 if i % 6 == 5 else int(torch.randint(2, 6, (1,), generator=g))
    values = (torch.rand(k, generator=g, dtype=torch.float64) * 20 - 10).tolist()
    # Exponential weights, normalized below: uniform on the simplex (drawn from g only).
    probs = -torch.rand(k, generator=g, dtype=torch.float64).clamp_min(1e-12).log()
    if i % 7 == 6 and k > 1:  # mirror the values about their middle, with mirrored weights
        middle = 0.5 * (max(values) + min(values))
        values = values + [2 * middle - v for v in values]
        probs = torch.cat([probs, probs]) / 2
    probs = (probs / probs.sum()).tolist()
    c = float(10 ** (torch.rand((), generator=g) * 2 - 1))
    if i % 5 == 4:
        mean = sum(v * p for v, p in zip(values, probs, strict=True))
        c = 1.5 * max(abs(mean - v) for v in values) + 0.1
    expected = clipped_sgd_fixed_point(values, probs, c)
    if all(abs(expected - v) >= c for v, p in zip(values, probs, strict=True) if p > 0):
        return None  # phi is flat at its root: any point of an interval would do
    return Case((values, probs, c), expected, describe(values=values, probs=probs, c=c))


def _clipped_above(case: Case) -> float:
    values, probs, c = case.args
    return _root(lambda x: sum(p * min(x - v, c) for v, p in zip(values, probs, strict=True)),
                 *_bracket(case))


def _sign_root(case: Case) -> float:
    """The root of ``sum_i p_i c sign(x - values[i])``: a weighted median (the limit c -> 0)."""
    values, probs, _ = case.args
    return _root(lambda x: sum(p * ((x > v) - (x < v)) for v, p in zip(values, probs, strict=True)),
                 *_bracket(case))


FIXED_POINT_SLIPS: Slips = {
    "the mean gradient clipped, clip(x - E[xi]): its root is the minimizer E[xi]; clip each "
    "sample's gradient x - xi_i, then average with the probabilities":
        lambda c: sum(v * p for v, p in zip(c.args[0], c.args[1], strict=True)),
    "the probabilities ignored: weight clip(x - values[i]) by probs[i], not equally":
        lambda c: clipped_sgd_fixed_point(c.args[0], [1 / len(c.args[0])] * len(c.args[0]), c.args[2]),
    "clipped from above only, min(g, c): clipping bounds |g|, so clip(g) = max(-c, min(c, g))":
        _clipped_above,
    "c sign(g) instead of clip(g): only gradients longer than c are shortened to c; shorter ones "
    "stay as they are (c sign(g) gives a weighted median)": _sign_root,
}


def check_clipped_sgd_fixed_point(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(values, probs, c)`` returns the root ``x̄`` of
    ``sum_i probs[i] * clip(x - values[i])``, ``clip(g) = max(-c, min(c, g))``: where clipped SGD
    on ``f(x) = E[(x - ξ)²] / 2`` with ``P(ξ = values[i]) = probs[i]`` has zero mean step.

    The reference is :func:`gradlab.theory.clipped_sgd_fixed_point`; random distributions with
    1 to 5 values (lists of floats), symmetric ones and thresholds above the spread among them
    (where ``x̄`` is the mean). The root is unique in every case. A wrong answer is compared
    with :data:`FIXED_POINT_SLIPS`.
    """
    return run("clipped SGD fixed point", fn, _fixed_point_case, n_cases, seed, rtol=1e-6,
               atol=1e-8, slips=FIXED_POINT_SLIPS, reference="gradlab.theory.clipped_sgd_fixed_point")
