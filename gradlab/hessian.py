"""Curvature of the loss without forming the Hessian: Hessian-vector products and sharpness.

The Hessian of a network with ``P`` parameters has ``P²`` entries, but its product with one
vector costs about two backward passes (Pearlmutter 1994): differentiate ``<∇L(θ), v>`` once
more with respect to ``θ``. The Lanczos iteration on that product gives the largest eigenvalue
``λ_max`` of the Hessian, the *sharpness*, which sets the largest stable step of gradient
descent, ``η < 2 / λ_max``. For Adam the same iteration on ``P^(-1/2) H P^(-1/2)``, with ``P``
Adam's diagonal preconditioner, gives the *preconditioned sharpness* ``λ_max(P^-1 H)`` that
sets Adam's stability (Cohen et al. 2022).

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

    ``value`` is the estimate ``λ`` of ``λ_max``; ``vector`` the unit vector ``v`` it belongs to,
    parameter-shaped (pass it back as ``init`` to warm-start the next call); ``iterations`` the
    Hessian-vector products used; ``residual`` the relative residual ``‖Hv - λv‖ / |λ|`` of this
    very pair; ``converged`` whether that residual is at most ``tol`` (or the search space was
    the whole parameter space, so ``λ`` is exact up to rounding).
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

    The Lanczos iteration with full reorthogonalization: after ``m`` Hessian-vector products,
    ``Q_m`` is an orthonormal basis of the Krylov space ``span{v, Hv, ..., H^(m-1) v}`` and
    ``T_m = Q_mᵀ H Q_m`` is an ``m × m`` matrix. Its largest eigenvalue ``λ`` with unit
    eigenvector ``s`` gives the Ritz pair ``(λ, y = Q_m s)``: ``λ`` is the largest Rayleigh
    quotient over the Krylov space, so ``λ ≤ λ_max`` always, and it approaches ``λ_max`` from
    below whatever the signs of the other eigenvalues (the two ends of the spectrum are found
    first), in far fewer products than power iteration, which finds the eigenvalue of largest
    *magnitude* and stalls on a spectrum like ``(5, -5, 1)``. The iteration stops when the
    relative residual ``‖Hy - λy‖ / |λ|`` is at most ``tol``.

    What ``converged=True`` guarantees: for a symmetric ``H`` some eigenvalue lies within
    ``‖Hy - λy‖ ≤ tol·|λ|`` of ``λ``, and it is ``λ_max`` unless the start vector is orthogonal
    (or all but orthogonal) to ``λ_max``'s eigenvectors, since the Krylov space holds only the
    directions present in the start. A random start (``init=None``) has such a component with
    probability 1; a warm start ``init`` from the previous eigenvector loses it only if the top
    eigenvector has turned away since (two eigenvalues crossing). When the basis reaches an
    invariant subspace before converging, the iteration continues from a random vector
    orthogonal to it (seeded by ``seed``), and a basis that spans all parameters gives the exact
    top eigenvalue. The gradient's graph is built once and reused by every product; the basis
    and its products are kept, ``2 m P`` numbers for ``P`` parameters.

    Args:
        closure: evaluates the scalar loss from ``params``; see :func:`hvp`.
        params: tensors (``requires_grad``) or a module.
        iters: most Hessian-vector products, at least 1.
        tol: relative residual at which to stop, ``>= 0`` (``0`` runs all ``iters``, or until
            the basis spans all parameters).
        seed: seeds the random start vector when ``init`` is not given, and any restart.
        init: a start vector (for example the previous call's ``vector``: a warm start).

    Returns:
        An :class:`Eigenpair` with ``value``, unit ``vector``, ``iterations``, ``converged``
        and ``residual``, all of the same Ritz pair.
    """
    params = _check_params(params)
    iters = check_int("iters", iters, minimum=1)
    tol = check_real("tol", tol, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    generator = torch.Generator().manual_seed(seed)
    dtype = _work_dtype(params)
    if init is None:
        start = torch.randn(sum(p.numel() for p in params), generator=generator, dtype=torch.float64)
    else:
        start = _flatten(_check_vector("init", init, params)[0])
    start = start.to(params[0].device, dtype)
    grads = _gradient_with_graph(closure, params)

    def product(u: torch.Tensor) -> torch.Tensor:
        return _flatten(_hvp_from_grads(grads, params, _unflatten(u, params))).to(dtype)

    value, y, used, converged, residual = _lanczos(product, start, iters, tol, generator)
    return Eigenpair(value, _unflatten(y, params), used, converged, residual)


def _work_dtype(params: list[torch.Tensor]) -> torch.dtype:
    """The parameters' dtype, at least float32: the Lanczos basis is kept in it."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _flatten(vector: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in vector])


def _unflatten(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    pieces = torch.split(flat, [p.numel() for p in params])
    return [v.view_as(p).to(p.dtype) for v, p in zip(pieces, params, strict=True)]


def _lanczos(product, v: torch.Tensor, iters: int, tol: float, generator: torch.Generator):
    """Lanczos with full reorthogonalization on flat vectors, written as Rayleigh-Ritz on the
    Krylov basis; returns ``(λ, y, products, converged, residual)`` of the top Ritz pair."""
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        raise ValueError("init must not be the zero vector")
    n, eps = v.numel(), torch.finfo(v.dtype).eps
    most = min(iters, n)
    basis = torch.empty(min(most, 16), n, dtype=v.dtype, device=v.device)  # rows q_1 .. q_m
    images = torch.empty_like(basis)  # rows H q_1 .. H q_m
    t = torch.zeros(most, most, dtype=torch.float64)  # T = Qᵀ H Q
    q, scale = v / norm, 0.0
    for j in range(most):
        m = j + 1
        if j == len(basis):  # grow by doubling: memory follows the products actually used
            grown = min(2 * j, most)
            basis = torch.cat([basis, basis.new_empty(grown - j, n)])
            images = torch.cat([images, images.new_empty(grown - j, n)])
        basis[j], images[j] = q, product(q)
        column = basis[:m] @ images[j]
        t[:m, j] = t[j, :m] = column.to(torch.float64).cpu()
        values, vectors = torch.linalg.eigh(t[:m, :m])
        value, s = float(values[-1]), vectors[:, -1].to(v.device, v.dtype)
        y, hy = s @ basis[:m], s @ images[:m]
        gap = float(torch.linalg.vector_norm(hy - value * y))
        residual = 0.0 if gap == 0 else gap / abs(value) if value != 0 else math.inf
        if (tol > 0 and residual <= tol) or m == n:  # m == n: T has all of H's eigenvalues
            return value, y, m, True, residual
        # The next basis vector: H q_j minus its projection on the basis, twice ("twice is
        # enough" for orthogonality to working precision).
        r = images[j] - column @ basis[:m]
        r = r - (basis[:m] @ r) @ basis[:m]
        scale = max(scale, float(torch.linalg.vector_norm(images[j])))
        if float(torch.linalg.vector_norm(r)) <= 100 * eps * scale:
            # An invariant subspace: this start shows no more of H. Go on from a random vector
            # orthogonal to it, so eigenvalues the start was orthogonal to can still be found.
            r = torch.randn(n, generator=generator, dtype=torch.float64).to(v.device, v.dtype)
            for _ in range(2):
                r = r - (basis[:m] @ r) @ basis[:m]
        q = r / torch.linalg.vector_norm(r)
    return value, y, most, residual <= tol, residual


# ---------------------------------------------------------------------------------------------
# Adam's preconditioned sharpness
# ---------------------------------------------------------------------------------------------


def adam_preconditioner(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Adam's diagonal preconditioner after its last step, one tensor per parameter:

        P_t = (1 - β1^t) · (sqrt(v_t / (1 - β2^t)) + ε),

    so that the step was ``θ_t - θ_{t-1} = -η m_t / P_t`` (plus AdamW's decay), with ``m_t``
    and ``v_t`` Adam's uncorrected moments (Cohen et al. 2022 write Adam this way). With
    ``amsgrad=True`` ``v_t`` is torch's running maximum ``max_{s<=t} v_s``. The tensors follow
    the optimizer's parameters, group by group; pass them with those parameters to
    :func:`preconditioned_top_eigenvalue`.
    """
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise TypeError(f"optimizer must be torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
    out = []
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise ValueError("optimizer has not taken a step for every parameter yet (no state)")
            t = float(state["step"])
            v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
            out.append((1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"]))
    return out


def preconditioned_top_eigenvalue(
    closure: Closure,
    params: Params,
    preconditioner: Vector,
    *,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    init: Vector | None = None,
) -> Eigenpair:
    """Largest eigenvalue of ``P^-1 H`` for a diagonal preconditioner ``P > 0``: the sharpness
    that sets the stability of a preconditioned method (for Adam, ``P`` from
    :func:`adam_preconditioner` and the threshold ``(2 + 2β1) / ((1 - β1) η)``).

    ``P^-1 H`` is not symmetric but has the eigenvalues of the symmetric
    ``S = P^(-1/2) H P^(-1/2)`` (``P^-1 H = P^(-1/2) S P^(1/2)``), so this runs the Lanczos
    iteration of :func:`top_eigenvalue` on ``u ↦ P^(-1/2) H (P^(-1/2) u)``: one Hessian-vector
    product per iteration. The returned ``vector`` is the unit eigenvector ``u`` of ``S``; the
    eigenvector of ``P^-1 H`` is ``P^(-1/2) u``. ``residual`` and ``converged`` are those of
    ``S``. Arguments as for :func:`top_eigenvalue`; ``preconditioner`` is parameter-shaped (or
    flat) with every entry positive and finite.
    """
    params = _check_params(params)
    pre, _ = _check_vector("preconditioner", preconditioner, params)
    scale = _flatten(pre)
    if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise ValueError("preconditioner must be positive and finite everywhere")
    iters = check_int("iters", iters, minimum=1)
    tol = check_real("tol", tol, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    generator = torch.Generator().manual_seed(seed)
    dtype = _work_dtype(params)
    scale = scale.to(dtype).rsqrt()  # P^(-1/2), flat
    if init is None:
        start = torch.randn(scale.numel(), generator=generator, dtype=torch.float64)
    else:
        start = _flatten(_check_vector("init", init, params)[0])
    start = start.to(params[0].device, dtype)
    grads = _gradient_with_graph(closure, params)

    def product(u: torch.Tensor) -> torch.Tensor:
        hv = _hvp_from_grads(grads, params, _unflatten(scale * u, params))
        return scale * _flatten(hv).to(dtype)

    value, y, used, converged, residual = _lanczos(product, start, iters, tol, generator)
    return Eigenpair(value, _unflatten(y, params), used, converged, residual)
