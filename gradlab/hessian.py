"""Curvature of the loss without forming the Hessian: Hessian-vector products and sharpness.

The Hessian of a network with ``P`` parameters has ``P²`` entries, but its product with one
vector costs about two backward passes (Pearlmutter 1994): differentiate ``<∇L(θ), v>`` once
more with respect to ``θ``. Power iteration on that product gives the largest eigenvalue
``λ_max`` of the Hessian, the *sharpness*, which sets the largest stable step of gradient
descent, ``η < 2 / λ_max``.

Vectors are "parameter-shaped": a list of tensors with the shapes of ``params``. A single flat
1-D tensor with as many entries as all parameters together is accepted as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._validate import check_int, check_real

Closure = Callable[[], torch.Tensor]
Params = Sequence[torch.Tensor] | nn.Module
Vector = Sequence[torch.Tensor] | torch.Tensor


@dataclass
class Eigenpair:
    """Result of :func:`top_eigenvalue`.

    ``value`` is ``λ_max``; ``vector`` the unit eigenvector, parameter-shaped (pass it back as
    ``init`` to warm-start the next call); ``iterations`` the Hessian-vector products used;
    ``converged`` whether the relative residual ``‖Hv - λv‖ / |λ|`` fell below ``tol``;
    ``residual`` that relative residual at the end.
    """

    value: float
    vector: list[torch.Tensor]
    iterations: int
    converged: bool
    residual: float

    def __float__(self) -> float:
        return self.value


# ---------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------


def _check_params(params: object) -> list[torch.Tensor]:
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise TypeError(
            "params must be an nn.Module or a list/tuple of tensors, got "
            f"{type(params).__name__}"
        )
    params = list(params)
    if not params:
        raise ValueError("params must contain at least one tensor")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] must require grad (shape {tuple(p.shape)})")
        if not p.is_floating_point():
            raise TypeError(f"params[{i}] must be a floating-point tensor, got {p.dtype}")
    return params


def _check_vector(name: str, vector: object, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """Return ``vector`` as a parameter-shaped list, and whether it was given flat."""
    total = sum(p.numel() for p in params)
    if isinstance(vector, torch.Tensor):
        if vector.ndim != 1 or vector.numel() != total:
            raise ValueError(
                f"{name} as one tensor must be 1-D with {total} entries (all parameters), got "
                f"shape {tuple(vector.shape)}"
            )
        pieces = torch.split(vector.detach(), [p.numel() for p in params])
        return [v.view_as(p).to(p) for v, p in zip(pieces, params, strict=True)], True
    if not isinstance(vector, Sequence):
        raise TypeError(
            f"{name} must be a list of tensors shaped like params or a flat tensor, got "
            f"{type(vector).__name__}"
        )
    vector = list(vector)
    if len(vector) != len(params):
        raise ValueError(f"{name} has {len(vector)} tensors for {len(params)} parameters")
    out = []
    for i, (v, p) in enumerate(zip(vector, params, strict=True)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(v).__name__}")
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)}, params[{i}] has {tuple(p.shape)}"
            )
        out.append(v.detach().to(p))
    return out, False


def _gradient_with_graph(closure: Closure, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``∇L(θ)`` with its graph kept, so it can be differentiated again."""
    if not callable(closure):
        raise TypeError(f"closure must be callable, got {type(closure).__name__}")
    loss = closure()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"closure must return a scalar loss tensor, got {shape}")
    if not torch.isfinite(loss):
        raise ValueError(f"closure returned a non-finite loss ({loss.item()}); no curvature there")
    if not loss.requires_grad:
        raise ValueError("closure's loss does not depend on params (it does not require grad)")
    grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
    # A parameter the loss does not use has zero gradient and zero Hessian rows.
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True))


