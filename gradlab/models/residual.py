"""Residual networks whose blocks have a two-layer branch (the chapter "Residual connections").

- :class:`ResidualBlock`: ``x + s * W2 relu(W1 x)``, ``W1`` at He's scale and ``W2`` at LeCun's,
  so that the branch preserves the squared norm of its input on average; the branch scale ``s``
  is a number or, with ``"rezero"``, a learnable scalar gate initialized at 0 (Bachlechner et al.
  2020);
- :class:`FixupBlock`: the same branch initialized as Fixup prescribes (Zhang, Dauphin & Ma 2019):
  the last layer zero, the first scaled by ``L^(-1/(2m-2))`` for ``L`` blocks of ``m = 2``
  layers, with scalar biases and a scalar multiplier;
- :func:`resmlp`: a stack of either, with an optional input layer and a linear read-out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_real
from .mlp import init_linear_

RESMLP_SCALES = ("sqrt_depth", "rezero", "fixup")


def _gaussian_linear(width: int, std: float) -> nn.Linear:
    """A bias-free ``width -> width`` linear layer with N(0, std²) weights, drawn from the global
    generator. Built on the meta device first: nn.Linear's own initialization would draw a second
    set of random numbers, which in stacks of a thousand blocks costs more than the forward pass."""
    layer = nn.Linear(width, width, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.randn(width, width) * std)
    return layer


def _scale_or_rezero(residual_scale: object) -> float | str:
    if isinstance(residual_scale, str):
        return check_choice("residual_scale", residual_scale, ["rezero"])
    return check_real("residual_scale", residual_scale)


class ResidualBlock(nn.Module):
    """``x + s · F(x)`` with the two-layer branch ``F(x) = W2 relu(W1 x)`` (no biases).

    ``W1`` is drawn from ``N(0, 2/n)`` (He et al. 2015) and ``W2`` from ``N(0, 1/n)`` (LeCun), for
    width ``n``: averaged over the weights, ``E||F(x)||² = ||x||²``, ``F(x)`` has mean zero and is
    uncorrelated with ``x``, so ``E||x + s F(x)||² = (1 + s²) ||x||²``; and the transposed
    Jacobian ``(I + s ∂F)^T`` multiplies a fixed gradient's expected squared norm by ``1 + s²``.

    Args:
        width: the width ``n`` of the stream and of the branch.
        residual_scale: the branch scale ``s`` (a number), or ``"rezero"``: a learnable scalar
            ``gate`` initialized at 0, which makes the block the identity at initialization.
        residual: ``False`` drops the skip: the block returns ``s · F(x)`` (a plain network of the
            same branches); ``"rezero"`` needs the skip.
    """

    def __init__(self, width: int, *, residual_scale: float | str = 1.0, residual: bool = True) -> None:
        super().__init__()
        width = check_int("width", width, minimum=1)
        residual_scale = _scale_or_rezero(residual_scale)
        if not isinstance(residual, bool):
            raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
        if residual_scale == "rezero" and not residual:
            raise ValueError("residual_scale='rezero' needs residual=True")
        self.linear1 = _gaussian_linear(width, math.sqrt(2.0 / width))  # He
        self.linear2 = _gaussian_linear(width, math.sqrt(1.0 / width))  # LeCun
        self.residual = residual
        self.residual_scale = residual_scale
        self.gate = nn.Parameter(torch.zeros(())) if residual_scale == "rezero" else None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x) = W2 relu(W1 x)``, unscaled."""
        return self.linear2(torch.relu(self.linear1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate if self.gate is not None else self.residual_scale
        out = scale * self.branch(x)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        scale = "rezero" if self.gate is not None else self.residual_scale
        return f"residual={self.residual}, residual_scale={scale}"


class FixupBlock(nn.Module):
    """A residual block initialized by Fixup (Zhang, Dauphin & Ma 2019), with ``m = 2`` layers:

        x + multiplier · W2 (relu(W1 (x + b1) + b2) + b3),

    ``W1`` at He's scale times ``n_blocks^(-1/(2m-2)) = n_blocks^(-1/2)``, ``W2 = 0``, the scalar
    biases ``b1, b2, b3`` at 0 and the scalar ``multiplier`` at 1. The block is the identity at
    initialization, and the first gradient step reaches only ``W2`` (every other parameter's
    gradient passes through ``W2 = 0``); the multiplier on ``W1`` makes that step change the
    network's output by an amount that does not depend on the depth
    (:func:`gradlab.theory.fixup_update_size`).

    Args:
        width: the width of the stream and of the branch.
        n_blocks: the number ``L`` of residual blocks in the network, which sets ``W1``'s scale.
        branch_scale: overrides ``W1``'s multiplier (``None``: Fixup's ``n_blocks^(-1/2)``);
            ``branch_scale=1`` keeps the zero last layer without Fixup's rescaling.
    """

    def __init__(self, width: int, n_blocks: int, *, branch_scale: float | None = None) -> None:
        super().__init__()
        width = check_int("width", width, minimum=1)
        n_blocks = check_int("n_blocks", n_blocks, minimum=1)
        if branch_scale is None:
            branch_scale = n_blocks ** (-1.0 / (2 * 2 - 2))
        branch_scale = check_real("branch_scale", branch_scale, minimum=0.0)
        self.linear1 = _gaussian_linear(width, branch_scale * math.sqrt(2.0 / width))
        self.linear2 = _gaussian_linear(width, 0.0)  # linear1: He times the multiplier; linear2: zero
        self.bias1 = nn.Parameter(torch.zeros(()))
        self.bias2 = nn.Parameter(torch.zeros(()))
        self.bias3 = nn.Parameter(torch.zeros(()))
        self.multiplier = nn.Parameter(torch.ones(()))
        self.branch_scale = branch_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x + self.bias1) + self.bias2)
        return x + self.multiplier * self.linear2(h + self.bias3)

    def extra_repr(self) -> str:
        return f"branch_scale={self.branch_scale:.4g}"


