"""Checker for "Gated recurrent networks": the LSTM's one-step cell Jacobian dc_t/dc_{t-1},
the forget gate plus the paths through h_{t-1}."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .harness import Case, CheckResult, Slips, describe, run


def _cell_step(weight_hh: torch.Tensor, a_x: torch.Tensor, c_prev: torch.Tensor,
               o_prev: torch.Tensor) -> torch.Tensor:
    """``c_t`` from ``c_{t-1}``, with ``h_{t-1} = o_{t-1} tanh(c_{t-1})`` and PyTorch's gate
    order ``i, f, g, o`` in ``a_t = a_x + weight_hh h_{t-1}``."""
    a_i, a_f, a_g, _ = (a_x + weight_hh @ (o_prev * torch.tanh(c_prev))).chunk(4)
    return torch.sigmoid(a_f) * c_prev + torch.sigmoid(a_i) * torch.tanh(a_g)


def _lstm_case(g: torch.Generator, i: int) -> Case:
    """A random one-layer LSTM step of 1 to 5 units: recurrent weights of scale 0.5 to 2, gate
    inputs and cell states of order one, output gates in (0, 1); the reference is autograd on
    ``c_{t-1} -> c_t``."""
    n = int(torch.randint(1, 6, (1,), generator=g))
    scale = 0.5 + 1.5 * float(torch.rand((), generator=g))
    weight_hh = scale * torch.randn(4 * n, n, generator=g, dtype=torch.float64) / n**0.5
    a_x = torch.randn(4 * n, generator=g, dtype=torch.float64)
    c_prev = 1.5 * torch.randn(n, generator=g, dtype=torch.float64)
    o_prev = torch.rand(n, generator=g, dtype=torch.float64)
    expected = torch.autograd.functional.jacobian(
        lambda c: _cell_step(weight_hh, a_x, c, o_prev), c_prev.clone())
    label = describe(n=n, weight_hh=weight_hh, a_x=a_x, c_prev=c_prev, o_prev=o_prev)
    return Case((weight_hh, a_x, c_prev, o_prev), expected, label)


def _formula(case: Case, *, order: str = "ifgo", through_h: bool = True, with_output: bool = True,
             g_slope: str = "tanh", rows: bool = True, slope_at_new_c: bool = False) -> torch.Tensor:
    """``diag(f_t) + A_t diag(o_{t-1} tanh'(c_{t-1}))``; the keywords make the slips."""
    weight_hh, a_x, c_prev, o_prev = case.args
    n = c_prev.shape[0]
    h_prev = o_prev * torch.tanh(c_prev)
    blocks = dict(zip(order, (a_x + weight_hh @ h_prev).chunk(4), strict=True))
    w = dict(zip(order, weight_hh.split(n), strict=True))
    i, f = torch.sigmoid(blocks["i"]), torch.sigmoid(blocks["f"])
    g = torch.tanh(blocks["g"])
    g_deriv = 1 - g**2 if g_slope == "tanh" else g * (1 - g)
    if not through_h:
        return torch.diag(f)

    def scaled(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return v[:, None] * m if rows else m * v[None, :]

    a = (scaled(c_prev * f * (1 - f), w["f"]) + scaled(g * i * (1 - i), w["i"])
         + scaled(i * g_deriv, w["g"]))
    c_new = f * c_prev + i * g
    c_for_slope = c_new if slope_at_new_c else c_prev
    right = o_prev * (1 - torch.tanh(c_for_slope) ** 2) if with_output else torch.ones(n, dtype=a.dtype)
    return torch.diag(f) + a * right[None, :]


LSTM_JACOBIAN_SLIPS: Slips = {
    "only the forget gate, diag(f_t): the gates also read h_{t-1} = o_{t-1} tanh(c_{t-1}), "
    "so add the terms through h": lambda c: _formula(c, through_h=False),
    "the terms through h stop at h_{t-1}: multiply them on the right by "
    "d h_{t-1} / d c_{t-1} = diag(o_{t-1} (1 - tanh(c_{t-1})^2))":
        lambda c: _formula(c, with_output=False),
    "the slope of tanh at the new cell state c_t: h_{t-1} = o_{t-1} tanh(c_{t-1}) uses the old one":
        lambda c: _formula(c, slope_at_new_c=True),
    "the candidate g is a tanh: its slope is 1 - g², not the sigmoid's g (1 - g)":
        lambda c: _formula(c, g_slope="sigmoid"),
    "the gate order: PyTorch stacks the rows as i, f, g, o (not TensorFlow 1's i, g, f, o)":
        lambda c: _formula(c, order="igfo"),
    "the transpose: row j is d c_t[j] / d c_{t-1}": lambda c: c.expected.T,
    "the gate slopes scale the rows of W: diag(v) W is v[:, None] * W, not W * v[None, :]":
        lambda c: _formula(c, rows=False),
}


def check_lstm_cell_jacobian(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(weight_hh, a_x, c_prev, o_prev)`` returns the one-step Jacobian
    ``d c_t / d c_{t-1}`` (``n x n``) of an LSTM cell when ``h_{t-1} = o_{t-1} tanh(c_{t-1})``
    follows ``c_{t-1}``::

        diag(f_t) + A_t diag(o_{t-1} (1 - tanh(c_{t-1})^2)),
        A_t = diag(c_{t-1} f (1 - f)) W_f + diag(g i (1 - i)) W_i + diag(i (1 - g^2)) W_g

    with ``a_t = a_x + weight_hh h_{t-1}`` split into PyTorch's gates ``i, f, g, o``
    (``weight_hh`` is ``4n x n``, its row blocks ``W_i, W_f, W_g, W_o``). The reference is
    autograd; random sizes (1 to 5 units) and scales. A failure names the shapes and the slip of
    :data:`LSTM_JACOBIAN_SLIPS` it matches.
    """
    return run("LSTM cell Jacobian", fn, _lstm_case, n_cases, seed, rtol=1e-6, atol=1e-9,
               slips=LSTM_JACOBIAN_SLIPS)
