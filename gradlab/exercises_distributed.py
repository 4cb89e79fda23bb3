"""Checker for the distributed chapter's exercise: assembling a global norm from local norms.

It uses the shared :func:`gradlab.exercises.check_function` and :class:`CheckResult`, and adds a
hint that names the usual slip when the reader's combination is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._validate import check_int
from .exercises import CheckResult, check_function

NORM_TYPES = (1.0, 2.0, 3.0, math.inf)


def _global_norm_cases(n_cases: int, seed: int) -> list[tuple[torch.Tensor, float, torch.Tensor]]:
    """``(local_norms, p, vector)``: a random vector split into 1 to 6 contiguous shards (some
    may be empty) and the shards' p-norms; the norm types cycle through 1, 2, 3 and inf."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        p = NORM_TYPES[i % len(NORM_TYPES)]
        n = int(torch.randint(1, 60, (1,), generator=g))
        ranks = int(torch.randint(1, 7, (1,), generator=g))
        scale = 10.0 ** float(torch.empty(1).uniform_(-3, 3, generator=g))
        v = scale * torch.randn(n, generator=g, dtype=torch.float64)
        cuts = torch.sort(torch.randint(0, n + 1, (ranks - 1,), generator=g)).values.tolist()
        bounds = [0, *cuts, n]
        shards = [v[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        local = torch.stack([torch.linalg.vector_norm(s, p) if s.numel() else v.new_zeros(())
                             for s in shards])
        cases.append((local, p, v))
    return cases


def _slips(local: torch.Tensor, p: float) -> dict[str, torch.Tensor]:
    """What the usual wrong combinations return, keyed by the hint that explains them."""
    slips = {
        "the local norms were added: that is right for p = 1 only; add their p-th powers and "
        "take the p-th root": local.sum(),
        "the 2-norm rule (square root of the sum of squares) was used for every p: use the p-th "
        "powers and the p-th root": local.pow(2).sum().sqrt(),
        "the largest local norm was returned: that is right for p = inf only": local.max(),
        "the mean was taken where the sum belongs (a norm adds over shards, it does not average)":
            local.pow(p).mean().pow(1 / p) if math.isfinite(p) else local.mean(),
    }
    if math.isfinite(p):
        slips["the p-th root is missing: sum_r ||g_r||^p is ||g||^p, not ||g||"] = local.pow(p).sum()
    return slips


def check_global_norm(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(local_norms, norm_type)``: given the p-norms of the shards of a vector (a 1-d
    float64 tensor, one entry per rank, 0 for an empty shard), it must return the p-norm of
    the whole vector, ``(sum_r local_norms[r]^p)^(1/p)``, or ``max_r local_norms[r]`` for
    ``p = inf``. Random vectors, 1 to 6 shards, p in {1, 2, 3, inf}; compared with the norm of
    the whole vector. A wrong answer is matched against the usual slips for a hint."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n_cases = check_int("n_cases", n_cases, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    cases = _global_norm_cases(n_cases, seed)

    def reference(local: torch.Tensor, p: float, vector: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(vector, p))

    def candidate(local: torch.Tensor, p: float, vector: torch.Tensor):
        return fn(local.clone(), p)  # a copy: an in-place edit cannot change the next check

    result = check_function(candidate, reference, cases, name="global norm", rtol=1e-7, atol=1e-12)
    if result.passed:
        return result
    local, p, vector = cases[result.cases - 1]
    expected = torch.tensor(reference(local, p, vector), dtype=torch.float64)
    try:
        got = torch.as_tensor(candidate(local, p, vector), dtype=torch.float64)
    except Exception:  # the reader's error, already reported by check_function
        return result
    hint = next((h for h, val in _slips(local, p).items()
                 if got.shape == val.shape and torch.allclose(got, val, rtol=1e-7, atol=1e-12)
                 and not torch.allclose(val, expected, rtol=1e-7, atol=1e-12)), None)
    message = f"{result.message}\n(p = {p:g}, {len(local)} shards)"
    if hint:
        message += f"\nIt looks like {hint}."
    return CheckResult(False, result.cases, message)
