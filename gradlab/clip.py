"""Gradient clipping rules, written out so a chapter can show them.

``clip_grad_value_`` and ``clip_grad_norm_`` follow ``torch.nn.utils.clip_grad_value_`` and
``torch.nn.utils.clip_grad_norm_`` (same scaling rule, same return value) and are tested against
them. They differ from torch in three documented places, each one a case where torch's result is
silently wrong: a norm that overflows although every entry is finite is computed exactly instead
of coming out inf (which makes torch multiply every gradient by 0); a non-finite norm warns; and a
negative ``max_norm`` or ``clip_value`` is refused (torch reverses the gradients, or sets every
entry to the negative value). The other
three are the variants the clipping chapter compares: per-layer norm clipping, the normalized
step, and unit-wise adaptive clipping (Brock et al. 2021).

All functions take a tensor or an iterable of tensors, act on their ``.grad`` in place, and skip
tensors whose ``.grad`` is ``None``.
"""

from __future__ import annotations

import math
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


def _foreach_total_norm(tensors: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """torch's computation: one fused ``_foreach_norm`` per device and dtype, then the norm of
    the norms, on the first tensor's device."""
    device = tensors[0].device
    norms: list[torch.Tensor] = []
    for group in _groups(tensors):
        group_norms = torch._foreach_norm(group, norm_type)
        norms.extend(group_norms if group[0].device == device else [n.to(device) for n in group_norms])
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def total_norm(tensors: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """``|| (||t_1||_p, ..., ||t_n||_p) ||_p``, the p-norm of all tensors seen as one vector.

    Computed as torch computes it (one fused ``torch._foreach_norm`` per device and dtype, then
    the norm of the norms, on the first tensor's device) and equal to torch's result whenever
    that is finite. An empty list gives ``tensor(0.)``.

    Where torch overflows, this does not: with finite entries the powers ``|x|^p`` can overflow
    although the norm itself is representable (float32: ``x² > 3.4e38`` once ``|x| > 1.8e19``),
    and torch returns inf. Then the norm is recomputed as ``m · ||t / m||_p`` with
    ``m = max |x|`` (which cannot overflow) in float64, and returned in the tensors' dtype when it
    fits there, in float64 when it does not. A NaN or Inf entry still gives NaN or inf, as in torch.
    """
    if not tensors:
        return torch.tensor(0.0)
    norm = _foreach_total_norm(tensors, norm_type)
    # One host-device sync (torch avoids it); the max-norm (p = inf) never overflows.
    if math.isinf(norm_type) or bool(torch.isfinite(norm)):
        return norm
    peak = _foreach_total_norm(tensors, math.inf).to(torch.float64)
    if not bool(torch.isfinite(peak)):
        return norm  # a NaN/Inf entry: the non-finite norm is the answer
    scaled = [torch.linalg.vector_norm(t.to(peak.device, torch.float64) / peak, norm_type) for t in tensors]
    exact = peak * torch.linalg.vector_norm(torch.stack(scaled), norm_type)
    if norm.dtype != torch.float64 and float(exact) <= torch.finfo(norm.dtype).max:
        return exact.to(norm.dtype)
    return exact


def _scale_(grads: list[torch.Tensor], coef: torch.Tensor) -> None:
    """``g *= coef`` for every gradient, one fused multiply per device and dtype."""
    for group in _groups(grads):
        dtype = group[0].dtype
        if coef.dtype.itemsize > dtype.itemsize and 0 < float(coef) < torch.finfo(dtype).tiny:
            # A norm beyond the gradients' dtype gives a coefficient below its smallest normal
            # number, which would lose digits or round to 0: multiply in the coefficient's dtype.
            for g in group:
                g.copy_(g.to(coef.dtype) * coef.to(g.device))
        else:
            torch._foreach_mul_(group, coef.to(group[0].device))


def _nonfinite_message(norm: torch.Tensor, norm_type: float) -> str:
    return (f"The total norm of order {norm_type} for gradients from `parameters` is non-finite "
            f"({norm.item()}): some gradient entry is NaN or Inf")


@torch.no_grad()
def clip_grad_value_(parameters: Parameters, clip_value: float) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Each coordinate is clipped on its own, so the clipped gradient generally points in a new
    direction. Same as ``torch.nn.utils.clip_grad_value_``, except that a negative
    ``clip_value`` raises ``ValueError`` (torch clamps to the empty interval ``[-c, c]`` and so
    sets every entry to the negative value ``c``).
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
    tensor. As in ``torch.nn.utils.clip_grad_norm_``, an empty list returns ``tensor(0.)``, and a
    non-finite ``N`` raises ``RuntimeError`` when ``error_if_nonfinite`` is true (otherwise the
    gradients are scaled by the non-finite coefficient, as torch does).

    Where it differs from torch (each a case where torch is silently wrong):

    - ``N`` does not overflow while every entry is finite (see :func:`total_norm`). In float32,
      torch returns ``N = inf`` for any gradient with ``N ≳ 1.8e19`` and multiplies every
      gradient by 0; here the gradients are scaled to norm ``max_norm`` as the rule says.
    - A non-finite ``N`` (a NaN or Inf entry) with ``error_if_nonfinite=False`` warns
      (``RuntimeWarning``): the scaling then turns the finite entries into 0 (``N = inf``) or
      every entry into NaN, and torch does that without a word.
    - A negative ``max_norm`` raises ``ValueError``. Torch does not check it: the coefficient
      ``max_norm / N`` is then negative, which reverses every gradient (an ascent step) and
      sets its norm to ``|max_norm|``, enlarging it when ``N < |max_norm|``.
    - Checking for overflow costs one host-device synchronization, which torch avoids.
    """
    max_norm = check_real("max_norm", max_norm, minimum=0.0, allow_inf=True)
    norm_type = _norm_type(norm_type)
    grads = _grads(parameters)
    norm = total_norm(grads, norm_type)
    if not bool(torch.isfinite(norm)):
        if error_if_nonfinite:
            raise RuntimeError(
                f"{_nonfinite_message(norm, norm_type)}, so it cannot be clipped. Set "
                "error_if_nonfinite=False to scale the gradients by the non-finite norm anyway."
            )
        warnings.warn(
            f"{_nonfinite_message(norm, norm_type)}; scaling by max_norm / norm turns the "
            "gradients into NaN or 0, as torch.nn.utils.clip_grad_norm_ does",
            RuntimeWarning, stacklevel=3,
        )
    # Always multiply, even by 1: a data-dependent `if` would force a device sync on a GPU.
    coef = torch.clamp(max_norm / (norm + _EPS), max=1.0)
    _scale_(grads, coef)
    return norm


@torch.no_grad()
def clip_grad_norm_per_layer_(parameters: Parameters, max_norm: float) -> torch.Tensor:
    """Clip each gradient to 2-norm ``max_norm`` on its own: ``g_i * min(1, max_norm / (||g_i|| + 1e-6))``.

    Returns the per-tensor norms before clipping (one entry per tensor that has a gradient).
    Each tensor keeps its direction, but the joint direction changes when some tensors are
    clipped and others are not. The norms do not overflow while the entries are finite
    (:func:`total_norm`); a non-finite norm warns, as in :func:`clip_grad_norm_`.
    """
    max_norm = check_real("max_norm", max_norm, minimum=0.0, allow_inf=True)
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(0)
    norms = [total_norm([g]) for g in grads]
    for g, norm in zip(grads, norms, strict=True):
        if not bool(torch.isfinite(norm)):
            warnings.warn(f"a gradient has non-finite norm {norm.item()} (a NaN or Inf entry); "
                          "clipping turns it into NaN or 0", RuntimeWarning, stacklevel=3)
        _scale_([g], torch.clamp(max_norm / (norm + _EPS), max=1.0))
    return torch.stack([n.to(grads[0].device) for n in norms])


@torch.no_grad()
def normalized_step_(parameters: Parameters, alpha: float) -> torch.Tensor:
    """Replace the gradient by ``alpha * g / ||g||`` (joint 2-norm), in place.

    Unlike clipping, this rescales *every* step, small gradients included: each step has length
    exactly ``alpha`` (times the learning rate). A zero gradient stays zero. Returns ``||g||``,
    which does not overflow while the entries are finite (:func:`total_norm`). A NaN or Inf
    entry has no direction to keep: it raises ``FloatingPointError`` and leaves the gradients
    as they are (dividing by ``||g|| = inf`` would silently give a zero step).
    """
    alpha = check_real("alpha", alpha, minimum=0.0)
    grads = _grads(parameters)
    norm = total_norm(grads)
    if not bool(torch.isfinite(norm)):
        raise FloatingPointError(
            f"normalized_step_: the gradient norm is {norm.item()} (a gradient entry is NaN or "
            "Inf), so g / ||g|| is undefined; the gradients were left unchanged"
        )
    coef = torch.where(norm > 0, alpha / norm, torch.zeros_like(norm))
    _scale_(grads, coef)
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
    the size of the weights, so it needs no tuning per layer. A row whose norm overflows although
    its entries are finite (float32: entries beyond 1.8e19) is measured again in float64, so it
    is clipped rather than zeroed; a NaN or Inf entry warns.
    """
    clipping = check_real("clipping", clipping, minimum=0.0)
    eps = check_real("eps", eps, minimum=0.0, strict=True)
    for p in _tensors(parameters):
        if p.grad is None:
            continue
        grad = p.grad
        grad_norm = unitwise_norm(grad)
        if not bool(torch.isfinite(grad_norm).all()):
            if bool(torch.isfinite(grad).all()):  # only the squares overflowed
                grad = grad.to(torch.float64)
                grad_norm = unitwise_norm(grad)
            else:
                warnings.warn("adaptive_clip_grad_: a gradient row has a NaN or Inf entry; "
                              "clipping turns that row into NaN or 0", RuntimeWarning, stacklevel=3)
        max_norm = unitwise_norm(p.detach().to(grad.dtype)).clamp_min(eps) * clipping
        # clamp_min keeps 0/0 out of the unused branch of `where`.
        scaled = grad * (max_norm / grad_norm.clamp_min(_EPS))
        p.grad.copy_(torch.where(grad_norm > max_norm, scaled, grad))
