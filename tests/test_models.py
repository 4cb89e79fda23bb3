"""Tests for gradlab.models."""


# ---------------------------------------------------------------------------------------------
# mlp and init_linear_ (shapes, layer types, init statistics, bad arguments)
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------


def _weight_std(weight):
    return float(weight.detach().double().std())


def test_mlp_shapes_and_layer_count():
    import torch
    from torch import nn

    from gradlab.models import MLP, Block, mlp

    for depth in (1, 2, 5):
        model = mlp(depth, 16, in_features=3, out_features=7)
        assert isinstance(model, MLP)
        assert len(model) == depth
        assert all(isinstance(block, Block) for block in model)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == depth
        assert linears == model.linears
        assert [w.shape for w in model.weights] == [lin.weight.shape for lin in linears]
        dims = [3] + [16] * (depth - 1) + [7]
        assert [(lin.in_features, lin.out_features) for lin in linears] == list(
            zip(dims[:-1], dims[1:], strict=True)
        )
        assert model(torch.randn(4, 3)).shape == (4, 7)


def test_mlp_default_in_and_out_features_are_the_width():
    import torch

    from gradlab.models import mlp

    model = mlp(3, 10)
    assert model.linears[0].in_features == 10 and model.linears[-1].out_features == 10
    assert model(torch.randn(2, 10)).shape == (2, 10)
    assert model.activation_name == "relu" and model.init_name == "he" and model.gain == 1.0


def test_mlp_activation_types_and_linear_read_out():
    from torch import nn

    from gradlab.models import ACTIVATIONS, mlp

    for name, cls in ACTIVATIONS.items():
        model = mlp(4, 8, activation=name)
        assert model.activation_name == name
        for block in model[:-1]:
            assert type(block.activation) is cls.module
        # the read-out is a plain linear layer: no norm, no activation, no skip
        assert isinstance(model[-1].activation, nn.Identity)
        assert isinstance(model[-1].norm, nn.Identity)
        assert not model[-1].residual


def test_mlp_depth_one_is_a_linear_model():
    import torch

    from gradlab.models import mlp

    torch.manual_seed(0)
    model = mlp(1, 5, in_features=3, out_features=2, activation="tanh", bias_std=0.5)
    x = torch.randn(6, 3)
    lin = model.linears[0]
    torch.testing.assert_close(model(x), x @ lin.weight.T + lin.bias)


def test_mlp_forward_is_linear_norm_activation():
    import torch

    from gradlab.models import mlp

    torch.manual_seed(0)
    model = mlp(3, 6, in_features=4, out_features=2, activation="tanh", bias_std=0.3)
    x = torch.randn(5, 4)
    h = x
    for lin in model.linears[:-1]:
        h = torch.tanh(h @ lin.weight.T + lin.bias)
    lin = model.linears[-1]
    torch.testing.assert_close(model(x), h @ lin.weight.T + lin.bias)


def test_mlp_residual_only_where_widths_match():
    import torch

    from gradlab.models import mlp

    torch.manual_seed(0)
    model = mlp(5, 8, in_features=3, out_features=2, residual=True, residual_scale=0.5,
                activation="tanh")
    assert [block.residual for block in model] == [False, True, True, True, False]
    assert "residual=True" in repr(model[1]) and "residual_scale=0.5" in repr(model[1])
    h = torch.randn(4, 8)
    block = model[2]
    expected = h + 0.5 * torch.tanh(block.linear(h))
    torch.testing.assert_close(block(h), expected)
    # equal in/out widths: every hidden layer is residual, the read-out never
    square = mlp(3, 8, residual=True)
    assert [block.residual for block in square] == [True, True, False]
    assert not any(block.residual for block in mlp(3, 8))


def test_block_residual_needs_equal_widths():
    import pytest
    from torch import nn

    from gradlab.models import Block

    with pytest.raises(ValueError, match="in_features == out_features"):
        Block(nn.Linear(3, 4), residual=True)


