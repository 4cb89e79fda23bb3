"""Weight decay and spectral control: how far decoupled weight decay lets a weight grow, the
weight size at which decay and gradient noise balance, and what an orthogonality penalty says
about the singular values (the chapter "Weight decay and spectral control").

Notation: learning rate ``eta``, weight decay ``lam``, decay factor per step
``a = 1 - eta * lam``. Decoupled decay (``torch.optim.AdamW``) and plain SGD with
``weight_decay`` both update ``theta_t = a * theta_{t-1} - eta * u_t``, where ``u_t`` is the
optimizer's step direction (Adam's ``m_hat / (sqrt(v_hat) + eps)``, or SGD's gradient).
"""

from __future__ import annotations

import math

from .._validate import check_int, check_real
from .optimizers import adam_step_bound  # C_t is derived in the chapter "Optimizer choice"


def _check_decay(lr: float, weight_decay: float) -> tuple[float, float]:
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    weight_decay = check_real("weight_decay", weight_decay, minimum=0.0)
    if lr * weight_decay >= 1.0:
        raise ValueError(f"lr * weight_decay must be < 1 (the decay factor 1 - lr * weight_decay "
                         f"must be positive), got {lr * weight_decay}")
    return lr, weight_decay


def _check_betas(beta1: float, beta2: float) -> tuple[float, float]:
    beta1 = check_real("beta1", beta1, minimum=0.0)
    beta2 = check_real("beta2", beta2, minimum=0.0, strict=True)
    if not beta1 < 1.0:
        raise ValueError(f"beta1 must be < 1, got {beta1}")
    if not beta2 < 1.0:
        raise ValueError(f"beta2 must be < 1, got {beta2}")
    if not beta1**2 < beta2:
        raise ValueError(f"Adam's step bound needs beta1**2 < beta2, got beta1={beta1}, beta2={beta2}")
    return beta1, beta2


def adamw_weight_bound(
    theta0: float, lr: float, weight_decay: float, steps: int, *, beta1: float = 0.9,
    beta2: float = 0.999,
) -> float:
    """The largest ``|theta_t|`` one coordinate can reach after ``steps`` AdamW steps from
    ``theta0``, whatever the gradients (``eps = 0``; ``eps > 0`` only shortens the steps).

    From ``theta_t = a theta_{t-1} - eta u_t`` with ``|u_s| <= C_s`` (:func:`adam_step_bound`),

        |theta_t| <= a^t |theta0| + eta * sum_{s=1}^{t} a^(t-s) C_s
                  <= a^t |theta0| + (1 - a^t) C_inf / lam          (lam > 0),

    and the first form is an equality for the gradients that attain every ``C_s`` with the
    sign that pushes ``theta`` away from zero. So the weight stays below
    ``max(|theta0|, C_inf / lam)`` for ever, however large the gradients are. With
    ``weight_decay = 0`` the bound grows without limit, like ``eta * C_inf * t``.
    """
    theta0 = check_real("theta0", theta0)
    lr, weight_decay = _check_decay(lr, weight_decay)
    steps = check_int("steps", steps, minimum=0)
    beta1, beta2 = _check_betas(beta1, beta2)
    a = 1.0 - lr * weight_decay
    reach = 0.0
    for s in range(1, steps + 1):  # reach_s = a reach_{s-1} + eta C_s
        reach = a * reach + lr * adam_step_bound(s, beta1, beta2)
    return a**steps * abs(theta0) + reach


def noise_equilibrium_rms(
    lr: float, weight_decay: float, *, beta1: float = 0.0, noise_std: float = 1.0
) -> float:
    """The stationary root-mean-square of a weight whose steps are pure noise, under decay.

    The model: ``theta_t = a theta_{t-1} - eta u_t`` with ``u_t = (1 - beta1) sum_j beta1^j
    sigma xi_{t-j}``, an exponential average of white noise ``xi`` of variance 1 and
    standard deviation ``sigma = noise_std``. Unrolled, ``theta_t = -eta sigma (1 - beta1)
    sum_n c_n xi_{t-n}`` with ``c_n = sum_{k=0}^{n} a^k beta1^(n-k)``, the impulse response of
    the two geometric filters in series (poles ``a`` and ``b = beta1``), so

        E theta^2 = eta^2 sigma^2 (1 - b)^2 sum_n c_n^2,
        sum_n c_n^2 = (1 + a b) / ((1 - a b) (1 - a^2) (1 - b^2)),

    which is ``eta^2 sigma^2 / (1 - a^2) ~ eta sigma^2 / (2 lam)`` for ``beta1 = 0``.

    - SGD with ``weight_decay`` on gradients of noise ``sigma``: ``beta1 = 0``,
      ``noise_std = sigma``; the weight's size grows with the noise.
    - AdamW on such gradients: ``beta1`` is Adam's, and ``noise_std = 1`` because Adam divides
      by ``sqrt(v_hat) ~ sigma``; the weight's size, about ``sqrt(eta / (2 lam))``, does not
      depend on ``sigma`` (once ``v_hat`` has settled and ``sigma >> eps``).
    """
    lr, weight_decay = _check_decay(lr, weight_decay)
    if weight_decay == 0.0:
        raise ValueError("weight_decay must be > 0: without decay the noise is a random walk "
                         "and has no stationary size")
    beta1 = check_real("beta1", beta1, minimum=0.0)
    if not beta1 < 1.0:
        raise ValueError(f"beta1 must be < 1, got {beta1}")
    noise_std = check_real("noise_std", noise_std, minimum=0.0)
    a, b = 1.0 - lr * weight_decay, beta1
    total = (1 + a * b) / ((1 - a * b) * (1 - a * a) * (1 - b * b))
    return lr * noise_std * (1 - b) * math.sqrt(total)


def penalty_singular_value_bounds(penalty: float) -> tuple[float, float]:
    """Bounds on every singular value ``s`` of a matrix with orthogonality penalty
    ``R = ||W^T W - I||_F^2 = sum_i (s_i^2 - 1)^2``.

    Each term is at most the sum, so ``|s_i^2 - 1| <= sqrt(R)``:

        sqrt(max(0, 1 - sqrt(R))) <= s_i <= sqrt(1 + sqrt(R)).

    Returns ``(lower, upper)``. A small penalty keeps the gain per step of a recurrent network
    near 1, but not at or below 1: through ``k`` steps the Pascanu bound allows
    ``upper**k = (1 + sqrt(R))**(k/2)`` (for ``|phi'| <= 1``).
    """
    penalty = check_real("penalty", penalty, minimum=0.0)
    root = math.sqrt(penalty)
    return math.sqrt(max(0.0, 1.0 - root)), math.sqrt(1.0 + root)


__all__ = ["adamw_weight_bound", "noise_equilibrium_rms", "penalty_singular_value_bounds"]