class ResMLP(nn.Module):
    """``readout(blocks(stem(x)))``: an input layer (the identity when ``in_features`` equals the
    width), a stack of residual blocks, a linear read-out. ``blocks`` is an ``nn.Sequential``, so
    ``model.blocks`` is the residual stack alone."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], readout: nn.Linear) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.readout = readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.blocks(self.stem(x)))


def resmlp(
    blocks: int,
    width: int,
    *,
    in_features: int | None = None,
    out_features: int = 1,
    residual_scale: float | str = 1.0,
    residual: bool = True,
) -> ResMLP:
    """A residual network of ``blocks`` two-layer blocks of width ``width``.

    Args:
        blocks: the number ``L`` of residual blocks, at least 1.
        width: the width of the residual stream.
        in_features: input size (default ``width``); when it differs from ``width``, a linear input
            layer at LeCun's scale maps it to the stream.
        out_features: the read-out's size; the read-out is linear, at LeCun's scale (zero for
            Fixup, as Zhang et al. initialize the classification layer).
        residual_scale: ``s`` for :class:`ResidualBlock` ``x + s F(x)``: a number,
            ``"sqrt_depth"`` (``s = 1/sqrt(L)``), ``"rezero"`` (a gate at 0 per block), or
            ``"fixup"`` (:class:`FixupBlock` blocks).
        residual: ``False`` drops every skip (a plain network of the same branches, scaled by a
            number ``residual_scale``); only a number is accepted then.
    """
    blocks = check_int("blocks", blocks, minimum=1)
    width = check_int("width", width, minimum=1)
    in_features = width if in_features is None else check_int("in_features", in_features, minimum=1)
    out_features = check_int("out_features", out_features, minimum=1)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    if isinstance(residual_scale, str):
        check_choice("residual_scale", residual_scale, RESMLP_SCALES)
        if not residual:
            raise ValueError(f"residual_scale={residual_scale!r} needs residual=True")
    else:
        residual_scale = check_real("residual_scale", residual_scale)

    stem = (nn.Identity() if in_features == width
            else init_linear_(nn.Linear(in_features, width, bias=False), "gaussian"))
    if residual_scale == "fixup":
        stack: list[nn.Module] = [FixupBlock(width, blocks) for _ in range(blocks)]
    else:
        s = 1.0 / math.sqrt(blocks) if residual_scale == "sqrt_depth" else residual_scale
        stack = [ResidualBlock(width, residual_scale=s, residual=residual) for _ in range(blocks)]
    readout = init_linear_(nn.Linear(width, out_features), "gaussian")
    if residual_scale == "fixup":
        nn.init.zeros_(readout.weight)
    return ResMLP(stem, stack, readout)
