"""Checker for "Distributed training": assembling the global norm of a sharded gradient from the
shards' local norms."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run

NORM_TYPES = (1.0, 2.0, 3.0, math.inf)


def _global_norm_case(g: torch.Generator, i: int) -> Case:
    """A random vector split into 1 to 6 contiguous shards (some may be empty), the shards'
    p-norms (0 for an empty shard) and the norm type, cycling through 1, 2, 3 and inf."""
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
    label = describe(p=p, shards=len(shards), sizes=[len(s) for s in shards])
    return Case((local, p), float(torch.linalg.vector_norm(v, p)), label)


def _local(case: Case) -> tuple[torch.Tensor, float]:
    return case.args[0], case.args[1]


GLOBAL_NORM_SLIPS: Slips = {
    "the local norms were added: that is right for p = 1 only; add their p-th powers and take "
    "the p-th root": lambda c: float(_local(c)[0].sum()) if math.isfinite(c.args[1]) else None,
    "for p = inf the local norms were added: the inf-norm is the largest entry, so the global "
    "inf-norm is the largest local norm (a max over ranks, not a sum)":
        lambda c: None if math.isfinite(c.args[1]) else float(_local(c)[0].sum()),
    "the 2-norm rule (square root of the sum of squares) was used for every p: use the p-th "
    "powers and the p-th root": lambda c: float(_local(c)[0].pow(2).sum().sqrt()),
    "the largest local norm was returned: that is right for p = inf only":
        lambda c: float(_local(c)[0].max()),
    "the mean was taken where the sum belongs (a norm adds over shards, it does not average)":
        lambda c: (float(_local(c)[0].pow(c.args[1]).mean().pow(1 / c.args[1]))
                   if math.isfinite(c.args[1]) else float(_local(c)[0].mean())),
    "the p-th root is missing: sum_r ||g_r||^p is ||g||^p, not ||g||":
        lambda c: float(_local(c)[0].pow(c.args[1]).sum()) if math.isfinite(c.args[1]) else None,
}


def check_global_norm(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(local_norms, norm_type)``: given the p-norms of the shards of a vector (a 1-d
    float64 tensor, one entry per rank, 0 for an empty shard), it must return the p-norm of the
    whole vector, ``(sum_r local_norms[r]^p)^(1/p)``, or ``max_r local_norms[r]`` for
    ``p = inf``. Random vectors, 1 to 6 shards, p in {1, 2, 3, inf}; compared with the norm of
    the whole vector. A wrong answer is compared with :data:`GLOBAL_NORM_SLIPS`."""
    return run("global norm", fn, _global_norm_case, n_cases, seed, rtol=1e-7, atol=1e-12,
               slips=GLOBAL_NORM_SLIPS, reference="the norm of the whole vector")
