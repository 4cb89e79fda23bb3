"""Checker for "Optimizer choice": one Adam update from scratch, against torch.optim.Adam."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .harness import Case, CheckResult, Slips, WrongForm, as_float64, describe, run

M = "the returned m (the raw first moment beta1*m + (1-beta1)*grad, before any bias correction)"
V = "the returned v (the raw second moment beta2*v + (1-beta2)*grad**2, before any bias correction)"
STEP = "the step theta_new - theta"


def _adam_case(g: torch.Generator, i: int) -> Case:
    """Step ``t`` (1 to 6) of ``torch.optim.Adam`` on a random shape, hyper-parameters and
    gradients from 1e-10 (where eps matters: every third case) to 1e6. The reader gets torch's
    state before the step, so a slip shows at the step where it happens."""
    ndim = int(torch.randint(1, 3, (1,), generator=g))
    shape = tuple(torch.randint(1, 6, (ndim,), generator=g).tolist())
    lr = float(10.0 ** torch.empty(1).uniform_(-4, -1, generator=g))
    beta1 = float(torch.empty(1).uniform_(0.5, 0.95, generator=g))
    beta2 = float(torch.empty(1).uniform_(0.9, 0.9999, generator=g))
    eps = float(10.0 ** torch.empty(1).uniform_(-8, -2, generator=g))
    t = int(torch.randint(1, 7, (1,), generator=g))
    low, high = (-10.0, -6.0) if i % 3 == 2 else (-3.0, 6.0)
    scale = 10.0 ** torch.empty(t, dtype=torch.float64).uniform_(low, high, generator=g)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) * s for s in scale]
    p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
    for grad in grads[:-1]:
        p.grad = grad.clone()
        opt.step()
    state = opt.state[p]
    theta = p.detach().clone()
    m = state["exp_avg"].clone() if t > 1 else torch.zeros(shape, dtype=torch.float64)
    v = state["exp_avg_sq"].clone() if t > 1 else torch.zeros(shape, dtype=torch.float64)
    p.grad = grads[-1].clone()
    opt.step()
    expected = {M: opt.state[p]["exp_avg"].clone(), V: opt.state[p]["exp_avg_sq"].clone(),
                STEP: p.detach() - theta}
    label = describe(t=t, shape=shape, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    return Case((theta, grads[-1], m, v, t, lr, beta1, beta2, eps), expected, label)


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, Any]:
    if not (isinstance(returned, tuple | list) and len(returned) == 3):
        raise WrongForm(f"returned {type(returned).__name__}; return the three new tensors (theta, m, v)")
    theta = case.args[0]
    try:
        new_theta = as_float64(returned[0])
    except (TypeError, ValueError, RuntimeError):
        raise WrongForm(f"the returned theta is {type(returned[0]).__name__}, expected a tensor") from None
    # Compared as the step: theta ~ 1 while the step may be 1e-12, below theta's rounding.
    step = new_theta - theta if new_theta.shape == theta.shape else new_theta
    return {M: returned[1], V: returned[2], STEP: step}


def _moments(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    _, grad, m, v, _, _, beta1, beta2, _ = case.args
    return beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2


def _step(case: Case, m: torch.Tensor, v: torch.Tensor, *, eps_inside: bool = False,
          sign: float = -1.0) -> dict[str, torch.Tensor]:
    lr, eps = case.args[5], case.args[8]
    return {STEP: sign * lr * m / ((v + eps).sqrt() if eps_inside else v.sqrt() + eps)}


def _corrected(case: Case, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bias-corrected moments ``m / (1 - beta1^t)``, ``v / (1 - beta2^t)``."""
    beta1, beta2 = case.args[6], case.args[7]
    m, v = _moments(case)
    return m / (1 - beta1**t), v / (1 - beta2**t)


ADAM_SLIPS: Slips = {
    "Adam without bias correction (divide m by 1 - beta1**t and v by 1 - beta2**t)":
        lambda c: _step(c, *_moments(c)),
    "eps inside the square root (Adam divides by sqrt(v_hat) + eps)":
        lambda c: _step(c, *_corrected(c, c.args[4]), eps_inside=True),
    "a step along +gradient (the update must be subtracted)":
        lambda c: _step(c, *_corrected(c, c.args[4]), sign=1.0),
    "bias correction with t + 1 (t is already the number of this step, 1 at the first)":
        lambda c: _step(c, *_corrected(c, c.args[4] + 1)),
    "the raw gradient in place of m_hat (the numerator is the first moment)":
        lambda c: _step(c, c.args[1], _corrected(c, c.args[4])[1]),
    "m returned bias-corrected: keep the raw moment in m, correct only to compute the step":
        lambda c: {M: _corrected(c, c.args[4])[0]},
    "v returned bias-corrected: keep the raw moment in v, correct only to compute the step":
        lambda c: {V: _corrected(c, c.args[4])[1]},
}


def check_adam_step(fn: Callable, n_cases: int = 60, seed: int = 0) -> CheckResult:
    """Check ``fn(theta, grad, m, v, t, lr, beta1, beta2, eps) -> (theta, m, v)``, one Adam
    update (Kingma & Ba 2015) with ``t`` the number of the step (1 at the first):

        m ← β1 m + (1-β1) g,   v ← β2 v + (1-β2) g²,
        θ ← θ - lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps),

    against ``torch.optim.Adam`` run on a copy of ``theta`` (float64) for random shapes,
    hyper-parameters and gradients from 1e-10 to 1e6, at steps ``t`` from 1 to 6 with torch's
    state before the step. The message names the quantity that is wrong and the slip of
    :data:`ADAM_SLIPS` it matches."""
    # m and v may be 1e-20 and are compared relatively; the step to 1e-14, theta's rounding.
    return run("adam step", fn, _adam_case, n_cases, seed, rtol=1e-6, atol=0.0, part_atol={STEP: 1e-14},
               slips=ADAM_SLIPS, observe=_observe, reference="torch.optim.Adam")
