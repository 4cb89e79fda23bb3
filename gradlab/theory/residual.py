"""Residual connections at initialization (the chapter "Residual connections").

- :func:`residual_growth`: the growth ``(1 + s² chi)^L`` of the squared gradient (and, for a
  branch of mean zero, of the squared stream) through ``L`` blocks ``x + s F(x)``;
- :func:`fixup_multiplier`: Fixup's scale ``L^(-1/(2m-2))`` of the first ``m - 1`` layers of each
  branch (Zhang, Dauphin & Ma 2019);
- :func:`fixup_update_size` and :func:`rezero_update_size`: the size of the first SGD step's
  change of the stream's output, for Fixup's zero-initialized last layers and ReZero's gates at 0.
"""

from __future__ import annotations

from .._validate import check_int, check_real


def residual_growth(s: float, chi: float, L: int) -> float:
    """``(1 + s² chi)^L``: the factor by which ``L`` residual blocks ``x_l = x_{l-1} + s F_l(x_{l-1})``
    multiply the expected squared norm of the gradient, from the stream's output back to its input.

    Each block's transposed Jacobian is ``I + s ∂F_l^T``; with the branch's weights independent of
    the incoming gradient ``g`` (the gradient independence assumption), the cross term has mean
    zero and ``E||g + s ∂F_l^T g||² = (1 + s² chi) ||g||²`` with ``chi = E||∂F_l^T g||² / ||g||²``
    (1 for a ReLU branch at He's scale). For a branch whose output has mean zero and is
    uncorrelated with its input, the squared stream grows by the same factor with ``chi`` replaced
    by ``E||F(x)||² / ||x||²``.

    Raises:
        TypeError, ValueError: ``s`` or ``chi`` not a finite real, ``chi < 0``, ``L`` not an int >= 0.
    """
    s = check_real("s", s)
    chi = check_real("chi", chi, minimum=0.0)
    L = check_int("L", L, minimum=0)
    return (1.0 + s * s * chi) ** L


def fixup_multiplier(L: int, m: int) -> float:
    """``L^(-1/(2m-2))``: Fixup's multiplier of the standard (He) initialization of the first
    ``m - 1`` layers of each of ``L`` residual branches of ``m`` layers, whose last layer starts at
    zero (Zhang, Dauphin & Ma 2019). It makes ``L · multiplier^(2(m-1)) = 1``, so the first SGD
    step changes the output by an amount independent of ``L`` (:func:`fixup_update_size`).

    Raises:
        TypeError, ValueError: ``L < 1`` or ``m < 2`` (a one-layer branch has no layer to scale).
    """
    L = check_int("L", L, minimum=1)
    m = check_int("m", m, minimum=2)
    return L ** (-1.0 / (2 * m - 2))


def fixup_update_size(lr: float, x_sq: float, L: int, m: int = 2, multiplier: float | None = None) -> float:
    """``lr · x_sq · L · multiplier^(2(m-1))``: the expected factor ``c`` in the first SGD step's
    change ``Δx_L = -c v`` of the output of ``L`` residual blocks with zero last layers, for one
    input ``x_0`` with ``||x_0||² = x_sq`` and the loss ``<v, x_L>``.

    At initialization every block is the identity, so ``x_l = x_0``, and only the last layers
    ``W_m^{(l)}`` receive a gradient, ``v h_l^T`` with ``h_l`` the branch's hidden output. The step
    ``-lr v h_l^T`` changes the output by ``-lr ||h_l||² v`` per block, to first order; each of the
    ``m - 1`` ReLU layers at He's scale times ``multiplier`` multiplies ``E||h||²`` by
    ``multiplier²``, so the blocks together give ``lr · L · multiplier^(2(m-1)) · x_sq``. With
    Fixup's multiplier (the default, :func:`fixup_multiplier`) this is ``lr · x_sq`` at every depth;
    with ``multiplier=1`` it grows like ``L``.
    """
    lr = check_real("lr", lr, minimum=0.0)
    x_sq = check_real("x_sq", x_sq, minimum=0.0)
    L = check_int("L", L, minimum=1)
    m = check_int("m", m, minimum=2)
    if multiplier is None:
        multiplier = fixup_multiplier(L, m)
    multiplier = check_real("multiplier", multiplier, minimum=0.0)
    return lr * x_sq * L * multiplier ** (2 * (m - 1))


def rezero_update_size(lr: float, x_sq: float, L: int, width: int) -> float:
    """``lr · x_sq · L / width``: the expected factor ``c`` in the first SGD step's change
    ``E Δx_L = -c v`` of the output of ``L`` ReZero blocks ``x + alpha_l F_l(x)`` with
    ``alpha_l = 0``, for one input with ``||x_0||² = x_sq`` and the loss ``<v, x_L>``.

    Only the gates receive a gradient, ``<v, F_l(x_0)>``; the step moves each gate by
    ``-lr <v, F_l(x_0)>`` and the output by ``-lr F_l F_l^T v``. A branch ``W2 relu(W1 x)`` with
    ``W2`` at LeCun's scale has ``E[F F^T] = (||x||² / width) I``, so the ``L`` blocks move the
    output by ``lr · L · x_sq / width`` times ``v`` on average (in one direction per block, not along
    ``v``: a single seed scatters around this mean).
    """
    lr = check_real("lr", lr, minimum=0.0)
    x_sq = check_real("x_sq", x_sq, minimum=0.0)
    L = check_int("L", L, minimum=1)
    width = check_int("width", width, minimum=1)
    return lr * x_sq * L / width


__all__ = ["fixup_multiplier", "fixup_update_size", "residual_growth", "rezero_update_size"]
