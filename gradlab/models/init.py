"""Data-dependent initialization: layer-sequential unit-variance (LSUV, Mishkin & Matas 2016).

:func:`lsuv_init_` starts from orthogonal weights (Saxe et al. 2014) and then, layer by layer in
forward order, divides each layer's weights by the standard deviation of that layer's output on
a batch, until the output has unit variance. It needs no formula for the activation: the batch
measures what the network does to it.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .._validate import check_int, check_real, check_tensor

LSUV_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layer types :func:`lsuv_init_` rescales (the paper's "convolution or inner-product" layers)."""


class _Reached(Exception):
    """Raised by the forward hook once the layer being initialized has produced its output, so
    that the forward pass stops there: the layers after it cannot change that output."""


def _output_variance(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> float:
    """Population variance of ``layer``'s output, over all its entries, when ``model`` runs on ``x``."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        seen.append(output.detach())
        raise _Reached

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"the layer {layer} did not run when the model was called on x")
    return float(seen[0].double().var(unbiased=False))


def lsuv_init_(model: nn.Module, x: torch.Tensor, *, tol: float = 0.1, max_iter: int = 10) -> nn.Module:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016), in place.

    1. Every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` of ``model`` gets an orthogonal weight
       (``nn.init.orthogonal_``, which flattens a convolution kernel to ``(out, in * k...)``) and a
       zero bias.
    2. For each of these layers, in the order of ``model.modules()`` (the forward order of a
       sequential model): run ``model(x)`` up to that layer, compute the variance ``v`` of its
       output over all entries (batch, units, positions), and stop if ``|v - 1| < tol``;
       otherwise divide the weight by ``sqrt(v)`` and measure again, at most ``max_iter`` times.

    With a zero bias a layer's output is linear in its weight, so one division already gives
    ``v = 1`` up to rounding; the loop is the paper's, for layers whose output is not (a bias
    that is not zero, a normalization inside the layer). The paper uses ``tol = 0.1`` and at most
    10 iterations. The forward passes run under ``torch.no_grad()`` in the model's current mode
    (a BatchNorm layer in training mode updates its running statistics).

    Args:
        model: the network; it must contain at least one layer of :data:`LSUV_LAYERS`.
        x: a batch of inputs, as ``model`` takes it (floating point, at least two entries per
            layer output, so that a variance exists).
        tol: accepted distance of the output variance from 1, > 0.
        max_iter: most rescalings per layer, >= 1. A layer that is still more than ``tol`` away
            afterwards gets a ``RuntimeWarning`` naming it.

    Returns:
        ``model``, initialized.

    Raises:
        ValueError: if ``model`` has no such layer, a layer's output is constant (variance 0: no
            rescaling can give it unit variance) or not finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_tensor("x", x)
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (it holds NaN or Inf)")
    tol = check_real("tol", tol, minimum=0.0, strict=True)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LSUV_LAYERS)]
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv layer to initialize")

    with torch.no_grad():
        for _, layer in layers:
            nn.init.orthogonal_(layer.weight)
            if layer.bias is not None:
                layer.bias.zero_()
    for name, layer in layers:
        name = name or type(layer).__name__  # the model itself is the layer
        variance = _output_variance(model, layer, x)
        for _ in range(max_iter):
            if not math.isfinite(variance):
                raise ValueError(f"the output of layer {name!r} is not finite (variance {variance})")
            if variance == 0.0:
                raise ValueError(f"the output of layer {name!r} is constant on x (variance 0): "
                                 "no rescaling of its weight gives it unit variance")
            if abs(variance - 1.0) < tol:
                break
            with torch.no_grad():
                layer.weight.div_(math.sqrt(variance))
            variance = _output_variance(model, layer, x)
        if not abs(variance - 1.0) < tol:
            warnings.warn(f"lsuv_init_: layer {name!r} has output variance {variance:.4g} after "
                          f"{max_iter} rescalings (tol={tol})", RuntimeWarning, stacklevel=2)
    return model


__all__ = ["LSUV_LAYERS", "lsuv_init_"]
