"""Signal propagation at initialization: the mean-field theory of wide random networks (the
chapter "Signal propagation").

A wide MLP with weights N(0, sigma_w² / fan_in) and biases N(0, sigma_b²) is described, layer by
layer, by one number: the second moment ``q_l`` of a pre-activation (Poole et al. 2016). Its
backward factor ``chi_1`` says whether gradients explode or vanish (Schoenholz et al. 2017).
Every activation of :data:`gradlab.activations.ACTIVATIONS` is covered. The Gaussian
expectations are computed by Gauss-Legendre quadrature, not sampled, so the theory lines in the
book carry no Monte Carlo noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from .._validate import check_int, check_real
from ..activations import Activation
from ..activations import get as get_activation

ArrayFn = Callable[[np.ndarray], np.ndarray]

# Composite Gauss-Legendre rule for E[f(z)], z ~ N(0, 1): 24 nodes on each panel, six panels per
# half line. The narrow panels near 0 resolve phi'(sqrt(q) z)², which for tanh is a spike of
# width 1/sqrt(q). Beyond |z| = 12 the normal density is below 1e-31. The rule always splits at
# 0 and, for a function with kinks, also at each kink's z = kink / sqrt(q), so that every panel
# holds a smooth piece. Tested against closed forms and 30-digit mpmath integration for every
# activation of the registry, E[phi²] and E[phi'²] (tests/test_theory_mean_field.py): relative
# error below 1e-14 for q in [1e-4, 1e4] (the worst, 8e-15, is tanh'² at q = 1e4).
_QUAD_EDGES = (0.0, 0.05, 0.25, 1.0, 3.0, 6.0, 12.0)
_QUAD_NODES_PER_PANEL = 24
_LEG_T, _LEG_W = np.polynomial.legendre.leggauss(_QUAD_NODES_PER_PANEL)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_TINY = float(np.finfo(float).tiny)


def _normal_rule(breaks: Iterable[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` with ``sum(w f(z)) = E[f(z)]``, ``z ~ N(0, 1)``, for an ``f``
    smooth between the panel edges ``0, ±0.05, ..., ±12`` and the extra ``breaks``."""
    edges = {s * e for e in _QUAD_EDGES for s in (-1.0, 1.0)}
    edges.update(b for b in breaks if -_QUAD_EDGES[-1] < b < _QUAD_EDGES[-1])
    edges = np.array(sorted(edges))
    half = (edges[1:] - edges[:-1])[:, None] / 2.0
    z = (edges[:-1, None] + half * (_LEG_T + 1.0)).ravel()  # [-1, 1] -> each panel
    w = (half * _LEG_W).ravel() * np.exp(-0.5 * z**2) / _SQRT_2PI
    return z, w / w.sum()  # E[1] = 1 to rounding, so that q* = 0 comes out as exactly 0


_QUAD_Z, _QUAD_W = _normal_rule()


def _expectation(fn: ArrayFn, q: float, kinks: tuple[float, ...]) -> float:
    """``E[fn(sqrt(q) z)]`` (unchecked arguments); see :func:`gaussian_expectation`."""
    if q == 0.0:
        # The limit q -> 0+: fn at 0 from either side (z's sign), so that a kink at 0 counts
        # both one-sided values, as a network with vanishing but nonzero pre-activations does.
        return float(np.dot(fn(np.copysign(_TINY, _QUAD_Z)), _QUAD_W))
    s = math.sqrt(q)
    breaks = [k / s for k in kinks if k != 0.0]  # 0 is always an edge
    z, w = _normal_rule(breaks) if breaks else (_QUAD_Z, _QUAD_W)
    return float(np.dot(fn(s * z), w))


