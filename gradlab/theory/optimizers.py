"""Adam's step in closed form: its bound, its size under noise, the shadow of a gradient spike and
its stability threshold (the chapter "Optimizer choice").

Adam (Kingma and Ba 2015) keeps ``m_t = β1 m_{t-1} + (1-β1) g_t`` and
``v_t = β2 v_{t-1} + (1-β2) g_t²`` per coordinate, from ``m_0 = v_0 = 0``, and steps by
``-η m̂_t / (sqrt(v̂_t) + ε)`` with ``m̂_t = m_t / (1-β1^t)``, ``v̂_t = v_t / (1-β2^t)``. Every
function here takes ``ε = 0`` unless it says otherwise; the tests compare each with
``torch.optim.Adam``.
"""

from __future__ import annotations

import math

from .._validate import check_int, check_real


def _check_betas(beta1: float, beta2: float) -> tuple[float, float]:
    beta1 = check_real("beta1", beta1, minimum=0.0)
    beta2 = check_real("beta2", beta2, minimum=0.0, strict=True)
    if beta1 >= 1:
        raise ValueError(f"beta1 must be < 1, got {beta1}")
    if beta2 >= 1:
        raise ValueError(f"beta2 must be < 1, got {beta2}")
    return beta1, beta2


def _check_step(t: int | float) -> int | float:
    if isinstance(t, float) and t == math.inf:
        return t
    return check_int("t", t, minimum=1)


