"""Checker for "Mixed precision and loss scaling": one ``update()`` of dynamic loss scaling,
against torch's own kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .harness import Case, CheckResult, Slips, WrongForm, describe, run

SCALE = "the new scale"
TRACKER = "the new growth tracker"
FLOAT32_MAX = torch.finfo(torch.float32).max


def _float32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _torch_update(scale: float, tracker: int, found_inf: bool, growth: float, backoff: float,
                  interval: int) -> tuple[float, int]:
    """torch's kernel, the one ``GradScaler.update()`` calls, on float32/int32 tensors."""
    s = torch.tensor(scale, dtype=torch.float32)
    t = torch.tensor(tracker, dtype=torch.int32)
    torch._amp_update_scale_(s, t, torch.tensor(float(found_inf)), growth, backoff, interval)
    return s.item(), int(t.item())


def _update_case(g: torch.Generator, i: int) -> Case:
    """A random ``update()`` call; the kind cycles through: an inf/NaN found, the step that
    completes the growth interval, a growth that would leave float32's range, two ordinary
    finite steps. Factors cycle through powers of 2 and values that are not."""

    def uniform(lo: float, hi: float) -> float:
        return float(torch.empty(()).uniform_(lo, hi, generator=g))

    interval = [1, 2, 5, 2000][int(torch.randint(0, 4, (), generator=g))]
    growth = [2.0, 4.0, 3.0, uniform(1.01, 5.0)][i % 4]
    backoff = [0.5, 0.25, 0.3, uniform(0.01, 0.99)][(i // 4) % 4]
    scale = _float32(2.0 ** uniform(-20, 40))
    kind = i % 5
    if kind == 0:
        found_inf, tracker = True, int(torch.randint(0, interval, (), generator=g))
    elif kind == 1:
        found_inf, tracker = False, interval - 1
    elif kind == 2:
        found_inf, tracker, scale = False, interval - 1, _float32(FLOAT32_MAX / 1.5)
    else:
        found_inf, tracker = False, int(torch.randint(0, interval, (), generator=g))
    args = (scale, tracker, found_inf, growth, backoff, interval)
    new_scale, new_tracker = _torch_update(*args)
    label = describe(scale=scale, growth_tracker=tracker, found_inf=found_inf, growth_factor=growth,
                     backoff_factor=backoff, growth_interval=interval)
    return Case(args, {SCALE: new_scale, TRACKER: new_tracker}, label)


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, Any]:
    if not (isinstance(returned, tuple | list) and len(returned) == 2):
        raise WrongForm(f"returned {type(returned).__name__}; return the pair "
                        "(new_scale, new_growth_tracker)")
    return {SCALE: returned[0], TRACKER: returned[1]}


def _growth_step(c: Case) -> bool:
    _, tracker, found_inf, _, _, interval = c.args
    return not found_inf and tracker + 1 == interval


def _unrounded(c: Case) -> float:
    """The rule computed in float64 throughout: no rounding, no overflow test."""
    scale, _, found_inf, growth, backoff, _ = c.args
    if found_inf:
        return scale * backoff
    return scale * growth if _growth_step(c) else scale


UPDATE_SCALE_SLIPS: Slips = {
    "the new scale is not rounded to float32 (GradScaler keeps it in a float32 tensor, so a "
    "growth that overflows float32 is not taken either)": lambda c: {SCALE: _unrounded(c)},
    "the scale grew to inf: a growth that would overflow float32 leaves the scale as it was":
        lambda c: {SCALE: _float32(_unrounded(c))} if _growth_step(c) else None,
    "the growth tracker was kept after an inf/NaN: it restarts at 0":
        lambda c: {TRACKER: c.args[1]} if c.args[2] else None,
    "the growth tracker was compared before counting this step: a finite step adds 1, then "
    "compares with growth_interval": lambda c: {SCALE: c.args[0], TRACKER: c.args[1] + 1}
        if _growth_step(c) else None,
    "the growth tracker was not reset after a growth: it restarts at 0":
        lambda c: {TRACKER: c.args[1] + 1} if _growth_step(c) else None,
}


def check_update_scale(fn: Callable, n_cases: int = 60, seed: int = 0) -> CheckResult:
    """Check ``fn(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
    growth_interval) -> (new_scale, new_growth_tracker)``, one ``GradScaler.update()``:

        found_inf:                            scale * backoff_factor, tracker 0
        finite, tracker + 1 == growth_interval: scale * growth_factor, tracker 0
                                              (the scale unchanged if that overflows float32)
        finite otherwise:                     scale, tracker + 1

    with every new scale rounded to float32. Compared exactly with torch's kernel
    ``torch._amp_update_scale_`` on random calls (inf/NaN found, growth due, growth past
    float32's range, ordinary steps; factors that are and are not powers of 2). A wrong answer is
    compared with :data:`UPDATE_SCALE_SLIPS`."""
    return run("update_scale", fn, _update_case, n_cases, seed, rtol=0.0, atol=0.0,
               slips=UPDATE_SCALE_SLIPS, observe=_observe, reference="torch's update rule")


__all__ = ["UPDATE_SCALE_SLIPS", "check_update_scale"]