def test_mlp_norm_layers():
    import torch
    from torch import nn

    from gradlab.models import mlp

    for norm, cls in (("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)):
        model = mlp(4, 8, in_features=3, out_features=2, norm=norm)
        for block in model[:-1]:
            assert isinstance(block.norm, cls)
        assert isinstance(model[-1].norm, nn.Identity)
        assert sum(isinstance(m, cls) for m in model.modules()) == 3
        out = model[0].norm(model[0].linear(torch.randn(16, 3)))
        if norm == "layer":
            torch.testing.assert_close(out.mean(dim=1), torch.zeros(16), atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(out.mean(dim=0), torch.zeros(8), atol=1e-5, rtol=0)
    model = mlp(3, 8)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in model.modules())


def test_mlp_bias_on_and_off():
    import torch

    from gradlab.models import mlp

    with_bias = mlp(3, 8)
    assert all(lin.bias is not None for lin in with_bias.linears)
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in with_bias.linears)  # bias_std=0
    without = mlp(3, 8, bias=False, bias_std=1.0)
    assert all(lin.bias is None for lin in without.linears)
    assert len(list(without.parameters())) == 3


def test_bias_std():
    import torch

    from gradlab.models import mlp

    torch.manual_seed(0)
    model = mlp(3, 4000, in_features=2, out_features=4000, bias_std=0.3)
    for lin in model.linears:
        assert abs(_weight_std(lin.bias) / 0.3 - 1) < 0.05
        assert abs(float(lin.bias.detach().mean())) < 0.03


def test_init_std_matches_formula():
    import math

    import torch
    from torch import nn

    from gradlab.models import init_linear_

    fan_in, fan_out = 400, 900
    for gain in (1.0, 1.7):
        expected = {
            "gaussian": gain / math.sqrt(fan_in),
            "xavier": gain * math.sqrt(2.0 / (fan_in + fan_out)),
            "he": gain * math.sqrt(2.0 / fan_in),
        }
        for init, std in expected.items():
            torch.manual_seed(1)
            layer = init_linear_(nn.Linear(fan_in, fan_out), init, gain)
            assert abs(_weight_std(layer.weight) / std - 1) < 0.01, init
            assert abs(float(layer.weight.detach().mean())) < 0.01 * std
            assert torch.count_nonzero(layer.bias) == 0


def test_mlp_init_std_in_every_layer():
    import math

    import torch

    from gradlab.models import mlp

    torch.manual_seed(0)
    width = 600
    for init, std in (("gaussian", 1.3 / math.sqrt(width)), ("he", 1.3 * math.sqrt(2 / width)),
                      ("xavier", 1.3 / math.sqrt(width))):
        model = mlp(3, width, init=init, gain=1.3)
        for w in model.weights:
            assert abs(_weight_std(w) / std - 1) < 0.01, init


def test_he_init_matches_torch_kaiming_normal():
    import torch
    from torch import nn

    from gradlab.models import init_linear_

    torch.manual_seed(2)
    ours = init_linear_(nn.Linear(500, 700), "he").weight
    theirs = torch.empty(700, 500)
    nn.init.kaiming_normal_(theirs, mode="fan_in", nonlinearity="relu")
    assert abs(_weight_std(ours) / _weight_std(theirs) - 1) < 0.01
    # and xavier against torch's xavier_normal_
    ours = init_linear_(nn.Linear(500, 700), "xavier").weight
    nn.init.xavier_normal_(theirs)
    assert abs(_weight_std(ours) / _weight_std(theirs) - 1) < 0.01


def test_orthogonal_init():
    import torch
    from torch import nn

    from gradlab.models import init_linear_, mlp

    torch.manual_seed(0)
    for gain in (1.0, 0.5, 2.0):
        tall = init_linear_(nn.Linear(20, 50), "orthogonal", gain).weight.detach().double()
        torch.testing.assert_close(tall.T @ tall, gain**2 * torch.eye(20, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        wide = init_linear_(nn.Linear(50, 20), "orthogonal", gain).weight.detach().double()
        torch.testing.assert_close(wide @ wide.T, gain**2 * torch.eye(20, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
    model = mlp(3, 32, init="orthogonal", gain=1.5)
    for w in model.weights:
        torch.testing.assert_close(torch.linalg.svdvals(w.detach()), torch.full((32,), 1.5),
                                   atol=1e-5, rtol=0)


def test_gain_zero_gives_zero_weights():
    import torch

    from gradlab.models import INITS, mlp

    for init in INITS:
        model = mlp(2, 5, init=init, gain=0.0)
        assert all(torch.count_nonzero(w) == 0 for w in model.weights)


def test_mlp_rejects_bad_arguments():
    import pytest

    from gradlab.models import mlp

    bad = [
        (ValueError, "depth", dict(depth=0)),
        (ValueError, "depth", dict(depth=-2)),
        (TypeError, "depth", dict(depth=2.0)),
        (TypeError, "depth", dict(depth=True)),
        (TypeError, "depth", dict(depth="3")),
        (ValueError, "width", dict(width=-1)),
        (ValueError, "width", dict(width=0)),
        (TypeError, "width", dict(width=8.5)),
        (ValueError, "in_features", dict(in_features=0)),
        (TypeError, "out_features", dict(out_features=2.0)),
        (ValueError, "activation", dict(activation="foo")),
        (ValueError, "activation", dict(activation="ReLU")),
        (ValueError, "init", dict(init="bar")),
        (ValueError, "init", dict(init=None)),
        (ValueError, "norm", dict(norm="x")),
        (ValueError, "norm", dict(norm=True)),
        (ValueError, "gain", dict(gain=-1)),
        (ValueError, "gain", dict(gain=float("nan"))),
        (TypeError, "gain", dict(gain="1")),
        (TypeError, "residual", dict(residual="yes")),
        (TypeError, "residual", dict(residual=1)),
        (ValueError, "residual_scale", dict(residual_scale=float("inf"))),
        (TypeError, "bias", dict(bias="no")),
        (ValueError, "bias_std", dict(bias_std=-0.1)),
    ]
    for error, name, override in bad:
        kwargs = dict(depth=3, width=8) | override
        with pytest.raises(error, match=name):
            mlp(**kwargs)


def test_init_linear_rejects_bad_arguments():
    import pytest
    from torch import nn

    from gradlab.models import init_linear_

    with pytest.raises(TypeError, match="layer"):
        init_linear_(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="init"):
        init_linear_(nn.Linear(2, 2), "kaiming")
    with pytest.raises(ValueError, match="gain"):
        init_linear_(nn.Linear(2, 2), "he", gain=-1.0)
    with pytest.raises(ValueError, match="bias_std"):
        init_linear_(nn.Linear(2, 2), "he", bias_std=-1.0)


def test_mlp_slices_are_mlps():
    import torch

    from gradlab.models import MLP, mlp

    torch.manual_seed(0)
    model = mlp(4, 8, in_features=3, out_features=2, activation="tanh", init="xavier", gain=0.7)
    hidden = model[:-1]
    assert isinstance(hidden, MLP) and len(hidden) == 3
    assert (hidden.activation_name, hidden.init_name, hidden.gain) == ("tanh", "xavier", 0.7)
    assert [name for name, _ in model[1:3].named_children()] == ["1", "2"]
    assert hidden.linears == model.linears[:-1]
    x = torch.randn(5, 3)
    torch.testing.assert_close(model[-1](hidden(x)), model(x))
    assert model[0] is next(iter(model))


# ---------------------------------------------------------------------------------------------
# Recurrent models: VanillaRNN against torch.nn.RNN, spectral radius, LSTM/GRU wrappers
# ---------------------------------------------------------------------------------------------


def _copy_into_torch_rnn(model, nonlinearity):
    import torch

    ref = torch.nn.RNN(model.in_features, model.hidden_size, nonlinearity=nonlinearity,
                       batch_first=True)
    with torch.no_grad():
        ref.weight_hh_l0.copy_(model.W)
        ref.weight_ih_l0.copy_(model.U)
        ref.bias_ih_l0.copy_(model.b)
        ref.bias_hh_l0.zero_()
    return ref


def test_vanilla_rnn_matches_torch_rnn():
    import torch

    from gradlab.models import VanillaRNN

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
    import torch

    from gradlab.models import VanillaRNN

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
    import torch

    from gradlab.models import VanillaRNN

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
    import torch

    from gradlab.models import GRU, LSTM, VanillaRNN

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


def test_spectral_radius_after_init_matches_request():
    import torch

    from gradlab.models import RNN_INITS, VanillaRNN
    from gradlab.theory import spectral_radius

    torch.manual_seed(4)
    for init in RNN_INITS:
        for rho in (0.5, 1.0, 1.7):
            model = VanillaRNN(2, 32, init=init, spectral_radius=rho)
            assert abs(spectral_radius(model.W) - rho) < 1e-5 * rho


def test_recurrent_inits():
    import torch

    from gradlab.models import VanillaRNN
    from gradlab.theory import spectral_norm, spectral_radius

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
    import torch

    from gradlab.models import VanillaRNN

    torch.manual_seed(6)
    a = VanillaRNN(2, 8, spectral_radius=1.1)
    torch.manual_seed(6)
    b = VanillaRNN(2, 8, spectral_radius=1.1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_lstm_gru_match_torch_modules():
    import torch

    from gradlab.models import GRU, LSTM

    torch.manual_seed(7)
    x = torch.randn(2, 5, 3)
    for cls, core in ((LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU)):
        model = cls(3, 4, 1)
        assert isinstance(model.rnn, core) and model.rnn.batch_first
        out, _ = model.rnn(x)
        torch.testing.assert_close(model(x), model.readout(out[:, -1]))


def test_recurrent_bad_arguments():
    import pytest
    import torch

    from gradlab.models import GRU, LSTM, VanillaRNN

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
