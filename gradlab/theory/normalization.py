"""Normalization layers at initialization (the chapter "Normalization").

- BatchNorm: the per-layer growth of the squared gradient norm in a deep batch-normalized network,
  exactly for linear activations at batch size ``B`` (:func:`bn_gradient_growth`, after Yang et
  al. 2019), and, for BatchNorm and LayerNorm, in the limit of wide layers and large batches for
  any activation (:func:`norm_gradient_growth`);
- LayerNorm and RMSNorm: the spectral norm of their Jacobian (:func:`norm_jacobian_norm`, after
  Xiong et al. 2020, Lemma 3);
- Pre-LN transformers: bounds on the growth of the residual stream with depth
  (:func:`pre_ln_stream_bounds`, after Xiong et al. 2020, Lemma 2).
"""

from __future__ import annotations

import torch

from .._validate import check_choice, check_int, check_real, check_tensor
from ..activations import get as get_activation
from .mean_field import _expectation


def bn_gradient_growth(batch_size: int) -> float:
    """``(B - 2) / (B - 3)``: the factor by which each layer multiplies ``E||dL/dx||²`` in a deep
    linear network with BatchNorm after every layer, in training mode, at batch size ``B``.

    The setting: ``x_l = BN(W_l x_{l-1})`` with Gaussian ``W_l`` of any scale (BatchNorm removes
    it), width tending to infinity, the gradient independence assumption, and the batch at its
    fixed point, where each unit's ``B`` pre-normalization values are an isotropic Gaussian vector
    orthogonal to ``(1, ..., 1)``. Then a unit's backward map is ``sqrt(B) / |u| · P``, with ``P``
    the projection that removes ``(1, ..., 1)`` and the normalized ``u``; ``E[B / |u|²]`` brings
    ``(B - 1) / (B - 3)`` (the mean of an inverse chi-square with ``B - 1`` degrees of freedom) and
    ``P`` keeps ``(B - 2) / (B - 1)`` of the incoming squared gradient. The expectation is infinite
    for ``B <= 3``, so such batch sizes raise ``ValueError``. The factor tends to 1 as ``B`` grows.

    Raises:
        TypeError: ``batch_size`` is not an int.
        ValueError: ``batch_size <= 3``.
    """
    batch_size = check_int("batch_size", batch_size)
    if batch_size <= 3:
        raise ValueError(
            f"batch_size must be > 3: for B <= 3 the expected squared gradient growth is infinite "
            f"(E[1/chi-square with B - 1 degrees of freedom] diverges), got {batch_size}"
        )
    return (batch_size - 2) / (batch_size - 3)


def norm_gradient_growth(activation: str, *, norm: str = "batch") -> float:
    """The per-layer growth of ``E||dL/dx||²`` in a deep network of layers
    ``x_l = phi(Norm(W_l x_{l-1}))`` with Gaussian weights of any scale, as the width (and, for
    BatchNorm, the batch) tends to infinity, under the gradient independence assumption:

    - ``norm="batch"`` (BatchNorm, training mode): ``E[phi'(z)²] / Var[phi(z)]``;
    - ``norm="layer"`` (LayerNorm, or RMSNorm): ``E[phi'(z)²] / E[phi(z)²]``;

    with ``z ~ N(0, 1)``. Each unit is divided by its standard deviation: over the batch that is
    ``sigma_w sqrt(Var[phi(z)])``, because BatchNorm subtracts the unit's batch mean
    ``w·mean(x)``, which is not zero when ``phi`` has a nonzero mean; over the units of one
    example it is ``sigma_w sqrt(E[phi(z)²])``, because the mean over units of ``W x`` is close to
    0 for zero-mean weights. The backward pass through the weights brings ``sigma_w²`` and
    through ``phi`` brings ``E[phi'(z)²]``, so ``sigma_w`` cancels: no initialization changes
    these factors.

    By the Gaussian Poincaré inequality ``Var[phi(z)] <= E[phi'(z)²]``, so the BatchNorm factor is
    at least 1 for every activation, with equality only for an affine ``phi``; for ``relu`` it
    is ``(1/2) / (1/2 - 1/(2 pi)) = pi / (pi - 1) ≈ 1.467``. The LayerNorm factor is 1 for every
    positively homogeneous ``phi`` (``linear``, ``relu``, ``leaky_relu``) and can be below 1
    (``sigmoid``). Computed by Gaussian quadrature.
    """
    act = get_activation(activation)
    norm = check_choice("norm", norm, ["batch", "layer"])
    second = _expectation(lambda x: act.np_fn(x) ** 2, 1.0, act.kinks)
    slope2 = _expectation(lambda x: act.np_derivative(x) ** 2, 1.0, act.kinks)
    if act.homogeneous is not None and norm == "layer":
        return 1.0  # E[phi'²] = E[phi²] = c exactly; avoid quadrature rounding
    scale = second
    if norm == "batch":
        scale = second - _expectation(act.np_fn, 1.0, act.kinks) ** 2
    if scale <= 0.0:  # a constant activation: the norm would divide by zero
        raise ValueError(f"activation {act.name!r} is constant under N(0, 1): nothing to normalize")
    return slope2 / scale


