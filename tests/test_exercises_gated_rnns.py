"""Tests for gradlab.exercises.gated_rnns: check_lstm_cell_jacobian."""

import re

import pytest
import torch

from gradlab.exercises import check_lstm_cell_jacobian
from gradlab.exercises.gated_rnns import LSTM_JACOBIAN_SLIPS, _lstm_case


def _only_slip(word):
    (slip,) = [s for s in LSTM_JACOBIAN_SLIPS if word in s]
    return slip


def cell_jacobian(weight_hh, a_x, c_prev, o_prev, *, order="ifgo", through_h=True, output=True,
                  g_sigmoid=False, columns=False, new_c=False, transpose=False):
    """A reader's solution: the formula of the chapter's theorem, with switches for the slips."""
    n = c_prev.shape[0]
    h_prev = o_prev * torch.tanh(c_prev)
    pre = dict(zip(order, (a_x + weight_hh @ h_prev).split(n), strict=True))
    w = dict(zip(order, weight_hh.split(n), strict=True))
    i, f, g = torch.sigmoid(pre["i"]), torch.sigmoid(pre["f"]), torch.tanh(pre["g"])
    jac = torch.diag(f)
    if through_h:
        g_slope = g * (1 - g) if g_sigmoid else 1 - g**2
        terms = {"f": c_prev * f * (1 - f), "i": g * i * (1 - i), "g": i * g_slope}
        a = sum((w[k] * v[None, :] if columns else v[:, None] * w[k]) for k, v in terms.items())
        c_at = f * c_prev + i * g if new_c else c_prev
        dh = o_prev * (1 - torch.tanh(c_at) ** 2) if output else torch.ones(n, dtype=c_prev.dtype)
        jac = jac + a @ torch.diag(dh)
    return jac.T if transpose else jac


WRONG = {
    "only the forget gate": lambda *a: cell_jacobian(*a, through_h=False),
    "stop at h_{t-1}": lambda *a: cell_jacobian(*a, output=False),
    "at the new cell state": lambda *a: cell_jacobian(*a, new_c=True),
    "the candidate g is a tanh": lambda *a: cell_jacobian(*a, g_sigmoid=True),
    "the gate order": lambda *a: cell_jacobian(*a, order="igfo"),
    "the transpose": lambda *a: cell_jacobian(*a, transpose=True),
    "scale the rows": lambda *a: cell_jacobian(*a, columns=True),
}


def test_check_lstm_cell_jacobian_accepts_the_formula():
    result = check_lstm_cell_jacobian(cell_jacobian)
    assert result.passed and result.cases == 40 and "all 40" in result.message
    assert check_lstm_cell_jacobian(cell_jacobian, n_cases=5, seed=7)


@pytest.mark.parametrize("word", WRONG)
def test_check_lstm_cell_jacobian_names_each_slip(word):
    result = check_lstm_cell_jacobian(WRONG[word])
    assert not result.passed and "is wrong" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message
    assert re.search(r"case \d+ \(n=\d, weight_hh of shape \(\d+, \d\), a_x of shape \(\d+,\)",
                     result.message), result.message


def test_every_lstm_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(LSTM_JACOBIAN_SLIPS)


def test_check_lstm_cell_jacobian_reports_errors_and_shapes():
    def boom(*args):
        raise RuntimeError("not yet")

    result = check_lstm_cell_jacobian(boom)
    assert not result.passed and "RuntimeError: not yet" in result.message
    result = check_lstm_cell_jacobian(lambda w, a, c, o: torch.zeros(c.shape[0] + 1))
    assert not result.passed and "returned shape" in result.message
    result = check_lstm_cell_jacobian(lambda w, a, c, o: torch.eye(c.shape[0], dtype=c.dtype))
    assert not result.passed and "Known slip" not in result.message


def test_the_cases_reference_is_the_autograd_jacobian_of_torch_lstm_cell():
    # The reference equals the Jacobian of torch.nn.LSTMCell's c_t, a second, independent route.
    g = torch.Generator().manual_seed(3)
    for i in range(10):
        case = _lstm_case(g, i)
        weight_hh, a_x, c_prev, o_prev = case.args
        n = c_prev.shape[0]
        cell = torch.nn.LSTMCell(1, n).double()
        with torch.no_grad():
            cell.weight_hh.copy_(weight_hh)
            cell.weight_ih.zero_()
            cell.bias_ih.copy_(a_x)
            cell.bias_hh.zero_()

        def c_t(c, cell=cell, o_prev=o_prev):
            return cell(torch.zeros(1, 1, dtype=torch.float64),
                        ((o_prev * torch.tanh(c))[None], c[None]))[1][0]

        torch.testing.assert_close(torch.autograd.functional.jacobian(c_t, c_prev), case.expected,
                                   rtol=1e-10, atol=1e-12)
