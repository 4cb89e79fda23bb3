"""Checker for the exercises of the chapter "Mixed precision and loss scaling".

It lives in its own module until ``gradlab.exercises`` becomes a package; it uses that module's
``CheckResult`` so it reports like every other checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .exercises import CheckResult


def _float32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _update_cases(n_cases: int, seed: int):
    """Random update() calls: inf found, growth due, growth past float32's range, odd factors."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return float(torch.empty(()).uniform_(lo, hi, generator=g))

    for i in range(n_cases):
        interval = [1, 2, 5, 2000][int(torch.randint(0, 4, (), generator=g))]
        growth = [2.0, 4.0, 3.0, uniform(1.01, 5.0)][i % 4]
        backoff = [0.5, 0.25, 0.3, uniform(0.01, 0.99)][(i // 4) % 4]
        scale = _float32(2.0 ** uniform(-20, 40))
        kind = i % 5
        if kind == 0:  # an inf/NaN was found
            found_inf, tracker = True, int(torch.randint(0, interval, (), generator=g))
        elif kind == 1:  # the step that completes the interval: growth
            found_inf, tracker = False, interval - 1
        elif kind == 2:  # growth that would leave float32's range
            found_inf, tracker, scale = False, interval - 1, _float32(torch.finfo(torch.float32).max / 1.5)
        else:  # an ordinary finite step
            found_inf = False
            tracker = int(torch.randint(0, interval, (), generator=g))
        yield scale, tracker, found_inf, growth, backoff, interval


def _update_reference(scale, tracker, found_inf, growth, backoff, interval) -> tuple[float, int]:
    """torch's own kernel, the one ``GradScaler.update()`` calls."""
    s = torch.tensor(scale, dtype=torch.float32)
    t = torch.tensor(tracker, dtype=torch.int32)
    torch._amp_update_scale_(s, t, torch.tensor(float(found_inf)), growth, backoff, interval)
    return s.item(), int(t.item())


def check_update_scale(fn: Callable, n_cases: int = 60, seed: int = 0) -> CheckResult:
    """Check ``fn(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
    growth_interval) -> (new_scale, new_tracker)``, one ``GradScaler.update()``: after an inf/NaN
    ``scale * backoff_factor`` and tracker 0; else the tracker counts the step, and on reaching
    ``growth_interval`` the scale is multiplied by ``growth_factor`` (kept if that overflows
    float32) and the tracker is reset. Every new scale is rounded to float32. Compared exactly
    with torch's kernel ``torch._amp_update_scale_`` on random cases."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n = 0
    for n, case in enumerate(_update_cases(n_cases, seed), start=1):
        scale, tracker, found_inf, growth, backoff, interval = case
        expected = _update_reference(*case)
        args = (f"(scale={scale:.6g}, growth_tracker={tracker}, found_inf={found_inf}, growth_factor="
                f"{growth:.6g}, backoff_factor={backoff:.6g}, growth_interval={interval})")
        try:
            got = fn(*case)
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"update_scale: case {n} {args} raised {type(err).__name__}: {err}")
        try:
            new_scale, new_tracker = float(got[0]), got[1]
            if isinstance(new_tracker, torch.Tensor):
                new_tracker = new_tracker.item()
            if isinstance(new_tracker, bool) or int(new_tracker) != new_tracker:
                raise TypeError
            new_tracker = int(new_tracker)
        except (TypeError, ValueError, IndexError, RuntimeError):
            return CheckResult(False, n, f"update_scale: case {n} returned {got!r}; return a pair "
                               "(new_scale, new_growth_tracker)")
        if (new_scale, new_tracker) == expected:
            continue
        hint = ""
        if math.isinf(new_scale) or new_scale > torch.finfo(torch.float32).max:
            hint = ("\nHint: the scale is a float32 number, and a scale that would overflow float32 is "
                    "not grown (it stays as it was).")
        elif new_scale != expected[0] and math.isclose(new_scale, expected[0], rel_tol=1e-6):
            hint = "\nHint: round the new scale to float32, as GradScaler keeps it in a float32 tensor."
        elif found_inf and new_tracker != 0:
            hint = "\nHint: an inf/NaN resets the growth tracker to 0."
        elif not found_inf and new_tracker == tracker:
            hint = "\nHint: a finite step adds 1 to the tracker before comparing it with growth_interval."
        return CheckResult(False, n, f"update_scale: case {n} {args} returned (scale={new_scale:.9g}, "
                           f"tracker={new_tracker}), expected (scale={expected[0]:.9g}, "
                           f"tracker={expected[1]}).{hint}")
    return CheckResult(True, n, f"update_scale: all {n} random cases match torch's update rule.")


__all__ = ["check_update_scale"]
