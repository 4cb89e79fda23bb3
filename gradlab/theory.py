"""Closed-form results that the chapters derive; the tests compare each with a measurement."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    multiplies the gradient's norm by at most ``||W_l||_2 * slope``. An empty list gives 1.
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
