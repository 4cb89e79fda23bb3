"""Checker for "Residual connections": the expected growth of the squared stream (or gradient)
through residual blocks ``x + s_l F_l(x)`` with a different branch scale ``s_l`` in each block."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run


def _growth_case(g: torch.Generator, i: int) -> Case:
    """1 to 40 blocks with scales from 0 to 1.5 (every 5th case all equal to 1/sqrt(L)), and
    ``chi`` from 0.5 to 2 (exactly 1 in every 4th case)."""
    n = 1 + int(torch.randint(0, 40, (), generator=g))
    scales = torch.rand(n, generator=g, dtype=torch.float64) * 1.5
    if i % 5 == 4:
        scales = torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)
    chi = 1.0 if i % 4 == 3 else float(0.5 + 1.5 * torch.rand((), generator=g, dtype=torch.float64))
    expected = float(torch.prod(1.0 + scales**2 * chi))
    return Case((scales, chi), expected, describe(f"{n} blocks", chi=chi), {"scales": scales, "chi": chi})


def _product(c: Case, per_block) -> float:
    return float(torch.prod(per_block(c.data["scales"], c.data["chi"])))


GROWTH_SLIPS: Slips = {
    "s in place of s²: the branch's contribution to the squared norm scales with the square of "
    "its multiplier": lambda c: _product(c, lambda s, chi: 1.0 + s * chi),
    "a sum 1 + Σ s_l² chi instead of a product: every block multiplies the squared norm by its own "
    "factor": lambda c: 1.0 + float((c.data["scales"] ** 2).sum()) * c.data["chi"],
    "the skip forgotten: Π s_l² chi is the plain network's growth; the identity adds 1 in every "
    "block": lambda c: _product(c, lambda s, chi: s**2 * chi),
    "(1 + s_l sqrt(chi))² per block: the cross term between the skip and the branch has mean "
    "zero, so the squares add": lambda c: _product(c, lambda s, chi: (1.0 + s * math.sqrt(chi)) ** 2),
    "the gain instead of its square: the question asks for the squared norm's factor":
        lambda c: math.sqrt(c.expected),
}


def check_stream_growth(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(scales, chi) -> float``, for ``scales`` a 1-D float64 tensor of the branch scales
    ``s_1, ..., s_L`` and ``chi`` the branch's factor ``E||F(x)||² / ||x||²``: the expected growth
    of the squared norm through the blocks ``x + s_l F_l(x)``,

        Π_l (1 + s_l² chi),

    to a relative 1e-9 (:func:`gradlab.theory.residual_growth` for equal scales). The message names
    the slip of :data:`GROWTH_SLIPS` that the answer matches."""
    return run("stream growth", fn, _growth_case, n_cases, seed, rtol=1e-9, atol=0.0,
               slips=GROWTH_SLIPS, reference="gradlab.theory.residual_growth")


__all__ = ["GROWTH_SLIPS", "check_stream_growth"]
