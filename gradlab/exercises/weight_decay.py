"""Checker for "Weight decay and spectral control": one AdamW update from scratch, against
torch.optim.AdamW."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .harness import Case, CheckResult, Slips, WrongForm, as_float64, describe, run

M = "the returned m (the raw first moment beta1*m + (1-beta1)*grad, before any bias correction)"
V = "the returned v (the raw second moment beta2*v + (1-beta2)*grad**2, before any bias correction)"
STEP = "the step theta_new - theta"


def _adamw_case(g: torch.Generator, i: int) -> Case:
    """Step ``t`` (1 to 6) of ``torch.optim.AdamW`` on a random shape, weights of size 0.1 to 10,
    gradients from 1e-3 to 1e3, and ``lr * weight_decay`` from 1e-5 to 0.1 (so that decaying
    after the step, an error of order ``(lr * weight_decay) * step``, shows). The reader gets
    torch's state before the step."""
    ndim = int(torch.randint(1, 3, (1,), generator=g))
    shape = tuple(torch.randint(1, 6, (ndim,), generator=g).tolist())
    lr = float(10.0 ** torch.empty(1).uniform_(-3, -1, generator=g))
    weight_decay = float(10.0 ** torch.empty(1).uniform_(-2, 0, generator=g))
    beta1 = float(torch.empty(1).uniform_(0.5, 0.95, generator=g))
    beta2 = float(torch.empty(1).uniform_(0.9, 0.9999, generator=g))
    eps = float(10.0 ** torch.empty(1).uniform_(-8, -4, generator=g))
    t = int(torch.randint(1, 7, (1,), generator=g))
    theta_scale = float(10.0 ** torch.empty(1).uniform_(-1, 1, generator=g))
    scale = 10.0 ** torch.empty(t, dtype=torch.float64).uniform_(-3, 3, generator=g)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) * s for s in scale]
    p = torch.nn.Parameter(theta_scale * torch.randn(shape, generator=g, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
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
    label = describe(t=t, shape=shape, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
                     eps=eps)
    return Case((theta, grads[-1], m, v, t, lr, beta1, beta2, eps, weight_decay), expected, label)


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, Any]:
    if not (isinstance(returned, tuple | list) and len(returned) == 3):
        raise WrongForm(f"returned {type(returned).__name__}; return the three new tensors (theta, m, v)")
    theta = case.args[0]
    try:
        new_theta = as_float64(returned[0])
    except (TypeError, ValueError, RuntimeError):
        raise WrongForm(f"the returned theta is {type(returned[0]).__name__}, expected a tensor") from None
    # Compared as the step: theta ~ 10 while the step may be 1e-6, near theta's rounding.
    step = new_theta - theta if new_theta.shape == theta.shape else new_theta
    return {M: returned[1], V: returned[2], STEP: step}


def _adam(case: Case, grad: torch.Tensor, *, bias_correction: bool = True):
    """Adam's moments and its normalized direction m_hat / (sqrt(v_hat) + eps) for ``grad``."""
    _, _, m, v, t, _, beta1, beta2, eps, _ = case.args
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    if bias_correction:
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    else:
        m_hat, v_hat = m, v
    return m, v, m_hat / (v_hat.sqrt() + eps)


def _decayed(case: Case, *, decay_after: bool = False, without_lr: bool = False,
             normalized: bool = False, no_decay: bool = False,
             bias_correction: bool = True) -> dict[str, torch.Tensor]:
    theta, grad, _, _, t, lr, _, beta2, eps, wd = case.args
    _, v, direction = _adam(case, grad, bias_correction=bias_correction)
    if no_decay:
        new = theta - lr * direction
    elif decay_after:
        new = (theta - lr * direction) * (1 - lr * wd)
    elif without_lr:
        new = theta * (1 - wd) - lr * direction
    elif normalized:  # the decay divided by Adam's denominator, as the L2 penalty would be
        new = theta - lr * direction - lr * wd * theta / ((v / (1 - beta2**t)).sqrt() + eps)
    else:
        new = theta * (1 - lr * wd) - lr * direction
    return {STEP: new - theta}


def _l2(case: Case) -> dict[str, torch.Tensor]:
    """Adam with an L2 penalty: the decay term added to the gradient, through both moments."""
    theta, grad, *_, wd = case.args
    m, v, direction = _adam(case, grad + wd * theta)
    return {M: m, V: v, STEP: -case.args[5] * direction}


ADAMW_SLIPS: Slips = {
    "an L2 penalty (grad + weight_decay*theta fed to Adam's moments): that is Adam's weight_decay; "
    "AdamW shrinks theta by (1 - lr*weight_decay) and feeds the moments the gradient alone": _l2,
    "decay applied after Adam's step: AdamW shrinks the old theta, then steps":
        lambda c: _decayed(c, decay_after=True),
    "decay without the learning rate: PyTorch's AdamW multiplies theta by 1 - lr*weight_decay":
        lambda c: _decayed(c, without_lr=True),
    "the decay divided by sqrt(v_hat) + eps: decoupled decay is not normalized by Adam":
        lambda c: _decayed(c, normalized=True),
    "no decay at all: this is Adam's step; AdamW also multiplies theta by 1 - lr*weight_decay":
        lambda c: _decayed(c, no_decay=True),
    "Adam without bias correction (divide m by 1 - beta1**t and v by 1 - beta2**t)":
        lambda c: _decayed(c, bias_correction=False),
}


def check_adamw_step(fn: Callable, n_cases: int = 60, seed: int = 0) -> CheckResult:
    """Check ``fn(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (theta, m, v)``,
    one step of AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW`` takes it, with ``t``
    the number of the step (1 at the first):

        theta ← theta (1 - lr · weight_decay),
        m ← β1 m + (1-β1) g,   v ← β2 v + (1-β2) g²,
        theta ← theta - lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps),

    against ``torch.optim.AdamW`` run on a copy of ``theta`` (float64) for random shapes,
    hyper-parameters, weights and gradients, at steps ``t`` from 1 to 6 with torch's state before
    the step. The message names the quantity that is wrong and the slip of :data:`ADAMW_SLIPS`
    it matches."""
    return run("adamw step", fn, _adamw_case, n_cases, seed, rtol=1e-6, atol=0.0,
               part_atol={STEP: 1e-13}, slips=ADAMW_SLIPS, observe=_observe,
               reference="torch.optim.AdamW")


__all__ = ["ADAMW_SLIPS", "check_adamw_step"]