def norm_jacobian_norm(x: torch.Tensor, *, kind: str = "layer", eps: float = 0.0) -> torch.Tensor:
    """The spectral norm of the Jacobian of LayerNorm (``kind="layer"``) or RMSNorm
    (``kind="rms"``), without gain and shift, at each row ``x`` of the last dimension (``d``):

    - LayerNorm ``y = (x - mean) / sqrt(var + eps)``: ``1 / sqrt(var + eps)``, i.e.
      ``sqrt(d) / |x - mean|`` for ``eps = 0`` (Xiong et al. 2020, Lemma 3). Needs ``d >= 3``.
    - RMSNorm ``y = x / sqrt(mean(x²) + eps)``: ``1 / sqrt(mean(x²) + eps)``, i.e.
      ``sqrt(d) / |x|`` for ``eps = 0``. Needs ``d >= 2``.

    ``var`` is the biased variance over the ``d`` entries. The Jacobian is ``(1/s) (P - y yᵀ/d)``
    with ``s`` the denominator and ``P`` the centering projection (LayerNorm) or the identity
    (RMSNorm); on the directions orthogonal to ``y`` (and to ``(1, ..., 1)``) it is ``1/s``, along
    ``y`` it is ``eps / s³ <= 1/s``. Returns a tensor of the leading shape of ``x``.
    """
    x = check_tensor("x", x)
    kind = check_choice("kind", kind, ["layer", "rms"])
    eps = check_real("eps", eps, minimum=0.0)
    if x.ndim < 1 or x.shape[-1] < (3 if kind == "layer" else 2):
        raise ValueError(f"x's last dimension must have at least {3 if kind == 'layer' else 2} "
                         f"entries for kind={kind!r}, got shape {tuple(x.shape)}")
    if kind == "layer":
        second = x.var(dim=-1, unbiased=False)
    else:
        second = x.pow(2).mean(dim=-1)
    return (second + eps).rsqrt()


def pre_ln_stream_bounds(layer: int, activation: str = "relu") -> tuple[float, float]:
    """Bounds ``(1 + l c, 1 + l (1 + c))`` on ``E||x_l||² / d`` for the residual stream of a Pre-LN
    transformer after ``l`` blocks, at initialization, with ``c = E[phi(z)²]``, ``z ~ N(0, 1)``
    (``c = 1/2`` for ``relu``: Xiong et al. 2020, Lemma 2).

    Assumptions (those of :class:`gradlab.models.Transformer`): ``E||x_0||² = d``; every weight
    ``N(0, 1/fan_in)`` and independent; zero biases; norms at their initial gain 1 and shift 0
    with ``eps`` negligible, so each normalized token has norm exactly ``sqrt(d)``. Then each
    feed-forward sub-layer adds exactly ``c d`` to ``E||x||²``; each attention sub-layer adds
    between 0 (attention outputs that cancel) and ``d`` (all the weight on one position, or
    identical tokens); the cross terms vanish because the last weight matrix of each sub-layer
    has mean zero and is independent of everything before it.
    """
    layer = check_int("layer", layer, minimum=0)
    act = get_activation(activation)
    c = _expectation(lambda x: act.np_fn(x) ** 2, 1.0, act.kinks)
    return 1.0 + layer * c, 1.0 + layer * (1.0 + c)


__all__ = ["bn_gradient_growth", "norm_gradient_growth", "norm_jacobian_norm",
           "pre_ln_stream_bounds"]
