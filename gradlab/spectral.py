"""Spectral control of weight matrices: what singular values a model's weights have, and the
soft orthogonality penalty (the chapter "Weight decay and spectral control").

The hard versions are PyTorch's own parametrizations,
``torch.nn.utils.parametrizations.spectral_norm`` (divide ``W`` by an estimate of its largest
singular value) and ``torch.nn.utils.parametrizations.orthogonal`` (every singular value 1).
The functions here measure what they give, and add the soft version, a penalty.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._validate import check_tensor


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight matrices of ``model`` as its forward pass uses them, by name.

    Every parameter with two or more dimensions counts, read through the module attribute, so
    a parametrized weight (``spectral_norm``, ``orthogonal``, ``weight_norm``) is returned as
    the parametrization computes it, not as the stored ``original``. A parametrization is
    evaluated in evaluation mode, so ``spectral_norm``'s power iteration is not advanced: the
    measurement leaves the model's state as it was. A tensor of more dimensions (a convolution)
    is flattened to ``(shape[0], -1)``, the matrix ``spectral_norm`` normalizes with ``dim=0``.
    Names are those of ``named_parameters`` with ``parametrizations.<name>.original`` replaced
    by ``<name>``. Returned detached.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # A parametrization's own modules (its 'original', spectral_norm's state) are read
    # through the module that owns the parametrized weight, below.
    inside = {id(m) for chain in model.modules() if isinstance(chain, parametrize.ParametrizationList)
              for m in chain.modules()}
    matrices: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if id(module) in inside:
            continue
        names = [n for n, p in module.named_parameters(recurse=False) if p.ndim >= 2]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations.keys())
        for name in names:
            with torch.no_grad():
                weight = _evaluate(module, name)
            if weight.ndim >= 2:
                matrices[f"{prefix}.{name}" if prefix else name] = weight.detach().flatten(1)
    return matrices


def _evaluate(module: nn.Module, name: str) -> torch.Tensor:
    """``getattr(module, name)``, with a parametrization of ``name`` in evaluation mode."""
    if not parametrize.is_parametrized(module, name):
        return getattr(module, name)
    chain = module.parametrizations[name]
    modes = [m.training for m in chain.modules()]
    chain.eval()
    try:
        return getattr(module, name)
    finally:
        for m, mode in zip(chain.modules(), modes, strict=True):
            m.training = mode


def singular_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """All singular values of each weight matrix of ``model`` (see :func:`weight_matrices`),
    largest first, as float64 tensors (``torch.linalg.svdvals``)."""
    return {name: torch.linalg.svdvals(w.double()) for name, w in weight_matrices(model).items()}


def spectral_norms(model: nn.Module) -> dict[str, float]:
    """The largest singular value ``||W||_2`` of each weight matrix of ``model``, by name.

    Under ``spectral_norm`` this is ``sigma_max(W) / sigma_est``, with ``sigma_est = u^T W v``
    the power-iteration estimate; since ``sigma_est <= sigma_max(W)`` it is at least 1, and
    exactly 1 only when the estimate has converged.
    """
    return {name: float(s[0]) for name, s in singular_values(model).items()}


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """The soft orthogonality penalty ``R(W) = ||W^T W - I||_F^2`` (differentiable).

    For ``W`` of shape ``(m, n)`` with ``m >= n`` the Gram matrix is ``W^T W`` (``n x n``);
    for ``m < n`` it is ``W W^T`` (``m x m``), so that a matrix with orthonormal rows or columns
    has penalty 0 either way. With ``s_1, ..., s_k`` the singular values (``k = min(m, n)``),

        R(W) = sum_i (s_i^2 - 1)^2,       grad R = 4 W (W^T W - I)   (m >= n).

    Hence every singular value satisfies ``|s_i^2 - 1| <= sqrt(R)``.
    """
    weight = check_tensor("weight", weight, ndim=2)
    if not torch.is_floating_point(weight):
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    m, n = weight.shape
    gram = weight.T @ weight if m >= n else weight @ weight.T
    eye = torch.eye(gram.shape[0], dtype=weight.dtype, device=weight.device)
    return ((gram - eye) ** 2).sum()


__all__ = ["orthogonality_penalty", "singular_values", "spectral_norms", "weight_matrices"]