def gaussian_expectation(fn: ArrayFn, q: float, *, kinks: Iterable[float] = ()) -> float:
    """``E[fn(sqrt(q) z)]`` for ``z ~ N(0, 1)``, by Gauss-Legendre quadrature.

    ``fn`` must accept and return NumPy arrays (elementwise). The rule is composite
    Gauss-Legendre on ``[-12, 12]`` in ``z``, split at 0 and at ``kink / sqrt(q)`` for every
    point of ``kinks`` (where ``fn`` or its derivative jumps), so a kink costs no accuracy:
    relative error below 1e-14 for ``E[phi²]`` and ``E[phi'²]`` of every activation of the
    registry, for ``q`` in [1e-4, 1e4]. At ``q = 0`` it is the limit ``q -> 0+``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    q = check_real("q", q, minimum=0.0)
    kinks = tuple(check_real(f"kinks[{i}]", k) for i, k in enumerate(kinks))
    return _expectation(fn, q, kinks)


def _check_signal_args(activation: str, sigma_w: float, sigma_b: float) -> tuple[Activation, float, float]:
    act = get_activation(activation)
    sigma_w = check_real("sigma_w", sigma_w, minimum=0.0)
    sigma_b = check_real("sigma_b", sigma_b, minimum=0.0)
    return act, sigma_w, sigma_b


def length_map(activation: str, q: float, sigma_w: float, sigma_b: float) -> float:
    """The variance map ``q_{l+1} = sigma_w² E[phi(sqrt(q_l) z)²] + sigma_b²``, ``z ~ N(0, 1)``.

    ``q_l`` is the second moment of a pre-activation ``z^l_i = (W^l h^{l-1} + b^l)_i`` of a wide
    network with weights N(0, sigma_w² / fan_in) and biases N(0, sigma_b²) (Poole et al. 2016).
    For a positively homogeneous ``phi`` (linear, ReLU, leaky ReLU) ``E[phi(sqrt(q) z)²] = c q``
    with the registry's constant ``c`` (1, 1/2, (1 + a²)/2).
    """
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q = check_real("q", q, minimum=0.0)
    if act.homogeneous is not None:
        return act.homogeneous * sigma_w**2 * q + sigma_b**2
    return sigma_w**2 * _expectation(lambda x: act.np_fn(x) ** 2, q, act.kinks) + sigma_b**2


def _bracket_root(g: Callable[[float], float], a: float, ga: float, b: float, gb: float) -> float:
    """A root of ``g`` between ``a`` and ``b``, where ``g`` changes sign (Illinois method).

    Regula falsi, with the stale end's value halved whenever the same end is kept twice, so
    both ends converge; about ten evaluations reach full double precision.
    """
    kept = 0
    c = 0.5 * (a + b)
    for _ in range(200):
        c = (a * gb - b * ga) / (gb - ga)
        if not min(a, b) < c < max(a, b):
            c = 0.5 * (a + b)
        gc = g(c)
        if gc == 0.0:
            return c
        if (gc > 0) == (gb > 0):
            b, gb = c, gc
            if kept == -1:
                ga *= 0.5
            kept = -1
        else:
            a, ga = c, gc
            if kept == 1:
                gb *= 0.5
            kept = 1
        if abs(b - a) <= 1e-14 * max(abs(a), abs(b)) or abs(b - a) < 1e-300:
            break
    return c


def _fixed_point(length: Callable[[float], float], q0: float, what: str) -> float:
    """The limit of ``q_{l+1} = length(q_l)`` from ``q0``, for an increasing ``length``.

    Because the map is increasing the iterates are monotone: from ``q0`` with
    ``length(q0) < q0`` they decrease to the largest fixed point below ``q0``, otherwise they
    increase to the smallest one above it. Both are found by bracketing (halving or doubling
    ``q``) and a root solve, which also works where plain iteration converges only like 1/l.
    """
    g0 = length(q0) - q0
    if g0 == 0.0:
        return q0
    if g0 < 0.0:
        hi, g_hi = q0, g0
        for _ in range(100):
            lo = 0.5 * hi
            g_lo = length(lo) - lo
            if g_lo >= 0.0:
                return lo if g_lo == 0.0 else _bracket_root(lambda q: length(q) - q, lo, g_lo, hi, g_hi)
            hi, g_hi = lo, g_lo
        g_zero = length(0.0)
        if g_zero == 0.0:  # q = 0 is a fixed point (no bias, phi(0) = 0): the signal dies out
            return 0.0
        return _bracket_root(lambda q: length(q) - q, 0.0, g_zero, hi, g_hi)
    lo, g_lo = q0, g0
    for _ in range(64):
        hi = 2.0 * lo
        g_hi = length(hi) - hi
        if g_hi <= 0.0:
            return hi if g_hi == 0.0 else _bracket_root(lambda q: length(q) - q, lo, g_lo, hi, g_hi)
        lo, g_lo = hi, g_hi
    raise ValueError(
        f"no fixed point: for {what} the length map grows without bound from q0={q0} "
        f"(q > {lo:.3g}), so the pre-activation variance diverges with depth"
    )


def _q_star_callable(phi: ArrayFn, sigma_w: float, sigma_b: float, q0: float, what: str,
                     *, kinks: tuple[float, ...] = ()) -> float:
    """:func:`q_star` for a NumPy function ``phi`` (smooth but for 0 and ``kinks``)."""
    def length(q: float) -> float:
        return sigma_w**2 * _expectation(lambda x: phi(x) ** 2, q, kinks) + sigma_b**2

    return _fixed_point(length, q0, what)


def _chi1_callable(phi: ArrayFn, dphi: ArrayFn, sigma_w: float, sigma_b: float, q0: float = 1.0,
                   what: str = "this activation", *, kinks: tuple[float, ...] = ()) -> float:
    """:func:`chi1` for NumPy functions ``phi`` and ``dphi = phi'`` at the fixed point from ``q0``."""
    q = _q_star_callable(phi, sigma_w, sigma_b, q0, what, kinks=kinks)
    return sigma_w**2 * _expectation(lambda x: dphi(x) ** 2, q, kinks)


