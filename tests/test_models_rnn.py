"""Tests for gradlab.models.rnn: VanillaRNN, LSTM, GRU and the single-unit network of the cliff."""

import copy
import math

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import gradlab as gl
from gradlab.models import (
    GRU,
    LSTM,
    RNN_INITS,
    SingleUnitRNN,
    VanillaRNN,
    dropout_masks,
    single_unit_last_state,
    state_jacobian_norms,
)
from gradlab.theory import (
    bptt_jacobian_norms,
    cliff_bias,
    cliff_gradient_norm,
    spectral_norm,
    spectral_radius,
)

# ---------------------------------------------------------------------------------------------
# Recurrent models: VanillaRNN against torch.nn.RNN, spectral radius, LSTM/GRU wrappers
# ---------------------------------------------------------------------------------------------


def _copy_into_torch_rnn(model, nonlinearity):
    ref = torch.nn.RNN(model.in_features, model.hidden_size, nonlinearity=nonlinearity,
                       batch_first=True)
    with torch.no_grad():
        ref.weight_hh_l0.copy_(model.W)
        ref.weight_ih_l0.copy_(model.U)
        ref.bias_ih_l0.copy_(model.b)
        ref.bias_hh_l0.zero_()
    return ref


def test_vanilla_rnn_matches_torch_rnn():
    torch.manual_seed(0)
    for activation in ("tanh", "relu"):
        model = VanillaRNN(3, 8, 2, activation=activation, spectral_radius=0.9)
        with torch.no_grad():
            model.b.normal_()
        ref = _copy_into_torch_rnn(model, activation)
        x = torch.randn(5, 11, 3)
        h0 = torch.randn(5, 8)
        hs, preacts = model.states(x, h0)
        out, h_last = ref(x, h0[None])
        torch.testing.assert_close(hs[:, 1:], out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hs[:, 0], h0)
        torch.testing.assert_close(model(x, h0), model.readout(h_last[0]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model._phi(preacts), hs[:, 1:])


def test_vanilla_rnn_linear_is_a_linear_recurrence():
    torch.manual_seed(1)
    model = VanillaRNN(2, 4, activation="linear", bias=False)
    assert model.b is None
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    model = model.double()
    h = torch.zeros(3, 4, dtype=torch.float64)
    for t in range(6):
        h = h @ model.W.T + x[:, t] @ model.U.T
    torch.testing.assert_close(model.states(x)[0][:, -1], h)


def test_vanilla_rnn_cell_matches_states():
    torch.manual_seed(2)
    model = VanillaRNN(3, 5)
    with torch.no_grad():
        model.b.normal_()
    x = torch.randn(2, 7, 3)
    hs, _ = model.states(x)
    h = torch.zeros(2, 5)
    for t in range(7):
        h = model.cell(h, x[:, t])
        torch.testing.assert_close(h, hs[:, t + 1])
    # unbatched use: one sequence step by step
    h = torch.zeros(5)
    for t in range(7):
        h = model.cell(h, x[0, t])
    torch.testing.assert_close(h, hs[0, -1])


def test_vanilla_rnn_shapes_and_gradients():
    torch.manual_seed(3)
    x = torch.randn(4, 9, 3)
    for model in (VanillaRNN(3, 6, 2), LSTM(3, 6, 2), GRU(3, 6, 2), LSTM(3, 6, 2, num_layers=2)):
        out = model(x)
        assert out.shape == (4, 2)
        out.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    hs, preacts = VanillaRNN(3, 6).states(x)
    assert hs.shape == (4, 10, 6) and preacts.shape == (4, 9, 6)
    assert LSTM(3, 6).states(x).shape == (4, 9, 6)


class _CountCalls(torch.nn.Module):
    """An identity parametrization that counts how often the weight is computed."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, weight):
        self.calls += 1
        return weight


def test_parametrized_recurrent_matrix_is_computed_once_per_forward():
    torch.manual_seed(0)
    model = VanillaRNN(3, 8, 2)
    plain = VanillaRNN(3, 8, 2)
    plain.load_state_dict(model.state_dict())
    counter = _CountCalls()
    parametrize.register_parametrization(model, "W", counter)
    counter.calls = 0  # registering computes the weight once, to check it
    x = torch.randn(4, 25, 3)
    out = model(x)
    assert counter.calls == 1  # not once per time step
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    out.sum().backward()
    assert model.parametrizations.W.original.grad is not None


def test_spectral_norm_parametrization_runs_one_power_iteration_per_forward():
    torch.manual_seed(0)
    model = torch_spectral_norm(VanillaRNN(3, 8, 2, gain=2.0), "W")
    reference = torch_spectral_norm(torch.nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original.copy_(model.parametrizations.W.original)
    ours, theirs = model.parametrizations.W[0], reference.parametrizations.weight[0]
    theirs._u.copy_(ours._u)
    theirs._v.copy_(ours._v)
    model(torch.randn(2, 30, 3))
    reference(torch.randn(2, 8))  # one forward of the Linear: one power iteration
    torch.testing.assert_close(ours._u, theirs._u)
    torch.testing.assert_close(model.W, reference.weight)


def test_spectral_radius_after_init_matches_request():
    torch.manual_seed(4)
    for init in RNN_INITS:
        for rho in (0.5, 1.0, 1.7):
            model = VanillaRNN(2, 32, init=init, spectral_radius=rho)
            assert abs(spectral_radius(model.W) - rho) < 1e-5 * rho


def test_recurrent_inits():
    torch.manual_seed(5)
    ortho = VanillaRNN(2, 40, init="orthogonal", gain=1.3)
    singular = torch.linalg.svdvals(ortho.W.detach().double())
    torch.testing.assert_close(singular, torch.full_like(singular, 1.3), rtol=1e-6, atol=0)  # float32 W
    ident = VanillaRNN(2, 5, init="identity", gain=0.7)
    torch.testing.assert_close(ident.W.detach(), 0.7 * torch.eye(5))
    # Gaussian: spectral radius near gain (circular law), largest singular value near 2 gain.
    # Tolerances: at n = 400 the edge fluctuations are a few percent.
    gauss = VanillaRNN(2, 400, init="gaussian", gain=0.8)
    assert abs(spectral_radius(gauss.W) - 0.8) < 0.05
    assert abs(spectral_norm(gauss.W) - 1.6) < 0.08


def test_same_seed_same_model():
    torch.manual_seed(6)
    a = VanillaRNN(2, 8, spectral_radius=1.1)
    torch.manual_seed(6)
    b = VanillaRNN(2, 8, spectral_radius=1.1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_lstm_gru_match_torch_modules():
    torch.manual_seed(7)
    x = torch.randn(2, 5, 3)
    for cls, core in ((LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU)):
        model = cls(3, 4, 1)
        assert isinstance(model.rnn, core) and model.rnn.batch_first
        out, _ = model.rnn(x)
        torch.testing.assert_close(model(x), model.readout(out[:, -1]))


def test_recurrent_bad_arguments():
    cases = [
        (lambda: VanillaRNN(0, 4), ValueError, "in_features"),
        (lambda: VanillaRNN(2, 0), ValueError, "hidden_size"),
        (lambda: VanillaRNN(2, 4, 0), ValueError, "out_features"),
        (lambda: VanillaRNN(2.0, 4), TypeError, "in_features"),
        (lambda: VanillaRNN(2, 4, activation="softplus"), ValueError, "activation"),
        (lambda: VanillaRNN(2, 4, init="he"), ValueError, "init"),
        (lambda: VanillaRNN(2, 4, gain=-1.0), ValueError, "gain"),
        (lambda: VanillaRNN(2, 4, spectral_radius=0.0), ValueError, "spectral_radius"),
        (lambda: VanillaRNN(2, 4, spectral_radius="1"), TypeError, "spectral_radius"),
        (lambda: VanillaRNN(2, 4, gain=0.0, spectral_radius=1.0), ValueError, "spectral_radius"),
        (lambda: VanillaRNN(2, 4, bias=1), TypeError, "bias"),
        (lambda: LSTM(2, 4, num_layers=0), ValueError, "num_layers"),
        (lambda: GRU(2, -1), ValueError, "hidden_size"),
    ]
    for make, error, name in cases:
        with pytest.raises(error, match=name):
            make()
    model = VanillaRNN(2, 4)
    for bad, error in (
        (torch.zeros(3, 5), ValueError),
        (torch.zeros(3, 5, 3), ValueError),
        (torch.zeros(3, 0, 2), ValueError),
        ([[0.0, 1.0]], TypeError),
    ):
        with pytest.raises(error, match="x"):
            model(bad)
        with pytest.raises(error, match="x"):
            LSTM(2, 4)(bad)
    with pytest.raises(ValueError, match="h0"):
        model(torch.zeros(3, 5, 2), h0=torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# Dropout on the recurrent connection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5])
def test_dropout_masks_are_torch_dropout_of_ones(p):
    torch.manual_seed(4)
    ours = dropout_masks(3, 5, 7, p)
    torch.manual_seed(4)
    reference = torch.nn.Dropout(p)(torch.ones(3, 5, 7))
    assert torch.equal(ours, reference)
    torch.manual_seed(4)
    ours = dropout_masks(3, 5, 7, p, dtype=torch.float64)
    torch.manual_seed(4)
    assert torch.equal(ours, torch.nn.functional.dropout(torch.ones(3, 5, 7, dtype=torch.float64), p))


def test_locked_masks_repeat_over_time_and_fresh_ones_do_not():
    g = torch.Generator().manual_seed(0)
    locked = dropout_masks(4, 6, 50, 0.5, locked=True, generator=g)
    assert locked.shape == (4, 6, 50)
    assert torch.equal(locked, locked[:, :1].expand(4, 6, 50))
    assert not torch.equal(locked[0, 0], locked[1, 0])  # one mask per sequence
    fresh = dropout_masks(4, 6, 50, 0.5, generator=g)
    assert not torch.equal(fresh[:, 0], fresh[:, 1])
    assert set(torch.unique(torch.cat([locked, fresh])).tolist()) == {0.0, 2.0}


def test_dropout_masks_mean_one_and_generator_reproducible():
    """Over 200 000 entries the kept fraction has standard deviation 0.001 at p = 0.3."""
    masks = dropout_masks(100, 20, 100, 0.3, generator=torch.Generator().manual_seed(1))
    assert abs(float((masks > 0).double().mean()) - 0.7) < 0.005
    assert abs(float(masks.double().mean()) - 1.0) < 0.01
    again = dropout_masks(100, 20, 100, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(masks, again)
    torch.manual_seed(9)
    state = torch.random.get_rng_state()
    dropout_masks(2, 2, 2, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # a generator leaves the global stream


def test_states_with_masks_drop_the_recurrent_input():
    torch.manual_seed(0)
    model = VanillaRNN(3, 6, activation="tanh")
    x = torch.randn(2, 5, 3)
    masks = dropout_masks(2, 5, 6, 0.4, generator=torch.Generator().manual_seed(2))
    hs, preacts = model.states(x, masks=masks)
    h = torch.zeros(2, 6)
    for t in range(5):
        a = (masks[:, t] * h) @ model.W.T + x[:, t] @ model.U.T + model.b
        torch.testing.assert_close(preacts[:, t], a)
        h = torch.tanh(a)
        torch.testing.assert_close(hs[:, t + 1], h)
    torch.testing.assert_close(model(x, masks=masks), model.readout(h))
    ones = torch.ones(2, 5, 6)
    torch.testing.assert_close(model.states(x, masks=ones)[0], model.states(x)[0])


@pytest.mark.parametrize(("call", "error", "name"), [
    (lambda: dropout_masks(0, 2, 2, 0.5), ValueError, "batch"),
    (lambda: dropout_masks(1, 0, 2, 0.5), ValueError, "steps"),
    (lambda: dropout_masks(1, 2, 2.0, 0.5), TypeError, "hidden"),
    (lambda: dropout_masks(1, 2, 2, 1.0), ValueError, "p"),
    (lambda: dropout_masks(1, 2, 2, -0.5), ValueError, "p"),
    (lambda: dropout_masks(1, 2, 2, 0.5, locked=1), TypeError, "locked"),
    (lambda: dropout_masks(1, 2, 2, 0.5, generator=0), TypeError, "generator"),
    (lambda: dropout_masks(1, 2, 2, 0.5, dtype=torch.int64), TypeError, "dtype"),
    (lambda: VanillaRNN(2, 4).states(torch.zeros(3, 5, 2), masks=torch.ones(3, 5, 3)), ValueError,
     "masks"),
    (lambda: VanillaRNN(2, 4)(torch.zeros(3, 5, 2), masks=[[1.0]]), TypeError, "masks"),
])
def test_dropout_masks_and_states_reject_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ---------------------------------------------------------------------------------------------
# LSTM and GRU cells, the forget-gate bias, state Jacobians against the lag
# ---------------------------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _hand_lstm_step(rnn, x_t, h, c):
    """One LSTM step from the weight slices, every gate computed on its own (PyTorch's gate
    order i, f, g, o in the rows of weight_ih, weight_hh, bias_ih, bias_hh)."""
    n = rnn.hidden_size
    w_i, w_h = rnn.weight_ih_l0, rnn.weight_hh_l0
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0

    def pre(k):
        rows = slice(k * n, (k + 1) * n)
        return x_t @ w_i[rows].T + h @ w_h[rows].T + b[rows]

    i, f, g, o = _sigmoid(pre(0)), _sigmoid(pre(1)), torch.tanh(pre(2)), _sigmoid(pre(3))
    c = f * c + i * g
    return o * torch.tanh(c), c, f


def test_lstm_and_gru_cells_match_torch_step_by_step():
    torch.manual_seed(11)
    x = torch.randn(3, 9, 4)
    for cls in (LSTM, GRU):
        model = cls(4, 6)
        with torch.no_grad():
            for p in model.rnn.parameters():
                p.normal_(0.0, 0.7)  # biases and weights of order one: every gate matters
        out = model.states(x)
        h, c = torch.zeros(3, 6), torch.zeros(3, 6)
        for t in range(9):
            if cls is LSTM:
                h, c = model.cell((h, c), x[:, t])
            else:
                h = model.cell(h, x[:, t])
            torch.testing.assert_close(h, out[:, t], rtol=1e-5, atol=1e-6)


def test_lstm_matches_a_hand_written_step_with_its_forget_bias():
    torch.manual_seed(12)
    model = LSTM(3, 5, forget_bias=2.0)
    x = torch.randn(2, 7, 3)
    h, c = torch.zeros(2, 5), torch.zeros(2, 5)
    for t in range(7):
        h, c, f = _hand_lstm_step(model.rnn, x[:, t], h, c)
    torch.testing.assert_close(model.states(x)[:, -1], h, rtol=1e-5, atol=1e-6)
    # with no input and h = 0 the forget gate is exactly sigmoid(total forget bias)
    _, _, f = _hand_lstm_step(model.rnn, torch.zeros(1, 3), torch.zeros(1, 5), torch.zeros(1, 5))
    torch.testing.assert_close(f, torch.full((1, 5), 1 / (1 + math.exp(-2.0))))


@pytest.mark.parametrize("value", [1.0, -2.5, 0.0, 7])
def test_forget_bias_sets_only_the_forget_slices_of_every_layer(value):
    n = 4
    with gl.utils.seeded(3):
        plain = LSTM(2, n, num_layers=2)
    with gl.utils.seeded(3):
        model = LSTM(2, n, num_layers=2, forget_bias=value)
    assert model.forget_bias == float(value) and plain.forget_bias is None
    assert f"forget_bias={float(value)}" in repr(model)
    for layer in range(2):
        b_ih = getattr(model.rnn, f"bias_ih_l{layer}")
        b_hh = getattr(model.rnn, f"bias_hh_l{layer}")
        torch.testing.assert_close(b_ih[n : 2 * n] + b_hh[n : 2 * n], torch.full((n,), float(value)))
        for name, mine in (("ih", b_ih), ("hh", b_hh)):
            theirs = getattr(plain.rnn, f"bias_{name}_l{layer}")
            for rows in (slice(0, n), slice(2 * n, 4 * n)):  # gates i, g, o untouched
                assert torch.equal(mine[rows], theirs[rows])
        assert torch.equal(getattr(model.rnn, f"weight_hh_l{layer}"),
                           getattr(plain.rnn, f"weight_hh_l{layer}"))
    assert model.set_forget_bias_(0.5) is model and model.forget_bias == 0.5


def test_gated_bad_arguments():
    for bad, error in (("1", TypeError), (float("nan"), ValueError), (float("inf"), ValueError),
                       (True, TypeError)):
        with pytest.raises(error, match="forget_bias"):
            LSTM(2, 4, forget_bias=bad)
        with pytest.raises(error, match="forget_bias"):
            LSTM(2, 4).set_forget_bias_(bad)
    with pytest.raises(TypeError):
        GRU(2, 4, forget_bias=1.0)  # a GRU has no forget gate
    with pytest.raises(ValueError, match="num_layers"):
        LSTM(2, 4, num_layers=2).cell((torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="num_layers"):
        GRU(2, 4, num_layers=3).cell(torch.zeros(1, 4), torch.zeros(1, 2))


def _full_state_jacobian(model, x, t):
    """d h_T / d h_t (and d c_T / d c_t for an LSTM) for one sequence, by
    torch.autograd.functional.jacobian on the states after step t: an independent route."""
    model = model.double()
    x = x.double()
    with torch.no_grad():
        h, c = torch.zeros(model.hidden_size, dtype=torch.float64), None
        c = torch.zeros_like(h)
        for k in range(t):
            if isinstance(model, LSTM):
                h, c = model.cell((h, c), x[k])
            else:
                h = model.cell(h, x[k])

    def run(h, c):
        for k in range(t, x.shape[0]):
            if isinstance(model, LSTM):
                h, c = model.cell((h, c), x[k])
            else:
                h = model.cell(h, x[k])
        return h, c

    jac_h = torch.autograd.functional.jacobian(lambda h_: run(h_, c)[0], h)
    jac_c = torch.autograd.functional.jacobian(lambda c_: run(h, c_)[1], c)
    return jac_h, jac_c


def test_state_jacobian_norms_match_an_independent_autograd_route():
    torch.manual_seed(13)
    x = torch.randn(2, 12, 3)
    for model in (VanillaRNN(3, 5, spectral_radius=1.3), LSTM(3, 5, forget_bias=1.0), GRU(3, 5)):
        norms = state_jacobian_norms(model, x)
        assert set(norms) == ({"h", "c"} if isinstance(model, LSTM) else {"h"})
        for values in norms.values():
            assert values.shape == (2, 13) and values.dtype == torch.float64
            assert torch.equal(values[:, 0], torch.ones(2, dtype=torch.float64))
        for b in range(2):
            for t in (0, 4, 11):
                jac_h, jac_c = _full_state_jacobian(copy.deepcopy(model), x[b], t)
                lag = 12 - t
                torch.testing.assert_close(norms["h"][b, lag], torch.linalg.matrix_norm(jac_h, ord=2),
                                           rtol=1e-10, atol=1e-14)
                if isinstance(model, LSTM):
                    torch.testing.assert_close(norms["c"][b, lag],
                                               torch.linalg.matrix_norm(jac_c, ord=2),
                                               rtol=1e-10, atol=1e-14)


def test_state_jacobian_norms_of_the_vanilla_network_match_the_closed_form():
    torch.manual_seed(14)
    model = VanillaRNN(2, 8, spectral_radius=1.2)
    x = torch.randn(3, 40, 2)
    norms = state_jacobian_norms(model, x)["h"]
    with torch.no_grad():
        _, preacts = copy.deepcopy(model).double().states(x.double())
    for b in range(3):
        torch.testing.assert_close(norms[b], bptt_jacobian_norms(model.W, preacts[b], "tanh"),
                                   rtol=1e-9, atol=0)


def _gates(model, x):
    """Forget gates f_t of an LSTM (update gates z_t of a GRU) along x, shape (batch, T, n)."""
    n = model.hidden_size
    h, c, gates = torch.zeros(x.shape[0], n), torch.zeros(x.shape[0], n), []
    with torch.no_grad():
        for t in range(x.shape[1]):
            a_x, a_h = model._gate_inputs(h, x[:, t])
            if isinstance(model, LSTM):
                gates.append(_sigmoid((a_x + a_h)[:, n : 2 * n]))
                h, c = model.cell((h, c), x[:, t])
            else:
                gates.append(_sigmoid((a_x + a_h)[:, n : 2 * n]))
                h = model.cell(h, x[:, t])
    return torch.stack(gates, dim=1).double()


def test_carousel_alone_is_the_product_of_the_gates():
    """With the recurrent weights at zero the cell path of an LSTM is diag(prod f_k) and the
    state path of a GRU is diag(prod z_k): the norm is the largest unit's product."""
    torch.manual_seed(15)
    x = torch.rand(2, 25, 2)
    for model in (LSTM(2, 6, forget_bias=1.5), GRU(2, 6)):
        with torch.no_grad():
            model.rnn.weight_hh_l0.zero_()
            model.rnn.bias_ih_l0.normal_()
        norms = state_jacobian_norms(model, x)
        gates = _gates(model, x)  # (batch, T, n)
        products = gates.flip(1).log().cumsum(1).exp().amax(-1)  # lag k: prod of the last k
        path = "c" if isinstance(model, LSTM) else "h"
        torch.testing.assert_close(norms[path][:, 1:], products, rtol=1e-5, atol=0)
        if isinstance(model, LSTM):  # h_t then feeds nothing: no path from h_t to h_T
            assert torch.all(norms["h"][:, 1:] == 0)


def test_lstm_cell_path_at_lag_one_is_the_last_forget_gate():
    torch.manual_seed(16)
    model = LSTM(3, 7, forget_bias=0.5)
    x = torch.randn(4, 10, 3)
    norms = state_jacobian_norms(model, x)["c"]
    f_last = _gates(model, x)[:, -1].amax(-1)
    torch.testing.assert_close(norms[:, 1], f_last, rtol=1e-5, atol=0)


def test_state_jacobian_norms_rejects_bad_input():
    with pytest.raises(TypeError, match="model"):
        state_jacobian_norms(torch.nn.LSTM(2, 3), torch.zeros(1, 4, 2))
    for bad, error in ((torch.zeros(4, 2), ValueError), (torch.zeros(1, 4, 3), ValueError),
                       ([[[0.0, 0.0]]], TypeError)):
        with pytest.raises(error, match="x"):
            state_jacobian_norms(LSTM(2, 3), bad)
    with pytest.raises(ValueError, match="num_layers"):
        state_jacobian_norms(LSTM(2, 3, num_layers=2), torch.zeros(1, 4, 2))


def test_state_jacobian_norms_leaves_the_model_alone():
    model = LSTM(2, 3)
    before = copy.deepcopy(model.state_dict())
    state_jacobian_norms(model, torch.randn(1, 5, 2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The single-unit network of the cliff
# ---------------------------------------------------------------------------------------------


def _by_loop(w, b, h0, steps):
    h = h0
    for _ in range(steps):
        h = torch.tanh(torch.tensor(w * h + b, dtype=torch.float64)).item()
    return h


def test_single_unit_last_state_matches_torch_rnn():
    # torch.nn.RNN with one unit, zero input and bias b is h_t = tanh(w h_{t-1} + b)
    ref = torch.nn.RNN(1, 1, batch_first=True).double()
    for w, b, h0, steps in [(2.0, -0.3, 0.5, 30), (0.7, 0.2, -0.9, 7), (-1.5, 0.1, 0.0, 1)]:
        with torch.no_grad():
            ref.weight_hh_l0.fill_(w)
            ref.bias_hh_l0.fill_(b)
            ref.weight_ih_l0.zero_()
            ref.bias_ih_l0.zero_()
        _, h_last = ref(torch.zeros(1, steps, 1, dtype=torch.float64),
                        torch.full((1, 1, 1), h0, dtype=torch.float64))
        ours = single_unit_last_state(w, b, h0=h0, steps=steps)
        torch.testing.assert_close(ours, h_last.reshape(()), rtol=1e-12, atol=1e-14)
        assert ours.dtype == torch.float64


def test_single_unit_last_state_is_elementwise_and_differentiable():
    ws = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    bs = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    grid_w, grid_b = torch.meshgrid(ws, bs, indexing="ij")
    grid_w.requires_grad_(True)
    grid_b.requires_grad_(True)
    h = single_unit_last_state(grid_w, grid_b, h0=0.5, steps=12)
    assert h.shape == (7, 5)
    for i in (0, 3, 6):
        for j in (0, 4):
            assert abs(h[i, j].item() - _by_loop(ws[i].item(), bs[j].item(), 0.5, 12)) < 1e-14
    grad_w, grad_b = torch.autograd.grad(h.sum(), [grid_w, grid_b])
    # one backward over the grid gives every point's own gradient
    p = torch.tensor([ws[3].item(), bs[1].item()], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(single_unit_last_state(p[0], p[1], h0=0.5, steps=12), p)
    torch.testing.assert_close(torch.stack([grad_w[3, 1], grad_b[3, 1]]), g)
    # broadcasting: a column of w against a row of b, and a tensor of initial states
    assert single_unit_last_state(ws[:, None], bs[None, :], h0=0.5, steps=12).shape == (7, 5)
    h0s = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
    assert single_unit_last_state(2.0, -0.1, h0=h0s, steps=3).shape == (3,)


def test_pascanus_sigmoid_unit_is_the_single_unit_in_the_coordinates_h_equal_tanh_x_over_2():
    """x_t = w sigmoid(x_{t-1}) + b (Pascanu et al. 2013) becomes h_t = tanh(w/4 h_{t-1} + w/4 + b/2)
    for h_t = tanh(x_t / 2), and sigmoid(x_T) = (1 + h_T) / 2: the chapter computes that unit so."""
    g = torch.Generator().manual_seed(0)
    w = 12.0 * torch.rand(200, generator=g, dtype=torch.float64) - 6.0
    b = 8.0 * torch.rand(200, generator=g, dtype=torch.float64) - 4.0
    x0 = 4.0 * torch.rand(200, generator=g, dtype=torch.float64) - 2.0
    x = x0
    for _ in range(50):
        x = w * torch.sigmoid(x) + b
    h_last = single_unit_last_state(w / 4, w / 4 + b / 2, h0=torch.tanh(x0 / 2), steps=50)
    torch.testing.assert_close((1 + h_last) / 2, torch.sigmoid(x), rtol=0.0, atol=1e-13)


@pytest.mark.parametrize(("w", "h0", "steps"), [(2.0, 0.5, 30), (1.5, 0.5, 50), (3.0, -0.3, 20),
                                                  (1.0, 0.5, 40), (1.0, 0.0, 25)])
def test_single_unit_stays_on_the_wall_and_matches_cliff_gradient_norm(w, h0, steps):
    b = cliff_bias(w, h0)
    s = w * (1 - h0**2)
    for t in range(1, steps + 1):
        # float64 rounding (~1e-16) is amplified by s per step where the fixed point is unstable
        drift = abs(single_unit_last_state(w, b, h0=h0, steps=t).item() - h0)
        assert drift <= 1e-15 * max(s, 1.0) ** t * t
    p = torch.tensor([w, b], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(single_unit_last_state(p[0], p[1], h0=h0, steps=steps), p)
    expected = cliff_gradient_norm(w, h0, steps)
    # The rounding of b (~1e-16) grows like s^t along the run and shifts every slope tanh'(a_t)
    # by as much: relative error ~ 1e-16 s^T, 2e-8 for (w, h0, T) = (3, -0.3, 20) where s^T = 5e8.
    assert abs(g.norm().item() / expected - 1) < 1e-10 + 1e-15 * max(s, 1.0) ** steps
    # and dh_T/dw = h0 dh_T/db on the wall
    assert abs(g[0].item() - h0 * g[1].item()) <= (1e-10 + 1e-15 * max(s, 1.0) ** steps) * abs(g[1].item())


def test_single_unit_module_forward_uses_the_function():
    rnn = SingleUnitRNN(2.0, -0.4, h0=0.3, steps=17)
    assert isinstance(rnn.w, torch.nn.Parameter) and rnn.w.dtype == torch.float64
    assert [name for name, _ in rnn.named_parameters()] == ["w", "b"]
    expected = single_unit_last_state(2.0, -0.4, h0=0.3, steps=17)
    torch.testing.assert_close(rnn(), expected.reshape(1))
    h0s = torch.tensor([-0.2, 0.3, 0.9], dtype=torch.float64)
    torch.testing.assert_close(rnn(h0s), single_unit_last_state(2.0, -0.4, h0=h0s, steps=17))
    assert "steps=17" in repr(rnn) and "h0=0.3" in repr(rnn)


def test_single_unit_module_gradient_on_the_wall():
    w, h0, steps = 2.0, 0.5, 30
    rnn = SingleUnitRNN(w, cliff_bias(w, h0), h0=h0, steps=steps)
    rnn().sum().backward()
    norm = torch.stack([rnn.w.grad, rnn.b.grad]).norm().item()
    assert abs(norm / cliff_gradient_norm(w, h0, steps) - 1) < 1e-9


def test_single_unit_module_trains_with_fit():
    # w = 0.5 < 1: one stable fixed point, no wall; SGD on (h_T - y*)² brings h_T to y* = -0.5
    rnn = SingleUnitRNN(0.5, 0.3, h0=0.5, steps=30)
    data = (torch.tensor([0.5], dtype=torch.float64), torch.tensor([-0.5], dtype=torch.float64))
    start = [p.detach().clone() for p in rnn.parameters()]
    hist = gl.fit(rnn, torch.nn.functional.mse_loss, data, torch.optim.SGD(rnn.parameters(), lr=0.1),
                  steps=50, progress=False)
    assert len(hist) == 50 and not hist.stopped
    assert hist.loss[0] > 1.0 and hist.loss[-1] < 1e-8
    assert all(not torch.equal(p, q) for p, q in zip(rnn.parameters(), start, strict=True))
    with torch.no_grad():
        assert float((rnn(data[0]) - data[1]) ** 2) < 1e-8


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: single_unit_last_state(2.0, 0.0, steps=0), ValueError, "steps"),
        (lambda: single_unit_last_state(2.0, 0.0, steps=2.0), TypeError, "steps"),
        (lambda: single_unit_last_state("2", 0.0), TypeError, "w"),
        (lambda: single_unit_last_state(2.0, float("nan")), ValueError, "b"),
        (lambda: single_unit_last_state(torch.tensor([1, 2]), 0.0), TypeError, "w"),
        (lambda: single_unit_last_state(2.0, 0.0, h0=None), TypeError, "h0"),
        (lambda: SingleUnitRNN(2.0, 0.0, steps=-1), ValueError, "steps"),
        (lambda: SingleUnitRNN(float("inf"), 0.0), ValueError, "w"),
        (lambda: SingleUnitRNN(2.0, 0.0, h0="0.5"), TypeError, "h0"),
        (lambda: SingleUnitRNN(2.0, 0.0)([0.5]), TypeError, "h0"),
    ],
)
def test_single_unit_rejects_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()
