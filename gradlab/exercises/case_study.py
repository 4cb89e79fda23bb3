"""Checkers for "Case study: a character-level transformer": a linear warm-up followed by a
cosine decay of the learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run

# ---------------------------------------------------------------------------------------------
# Linear warm-up, then cosine decay
# ---------------------------------------------------------------------------------------------


def warmup_cosine_reference(warmup: int, total: int, base_lr: float, min_lr: float) -> list[float]:
    """The learning rates of steps ``0 .. total - 1`` that PyTorch's
    ``SequentialLR([LinearLR(start_factor=1/warmup, total_iters=max(warmup-1, 1)),
    CosineAnnealingLR(T_max=total-warmup, eta_min=min_lr)], milestones=[warmup])`` gives an
    optimizer created with ``lr=base_lr``: ``base_lr (s+1)/warmup`` for ``s < warmup``, then
    ``min_lr + (base_lr - min_lr)(1 + cos(π (s - warmup)/(total - warmup)))/2``."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr)
    sched = torch.optim.lr_scheduler
    linear = sched.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0,
                            total_iters=max(warmup - 1, 1))
    cosine = sched.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr)
    schedule = sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def _schedule_case(g: torch.Generator, i: int) -> Case:
    """A schedule of 4 to 200 steps with 2 to half of them warm-up, a step in the warm-up (even
    cases) or in the decay (odd cases); every third case decays to a nonzero ``min_lr``."""
    total = int(torch.randint(4, 201, (1,), generator=g))
    warmup = int(torch.randint(2, total // 2 + 1, (1,), generator=g))
    base_lr = float(10.0 ** torch.empty(1).uniform_(-4, -1, generator=g))
    min_lr = base_lr * float(torch.rand(1, generator=g)) * 0.5 if i % 3 == 2 else 0.0
    low, high = (0, warmup) if i % 2 == 0 else (warmup, total)
    step = int(torch.randint(low, high, (1,), generator=g))
    expected = warmup_cosine_reference(warmup, total, base_lr, min_lr)[step]
    return Case((step, warmup, total, base_lr, min_lr), expected,
                describe(step=step, warmup=warmup, total=total, base_lr=base_lr, min_lr=min_lr))


def _in_warmup(slip: Callable[[int, int, int, float, float], float]) -> Callable[[Case], float | None]:
    return lambda c: slip(*c.args) if c.args[0] < c.args[1] else None


def _in_decay(slip: Callable[[int, int, int, float, float], float]) -> Callable[[Case], float | None]:
    return lambda c: slip(*c.args) if c.args[0] >= c.args[1] else None


def _cosine(fraction: float, base_lr: float, min_lr: float) -> float:
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


WARMUP_COSINE_SLIPS: Slips = {
    "warm-up from zero, base_lr·step/warmup: step 0 would not move the weights; the learning rate "
    "of step s < warmup is base_lr·(s + 1)/warmup":
        _in_warmup(lambda s, w, t, b, m: b * s / w),
    "the cosine's phase counted from step 0, cos(π s/total): the decay starts at the end of the "
    "warm-up, cos(π (s - warmup)/(total - warmup))":
        _in_decay(lambda s, w, t, b, m: _cosine(s / t, b, m)),
    "the decay spread over all the steps, cos(π (s - warmup)/total): it lasts total - warmup "
    "steps": _in_decay(lambda s, w, t, b, m: _cosine((s - w) / t, b, m)),
    "the decay ends at 0, not at min_lr: lr = min_lr + (base_lr - min_lr)(1 + cos(...))/2":
        lambda c: (_cosine((c.args[0] - c.args[1]) / (c.args[2] - c.args[1]), c.args[3], 0.0)
                   if c.args[0] >= c.args[1] and c.args[4] > 0 else None),
    "the decay a step early, cos(π (s - warmup + 1)/(total - warmup)): step warmup, the first of "
    "the decay, is still at base_lr; the phase is π (s - warmup)/(total - warmup)":
        _in_decay(lambda s, w, t, b, m: _cosine((s - w + 1) / (t - w), b, m)),
    "min_lr at the last step, cos(π (s - warmup)/(total - warmup - 1)): the cosine would reach "
    "min_lr at step total, one past the last; the phase is π (s - warmup)/(total - warmup)":
        _in_decay(lambda s, w, t, b, m: _cosine((s - w) / (t - w - 1), b, m)),
    "cos without the (1 + cos)/2: the factor must go from 1 to 0, not from 1 to -1":
        _in_decay(lambda s, w, t, b, m: m + (b - m) * math.cos(math.pi * (s - w) / (t - w))),
}


def check_warmup_cosine(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(step, warmup, total, base_lr, min_lr)`` returns the learning rate of step
    ``step`` (from 0) of a linear warm-up over ``warmup`` steps followed by a cosine decay to
    ``min_lr`` at step ``total``: ``base_lr (step + 1)/warmup`` while ``step < warmup``, then
    ``min_lr + (base_lr - min_lr)(1 + cos(π (step - warmup)/(total - warmup)))/2``, as
    PyTorch's ``SequentialLR(LinearLR, CosineAnnealingLR)`` gives (see
    :func:`warmup_cosine_reference`), to relative accuracy 1e-6. A wrong answer is compared
    with :data:`WARMUP_COSINE_SLIPS`."""
    return run("warm-up + cosine schedule", fn, _schedule_case, n_cases, seed, rtol=1e-6, atol=1e-12,
               slips=WARMUP_COSINE_SLIPS,
               reference="SequentialLR(LinearLR, CosineAnnealingLR)")
