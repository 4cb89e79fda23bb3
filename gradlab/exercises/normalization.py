"""Checker for "Normalization": the backward pass of BatchNorm in training mode, by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from .harness import Case, CheckResult, Slips, describe, run


def _autograd_input_grad(normalize: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                         grad_out: torch.Tensor) -> torch.Tensor:
    """``d <normalize(x), grad_out> / dx`` by autograd."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(normalize(x), x, grad_out)
    return grad


def _bn_case(g: torch.Generator, i: int) -> Case:
    """A batch ``x`` of shape ``(B, N)``, ``B`` from 2 to 16 (every 5th case B = 2, the smallest
    batch BatchNorm accepts), ``N`` from 1 to 5, each unit with its own scale (1e-2 to 1e2) and
    offset; ``grad_out`` Gaussian; ``eps`` 1e-5, 1e-3 or 0.1 in turn. float64 throughout."""
    batch = 2 if i % 5 == 4 else int(torch.randint(3, 17, (1,), generator=g))
    units = int(torch.randint(1, 6, (1,), generator=g))
    scale = 10.0 ** (4 * torch.rand(units, generator=g, dtype=torch.float64) - 2)
    offset = 3 * torch.randn(units, generator=g, dtype=torch.float64)
    x = offset + scale * torch.randn(batch, units, generator=g, dtype=torch.float64)
    grad_out = torch.randn(batch, units, generator=g, dtype=torch.float64)
    eps = (1e-5, 1e-3, 0.1)[i % 3]
    expected = _autograd_input_grad(lambda t: F.batch_norm(t, None, None, training=True, eps=eps),
                                    x, grad_out)
    std = torch.sqrt(x.var(dim=0, unbiased=False) + eps)
    y = (x - x.mean(dim=0)) / std
    data = {"std": std, "y": y}
    return Case((x, grad_out, eps), expected, describe(x=x, eps=eps), data)


def _layer_norm_grad(c: Case) -> torch.Tensor | None:
    x, grad_out, eps = c.args
    if x.shape[1] < 2:
        return None
    return _autograd_input_grad(lambda t: F.layer_norm(t, t.shape[1:], eps=eps), x, grad_out)


def _unbiased_grad(c: Case) -> torch.Tensor:
    x, grad_out, eps = c.args
    return _autograd_input_grad(
        lambda t: (t - t.mean(dim=0)) / torch.sqrt(t.var(dim=0, unbiased=True) + eps), x, grad_out)


def _unbiased_formula(c: Case) -> torch.Tensor:
    """The exercise's formula with ``y`` and ``s`` from the unbiased variance (``x.var(dim=0)``)."""
    x, grad_out, eps = c.args
    std = torch.sqrt(x.var(dim=0, unbiased=True) + eps)
    y = (x - x.mean(dim=0)) / std
    return (grad_out - grad_out.mean(dim=0) - y * (grad_out * y).mean(dim=0)) / std


BATCHNORM_SLIPS: Slips = {
    "mean and variance treated as constants, g / sqrt(var + eps): that is BatchNorm's gradient in "
    "eval mode; in training mode the batch statistics depend on x, and their gradients subtract "
    "mean(g) and y * mean(g * y)":
        lambda c: c.args[1] / c.data["std"],
    "the gradient through the variance is missing: subtract y * mean(g * y) as well as mean(g)":
        lambda c: (c.args[1] - c.args[1].mean(dim=0)) / c.data["std"],
    "the gradient through the mean is missing: subtract mean(g) as well as y * mean(g * y)":
        lambda c: (c.args[1] - c.data["y"] * (c.args[1] * c.data["y"]).mean(dim=0)) / c.data["std"],
    "sums instead of means over the batch: the correction terms are mean(g) and "
    "y * mean(g * y), averages over the B examples":
        lambda c: (c.args[1] - c.args[1].sum(dim=0)
                   - c.data["y"] * (c.args[1] * c.data["y"]).sum(dim=0)) / c.data["std"],
    "the unbiased variance (dividing by B - 1): BatchNorm normalizes with the biased variance, the "
    "mean of the squared deviations (torch.var(..., unbiased=False))": _unbiased_grad,
    "the formula evaluated with torch.var's default, the unbiased variance (dividing by B - 1): "
    "BatchNorm and the formula use the biased variance, x.var(dim=0, unbiased=False)":
        _unbiased_formula,
    "statistics over the features (dim=1) instead of the batch (dim=0): that is LayerNorm's "
    "gradient": _layer_norm_grad,
}


def check_batchnorm_backward(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(x, grad_out, eps)``: for ``x`` of shape ``(B, N)`` and
    ``y = (x - mean(x)) / sqrt(var(x) + eps)``, mean and biased variance over the batch (dim 0),
    as ``torch.nn.BatchNorm1d`` computes in training mode without its affine part, and the
    gradient ``grad_out = dL/dy``, return ``dL/dx``, a tensor of shape ``(B, N)``.
    Compared with autograd through ``torch.nn.functional.batch_norm(x, None, None,
    training=True, eps=eps)``; a wrong answer is compared with :data:`BATCHNORM_SLIPS`."""
    return run("BatchNorm backward", fn, _bn_case, n_cases, seed, rtol=1e-6, atol=1e-9,
               slips=BATCHNORM_SLIPS, reference="autograd through torch.nn.functional.batch_norm")


__all__ = ["BATCHNORM_SLIPS", "check_batchnorm_backward"]