def _hvp_from_grads(grads, params, vector) -> list[torch.Tensor]:
    """``H v = ∇_θ <∇L(θ), v>``: one more backward pass through the gradient's graph."""
    dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
    if not dot.requires_grad:  # the gradient is constant in θ: the loss is at most linear
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params, strict=True)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(_dot(a, a))


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def hvp(closure: Closure, params: Params, vector: Vector) -> list[torch.Tensor] | torch.Tensor:
    """Return the Hessian-vector product ``H v`` with ``H = ∇²L(θ)``, without forming ``H``.

    Pearlmutter's identity ``H v = ∇_θ (∇_θ L(θ) · v)`` needs one backward pass with
    ``create_graph=True`` and one more through it, so it costs a small multiple of a gradient.

    Args:
        closure: a function of no arguments that evaluates the scalar loss ``L(θ)`` from
            ``params`` (for example ``lambda: loss_fn(model(x), y)``).
        params: the tensors ``θ`` (all ``requires_grad``), or a module whose trainable
            parameters are used.
        vector: ``v``, a list of tensors shaped like ``params`` or one flat 1-D tensor.

    Returns:
        ``H v`` in the same form as ``vector`` (a list of tensors, or a flat tensor), detached.
    """
    params = _check_params(params)
    vector, flat = _check_vector("vector", vector, params)
    grads = _gradient_with_graph(closure, params)
    hv = _hvp_from_grads(grads, params, vector)
    return torch.cat([h.reshape(-1) for h in hv]) if flat else hv


def top_eigenvalue(
    closure: Closure,
    params: Params,
    *,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    init: Vector | None = None,
) -> Eigenpair:
    """Largest (algebraic) eigenvalue ``λ_max`` of the Hessian of ``closure`` at ``params``.

    Power iteration ``v ← H v / ‖H v‖`` with the Rayleigh quotient ``λ = vᵀ H v`` (``‖v‖ = 1``)
    converges to the eigenvalue of largest *magnitude*. The iteration stops when the relative
    residual ``‖H v - λ v‖ / |λ|`` is at most ``tol``; for a symmetric ``H`` some eigenvalue
    then lies within ``tol·|λ|`` of ``λ``. If that eigenvalue is negative, a second power
    iteration on ``H - λ I`` (whose eigenvalues ``λ_i - λ`` are all ``≥ 0``) finds
    ``λ_max - λ``, so the result is always the top of the spectrum, the sharpness.

    The gradient's graph is built once and reused by every product.

    Args:
        closure: evaluates the scalar loss from ``params``; see :func:`hvp`.
        params: tensors (``requires_grad``) or a module.
        iters: most Hessian-vector products per power iteration, at least 1.
        tol: relative residual at which to stop, ``>= 0`` (``0`` runs all ``iters``).
        seed: seeds the random start vector when ``init`` is not given.
        init: a start vector (for example the previous call's ``vector``: a warm start).

    Returns:
        An :class:`Eigenpair` with ``value``, unit ``vector``, ``iterations``, ``converged``
        and ``residual``.
    """
    params = _check_params(params)
    iters = check_int("iters", iters, minimum=1)
    tol = check_real("tol", tol, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    if init is None:
        g = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for p in params]
    else:
        v, _ = _check_vector("init", init, params)
    v0 = v
    grads = _gradient_with_graph(closure, params)

    def product(u):
        return _hvp_from_grads(grads, params, u)

    value, v, used, converged, residual = _power_iteration(product, v, iters, tol, shift=0.0)
    if value < 0:
        # The dominant eigenvalue is negative, which says nothing about whether a positive one
        # exists: the top of the spectrum is the dominant eigenvalue of H - value·I (all >= 0).
        # Restart from the first start vector: the eigenvector just found lies in the null space of
        # H - value·I, the one start from which this iteration cannot move.
        shift = value
        top, v, more, converged, residual = _power_iteration(product, v0, iters, tol, shift=shift)
        value, used = top + shift, used + more
    return Eigenpair(value, v, used, converged, residual)


def _power_iteration(product, v, iters: int, tol: float, shift: float):
    """Power iteration on ``u ↦ H u - shift·u``; returns (λ, v, iterations, converged, residual)."""
    norm = _norm(v)
    if norm == 0.0:
        raise ValueError("init must not be the zero vector")
    v = [x / norm for x in v]
    value, residual = 0.0, math.inf
    for k in range(1, iters + 1):
        hv = product(v)
        if shift:
            hv = [h - shift * x for h, x in zip(hv, v, strict=True)]
        value = _dot(v, hv)
        hv_norm = _norm(hv)
        if hv_norm == 0.0:  # v is in the null space: H v = 0 exactly
            return 0.0, v, k, True, 0.0
        # ‖(H - s)v - μv‖ = ‖Hv - (μ + s)v‖: relative to the eigenvalue of H itself, μ + s.
        residual = _norm([h - value * x for h, x in zip(hv, v, strict=True)]) / max(
            abs(value + shift), 1e-300
        )
        v = [h / hv_norm for h in hv]
        if residual <= tol:
            return value, v, k, True, residual
    return value, v, iters, False, residual
