"""Gradient clipping rules, written out so a chapter can show them.

``clip_grad_value_`` and ``clip_grad_norm_`` reproduce ``torch.nn.utils.clip_grad_value_`` and
``torch.nn.utils.clip_grad_norm_`` (same scaling rule, same return value, same edge cases) and are
tested against them. The other three are the variants the clipping chapter compares:
per-layer norm clipping, the normalized step, and unit-wise adaptive clipping (Brock et al. 2021).

All functions take a tensor or an iterable of tensors, act on their ``.grad`` in place, and skip
tensors whose ``.grad`` is ``None``.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable

import torch

from ._validate import check_real

Parameters = torch.Tensor | Iterable[torch.Tensor]

# torch adds this to the norm before dividing, so a zero gradient gives a finite coefficient.
_EPS = 1e-6


def _tensors(parameters: Parameters) -> list[torch.Tensor]:
    """``parameters`` as a list of tensors (one tensor becomes a list of one)."""
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    if not isinstance(parameters, Iterable):
        raise TypeError(
            f"parameters must be a tensor or an iterable of tensors, got {type(parameters).__name__}"
        )
    is_generator = isinstance(parameters, types.GeneratorType)
    tensors = list(parameters)  # a generator can be read only once
    for k, p in enumerate(tensors):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters[{k}] must be a torch.Tensor, got {type(p).__name__}")
    if is_generator and not tensors:
        # torch warns here too: an exhausted model.parameters() generator is a common bug.
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                      UserWarning, stacklevel=3)
    return tensors


def _grads(parameters: Parameters) -> list[torch.Tensor]:
    return [p.grad for p in _tensors(parameters) if p.grad is not None]


def _groups(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Split into lists of one device and dtype each, which the fused ``_foreach`` ops need."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _norm_type(norm_type: float | str) -> float:
    if isinstance(norm_type, str):  # torch accepts 'inf'
        try:
            norm_type = float(norm_type)
        except ValueError:
            raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}") from None
    return check_real("norm_type", norm_type, minimum=0.0, strict=True, allow_inf=True)


def total_norm(tensors: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """``|| (||t_1||_p, ..., ||t_n||_p) ||_p``, the p-norm of all tensors seen as one vector.

    One fused ``torch._foreach_norm`` per device and dtype, then the norm of the norms; the
    result lives on the first tensor's device. An empty list gives ``tensor(0.)``.
    """
    if not tensors:
        return torch.tensor(0.0)
    device = tensors[0].device
    norms: list[torch.Tensor] = []
    for group in _groups(tensors):
        group_norms = torch._foreach_norm(group, norm_type)
        norms.extend(group_norms if group[0].device == device else [n.to(device) for n in group_norms])
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def clip_grad_value_(parameters: Parameters, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Each coordinate is clipped on its own, so the clipped gradient generally points in a new
    direction. Same as ``torch.nn.utils.clip_grad_value_``.
    """
    clip_value = check_real("clip_value", clip_value, minimum=0.0, allow_inf=True)
    for group in _groups(_grads(parameters)):
        torch._foreach_clamp_min_(group, -clip_value)
        torch._foreach_clamp_max_(group, clip_value)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Rescale all gradients together so that their joint p-norm is at most ``max_norm``.

    With ``N = ||(g_1, ..., g_n)||_p`` every gradient becomes ``g_i * min(1, max_norm / (N + 1e-6))``:
    the direction is kept and only the length shrinks. Returns ``N`` (before clipping) as a
    tensor. Same as ``torch.nn.utils.clip_grad_norm_``: an empty list returns ``tensor(0.)``, and
    a non-finite ``N`` raises ``RuntimeError`` when ``error_if_nonfinite`` is true (otherwise the
    gradients are scaled by the non-finite coefficient, as torch does).
    """
    max_norm = check_real("max_norm", max_norm, minimum=0.0, allow_inf=True)
    norm_type = _norm_type(norm_type)
    grads = _grads(parameters)
    norm = total_norm(grads, norm_type)
    if error_if_nonfinite and not torch.isfinite(norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite "
            f"({norm.item()}), so it cannot be clipped. Set error_if_nonfinite=False to scale the "
            "gradients by the non-finite norm anyway."
        )
    # Always multiply, even by 1: a data-dependent `if` would force a device sync on a GPU.
    coef = torch.clamp(max_norm / (norm + _EPS), max=1.0)
    for group in _groups(grads):
        torch._foreach_mul_(group, coef.to(group[0].device))
    return norm


@torch.no_grad()
def clip_grad_norm_per_layer_(parameters: Parameters, max_norm: float) -> torch.Tensor:
    """Clip each gradient to 2-norm ``max_norm`` on its own: ``g_i * min(1, max_norm / (||g_i|| + 1e-6))``.

    Returns the per-tensor norms before clipping (one entry per tensor that has a gradient).
    Each tensor keeps its direction, but the joint direction changes when some tensors are
    clipped and others are not.
    """
    max_norm = check_real("max_norm", max_norm, minimum=0.0, allow_inf=True)
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(0)
    norms = [torch.linalg.vector_norm(g) for g in grads]
    for g, norm in zip(grads, norms, strict=True):
        g.mul_(torch.clamp(max_norm / (norm + _EPS), max=1.0))
    return torch.stack([n.to(grads[0].device) for n in norms])


@torch.no_grad()
def normalized_step_(parameters: Parameters, alpha: float) -> torch.Tensor:
    """Replace the gradient by ``alpha * g / ||g||`` (joint 2-norm), in place.

    Unlike clipping, this rescales *every* step, small gradients included: each step has length
    exactly ``alpha`` (times the learning rate). A zero gradient stays zero. Returns ``||g||``.
    """
    alpha = check_real("alpha", alpha, minimum=0.0)
    grads = _grads(parameters)
    norm = total_norm(grads)
    coef = torch.where(norm > 0, alpha / norm, torch.zeros_like(norm))
    for group in _groups(grads):
        torch._foreach_mul_(group, coef.to(group[0].device))
    return norm


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """2-norm of each output unit: over every dim but dim 0 for matrices and conv kernels
    (shape ``(out, 1, ..., 1)``, ready to broadcast), of the whole tensor for vectors and scalars."""
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Parameters, clipping: float = 0.01, eps: float = 1e-3) -> None:
    """Unit-wise adaptive gradient clipping (AGC) of Brock et al. (2021), in place.

    For each unit ``i`` (a row of a weight matrix, a whole bias vector) the gradient row ``G_i``
    is rescaled to ``G_i * clipping * max(||W_i||, eps) / ||G_i||`` when
    ``||G_i|| / max(||W_i||, eps) > clipping``, and left alone otherwise. The threshold follows
    the size of the weights, so it needs no tuning per layer.
    """
    clipping = check_real("clipping", clipping, minimum=0.0)
    eps = check_real("eps", eps, minimum=0.0, strict=True)
    for p in _tensors(parameters):
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        # clamp_min keeps 0/0 out of the unused branch of `where`.
        scaled = p.grad * (max_norm / grad_norm.clamp_min(_EPS))
        p.grad.copy_(torch.where(grad_norm > max_norm, scaled, p.grad))