def adam_step_bound(t: int | float, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """``C_t``, the largest ``|Δθ_{t,i}| / η`` Adam can take at step ``t`` (``ε = 0``):

        C_t = (1-β1)/(1-β1^t) · sqrt((1-β2^t)/(1-β2)) · sqrt((1-γ^t)/(1-γ)),   γ = β1²/β2,

    with ``sqrt((1-γ^t)/(1-γ))`` read as ``sqrt(t)`` at ``γ = 1``. It is attained by gradients
    of one sign that grow by ``β2/β1`` per step. ``t = math.inf`` gives
    ``C_∞ = (1-β1)/sqrt((1-β2)(1-γ))``, finite only for ``γ < 1`` (``math.inf`` otherwise).
    """
    beta1, beta2 = _check_betas(beta1, beta2)
    t = _check_step(t)
    gamma = beta1**2 / beta2
    if t == math.inf:
        return (1 - beta1) / math.sqrt((1 - beta2) * (1 - gamma)) if gamma < 1 else math.inf
    history = t if gamma == 1 else (1 - gamma**t) / (1 - gamma)
    return (1 - beta1) / (1 - beta1**t) * math.sqrt((1 - beta2**t) / (1 - beta2) * history)


def _check_noise(mu: float, sigma: float) -> tuple[float, float]:
    mu = check_real("mu", mu)
    sigma = check_real("sigma", sigma, minimum=0.0)
    if mu == 0 and sigma == 0:
        raise ValueError("mu and sigma must not both be 0 (no gradient, no step)")
    return mu, sigma


def adam_noise_step_mean(mu: float, sigma: float) -> float:
    """The mean of ``Δθ_t / (-η)`` late in training for independent gradients of mean ``mu`` and
    standard deviation ``sigma``, in the limit ``β2 → 1`` where ``v̂_t`` is its mean:

        E[m_t] / sqrt(E[g²]) = mu / sqrt(mu² + sigma²).
    """
    mu, sigma = _check_noise(mu, sigma)
    return mu / math.sqrt(mu**2 + sigma**2)


def adam_noise_step_rms(mu: float, sigma: float, beta1: float = 0.9) -> float:
    """The root mean square of ``Δθ_t / η`` in the same setting as :func:`adam_noise_step_mean`:

        sqrt(E[m_t²]) / sqrt(E[g²]) = sqrt(mu² + sigma² (1-β1)/(1+β1)) / sqrt(mu² + sigma²),

    since ``m_t = (1-β1) Σ_k β1^k g_{t-k}`` has mean ``mu`` and variance
    ``sigma² (1-β1)² Σ_k β1^{2k} = sigma² (1-β1)/(1+β1)``. At ``mu = 0`` it is
    ``sqrt((1-β1)/(1+β1))``, 0.229 for ``β1 = 0.9``: a pure-noise coordinate still moves.
    """
    mu, sigma = _check_noise(mu, sigma)
    beta1 = check_real("beta1", beta1, minimum=0.0)
    if beta1 >= 1:
        raise ValueError(f"beta1 must be < 1, got {beta1}")
    return math.sqrt(mu**2 + sigma**2 * (1 - beta1) / (1 + beta1)) / math.sqrt(mu**2 + sigma**2)


def adam_spike_ratio(tau: int, n: int, G: float, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """Adam's step at step ``n = s + tau`` divided by the step without a spike, when a constant
    gradient ``g`` is ``G g`` at step ``s`` alone (``ε = 0``, steps counted from 1):

        r = (1 + (G-1)(1-β1) β1^tau / (1-β1^n)) / sqrt(1 + (G²-1)(1-β2) β2^tau / (1-β2^n)).
    """
    tau = check_int("tau", tau, minimum=0)
    n = check_int("n", n, minimum=1)
    if n <= tau:
        raise ValueError(f"n must be > tau (the spike is at step n - tau >= 1), got n={n}, tau={tau}")
    G = check_real("G", G, minimum=0.0)
    beta1, beta2 = _check_betas(beta1, beta2)
    first = 1 + (G - 1) * (1 - beta1) * beta1**tau / (1 - beta1**n)
    second = 1 + (G**2 - 1) * (1 - beta2) * beta2**tau / (1 - beta2**n)
    return first / math.sqrt(second)


def adam_spike_recovery(G: float, beta2: float = 0.999) -> float:
    """Steps after a spike of size ``G`` until Adam's step is back to half its size, late in
    training (``β2^n ≈ 0``) and once ``m`` has forgotten the spike (``β1^tau ≈ 0``): then
    ``r = (1 + (G²-1)(1-β2) β2^tau)^(-1/2)`` is below 1/2 while ``(G²-1)(1-β2) β2^tau > 3``, so

        tau* = ln((G²-1)(1-β2) / 3) / ln(1/β2),

    and ``0`` when ``(G²-1)(1-β2) <= 3`` (the step never falls below half).
    """
    G = check_real("G", G, minimum=0.0)
    _, beta2 = _check_betas(0.0, beta2)
    x = (G**2 - 1) * (1 - beta2) / 3
    return math.log(x) / math.log(1 / beta2) if x > 1 else 0.0


def adam_stability_threshold(lr: float, beta1: float = 0.9) -> float:
    """The largest eigenvalue of ``P^-1 H`` for which Adam with a frozen preconditioner ``P`` is
    stable on the quadratic ``½ θᵀHθ`` (Cohen et al. 2022):

        λ_max(P^-1 H) < (2 + 2β1) / ((1-β1) η),   38/η for β1 = 0.9.

    Along an eigenvector of ``P^-1 H`` with eigenvalue ``a`` the update is momentum with an
    exponential average, ``x_{t+1} - x_t = β1 (x_t - x_{t-1}) - η(1-β1) a x_t``, whose
    characteristic polynomial ``z² - (1 + β1 - η(1-β1)a) z + β1`` has both roots inside the
    unit circle exactly when ``0 < η(1-β1)a < 2 + 2β1``. ``P`` is Adam's
    ``(1-β1^t)(sqrt(v̂_t) + ε)``, so that the step is ``-η P^-1 m_t``.
    """
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    beta1 = check_real("beta1", beta1, minimum=0.0)
    if beta1 >= 1:
        raise ValueError(f"beta1 must be < 1, got {beta1}")
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


__all__ = [
    "adam_noise_step_mean",
    "adam_noise_step_rms",
    "adam_spike_ratio",
    "adam_spike_recovery",
    "adam_stability_threshold",
    "adam_step_bound",
]
