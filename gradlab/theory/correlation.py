"""Two inputs through a wide random network: the correlation map, its fixed point ``c*`` and the
correlation depth scale ``xi_c`` (Poole et al. 2016; Schoenholz et al. 2017), the quantities in
which Schoenholz et al. state how deep a random network can be trained (the chapter "Signal
propagation at initialization").

Two inputs ``x_a``, ``x_b`` give pre-activations ``z_a``, ``z_b`` whose entries, in the wide
limit of :mod:`~gradlab.theory.mean_field`, are jointly Gaussian. At the fixed point both have
second moment ``q*`` and the state of the pair is their correlation ``c = E[z_a z_b] / q*``.
One layer maps it to

    ``c_{l+1} = C(c_l) := (sigma_w² E[phi(u_1) phi(u_2)] + sigma_b²) / q*``,
    ``u_1 = sqrt(q*) z_1``,  ``u_2 = sqrt(q*) (c z_1 + sqrt(1 - c²) z_2)``,

with ``z_1, z_2`` independent N(0, 1). ``c = 1`` is always a fixed point, and ``C'(1) = chi_1``.
The expectations are computed by the quadrature of :mod:`~gradlab.theory.mean_field`: an outer
rule in ``z_1`` and, for each of its nodes, an inner rule in ``z_2`` split at the kinks of
``phi``, so ReLU's kink costs no accuracy.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_real
from ..activations import Activation
from .mean_field import (
    _QUAD_W,
    _QUAD_Z,
    _bracket_root,
    _check_signal_args,
    _expectation,
    _normal_rule,
    chi1,
    q_star,
)


def _pair_expectation(f, g, q: float, c: float, kinks: tuple[float, ...]) -> float:
    """``E[f(u_1) g(u_2)]`` for ``u_1 = sqrt(q) z_1``, ``u_2 = sqrt(q) (c z_1 + sqrt(1 - c²) z_2)``."""
    if q == 0.0:
        return f(0.0) * g(0.0)
    root_q = math.sqrt(q)
    spread = q * max(1.0 - c * c, 0.0)  # variance of u_2 given z_1
    outer_breaks = [k / root_q for k in kinks if k != 0.0]
    z1, w1 = _normal_rule(outer_breaks) if outer_breaks else (_QUAD_Z, _QUAD_W)
    u1 = root_q * z1
    mean2 = c * u1  # E[u_2 | z_1]
    if spread == 0.0:  # c = +-1: u_2 = c u_1
        return float(np.dot(f(u1) * g(mean2), w1))
    if not kinks:  # smooth: one product rule
        inner = g(mean2[:, None] + math.sqrt(spread) * _QUAD_Z[None, :]) @ _QUAD_W
    else:  # the inner integrand g(mean + x) has its kinks at k - mean: split there
        inner = np.array([
            _expectation(lambda x, m=m: g(m + x), spread, tuple(k - m for k in kinks))
            for m in mean2
        ])
    return float(np.dot(f(u1) * inner, w1))


def _check_c(c: float) -> float:
    c = check_real("c", c)
    if not -1.0 <= c <= 1.0:
        raise ValueError(f"c must lie in [-1, 1] (a correlation), got {c}")
    return c


def _setting(
    activation: str, sigma_w: float, sigma_b: float, q0: float
) -> tuple[Activation, float, float, float]:
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q = q_star(act.name, sigma_w, sigma_b, q0=q0)  # validates q0; raises where q* does not exist
    return act, sigma_w, sigma_b, q


def _map(act: Activation, c: float, sigma_w: float, sigma_b: float, q: float) -> float:
    if q == 0.0:
        return 1.0  # every pre-activation is 0: both inputs give the same (zero) representation
    return (sigma_w**2 * _pair_expectation(act.np_fn, act.np_fn, q, c, act.kinks) + sigma_b**2) / q


def _slope(act: Activation, c: float, sigma_w: float, q: float) -> float:
    return sigma_w**2 * _pair_expectation(act.np_derivative, act.np_derivative, q, c, act.kinks)


def correlation_map(activation: str, c: float, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """One layer's map of the correlation of two inputs at the fixed point length ``q*``:

        ``C(c) = (sigma_w² E[phi(u_1) phi(u_2)] + sigma_b²) / q*``,
        ``u_1 = sqrt(q*) z_1``,  ``u_2 = sqrt(q*) (c z_1 + sqrt(1 - c²) z_2)``,

    ``z_1, z_2`` independent N(0, 1) (Poole et al. 2016). ``C(1) = 1``. ``q*`` is
    :func:`~gradlab.theory.q_star` (from ``q0``); raises ``ValueError`` where it does not exist.
    """
    c = _check_c(c)
    act, sigma_w, sigma_b, q = _setting(activation, sigma_w, sigma_b, q0)
    return _map(act, c, sigma_w, sigma_b, q)


def correlation_slope(activation: str, c: float, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """``C'(c) = sigma_w² E[phi'(u_1) phi'(u_2)]``, the slope of :func:`correlation_map`.

    (Differentiate under the integral: ``d E[phi(u_1) phi(u_2)] / dc = q* E[phi'(u_1) phi'(u_2)]``,
    Gaussian integration by parts.) At ``c = 1`` it is ``chi_1``, the same factor by which each
    layer multiplies the squared gradient (Schoenholz et al. 2017).
    """
    c = _check_c(c)
    act, sigma_w, _, q = _setting(activation, sigma_w, sigma_b, q0)
    return _slope(act, c, sigma_w, q)


def c_star(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """The stable fixed point ``c*`` of :func:`correlation_map`, where deep representations of
    two different inputs end up.

    In the ordered phase (``chi_1 <= 1``) ``c* = 1``: every pair of inputs converges to the same
    representation. In the chaotic phase (``chi_1 > 1``) ``c = 1`` repels, and ``c*`` is the
    fixed point below 1, found by bracketing ``C(c) - c`` between ``c = 0`` (where
    ``C(0) = (sigma_w² E[phi(u)]² + sigma_b²) / q* >= 0``) and a point just below 1 (where
    ``C(c) - c ~ (1 - chi_1)(1 - c) < 0``). For an odd ``phi`` without bias it is 0.
    """
    act, sigma_w, sigma_b, q = _setting(activation, sigma_w, sigma_b, q0)
    if chi1(act.name, sigma_w, sigma_b, q0=q0) <= 1.0:
        return 1.0

    def excess(c: float) -> float:
        return _map(act, c, sigma_w, sigma_b, q) - c

    g_lo = excess(0.0)
    if g_lo <= 0.0:  # C(0) = 0 up to rounding: 0 is the fixed point
        return 0.0
    gap = 0.5
    for _ in range(60):
        g_hi = excess(1.0 - gap)
        if g_hi < 0.0:
            return _bracket_root(excess, 0.0, g_lo, 1.0 - gap, g_hi)
        gap *= 0.5
    raise ValueError(  # chi_1 > 1 by less than rounding can resolve
        f"no correlation fixed point below 1 resolved for activation={act.name!r}, "
        f"sigma_w={sigma_w:g}, sigma_b={sigma_b:g}: chi_1 is within rounding of 1"
    )


def correlation_depth_scale(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """Schoenholz et al. (2017)'s correlation depth scale ``xi_c = -1 / log C'(c*)``: the number
    of layers over which the distance ``|c_l - c*|`` of two inputs' correlation from its fixed
    point shrinks by a factor ``e``.

    In the ordered phase ``c* = 1`` and ``C'(1) = chi_1``, so ``xi_c = -1 / log chi_1``, the
    gradient's depth scale :func:`~gradlab.theory.depth_scale`. In the chaotic phase ``c* < 1``
    and ``C'(c*) < 1`` is a different number, so ``xi_c`` is finite but no longer
    ``1 / |log chi_1|``. It is infinite on the critical line ``chi_1 = 1``. Schoenholz et al.
    found random tanh networks trainable when their depth is at most about ``6 xi_c``.
    """
    act, sigma_w, sigma_b, q = _setting(activation, sigma_w, sigma_b, q0)
    fixed = c_star(act.name, sigma_w, sigma_b, q0=q0)
    slope = chi1(act.name, sigma_w, sigma_b, q0=q0) if fixed == 1.0 else _slope(act, fixed, sigma_w, q)
    if slope >= 1.0:
        return math.inf
    return 0.0 if slope <= 0.0 else -1.0 / math.log(slope)


__all__ = ["c_star", "correlation_depth_scale", "correlation_map", "correlation_slope"]
