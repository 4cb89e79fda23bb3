"""Recurrent networks: the Jacobian of backpropagation through time, the bound of Pascanu et al.
(2013) and the single-unit cliff (the chapter "Recurrent networks and the cliff")."""

from __future__ import annotations

import math

import torch

from .._validate import check_int, check_real, check_tensor
from ..activations import get as get_activation
from .jacobians import spectral_norm


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


def _check_masks(masks: torch.Tensor | None, preacts: torch.Tensor) -> torch.Tensor | None:
    if masks is None:
        return None
    masks = check_tensor("masks", masks, ndim=2).detach().double()
    if masks.shape != preacts.shape:
        raise ValueError(f"masks must have the shape of preacts, {tuple(preacts.shape)}, got "
                         f"{tuple(masks.shape)}")
    return masks


def _step(W: torch.Tensor, slopes: torch.Tensor, masks: torch.Tensor | None, k: int) -> torch.Tensor:
    """``d h_k / d h_{k-1} = diag(phi'(a_k)) W diag(d_k)`` (``a_k`` and ``d_k`` are row k - 1)."""
    factor = slopes[k - 1][:, None] * W
    return factor if masks is None else factor * masks[k - 1][None, :]


def bptt_jacobian(W: torch.Tensor, preacts: torch.Tensor, activation: str, t: int = 0,
                  masks: torch.Tensor | None = None) -> torch.Tensor:
    """``d h_T / d h_t = prod_{k=t+1}^{T} diag(phi'(a_k)) W`` (later factors on the left).

    For the recurrence ``h_k = phi(a_k)``, ``a_k = W h_{k-1} + U x_k + b``, with
    ``preacts`` holding ``a_1, ..., a_T`` as rows (shape ``T x n``) and ``phi`` any activation
    of :data:`gradlab.activations.ACTIVATIONS`. ``t = T`` gives the identity. Returned as an
    ``n x n`` float64 tensor. With dropout on the recurrent connection,
    ``a_k = W (d_k * h_{k-1}) + U x_k + b``, pass the multipliers ``d_1, ..., d_T`` as the rows
    of ``masks`` (``T x n``); each factor becomes ``diag(phi'(a_k)) W diag(d_k)``.
    """
    W, preacts = _check_recurrence(W, preacts)
    masks = _check_masks(masks, preacts)
    act = get_activation(activation)
    T = preacts.shape[0]
    t = check_int("t", t, minimum=0)
    if t > T:
        raise ValueError(f"t must be <= T = {T} (the number of rows of preacts), got {t}")
    slopes = act.derivative(preacts)
    jacobian = torch.eye(W.shape[0], dtype=torch.float64)
    for k in range(t + 1, T + 1):
        jacobian = _step(W, slopes, masks, k) @ jacobian
    return jacobian


def bptt_jacobian_norms(W: torch.Tensor, preacts: torch.Tensor, activation: str,
                        masks: torch.Tensor | None = None) -> torch.Tensor:
    """``||d h_T / d h_{T-k}||_2`` for every lag ``k = 0, ..., T`` (a float64 tensor of T + 1).

    The product is built from the end backwards,
    ``d h_T / d h_{t-1} = (d h_T / d h_t) diag(phi'(a_t)) W``, so all lags cost ``T`` matrix
    products. For ``activation="linear"`` every slope is 1 and the entries are ``||W^k||_2``.
    ``masks`` as in :func:`bptt_jacobian`.
    """
    W, preacts = _check_recurrence(W, preacts)
    masks = _check_masks(masks, preacts)
    slopes = get_activation(activation).derivative(preacts)
    jacobian = torch.eye(W.shape[0], dtype=torch.float64)
    norms = [torch.linalg.matrix_norm(jacobian, ord=2)]
    for k in range(preacts.shape[0], 0, -1):
        jacobian = jacobian @ _step(W, slopes, masks, k)
        norms.append(torch.linalg.matrix_norm(jacobian, ord=2))
    return torch.stack(norms)


def pascanu_bound(W: torch.Tensor, activation: str, lag: int) -> float:
    """``(gamma * lambda_1)^lag``: the upper bound on ``||d h_T / d h_{T-lag}||_2``
    (Pascanu, Mikolov & Bengio 2013).

    ``lambda_1 = ||W||_2`` is the largest singular value of ``W`` and
    ``gamma = sup |phi'|`` (:func:`gradlab.theory.max_slope`); every factor
    ``diag(phi'(a_k)) W`` has norm at most ``gamma * lambda_1``. Below 1 the bound forces the
    gradient to vanish geometrically.
    """
    W = check_tensor("W", W, ndim=2)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {tuple(W.shape)}")
    gamma = get_activation(activation).max_slope
    lag = check_int("lag", lag, minimum=0)
    return (gamma * spectral_norm(W)) ** lag


def dominant_mode_norms(W: torch.Tensor, max_power: int, *, rtol: float = 1e-6) -> torch.Tensor:
    """``||sum_i lambda_i^k v_i u_i^T||_2`` for ``k = 0, ..., max_power``, the sum over the
    eigenvalues of largest modulus ``|lambda_i| = rho`` (within ``rtol``): the part of ``W^k``
    that survives when ``k`` is large.

    For a diagonalizable ``W = V diag(lambda) V^-1``, ``W^k = sum_i lambda_i^k P_i`` with the
    spectral projectors ``P_i = v_i u_i^T`` (``v_i`` a column of ``V``, ``u_i^T`` the matching row
    of ``V^-1``). The other terms shrink like ``(|lambda_next| / rho)^k`` relative to these, so
    ``||W^k|| / rho^k`` tends to this norm over ``rho^k``. For one real dominant eigenvalue it is
    ``||P_1|| = ||u_1|| ||v_1||``, the eigenvalue's condition number (1 for a normal ``W``); for
    a complex pair it oscillates with ``k``. Returned as a float64 tensor of ``max_power + 1``.
    """
    W = check_tensor("W", W, ndim=2).detach().double()
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {tuple(W.shape)}")
    max_power = check_int("max_power", max_power, minimum=0)
    rtol = check_real("rtol", rtol, minimum=0.0)
    eigenvalues, V = torch.linalg.eig(W.to(torch.complex128))
    moduli = eigenvalues.abs()
    keep = moduli >= (1.0 - rtol) * moduli.max()
    right, left = V[:, keep], torch.linalg.inv(V)[keep, :]
    powers = eigenvalues[keep]
    norms = []
    for k in range(max_power + 1):
        norms.append(torch.linalg.matrix_norm((right * powers**k) @ left, ord=2))
    return torch.stack(norms).double()


