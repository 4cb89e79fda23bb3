"""Closed-form results that the chapters derive; the tests compare each with a measurement."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._validate import check_choice, check_int, check_real, check_tensor

# ---------------------------------------------------------------------------------------------
# Chapter 1-2: backpropagation as a product of Jacobians
# ---------------------------------------------------------------------------------------------

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def activation_derivative(activation: str, z: torch.Tensor) -> torch.Tensor:
    """``phi'(z)`` in closed form for ``linear``, ``relu``, ``tanh``, ``sigmoid`` and ``gelu``.

    ReLU's derivative at exactly 0 is taken as 0, as PyTorch's autograd does.
    """
    activation = check_choice("activation", activation, ["linear", "relu", "tanh", "sigmoid", "gelu"])
    z = check_tensor("z", z)
    if activation == "linear":
        return torch.ones_like(z)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1.0 - s)
    # gelu(z) = z * Phi(z)  =>  gelu'(z) = Phi(z) + z * pdf(z)
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z**2) / _SQRT_2PI


def max_slope(activation: str) -> float:
    """``gamma = sup_z |phi'(z)|``, the constant in the spectral-norm bound.

    GELU's derivative peaks above 1, at ``z = sqrt(2)``.
    """
    activation = check_choice("activation", activation, ["linear", "relu", "tanh", "sigmoid", "gelu"])
    if activation == "sigmoid":
        return 0.25
    if activation == "gelu":
        z = math.sqrt(2.0)
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) + z * math.exp(-0.5 * z * z) / _SQRT_2PI
    return 1.0


def layer_jacobians(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    x: torch.Tensor,
    activation: str,
) -> list[torch.Tensor]:
    """Jacobians ``J_l = d h_l / d h_{l-1}`` of an MLP at the single input ``x``.

    The network is ``h_l = phi(W_l h_{l-1} + b_l)`` for every layer but the last, which is
    linear (a read-out), as in :func:`gradlab.models.mlp`. Then ``J_l = diag(phi'(z_l)) W_l``
    for hidden layers and ``J_L = W_L`` for the read-out.
    """
    if len(weights) == 0:
        raise ValueError("weights must hold at least one matrix")
    if len(biases) != len(weights):
        raise ValueError(f"biases must have one entry per weight, got {len(biases)} for {len(weights)}")
    h = check_tensor("x", x, ndim=1)
    jacobians = []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        w = check_tensor(f"weights[{i}]", w, ndim=2).detach()
        z = w @ h + (b.detach() if b is not None else 0.0)
        if i == len(weights) - 1:
            jacobians.append(w.clone())
            h = z
        else:
            jacobians.append(activation_derivative(activation, z)[:, None] * w)
            h = _apply(activation, z)
    return jacobians


def _apply(activation: str, z: torch.Tensor) -> torch.Tensor:
    return {
        "linear": lambda t: t,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": torch.nn.functional.gelu,
    }[activation](z)


def jacobian_product(jacobians: Sequence[torch.Tensor]) -> torch.Tensor:
    """``J_L ... J_2 J_1``: the Jacobian of the whole network from a list in forward order."""
    if len(jacobians) == 0:
        raise ValueError("jacobians must hold at least one matrix")
    product = check_tensor("jacobians[0]", jacobians[0], ndim=2)
    for i, j in enumerate(jacobians[1:], start=1):
        j = check_tensor(f"jacobians[{i}]", j, ndim=2)
        if j.shape[1] != product.shape[0]:
            raise ValueError(
                f"jacobians[{i}] has {j.shape[1]} columns but the product so far has "
                f"{product.shape[0]} rows"
            )
        product = j @ product
    return product


def spectral_norm(matrix: torch.Tensor) -> float:
    """Largest singular value ``||A||_2`` of a matrix."""
    matrix = check_tensor("matrix", matrix, ndim=2)
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2))


def spectral_bound(weights: Sequence[torch.Tensor], slope: float = 1.0) -> float:
    """Upper bound ``prod_k ||W_k||_2 * slope`` on the gain of backprop through ``weights``.

    Since ``dL/dh_{l-1} = W_l^T diag(phi'(z_l)) dL/dh_l`` and ``|phi'| <= slope``, each layer
    multiplies the gradient's norm by at most ``||W_l||_2 * slope``. Every matrix is paired with
    one activation derivative: for a network whose last layer is a linear read-out, bound the
    read-out separately (``spectral_norm(W_L)``) or pair each ``W_k`` with the derivative of the
    layer below it, as the chapter on Jacobians does. An empty list gives 1.
    """
    slope = check_real("slope", slope, minimum=0.0)
    bound = 1.0
    for i, w in enumerate(weights):
        bound *= spectral_norm(check_tensor(f"weights[{i}]", w, ndim=2)) * slope
    return bound


def average_growth_factor(weight: torch.Tensor) -> float:
    """Root-mean-square gain ``||W||_F / sqrt(fan_out)`` of ``g -> W^T g`` over random ``g``.

    For a direction ``g`` drawn uniformly from the sphere, ``E ||W^T g||^2 = ||W||_F^2 / fan_out``
    ``* ||g||^2``: the mean of the squared singular values, for a square ``W``. This is the
    average case, against the worst case ``||W||_2`` of :func:`spectral_norm`.
    """
    weight = check_tensor("weight", weight, ndim=2).detach().double()
    return float(torch.linalg.matrix_norm(weight) / math.sqrt(weight.shape[0]))


def log_growth_rate(gain: float, width: int) -> float:
    """Exact ``E log(||W^T g|| / ||g||)`` for a ``width x width`` Gaussian ``W`` of variance
    ``gain**2 / width``.

    ``||W^T g||^2 / ||g||^2`` is ``gain**2 / width`` times a chi-square variable with ``width``
    degrees of freedom, whose log has mean ``digamma(width/2) + log 2``. Layers are independent,
    so ``log ||g_l||`` is a random walk with this drift: the typical per-layer factor is
    ``exp(rate)``, a little below ``gain``, and tends to ``gain`` as the width grows.
    """
    gain = check_real("gain", gain, minimum=0.0, strict=True)
    width = check_int("width", width, minimum=1)
    digamma = float(torch.special.digamma(torch.tensor(width / 2.0, dtype=torch.float64)))
    return math.log(gain) + 0.5 * (digamma + math.log(2.0) - math.log(width))


def log_growth_variance(width: int) -> float:
    """Per-layer variance of ``log(||W^T g|| / ||g||)`` for a Gaussian ``W``: ``trigamma(width/2)/4``.

    It does not depend on the gain; the spread of ``log ||g_l||`` grows like ``sqrt(l)``.
    """
    width = check_int("width", width, minimum=1)
    x = torch.tensor(width / 2.0, dtype=torch.float64)
    return float(torch.special.polygamma(1, x)) / 4.0


def matrix_power_norms(matrix: torch.Tensor, max_power: int) -> torch.Tensor:
    """``||A^k||_2`` for ``k = 0, ..., max_power`` (a 1-D float64 tensor).

    For a non-normal ``A`` these can grow for a while even when every eigenvalue has modulus
    below 1; they decay only once ``k`` is large (Trefethen & Embree 2005).
    """
    matrix = check_tensor("matrix", matrix, ndim=2).detach().double()
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    max_power = check_int("max_power", max_power, minimum=0)
    norms = []
    power = torch.eye(matrix.shape[0], dtype=torch.float64)
    for _ in range(max_power + 1):
        norms.append(torch.linalg.matrix_norm(power, ord=2))
        power = matrix @ power
    return torch.stack(norms)


def spectral_radius(matrix: torch.Tensor) -> float:
    """Largest eigenvalue modulus of a square matrix."""
    matrix = check_tensor("matrix", matrix, ndim=2).detach().double()
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
    return float(torch.linalg.eigvals(matrix).abs().max())


# ---------------------------------------------------------------------------------------------
# Chapter 4: recurrent networks
# ---------------------------------------------------------------------------------------------


def _check_recurrence(W: torch.Tensor, preacts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    W = check_tensor("W", W, ndim=2).detach().double()
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {tuple(W.shape)}")
    preacts = check_tensor("preacts", preacts, ndim=2).detach().double()
    if preacts.shape[1] != W.shape[0]:
        raise ValueError(
            f"preacts must have shape (T, {W.shape[0]}) to match W, got {tuple(preacts.shape)}"
        )
    return W, preacts


def bptt_jacobian(W: torch.Tensor, preacts: torch.Tensor, activation: str, t: int = 0) -> torch.Tensor:
    """``d h_T / d h_t = prod_{k=t+1}^{T} diag(phi'(a_k)) W`` (later factors on the left).

    For the recurrence ``h_k = phi(a_k)``, ``a_k = W h_{k-1} + U x_k + b``, with
    ``preacts`` holding ``a_1, ..., a_T`` as rows (shape ``T x n``). ``t = T`` gives the
    identity. Returned as an ``n x n`` float64 tensor.
    """
    W, preacts = _check_recurrence(W, preacts)
    activation = check_choice("activation", activation, ["linear", "relu", "tanh", "sigmoid"])
    T = preacts.shape[0]
    t = check_int("t", t, minimum=0)
    if t > T:
        raise ValueError(f"t must be <= T = {T} (the number of rows of preacts), got {t}")
    slopes = activation_derivative(activation, preacts)
    jacobian = torch.eye(W.shape[0], dtype=torch.float64)
    for k in range(t + 1, T + 1):  # a_k is row k - 1
        jacobian = (slopes[k - 1][:, None] * W) @ jacobian
    return jacobian


def bptt_jacobian_norms(W: torch.Tensor, preacts: torch.Tensor, activation: str) -> torch.Tensor:
    """``||d h_T / d h_{T-k}||_2`` for every lag ``k = 0, ..., T`` (a float64 tensor of T + 1).

    The product is built from the end backwards,
    ``d h_T / d h_{t-1} = (d h_T / d h_t) diag(phi'(a_t)) W``, so all lags cost ``T`` matrix
    products. For ``activation="linear"`` every slope is 1 and the entries are ``||W^k||_2``.
    """
    W, preacts = _check_recurrence(W, preacts)
    activation = check_choice("activation", activation, ["linear", "relu", "tanh", "sigmoid"])
    slopes = activation_derivative(activation, preacts)
    jacobian = torch.eye(W.shape[0], dtype=torch.float64)
    norms = [torch.linalg.matrix_norm(jacobian, ord=2)]
    for k in range(preacts.shape[0], 0, -1):
        jacobian = jacobian @ (slopes[k - 1][:, None] * W)
        norms.append(torch.linalg.matrix_norm(jacobian, ord=2))
    return torch.stack(norms)


def pascanu_bound(W: torch.Tensor, activation: str, lag: int) -> float:
    """``(gamma * lambda_1)^lag``: the upper bound on ``||d h_T / d h_{T-lag}||_2``
    (Pascanu, Mikolov & Bengio 2013).

    ``lambda_1 = ||W||_2`` is the largest singular value of ``W`` and
    ``gamma = sup |phi'|`` (:func:`max_slope`); every factor ``diag(phi'(a_k)) W`` has norm at
    most ``gamma * lambda_1``. Below 1 the bound forces the gradient to vanish geometrically.
    """
    W = check_tensor("W", W, ndim=2)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {tuple(W.shape)}")
    activation = check_choice("activation", activation, ["linear", "relu", "tanh", "sigmoid"])
    lag = check_int("lag", lag, minimum=0)
    return (max_slope(activation) * spectral_norm(W)) ** lag


def cliff_bias(w: float, h0: float) -> float:
    """The bias ``b = atanh(h0) - w h0`` that makes ``h0`` a fixed point of
    ``h -> tanh(w h + b)``.

    With ``s = w (1 - h0^2) > 1`` this fixed point is unstable: started there, ``h_t`` stays at
    ``h0`` for ever, while a slightly larger (smaller) ``b`` sends it to the upper (lower)
    stable fixed point. So the line ``b = cliff_bias(w, h0)`` is the wall of the single-unit
    network's loss surface.
    """
    w = check_real("w", w)
    h0 = check_real("h0", h0)
    if not -1.0 < h0 < 1.0:
        raise ValueError(f"h0 must lie in (-1, 1), the range of tanh, got {h0}")
    return math.atanh(h0) - w * h0


def cliff_gradient_norm(w: float, h0: float, steps: int) -> float:
    """``||d h_T / d(w, b)||`` on the wall ``b = cliff_bias(w, h0)``, with ``h_0 = h0``.

    There ``h_t = h0`` for every ``t``, so each step has the same slope ``c = 1 - h0^2`` and
    gain ``s = w c``. The sensitivities obey ``d_t = c (1 + w d_{t-1})`` for ``b`` and
    ``c (h0 + w d_{t-1})`` for ``w``, so ``dh_T/db = c (s^T - 1) / (s - 1)`` (``c T`` if
    ``s = 1``), ``dh_T/dw = h0 dh_T/db``, and the norm is ``sqrt(1 + h0^2) dh_T/db``.
    """
    w = check_real("w", w)
    h0 = check_real("h0", h0)
    if not -1.0 < h0 < 1.0:
        raise ValueError(f"h0 must lie in (-1, 1), the range of tanh, got {h0}")
    steps = check_int("steps", steps, minimum=0)
    c = 1.0 - h0 * h0
    s = w * c
    geometric = float(steps) if s == 1.0 else (s**steps - 1.0) / (s - 1.0)
    return math.sqrt(1.0 + h0 * h0) * c * geometric


# ---------------------------------------------------------------------------------------------
# Chapter 3: signal propagation at initialization
# ---------------------------------------------------------------------------------------------
# A wide MLP with weights N(0, sigma_w² / fan_in) and biases N(0, sigma_b²) is described, layer
# by layer, by one number: the second moment q_l of a pre-activation (Poole et al. 2016). The
# Gaussian expectations below are computed by Gauss-Legendre quadrature, not sampled, so the
# theory lines in the book carry no Monte Carlo noise.

SIGNAL_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "gelu")

# Composite Gauss-Legendre rule for E[f(z)], z ~ N(0, 1): 24 nodes on each of six panels per half
# line. The split at 0 puts ReLU's kink on a panel edge, where it costs no accuracy; the narrow
# panels near 0 resolve phi'(sqrt(q) z)², which for tanh is a spike of width 1/sqrt(q). Beyond
# |z| = 12 the normal density is below 1e-31. Accurate to ~1e-14 for the activations here,
# q up to 1e4 (tests/test_theory.py).
_QUAD_PANELS = (0.0, 0.05, 0.25, 1.0, 3.0, 6.0, 12.0)
_QUAD_NODES_PER_PANEL = 24


def _gauss_normal_rule(panels: tuple[float, ...], nodes_per_panel: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(nodes_per_panel)
    edges = np.asarray(panels)
    half = (edges[1:] - edges[:-1])[:, None] / 2.0
    z = (edges[:-1, None] + half * (t + 1.0)).ravel()  # [-1, 1] -> each panel
    w = (half * w).ravel()
    z = np.concatenate([-z[::-1], z])
    w = np.concatenate([w[::-1], w]) * np.exp(-0.5 * z**2) / _SQRT_2PI
    return z, w / w.sum()  # E[1] = 1 to rounding, so that q* = 0 comes out as exactly 0


_QUAD_Z, _QUAD_W = _gauss_normal_rule(_QUAD_PANELS, _QUAD_NODES_PER_PANEL)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + e^-x)


def _np_normal_cdf(x: np.ndarray) -> np.ndarray:
    # NumPy has no erf; torch's ndtr in float64 is exact to rounding.
    return torch.special.ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _np_gelu_derivative(x: np.ndarray) -> np.ndarray:
    return _np_normal_cdf(x) + x * np.exp(-0.5 * x**2) / _SQRT_2PI


# (phi, phi') as NumPy functions, matching PyTorch's nn.Identity, ReLU, Tanh, Sigmoid, GELU.
_NP_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "linear": (lambda x: x, np.ones_like),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "sigmoid": (_np_sigmoid, lambda x: _np_sigmoid(x) * (1.0 - _np_sigmoid(x))),
    "gelu": (lambda x: x * _np_normal_cdf(x), _np_gelu_derivative),
}
# For the positively homogeneous activations E[phi(sqrt(q) z)²] = c q and E[phi'(sqrt(q) z)²]
# = c for every q > 0, so the length map is linear and everything has a closed form.
_HOMOGENEOUS = {"linear": 1.0, "relu": 0.5}


def gaussian_expectation(fn: Callable[[np.ndarray], np.ndarray], q: float) -> float:
    """``E[fn(sqrt(q) z)]`` for ``z ~ N(0, 1)``, by Gauss-Legendre quadrature.

    ``fn`` must accept and return NumPy arrays (elementwise). The rule is composite
    Gauss-Legendre on ``[-12, 12]``, split at 0 so that a kink there (ReLU) costs no accuracy:
    exact to rounding for polynomials of moderate degree, and to about 1e-14 relative for the
    activations of this module and their derivatives.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    q = check_real("q", q, minimum=0.0)
    return float(np.dot(fn(math.sqrt(q) * _QUAD_Z), _QUAD_W))


def _check_signal_args(activation: str, sigma_w: float, sigma_b: float) -> tuple[str, float, float]:
    activation = check_choice("activation", activation, SIGNAL_ACTIVATIONS)
    sigma_w = check_real("sigma_w", sigma_w, minimum=0.0)
    sigma_b = check_real("sigma_b", sigma_b, minimum=0.0)
    return activation, sigma_w, sigma_b


def length_map(activation: str, q: float, sigma_w: float, sigma_b: float) -> float:
    """The variance map ``q_{l+1} = sigma_w² E[phi(sqrt(q_l) z)²] + sigma_b²``, ``z ~ N(0, 1)``.

    ``q_l`` is the second moment of a pre-activation ``z^l_i = (W^l h^{l-1} + b^l)_i`` of a wide
    network with weights N(0, sigma_w² / fan_in) and biases N(0, sigma_b²) (Poole et al. 2016).
    """
    activation, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q = check_real("q", q, minimum=0.0)
    phi = _NP_ACTIVATIONS[activation][0]
    return sigma_w**2 * gaussian_expectation(lambda x: phi(x) ** 2, q) + sigma_b**2


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


def _q_star_callable(phi: Callable[[np.ndarray], np.ndarray], sigma_w: float, sigma_b: float,
                     q0: float, what: str) -> float:
    def length(q: float) -> float:
        return sigma_w**2 * float(np.dot(phi(math.sqrt(q) * _QUAD_Z) ** 2, _QUAD_W)) + sigma_b**2

    return _fixed_point(length, q0, what)


def _chi1_callable(phi: Callable[[np.ndarray], np.ndarray], dphi: Callable[[np.ndarray], np.ndarray],
                   sigma_w: float, sigma_b: float, q0: float = 1.0, what: str = "this activation") -> float:
    q = _q_star_callable(phi, sigma_w, sigma_b, q0, what)
    return sigma_w**2 * float(np.dot(dphi(math.sqrt(q) * _QUAD_Z) ** 2, _QUAD_W))


def q_star(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """The fixed point ``q* = sigma_w² E[phi(sqrt(q*) z)²] + sigma_b²`` of :func:`length_map`.

    It is the limit of the length map iterated from ``q0`` (the first layer's pre-activation
    second moment), i.e. the variance a deep network settles to. For ``tanh`` and ``sigmoid``
    it does not depend on ``q0``. For ``linear`` and ``relu`` (``c = 1`` and ``1/2``) the map
    is ``q -> c sigma_w² q + sigma_b²``: ``q* = sigma_b² / (1 - c sigma_w²)`` below the critical
    ``c sigma_w² = 1``, and on it, without bias, every ``q`` is fixed (``q* = q0``).

    Raises:
        ValueError: for an unknown activation, a negative ``sigma_w``/``sigma_b``/``q0``, or when
            there is no fixed point because ``q`` grows without bound (e.g. ``relu`` with
            ``sigma_w² >= 2`` and ``sigma_b > 0``).
    """
    activation, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    what = f"activation={activation!r}, sigma_w={sigma_w:g}, sigma_b={sigma_b:g}"
    if activation in _HOMOGENEOUS:
        slope = _HOMOGENEOUS[activation] * sigma_w**2
        if abs(slope - 1.0) <= 1e-12 and sigma_b == 0.0:
            return q0  # the critical line without bias: every q is a fixed point
        if slope < 1.0 and abs(slope - 1.0) > 1e-12:
            return sigma_b**2 / (1.0 - slope)
        raise ValueError(
            f"no fixed point: for {what} the length map q -> {slope:g} q + {sigma_b**2:g} grows "
            f"without bound (needs {_HOMOGENEOUS[activation]:g} sigma_w² < 1, or = 1 with "
            "sigma_b = 0), so the pre-activation variance diverges with depth"
        )
    return _q_star_callable(_NP_ACTIVATIONS[activation][0], sigma_w, sigma_b, q0, what)


def chi1(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """The backward factor ``chi_1 = sigma_w² E[phi'(sqrt(q*) z)²]`` at the fixed point ``q*``.

    Each layer multiplies the expected squared norm of the backpropagated gradient by
    ``chi_1`` (Schoenholz et al. 2017), so ``chi_1 > 1`` explodes and ``chi_1 < 1`` vanishes.
    ``linear`` gives ``sigma_w²`` and ``relu`` gives ``sigma_w² / 2`` (for every ``q*``).
    Raises ``ValueError`` like :func:`q_star`, including where no fixed point exists.
    """
    activation, sigma_w, sigma_b = _check_signal_args(activation, sigma_w, sigma_b)
    q = q_star(activation, sigma_w, sigma_b, q0=q0)
    if activation in _HOMOGENEOUS:
        slope = _HOMOGENEOUS[activation] * sigma_w**2
        return 1.0 if abs(slope - 1.0) <= 1e-12 else slope  # sqrt(2)**2 / 2 is 1 + 2e-16
    dphi = _NP_ACTIVATIONS[activation][1]
    return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, q)


def depth_scale(activation: str, sigma_w: float, sigma_b: float, *, q0: float = 1.0) -> float:
    """``xi = 1 / |log chi_1|``: the number of layers over which the squared gradient norm
    changes by a factor ``e``.

    Schoenholz et al. (2017) write ``xi_grad = -1 / log chi_1``, positive where gradients vanish
    (``chi_1 < 1``); the sign only says the direction, so this returns its absolute value:
    ``inf`` on the critical line ``chi_1 = 1``, ``0`` where ``chi_1 = 0`` (``sigma_w = 0``).
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

    ``linear``: 1 and ``relu``: sqrt(2) (He et al. 2015), for every ``sigma_b``; with
    ``sigma_b > 0`` their ``q*`` diverges as ``sigma_w`` approaches this value from below.
    ``tanh``: 1 at ``sigma_b = 0`` (Glorot & Bengio 2010), larger with bias. Other activations
    are solved numerically: the smallest ``sigma_w`` where ``chi_1`` reaches 1, scanning upwards.

    Raises:
        ValueError: for bad arguments, or if ``chi_1`` stays below 1 wherever a fixed point exists
            (e.g. ``gelu`` without bias, whose ``q*`` is 0 or infinite).
    """
    activation = check_choice("activation", activation, SIGNAL_ACTIVATIONS)
    sigma_b = check_real("sigma_b", sigma_b, minimum=0.0)
    q0 = check_real("q0", q0, minimum=0.0, strict=True)
    if activation in _HOMOGENEOUS:
        return 1.0 / math.sqrt(_HOMOGENEOUS[activation])

    what = f"activation={activation!r}, sigma_b={sigma_b:g}"

    def excess(sigma_w: float) -> float:
        return chi1(activation, sigma_w, sigma_b, q0=q0) - 1.0

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
