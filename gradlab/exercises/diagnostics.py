"""Checker for "Diagnosing a run": the growth of per-layer gradient norms toward the input, the
statistic :func:`gradlab.doctor` reads exploding and vanishing gradients from."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..doctor import gradient_growth
from .harness import Case, CheckResult, Slips, describe, run


def _growth_case(g: torch.Generator, i: int) -> Case:
    """3 to 30 positive norms around a geometric sequence with a factor from 0.5 to 2 per
    position toward the first, times log-normal noise of 0 to 0.5 (none in every 4th case)."""
    n = 3 + int(torch.randint(0, 28, (), generator=g))
    rate = float(2.0 ** (torch.rand((), generator=g, dtype=torch.float64) * 2 - 1))
    spread = 0.0 if i % 4 == 3 else float(torch.rand((), generator=g, dtype=torch.float64) * 0.5)
    noise = torch.randn(n, generator=g, dtype=torch.float64) * spread
    scale = float(10 ** (torch.rand((), generator=g, dtype=torch.float64) * 4 - 2))
    norms = (scale * rate ** torch.arange(n - 1, -1, -1, dtype=torch.float64) * noise.exp()).numpy()
    growth, per_step = gradient_growth(norms)
    slope = -math.log(per_step)
    return Case((norms,), growth, describe(f"{n} norms", per_position=rate, noise=spread),
                {"n": n, "slope": slope, "per_step": per_step})


GROWTH_SLIPS: Slips = {
    "the ratio of the first norm to the last: one noisy layer at either end then decides; fit a "
    "least-squares line through every log norm": lambda c: float(c.args[0][0] / c.args[0][-1]),
    "the line read the wrong way round: the growth toward the first position is exp(-slope (n - 1)), "
    "above 1 when the first norms are the largest": lambda c: 1.0 / c.expected,
    "the factor per position instead of the growth over the whole span: raise it to the power "
    "n - 1": lambda c: c.data["per_step"],
    "a span of n positions: n positions are n - 1 steps apart":
        lambda c: math.exp(-c.data["slope"] * c.data["n"]),
    "a base-10 slope put into exp: with log10 the growth is 10**(-slope (n - 1))":
        lambda c: math.exp(-c.data["slope"] / math.log(10) * (c.data["n"] - 1)),
}


def check_gradient_growth(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(norms) -> float``, for ``norms`` a 1-D float64 NumPy array of positive
    per-layer gradient norms in execution order (input first): the growth toward the input,

        G = exp(-slope (n - 1)),

    ``slope`` that of the least-squares line through ``(i, log norms[i])``, ``i = 0 .. n-1``,
    against :func:`gradlab.doctor.gradient_growth` to a relative 1e-6. The message names the
    slip of :data:`GROWTH_SLIPS` that the answer matches."""
    return run("gradient growth", fn, _growth_case, n_cases, seed, rtol=1e-6, atol=0.0,
               slips=GROWTH_SLIPS, reference="gradlab.doctor.gradient_growth")


__all__ = ["GROWTH_SLIPS", "check_gradient_growth"]