def _check_cliff(w: float, h0: float) -> tuple[float, float]:
    w = check_real("w", w)
    h0 = check_real("h0", h0)
    if not -1.0 < h0 < 1.0:
        raise ValueError(f"h0 must lie in (-1, 1), the range of tanh, got {h0}")
    return w, h0


def cliff_bias(w: float, h0: float) -> float:
    """The bias ``b = atanh(h0) - w h0`` that makes ``h0`` a fixed point of
    ``h -> tanh(w h + b)``.

    With ``s = w (1 - h0^2) > 1`` this fixed point is unstable: started there, ``h_t`` stays at
    ``h0`` for ever, while a slightly larger (smaller) ``b`` sends it to the upper (lower)
    stable fixed point. So the line ``b = cliff_bias(w, h0)`` is the wall of the single-unit
    network's loss surface.
    """
    w, h0 = _check_cliff(w, h0)
    return math.atanh(h0) - w * h0


def cliff_gradient_norm(w: float, h0: float, steps: int) -> float:
    """``||d h_T / d(w, b)||`` on the wall ``b = cliff_bias(w, h0)``, with ``h_0 = h0``.

    There ``h_t = h0`` for every ``t``, so each step of ``h_t = tanh(w h_{t-1} + b)`` has the
    same slope ``c = 1 - h0^2`` and gain ``s = w c``. The sensitivities ``d_t = dh_t/db`` and
    ``e_t = dh_t/dw`` start at ``d_0 = e_0 = 0`` and obey

        d_t = c (1 + w d_{t-1}),        e_t = c (h0 + w e_{t-1}),

    so ``e_t = h0 d_t``, ``dh_T/db = c (s^T - 1) / (s - 1)`` (``c T`` if ``s = 1``) and the
    norm is ``sqrt(1 + h0^2) dh_T/db``.
    """
    w, h0 = _check_cliff(w, h0)
    steps = check_int("steps", steps, minimum=0)
    c = 1.0 - h0 * h0
    s = w * c
    geometric = float(steps) if s == 1.0 else (s**steps - 1.0) / (s - 1.0)
    return math.sqrt(1.0 + h0 * h0) * c * geometric


def _saddle_node_state(w: float) -> float:
    w = check_real("w", w)
    if not w > 1.0:
        raise ValueError(f"w must be > 1 (for w <= 1 the map has a single fixed point), got {w}")
    return math.sqrt(1.0 - 1.0 / w)


def saddle_node_bias(w: float) -> float:
    """The bias ``b_sn = atanh(h_sn) - w h_sn``, ``h_sn = sqrt(1 - 1/w)``, at which the upper
    stable fixed point of ``h -> tanh(w h + b)`` merges with the unstable one and disappears
    (a saddle-node bifurcation; Doya 1993). Requires ``w > 1``.

    A fixed point solves ``b = g(h) := atanh(h) - w h``. Since ``g'(h) = 1 / (1 - h²) - w``
    vanishes at ``h = ±h_sn``, where the map's slope ``w (1 - h²)`` is exactly 1, ``g`` has a
    local minimum ``b_sn < 0`` at ``+h_sn`` and, by symmetry, a local maximum ``-b_sn`` at
    ``-h_sn``: for ``b_sn < b < -b_sn`` there are three fixed points, outside one. Lowering
    ``b`` through ``b_sn`` removes the upper pair, and every orbit that went to the upper stable
    fixed point (those from ``h_0 > h_sn``) goes to the lower one instead.
    """
    h_sn = _saddle_node_state(w)
    return math.atanh(h_sn) - w * h_sn


def saddle_node_offset(w: float, steps: int) -> float:
    """``pi² / (h_sn T²)``: how far below :func:`saddle_node_bias` the bias must be for the
    orbit to need ``T`` steps to pass the vanished fixed point (to leading order in ``1/T``).

    Just below ``b_sn``, at ``b = b_sn - eps``, the map near ``h_sn`` is ``x -> x - eps / w -
    w h_sn x²`` (``x = h - h_sn``; ``df/db = 1 - h_sn² = 1/w``, ``f'' = -2 w h_sn``): a narrow
    bottleneck. Passing it takes ``tau = integral dx / (eps/w + w h_sn x²) = pi / sqrt(h_sn eps)``
    steps, so ``h_T`` switches branch where ``tau = T``, at ``eps_T = pi² / (h_sn T²)``. Since
    ``dtau/deps = -tau / (2 eps)``, the switch is ``2 eps_T / T ~ T^-3`` wide in ``b``, and the
    gradient ``dh_T/db`` there grows like ``T³``: polynomially, where on the line
    :func:`cliff_bias` it grows like ``s^T``.
    """
    h_sn = _saddle_node_state(w)
    steps = check_int("steps", steps, minimum=1)
    return math.pi**2 / (h_sn * steps**2)
