"""Checker for "Gradient accumulation": the accumulated gradient of micro-batches, against one
backward pass on the whole batch."""

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
    micro-batches of b = 1 to 4 examples each."""
    n_in, n_out = (int(x) for x in torch.randint(1, 5, (2,), generator=g))
    k = int(torch.randint(2, 6, (1,), generator=g))
    b = int(torch.randint(1, 5, (1,), generator=g))
    hidden = int(torch.randint(2, 6, (1,), generator=g))
    width_out = n_out if i % 2 == 0 else max(n_out, 2)
    # nn.Linear draws from the global RNG: fork it so the reader's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, width_out)).double()
    if i % 2 == 0:
        loss_fn: nn.Module = nn.MSELoss()
        batches = [(torch.randn(b, n_in, generator=g, dtype=torch.float64),
                    torch.randn(b, n_out, generator=g, dtype=torch.float64)) for _ in range(k)]
    else:
        loss_fn = nn.CrossEntropyLoss()
        batches = [(torch.randn(b, n_in, generator=g, dtype=torch.float64),
                    torch.randint(0, width_out, (b,), generator=g)) for _ in range(k)]
    reference = copy.deepcopy(model)
    expected = _batch_grad(reference, loss_fn, batches)
    last = _batch_grad(reference, loss_fn, batches[-1:])
    label = (f"{type(loss_fn).__name__}, k={k} micro-batches of b={b} examples, "
             f"model {n_in}-{hidden}-{width_out}")
    return Case((model, loss_fn, batches), {GRAD: expected}, label, {"k": k, "b": b, "last": last})


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, torch.Tensor]:
    got = _flat_grad(called[0])
    if got is None:
        raise WrongForm("some parameters have no .grad afterwards; call .backward() on each "
                        "micro-batch's loss and leave the result in .grad")
    return {GRAD: got}


ACCUMULATION_SLIPS: Slips = {
    "k times the right gradient: divide each micro-batch's loss by k before backward (the loss "
    "already averages over its b examples)": lambda c: {GRAD: c.data["k"] * c.expected[GRAD]},
    "1/k of the right gradient: the loss was divided by k twice":
        lambda c: {GRAD: c.expected[GRAD] / c.data["k"]},
    "the last micro-batch's gradient only: .grad was zeroed inside the loop (zero it once, before "
    "the first micro-batch)": lambda c: {GRAD: c.data["last"]},
    "the last micro-batch's gradient divided by k: .grad was zeroed inside the loop":
        lambda c: {GRAD: c.data["last"] / c.data["k"]},
    "1/b of the right gradient: the loss was divided by the number of examples b (or by k*b), but "
    "loss_fn already averages over them": lambda c: {GRAD: c.expected[GRAD] / c.data["b"]},
}


def check_accumulated_gradient(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(model, loss_fn, micro_batches)``: called with no gradients in ``model``
    (every ``.grad`` None), it must leave in the parameters' ``.grad`` the gradient of the mean
    loss over all the micro-batches together, ``(1/k) sum_j grad L_j`` for k equal micro-batches
    whose losses ``L_j`` average over their examples, using one backward pass per micro-batch.
    Random small models (MSE and cross-entropy), 2 to 5 micro-batches of equal size; compared
    with a single backward pass on the concatenated batch. A wrong answer is compared with
    :data:`ACCUMULATION_SLIPS`."""
    return run("accumulated gradient", fn, _accumulation_case, n_cases, seed, rtol=1e-7, atol=1e-10,
               slips=ACCUMULATION_SLIPS, observe=_observe, reference="the full-batch gradient")
