"""Checker for "Dropout": the variance shift of a unit between training and evaluation
(Li et al. 2019), in the drop-probability notation of ``torch.nn.Dropout``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..theory.dropout import variance_shift
from .harness import Case, CheckResult, Slips, describe, run


def _shift_case(g: torch.Generator, i: int) -> Case:
    """A drop probability from 0 to 0.9 (exactly 0 in every 9th case), a mean from -3 to 3
    (exactly 0 in every 5th case, where the shift is ``1 - p``) and a variance from 0.01 to 10."""
    p = 0.0 if i % 9 == 8 else float(torch.rand((), generator=g, dtype=torch.float64) * 0.9)
    mean = 0.0 if i % 5 == 4 else float(torch.rand((), generator=g, dtype=torch.float64) * 6 - 3)
    variance = float(10 ** (torch.rand((), generator=g, dtype=torch.float64) * 3 - 2))
    return Case((p, mean, variance), variance_shift(p, mean, variance),
                describe(p=p, mean=mean, variance=variance))


def _keep_probability(case: Case) -> float | None:
    p, c, v = case.args
    if p == 0.0:
        return None  # the keep probability would be 1: dividing by it is what goes wrong
    return v / (v + (1 - p) / p * (c * c + v))


def _not_rescaled(case: Case) -> float:
    p, c, v = case.args
    return v / ((1 - p) * (c * c + v) - (1 - p) ** 2 * c * c)


SHIFT_SLIPS: Slips = {
    "p taken as the keep probability: in torch.nn.Dropout(p), p is the probability to drop, and "
    "the kept units are multiplied by 1/(1 - p)": _keep_probability,
    "train over eval: the shift is Var_eval / Var_train, the factor by which the BN's output "
    "variance falls below 1 in evaluation mode": lambda c: 1.0 / c.expected,
    "the mean left out: E[d² h²] = E[d²] (c² + v) involves the mean c, so Var_train = "
    "v + p/(1-p) (c² + v), not v / (1 - p)": lambda c: 1.0 - c.args[0],
    "the kept units not rescaled: inverted dropout multiplies them by 1/(1 - p) in training, so "
    "E[d²] = 1/(1 - p)": _not_rescaled,
    "the difference Var_train - Var_eval instead of the ratio Var_eval / Var_train":
        lambda c: c.args[0] / (1 - c.args[0]) * (c.args[1] ** 2 + c.args[2]),
}


def check_variance_shift(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(p, mean, variance) -> float``: ``Var_eval / Var_train`` of a unit with mean
    ``c = mean`` and variance ``v = variance`` after ``torch.nn.Dropout(p)`` (inverted dropout,
    drop probability ``p``),

        v / (v + p / (1 - p) (c² + v)),

    against :func:`gradlab.theory.variance_shift` for random ``p`` in [0, 0.9), means and
    variances, to a relative 1e-6 (a float32 answer passes). The message names the slip of
    :data:`SHIFT_SLIPS` that the answer matches."""
    return run("variance shift", fn, _shift_case, n_cases, seed, rtol=1e-6, atol=0.0,
               slips=SHIFT_SLIPS, reference="gradlab.theory.variance_shift")


__all__ = ["SHIFT_SLIPS", "check_variance_shift"]
