"""Gradient clipping: where fixed-step gradient descent on ``x⁴`` diverges, how long clipped
descent walks before it becomes plain descent, and where clipped SGD settles when the noise is
skewed (the chapter "Clipping in theory")."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .._validate import check_real


def quartic_gd_threshold(eta: float) -> float:
    """The starting point ``|x_0| = 1 / sqrt(2 eta)`` that separates convergence from divergence
    of gradient descent ``x_{t+1} = x_t - eta f'(x_t)`` on ``f(x) = x⁴``.

    One step multiplies ``x`` by ``1 - 4 eta x²``, whose absolute value is below 1 exactly when
    ``x² < 1 / (2 eta)``. From ``|x_0|`` below the threshold ``|x_t|`` decreases to 0; at the
    threshold the iterates alternate between ``±x_0``; above it ``|x_t|`` grows without bound.
    """
    eta = check_real("eta", eta, minimum=0.0, strict=True)
    return 1.0 / math.sqrt(2.0 * eta)


def quartic_clipped_steps(x0: float, eta: float, c: float) -> int:
    """Steps of clipped gradient descent on ``f(x) = x⁴`` before ``|x| <= r = (c / 4)^(1/3)``.

    The step is ``x_{t+1} = x_t - eta * clip(f'(x_t))`` with ``clip(g) = g min(1, c / |g|)``.
    While ``|x_t| > r`` the gradient ``4 x³`` is larger than ``c`` in size, so the step has
    length ``eta c`` exactly; when ``eta c <= r`` it never overshoots 0, and the walk needs
    ``ceil((|x_0| - r) / (eta c))`` steps (0 if ``|x_0| <= r``). From there on the step is plain
    gradient descent inside ``|x| <= r``, which converges to 0 because ``r < 1 / sqrt(2 eta)``
    (:func:`quartic_gd_threshold`): ``eta c <= r`` means ``eta <= r / c = 1 / (4 r²)``. So clipped
    descent converges from every ``x_0``. (The count is exact in exact arithmetic; in floating
    point a walk that ends exactly on ``r`` can take one step more.)

    Raises:
        ValueError: if ``eta c > r``: a clipped step could overshoot 0 by more than it gained.
    """
    x0 = check_real("x0", x0)
    eta = check_real("eta", eta, minimum=0.0, strict=True)
    c = check_real("c", c, minimum=0.0, strict=True)
    r = (c / 4.0) ** (1.0 / 3.0)
    if eta * c > r:
        raise ValueError(f"eta * c = {eta * c:.4g} exceeds r = (c/4)^(1/3) = {r:.4g}: a clipped "
                         "step could overshoot the minimum")
    if abs(x0) <= r:
        return 0
    return math.ceil((abs(x0) - r) / (eta * c))


def _as_list(name: str, values: object) -> list:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    return [float(v) if isinstance(v, np.generic) else v for v in values]


def _clip(value: float, c: float) -> float:
    return max(-c, min(c, value))


def clipped_sgd_fixed_point(values: Sequence[float], probs: Sequence[float], c: float) -> float:
    """The point ``x̄`` where clipped SGD on ``f(x) = E[(x - ξ)²] / 2`` has zero mean step.

    ``ξ`` takes the value ``values[i]`` with probability ``probs[i]``. The stochastic gradient
    is ``g = x - ξ``, unbiased (``E g = f'(x) = x - E ξ``), so plain SGD settles around the
    minimizer ``x* = E ξ``. Clipped SGD steps by ``clip(g) = g min(1, c / |g|)`` and settles,
    for small learning rates, around the root ``x̄`` of

        phi(x) = sum_i probs[i] * clip(x - values[i]),

    which differs from ``x*`` unless the clipping is symmetric about it (``ξ`` symmetric about
    its mean, or ``c`` at least as large as every ``|x* - values[i]|``). ``phi`` is continuous,
    nondecreasing and piecewise linear with breaks at ``values[i] ± c``; the root is found
    exactly on its linear pieces. Where ``phi`` vanishes on a whole interval (every sample
    clipped, equal probability on each side) the midpoint of that interval is returned.

    Args:
        values: the values of ``ξ`` (at least one, finite): a list, tuple or 1-D array.
        probs: their probabilities (nonnegative, summing to 1 within 1e-9).
        c: the clipping threshold, ``> 0``.
    """
    c = check_real("c", c, minimum=0.0, strict=True)
    values, probs = _as_list("values", values), _as_list("probs", probs)
    if len(values) == 0:
        raise ValueError("values must hold at least one value")
    if len(probs) != len(values):
        raise ValueError(f"probs has {len(probs)} entries for {len(values)} values")
    vs = [check_real(f"values[{i}]", v) for i, v in enumerate(values)]
    ps = [check_real(f"probs[{i}]", p, minimum=0.0) for i, p in enumerate(probs)]
    if abs(sum(ps) - 1.0) > 1e-9:
        raise ValueError(f"probs must sum to 1, got {sum(ps)}")

    def phi(x: float) -> float:
        return sum(p * _clip(x - v, c) for v, p in zip(vs, ps, strict=True))

    knots = sorted({v + s for v in vs for s in (-c, c)})
    phis = [phi(k) for k in knots]  # phis[0] = -c and phis[-1] = +c

    def crossing(j: int) -> float:
        """Where the linear piece between knots j-1 and j reaches 0."""
        a, b, fa, fb = knots[j - 1], knots[j], phis[j - 1], phis[j]
        return a + (0.0 - fa) * (b - a) / (fb - fa)

    first_nonneg = next(j for j, f in enumerate(phis) if f >= 0.0)
    left = knots[first_nonneg] if phis[first_nonneg] == 0.0 else crossing(first_nonneg)
    last_nonpos = max(j for j, f in enumerate(phis) if f <= 0.0)
    right = knots[last_nonpos] if phis[last_nonpos] == 0.0 else crossing(last_nonpos + 1)
    return 0.5 * (left + right)


__all__ = ["clipped_sgd_fixed_point", "quartic_clipped_steps", "quartic_gd_threshold"]
