"""Checker for "Gradient clipping": global-norm clipping from scratch, against torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .harness import Case, CheckResult, Slips, describe, run

NORM = "the returned norm (of all gradients together, before clipping)"


def _grad_part(k: int) -> str:
    return f"the gradient of parameter {k}"


def _clip_case(g: torch.Generator, i: int) -> Case:
    """Random parameter lists: shapes (0-dim included), scales from 1e-2 to 1e2, a ``.grad``
    that is None (every 5th case), zero gradients (every 7th), and every 6th case small gradients
    just above a small ``max_norm``, where the 1e-6 in the denominator shows."""
    small = i % 6 == 5
    n = int(torch.randint(1, 5, (1,), generator=g))
    params = []
    for k in range(n):
        ndim = int(torch.randint(0, 3, (1,), generator=g))
        shape = tuple(torch.randint(1, 5, (ndim,), generator=g).tolist())
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        scale = 10.0 ** float(torch.randint(-2, 3, (1,), generator=g))
        if i % 5 == 4 and k == 0 and not small:
            p.grad = None
        elif i % 7 == 6 and not small:
            p.grad = torch.zeros(shape, dtype=torch.float64)
        else:
            p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        params.append(p)
    max_norm = float(10.0 ** torch.empty(1).uniform_(-1, 1, generator=g))
    if small:  # total norm 1.5 to 5 times max_norm = 1e-3: 1e-6 / N is 2e-4 to 7e-4
        max_norm = 1e-3
        total = torch.sqrt(sum((p.grad**2).sum() for p in params))
        target = max_norm * float(torch.empty(1).uniform_(1.5, 5.0, generator=g))
        for p in params:
            p.grad.mul_(target / total)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, copies, strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_(copies, max_norm)
    expected = {NORM: float(norm), **{_grad_part(k): q.grad for k, q in enumerate(copies)}}
    no_grad = [k for k, p in enumerate(params) if p.grad is None]
    label = describe(max_norm=max_norm, shapes=[tuple(p.shape) for p in params])
    label += f", .grad None for parameters {no_grad}" if no_grad else ""
    return Case((params, max_norm), expected, label, {"norm": float(norm)})


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, Any]:
    params = called[0]
    return {NORM: returned, **{_grad_part(k): p.grad for k, p in enumerate(params)}}


def _scaled(case: Case, factor: Callable[[torch.Tensor], float]) -> dict[str, torch.Tensor]:
    """Every gradient times ``factor(its gradient)``: the parts a wrong scaling changes."""
    params = case.args[0]
    return {_grad_part(k): p.grad * factor(p.grad) for k, p in enumerate(params) if p.grad is not None}


def _one_factor(case: Case, rule: Callable[[float, float], float]) -> dict[str, torch.Tensor]:
    """Every gradient times ``rule(N, max_norm)``, with N the norm of all of them."""
    factor = rule(case.data["norm"], case.args[1])
    return _scaled(case, lambda grad: factor)


CLIP_SLIPS: Slips = {
    "per-layer clipping: each gradient scaled by min(1, max_norm / (its own norm + 1e-6)); "
    "global clipping scales all of them by one factor, from the norm N of all gradients together":
        lambda c: _scaled(c, lambda grad: min(1.0, c.args[1] / (float(grad.norm()) + 1e-6))),
    "the norm after clipping: return N as it was before the gradients were scaled":
        lambda c: {NORM: c.data["norm"] * min(1.0, c.args[1] / (c.data["norm"] + 1e-6))},
    "the squared norm: N is the square root of the sum of squares": lambda c: {NORM: c.data["norm"] ** 2},
    "gradients always rescaled to max_norm: the factor is min(1, max_norm / (N + 1e-6)), so "
    "gradients already below max_norm stay as they are":
        lambda c: _one_factor(c, lambda norm, max_norm: max_norm / (norm + 1e-6)),
    "no 1e-6 in the denominator: the factor is min(1, max_norm / (N + 1e-6))":
        lambda c: _one_factor(c, lambda norm, max_norm: min(1.0, max_norm / norm) if norm > 0 else 1.0),
    "a zero gradient given to a parameter whose .grad was None: skip such parameters and leave "
    "their .grad None": lambda c: {
        _grad_part(k): torch.zeros_like(p) for k, p in enumerate(c.args[0]) if p.grad is None
    } or None,
}

CLIP_ERROR_HINTS = {
    "NoneType": "some parameters have no gradient (.grad is None): skip them, as torch does.",
}


def check_clip_grad_norm(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(parameters, max_norm)``: it must rescale every ``p.grad`` in place to
    ``g * min(1, max_norm / (N + 1e-6))``, with ``N`` the 2-norm of all gradients together
    (parameters whose ``.grad`` is None skipped and left None), and return ``N``; compared with
    ``torch.nn.utils.clip_grad_norm_`` on random lists of parameters. A wrong answer is compared
    with :data:`CLIP_SLIPS`, per-layer clipping among them."""
    return run("clip_grad_norm", fn, _clip_case, n_cases, seed, rtol=1e-6, atol=1e-10,
               slips=CLIP_SLIPS, observe=_observe, error_hints=CLIP_ERROR_HINTS, reference="torch")
