"""Checker for "Gradient accumulation": the accumulated gradient of micro-batches of equal and of
unequal sizes, against one backward pass on the whole batch."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .harness import Case, CheckResult, Slips, WrongForm, run

GRAD = "the gradient left in .grad (all parameters, flattened)"


def _flat_grad(model: nn.Module) -> torch.Tensor | None:
    grads = [p.grad for p in model.parameters()]
    if any(gr is None for gr in grads):
        return None
    return torch.cat([gr.flatten() for gr in grads])


def _batch_grad(model: nn.Module, loss_fn: nn.Module, batches: list) -> torch.Tensor:
    """Gradient of the mean loss over the concatenation of ``batches`` (one backward)."""
    model.zero_grad(set_to_none=True)
    x = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    loss_fn(model(x), y).backward()
    return _flat_grad(model)


def _accumulation_case(g: torch.Generator, i: int) -> Case:
    """A small float64 model, a mean-reduced loss (MSE, cross-entropy in turn), and k = 2 to 5
    micro-batches: of one size b = 1 to 4 in cases 0, 1, 4, 5, ... and of unequal sizes n_j = 1
    to 6 (not all equal, often a short last one) in cases 2, 3, 6, 7, ..."""
    n_in, n_out = (int(x) for x in torch.randint(1, 5, (2,), generator=g))
    k = int(torch.randint(2, 6, (1,), generator=g))
    if i % 4 < 2:
        sizes = [int(torch.randint(1, 5, (1,), generator=g))] * k
    elif i % 8 < 4:  # a data set's remainder: full micro-batches, then a short last one
        full = int(torch.randint(2, 7, (1,), generator=g))
        sizes = [full] * (k - 1) + [int(torch.randint(1, full, (1,), generator=g))]
    else:
        sizes = [int(n) for n in torch.randint(1, 7, (k,), generator=g)]
        if len(set(sizes)) == 1:
            sizes[-1] = sizes[-1] % 6 + 1
    hidden = int(torch.randint(2, 6, (1,), generator=g))
    width_out = n_out if i % 2 == 0 else max(n_out, 2)
    # nn.Linear draws from the global RNG: fork it so the reader's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, width_out)).double()
    if i % 2 == 0:
        loss_fn: nn.Module = nn.MSELoss()
        batches = [(torch.randn(n, n_in, generator=g, dtype=torch.float64),
                    torch.randn(n, n_out, generator=g, dtype=torch.float64)) for n in sizes]
    else:
        loss_fn = nn.CrossEntropyLoss()
        batches = [(torch.randn(n, n_in, generator=g, dtype=torch.float64),
                    torch.randint(0, width_out, (n,), generator=g)) for n in sizes]
    reference = copy.deepcopy(model)
    expected = _batch_grad(reference, loss_fn, batches)
    grads = [_batch_grad(reference, loss_fn, [batch]) for batch in batches]  # of each mean loss L_j
    shape = (f"b={sizes[0]} examples each" if len(set(sizes)) == 1
             else f"n_j={', '.join(map(str, sizes))} examples (N={sum(sizes)})")
    label = f"{type(loss_fn).__name__}, k={k} micro-batches of {shape}, model {n_in}-{hidden}-{width_out}"
    return Case((model, loss_fn, batches), {GRAD: expected}, label, {"sizes": sizes, "grads": grads})


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, torch.Tensor]:
    got = _flat_grad(called[0])
    if got is None:
        raise WrongForm("some parameters have no .grad afterwards; call .backward() on each "
                        "micro-batch's loss and leave the result in .grad")
    return {GRAD: got}


def _weighted(case: Case, weight: Callable[[int, int, int], float]) -> dict[str, torch.Tensor]:
    """``sum_j weight(n_j, N, k) grad L_j``: the gradient a reader's weights leave in ``.grad``."""
    sizes, grads = case.data["sizes"], case.data["grads"]
    total, k = sum(sizes), len(sizes)
    return {GRAD: sum(weight(n, total, k) * gr for n, gr in zip(sizes, grads, strict=True))}


def _last(case: Case, weight: Callable[[int, int, int], float]) -> dict[str, torch.Tensor]:
    """The last micro-batch's gradient with its weight: ``.grad`` zeroed inside the loop."""
    sizes = case.data["sizes"]
    return {GRAD: weight(sizes[-1], sum(sizes), len(sizes)) * case.data["grads"][-1]}


ACCUMULATION_SLIPS: Slips = {
    "the sum of the micro-batch gradients (k times the right gradient for equal sizes): weight "
    "micro-batch j's loss by n_j/N before backward (1/k for equal sizes; the loss already "
    "averages over its n_j examples)": lambda c: _weighted(c, lambda n, total, k: 1.0),
    "the micro-batch means were averaged with equal weights 1/k, but the micro-batches have "
    "unequal sizes, so each example of a small one weighs more: weight micro-batch j by n_j/N "
    "(n_j its examples, N all of them)": lambda c: _weighted(c, lambda n, total, k: 1 / k),
    "1/k of the right gradient: the loss was divided by k on top of its weight (1/k or n_j/N)":
        lambda c: _weighted(c, lambda n, total, k: n / total / k),
    "the last micro-batch's gradient only: .grad was zeroed inside the loop (zero it once, before "
    "the first micro-batch)": lambda c: _last(c, lambda n, total, k: 1.0),
    "the last micro-batch's weighted gradient only: .grad was zeroed inside the loop":
        lambda c: _last(c, lambda n, total, k: n / total),
    "the gradient divided by the micro-batch's size: the loss was divided by n_j (or by N) as well, "
    "but loss_fn already averages over the examples": lambda c: _weighted(c, lambda n, total, k: 1 / total),
}


def check_accumulated_gradient(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(model, loss_fn, micro_batches)``: called with no gradients in ``model``
    (every ``.grad`` None), it must leave in the parameters' ``.grad`` the gradient of the mean
    loss over all the micro-batches together, ``sum_j (n_j / N) grad L_j`` for micro-batches of
    ``n_j`` examples, ``N = sum_j n_j``, whose losses ``L_j`` average over their examples
    (``(1/k) sum_j grad L_j`` when the sizes are equal), using one backward pass per micro-batch.
    Random small models (MSE and cross-entropy), 2 to 5 micro-batches, of equal sizes in half
    the cases and of unequal sizes (often a short last one) in the other half; compared with a
    single backward pass on the concatenated batch. A wrong answer is compared with
    :data:`ACCUMULATION_SLIPS`."""
    return run("accumulated gradient", fn, _accumulation_case, n_cases, seed, rtol=1e-7, atol=1e-10,
               slips=ACCUMULATION_SLIPS, observe=_observe, reference="the full-batch gradient")
