"""Checker for "Popular claims, tested": the first step of a recorded run whose gradient norm is
non-finite or above a threshold (an explosion need not show up as NaN, and NaN hides from ``>``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .harness import Case, CheckResult, Slips, describe, run


def first_overflow_step(norms: np.ndarray, threshold: float) -> int:
    """The reference: the first index ``i`` with ``norms[i]`` NaN, infinite or ``> threshold``;
    ``-1`` when there is none."""
    bad = ~np.isfinite(norms) | (norms > threshold)
    return int(np.argmax(bad)) if bad.any() else -1


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask)) if mask.any() else -1


def _overflow_case(g: torch.Generator, i: int) -> Case:
    """5 to 40 gradient norms of a run whose log norm walks upward (a growing gradient); in some
    cases a NaN or an Inf appears, in some a norm equals the threshold exactly, every 5th case
    never crosses it."""
    n = 5 + int(torch.randint(0, 36, (), generator=g))
    steps = torch.randn(n, generator=g, dtype=torch.float64) * 0.5 + 0.3
    norms = (10.0 ** (torch.cumsum(steps, 0) / 2)).numpy()
    threshold = float(10 ** (1 + 3 * torch.rand((), generator=g, dtype=torch.float64)))
    kind = i % 5
    if kind == 0:  # never crosses
        norms = np.minimum(norms, threshold / 2)
    at = int(torch.randint(0, n, (), generator=g))
    if kind == 1:
        norms[at] = np.nan
    elif kind == 2:
        norms[at] = np.inf
    elif kind == 3:  # equal is not above; not at step 0, where np.argmax's 0 would look alike
        at = max(at, 1)
        norms[:at + 1] = np.minimum(norms[:at + 1], threshold / 2)
        norms[at] = threshold
    if kind in (1, 2):  # nothing crosses before the non-finite step, nor just after it
        norms[:at] = np.minimum(norms[:at], threshold / 2)
        norms[at + 1:at + 2] = np.minimum(norms[at + 1:at + 2], threshold / 2)
    what = ("no crossing", "a NaN", "an Inf", "a norm equal to the threshold", "a crossing")[kind]
    label = describe(f"{n} norms", f"with {what}", threshold=threshold)
    return Case((norms, threshold), first_overflow_step(norms, threshold), label)


def _slip_nan(c: Case) -> int | None:
    norms, threshold = c.args
    with np.errstate(invalid="ignore"):
        return _first(norms > threshold)


def _slip_argmax(c: Case) -> int | None:
    return 0 if c.expected == -1 else None


def _slip_one_based(c: Case) -> int | None:
    return c.expected + 1 if c.expected >= 0 else None


def _slip_at_least(c: Case) -> int | None:
    norms, threshold = c.args
    with np.errstate(invalid="ignore"):
        return _first(~np.isfinite(norms) | (norms >= threshold))


OVERFLOW_SLIPS: Slips = {
    "NaN > threshold is False, so a NaN step slips through the comparison: test "
    "~np.isfinite(norms) as well": _slip_nan,
    "np.argmax of a mask with no True entry is 0: return -1 when no step qualifies": _slip_argmax,
    "steps counted from 1: the record's first step is step 0": _slip_one_based,
    "a norm equal to the threshold counted: only a norm above it (>) counts": _slip_at_least,
}


def check_first_overflow_step(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(norms, threshold) -> int``, for ``norms`` a 1-D float64 NumPy array of the
    gradient norms of a run (one per step, from step 0) and ``threshold`` a positive float:
    the first step whose norm is NaN, infinite or above ``threshold``, ``-1`` when there is
    none. The message names the slip of :data:`OVERFLOW_SLIPS` the answer matches."""
    return run("first overflow step", fn, _overflow_case, n_cases, seed, rtol=0.0, atol=0.0,
               slips=OVERFLOW_SLIPS, reference="gradlab.exercises.claims.first_overflow_step")


__all__ = ["OVERFLOW_SLIPS", "check_first_overflow_step", "first_overflow_step"]