def _snap_to_one(chi: float) -> float:
    # sqrt(2)**2 / 2 is 1 + 2e-16: on the critical line of a homogeneous activation, report the
    # exact 1 that the algebra gives, so that depth_scale is inf there rather than 4e15.
    return 1.0 if abs(chi - 1.0) <= 1e-12 else chi


def q_star(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """The fixed point ``q* = sigma_w² E[phi(sqrt(q*) z)²] + sigma_b²`` of :func:`length_map`.

    It is the limit of the length map iterated from ``q0`` (the first layer's pre-activation
    second moment), i.e. the variance a deep network settles to. For ``tanh`` and ``sigmoid``
    it does not depend on ``q0``. For a homogeneous ``phi`` (constant ``c``: 1 for ``linear``,
    1/2 for ``relu``, (1 + a²)/2 for ``leaky_relu``) the map is ``q -> c sigma_w² q +
    sigma_b²``: ``q* = sigma_b² / (1 - c sigma_w²)`` below the critical ``c sigma_w² = 1``, and
    on it, without bias, every ``q`` is fixed (``q* = q0``). SELU with ``sigma_w = 1``,
    ``sigma_b = 0`` has ``q* = 1``, the self-normalizing fixed point (Klambauer et al. 2017).

    Raises:
        ValueError: for an unknown activation, a negative ``sigma_w``/``sigma_b``/``q0``, or when
            there is no fixed point because ``q`` grows without bound (e.g. ``relu`` with
            ``sigma_w² >= 2`` and ``sigma_b > 0``).
    """
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    what = f"activation={act.name!r}, sigma_w={sigma_w:g}, sigma_b={sigma_b:g}"
    if act.homogeneous is not None:
        slope = act.homogeneous * sigma_w**2
        if abs(slope - 1.0) <= 1e-12 and sigma_b == 0.0:
            return q0  # the critical line without bias: every q is a fixed point
        if slope < 1.0 and abs(slope - 1.0) > 1e-12:
            return sigma_b**2 / (1.0 - slope)
        raise ValueError(
            f"no fixed point: for {what} the length map q -> {slope:g} q + {sigma_b**2:g} grows "
            f"without bound (needs {act.homogeneous:g} sigma_w² < 1, or = 1 with "
            "sigma_b = 0), so the pre-activation variance diverges with depth"
        )
    return _q_star_callable(act.np_fn, sigma_w, sigma_b, q0, what, kinks=act.kinks)


def chi1(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """The backward factor ``chi_1 = sigma_w² E[phi'(sqrt(q*) z)²]`` at the fixed point ``q*``.

    Each layer multiplies the expected squared norm of the backpropagated gradient by
    ``chi_1`` (Schoenholz et al. 2017), so ``chi_1 > 1`` explodes and ``chi_1 < 1`` vanishes.
    For a homogeneous ``phi`` ``E[phi'²] = c`` at every ``q``, so ``chi_1 = c sigma_w²`` for
    every ``sigma_w`` and ``sigma_b``, even where ``q`` diverges (``linear``: ``sigma_w²``,
    ``relu``: ``sigma_w² / 2``). Otherwise ``q*`` must exist: raises ``ValueError`` like
    :func:`q_star` where it does not.
    """
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    if act.homogeneous is not None:
        return _snap_to_one(act.homogeneous * sigma_w**2)
    q = q_star(act.name, sigma_w, sigma_b, q0=q0)
    return sigma_w**2 * _expectation(lambda x: act.np_derivative(x) ** 2, q, act.kinks)


def depth_scale(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """``xi = 1 / |log chi_1|``: the number of layers over which the squared gradient norm
    changes by a factor ``e``.

    Schoenholz et al. (2017) write ``xi_grad = -1 / log chi_1``, positive where gradients vanish
    (``chi_1 < 1``); the sign only says the direction, so this returns its absolute value:
    ``inf`` on the critical line ``chi_1 = 1``, ``0`` where ``chi_1 = 0`` (``sigma_w = 0``).
    Defined wherever :func:`chi1` is.
    """
    c = chi1(activation, sigma_w, sigma_b, q0=q0)
    if c == 0.0:
        return 0.0
    return math.inf if c == 1.0 else 1.0 / abs(math.log(c))


def _crossing(
    excess: Callable[[float], float], lo: float, g_lo: float, hi: float, g_hi: float, what: str
) -> float:
    """Where ``excess`` crosses 0 between ``lo`` and ``hi``; a jump (the fixed point reached
    from ``q0`` switching branch, as for GELU) is not a crossing and raises ``ValueError``."""
    root = hi if g_hi == 0.0 else _bracket_root(excess, lo, g_lo, hi, g_hi)
    try:
        ok = abs(excess(root)) <= 1e-9
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"no critical sigma_w for {what}: chi_1 jumps past 1 near sigma_w={root:.6g} (the fixed "
            "point reached from q0 changes branch) instead of crossing it"
        )
    return root


def critical_sigma_w(activation: str, sigma_b: float = 0.0, *, q0: float = 1.0) -> float:
    """The weight scale ``sigma_w`` with ``chi_1(sigma_w, sigma_b) = 1``: the critical line.

    Homogeneous ``phi``: ``1 / sqrt(c)`` for every ``sigma_b`` (``linear``: 1, ``relu``:
    sqrt(2), He et al. 2015), where :func:`chi1` returns exactly 1; with ``sigma_b > 0`` their
    ``q*`` diverges as ``sigma_w`` approaches this value from below. ``tanh``: 1 at
    ``sigma_b = 0`` (Glorot & Bengio 2010), larger with bias. Other activations are solved
    numerically: the smallest ``sigma_w`` where ``chi_1`` reaches 1, scanning upwards, to
    ``|chi_1 - 1| <= 1e-9``.

    Raises:
        ValueError: for bad arguments, or if ``chi_1`` stays below 1 wherever a fixed point exists
            or jumps past it (e.g. ``gelu`` without bias, whose ``q*`` is 0 or infinite).
    """
    act = get_activation(activation)
    sigma_b = check_real("sigma_b", sigma_b, minimum=0.0)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    if act.homogeneous is not None:
        return 1.0 / math.sqrt(act.homogeneous)

    what = f"activation={act.name!r}, sigma_b={sigma_b:g}"

    def excess(sigma_w: float) -> float:
        return chi1(act.name, sigma_w, sigma_b, q0=q0) - 1.0

    # Scan sigma_w upwards in steps of 2^(1/8) from chi_1(0) = 0 until chi_1 reaches 1, then
    # solve in the last step. Where q* stops existing, close in on that edge by bisection: a
    # GELU network reaches chi_1 = 1 only just below it.
    lo, g_lo = 0.0, -1.0
    hi = 0.25
    while hi <= 512.0:
        try:
            g_hi = excess(hi)
        except ValueError:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                try:
                    g_mid = excess(mid)
                except ValueError:
                    hi = mid
                    continue
                if g_mid >= 0.0:
                    return _crossing(excess, lo, g_lo, mid, g_mid, what)
                lo, g_lo = mid, g_mid
            break
        if g_hi >= 0.0:
            return _crossing(excess, lo, g_lo, hi, g_hi, what)
        lo, g_lo, hi = hi, g_hi, hi * 2.0 ** 0.125
    raise ValueError(
        f"no critical sigma_w for {what}: chi_1 stays below 1 for every sigma_w up to {lo:.6g} "
        "with a fixed point"
    )


# ---------------------------------------------------------------------------------------------
# Away from the fixed point, and the mean as well as the variance (the chapter "Activations")
# ---------------------------------------------------------------------------------------------


def gradient_factor(activation: str, q: float, sigma_w: float) -> float:
    """``sigma_w² E[phi'(sqrt(q) z)²]``, ``z ~ N(0, 1)``: the factor by which a wide layer whose
    pre-activations have second moment ``q`` multiplies the expected squared gradient norm.

    The proof of :func:`chi1`'s theorem holds layer by layer at any ``q``; :func:`chi1` is this
    factor at the fixed point ``q*``. Unlike :func:`chi1` it needs no fixed point, so it also
    applies where ``q*`` is unstable or missing. For a homogeneous ``phi`` it is ``c sigma_w²``
    at every ``q`` (``relu``: ``sigma_w² / 2``).
    """
    act = get_activation(activation)
    q = check_real("q", q, minimum=0.0)
    sigma_w = check_real("sigma_w", sigma_w, minimum=0.0)
    if act.homogeneous is not None:
        return _snap_to_one(act.homogeneous * sigma_w**2)
    return sigma_w**2 * _expectation(lambda x: act.np_derivative(x) ** 2, q, act.kinks)


def normalizing_sigma_w(activation: str, q: float = 1.0) -> float:
    """The weight scale at which, without bias, the length map fixes ``q``:
    ``sigma_w = sqrt(q / E[phi(sqrt(q) z)²])``, so that ``length_map(q, sigma_w, 0) = q``.

    It is the initialization that preserves the forward second moment ``q`` (``relu``:
    ``sqrt(2)``, He et al. 2015; ``selu``: 1 at ``q = 1``, Klambauer et al. 2017). Whether that
    fixed point attracts is a separate question: the slope of the length map there decides.

    Raises:
        ValueError: for ``q <= 0`` (every bias-free map fixes 0) or an activation that is 0 on
            the whole Gaussian (no scale moves it).
    """
    act = get_activation(activation)
    q = check_real("q", q, minimum=0.0, strict=True)
    second = act.homogeneous * q if act.homogeneous is not None else _expectation(
        lambda x: act.np_fn(x) ** 2, q, act.kinks)
    if second <= 0.0:
        raise ValueError(f"E[phi²] = 0 for activation={act.name!r}: no weight scale fixes q={q:g}")
    return math.sqrt(q / second)


def _moment_map_callable(phi: ArrayFn, mean: float, variance: float, weight_sum: float,
                         weight_square_sum: float, kinks: tuple[float, ...] = ()) -> tuple[float, float]:
    """:func:`moment_map` for a NumPy function ``phi`` with the given ``kinks`` (unchecked)."""
    shift = mean * weight_sum
    spread = variance * weight_square_sum
    shifted = tuple(k - shift for k in kinks)  # x -> phi(shift + x) has its kinks moved
    first = _expectation(lambda x: phi(shift + x), spread, shifted)
    second = _expectation(lambda x: phi(shift + x) ** 2, spread, shifted)
    return first, max(second - first**2, 0.0)  # a variance; rounding can leave -1e-17


def moment_map(activation: str, mean: float, variance: float, *, weight_sum: float = 0.0,
               weight_square_sum: float = 1.0) -> tuple[float, float]:
    """Klambauer et al. (2017)'s map ``g: (mu, nu) -> (mu_new, nu_new)`` of a unit's input mean
    and variance to its output mean and variance.

    A unit computes ``y = phi(z)``, ``z = sum_i w_i x_i``, from inputs ``x_i`` with mean ``mu``
    and variance ``nu``. With ``omega = sum_i w_i`` (``weight_sum``) and ``tau = sum_i w_i²``
    (``weight_square_sum``), the central limit theorem makes ``z ~ N(mu omega, nu tau)``, and

        ``mu_new = E[phi(z)]``,    ``nu_new = E[phi(z)²] - mu_new²``.

    Their "normalized weights" are ``omega = 0``, ``tau = 1`` (the defaults): then
    ``z ~ N(0, nu)`` and, for ``selu``, ``(0, 1)`` is a fixed point. Computed by the same
    quadrature as :func:`gaussian_expectation`, split at each kink of ``phi``.

    Returns:
        ``(mu_new, nu_new)``.
    """
    act = get_activation(activation)
    mean = check_real("mean", mean)
    variance = check_real("variance", variance, minimum=0.0)
    weight_sum = check_real("weight_sum", weight_sum)
    weight_square_sum = check_real("weight_square_sum", weight_square_sum, minimum=0.0)
    return _moment_map_callable(act.np_fn, mean, variance, weight_sum, weight_square_sum, act.kinks)


class LengthMapPath(NamedTuple):
    """What :func:`length_map_path` returns: three arrays over the layers ``l = 1, ..., depth``.

    Attributes:
        q: the pre-activation second moments ``q_l`` (``q[0] = q1``).
        chi: the backward factor of each layer, ``chi(q_l) = sigma_w² E[phi'(sqrt(q_l) z)²]``.
        grad_sq_ratio: ``E ||dL/dz_l||² / ||dL/dz_L||² = chi(q_l) chi(q_{l+1}) ... chi(q_{L-1})``
            with ``L = depth`` (1 at ``l = L``).
    """

    q: np.ndarray
    chi: np.ndarray
    grad_sq_ratio: np.ndarray


def length_map_path(
    activation: str, sigma_w: float, sigma_b: float, *, q1: float, depth: int
) -> LengthMapPath:
    """The mean-field prediction layer by layer, before (or without) reaching the fixed point.

    ``q_1 = q1`` is the second moment of the first pre-activations (``sigma_w² E[x_j²] +
    sigma_b²`` for an input ``x``), and ``q_{l+1} = length_map(q_l)``. Backpropagating from the
    pre-activations ``z_{l+1}`` to ``z_l = W_l h_{l-1} + b_l`` multiplies the mean squared
    gradient norm by ``chi(q_l) = sigma_w² E[phi'(sqrt(q_l) z)²]`` (:func:`gradient_factor`: the
    weights ``W_{l+1}`` times the slopes ``phi'(z_l)``), so through a network of ``depth``
    layers whose last is a linear read-out,

        E ||dL/dz_l||² / ||dL/dz_L||² = prod_{k=l}^{L-1} chi(q_k).

    At the fixed point ``q*`` every factor is :func:`chi1` and the product is ``chi_1^(L-l)``;
    on the way to it (inputs whose ``q1`` is not ``q*``, or a fixed point that is approached
    slowly, as tanh at ``sigma_w = 1`` without bias approaches ``q* = 0`` with ``q_l ~ 1/(2l)``)
    the factors differ from ``chi_1`` and the product is what a network of that depth shows.
    """
    act, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q = check_real("q1", q1, minimum=0.0)
    depth = check_int("depth", depth, minimum=1)
    qs, chis = [], []
    for _ in range(depth):
        qs.append(q)
        chis.append(gradient_factor(act.name, q, sigma_w))
        q = length_map(act.name, q, sigma_w, sigma_b)
    chi = np.array(chis)
    # ratio[l] = chi[l] * ... * chi[L-2] (0-based), and 1 for the read-out's own pre-activation
    ratio = np.append(np.cumprod(chi[-2::-1])[::-1], 1.0) if depth > 1 else np.ones(1)
    return LengthMapPath(np.array(qs), chi, ratio)
