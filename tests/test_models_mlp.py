"""Tests for gradlab.models.mlp: mlp, init_linear_, Block, MLP and the book's exploding network."""

import math

import pytest
import torch
from torch import nn

from gradlab.models import ACTIVATIONS, INITS, MLP, Block, exploding_mlp, init_linear_, mlp

# ---------------------------------------------------------------------------------------------
# mlp and init_linear_ (shapes, layer types, init statistics, bad arguments)
# ---------------------------------------------------------------------------------------------


def _weight_std(weight):
    return float(weight.detach().double().std())


def test_mlp_shapes_and_layer_count():
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
    model = mlp(3, 10)
    assert model.linears[0].in_features == 10 and model.linears[-1].out_features == 10
    assert model(torch.randn(2, 10)).shape == (2, 10)
    assert model.activation_name == "relu" and model.init_name == "he" and model.gain == 1.0


def test_mlp_activation_types_and_linear_read_out():
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
    torch.manual_seed(0)
    model = mlp(1, 5, in_features=3, out_features=2, activation="tanh", bias_std=0.5)
    x = torch.randn(6, 3)
    lin = model.linears[0]
    torch.testing.assert_close(model(x), x @ lin.weight.T + lin.bias)


def test_mlp_forward_is_linear_norm_activation():
    torch.manual_seed(0)
    model = mlp(3, 6, in_features=4, out_features=2, activation="tanh", bias_std=0.3)
    x = torch.randn(5, 4)
    h = x
    for lin in model.linears[:-1]:
        h = torch.tanh(h @ lin.weight.T + lin.bias)
    lin = model.linears[-1]
    torch.testing.assert_close(model(x), h @ lin.weight.T + lin.bias)


def test_mlp_residual_only_where_widths_match():
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
    with pytest.raises(ValueError, match="in_features == out_features"):
        Block(nn.Linear(3, 4), residual=True)


def test_mlp_norm_layers():
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
    with_bias = mlp(3, 8)
    assert all(lin.bias is not None for lin in with_bias.linears)
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in with_bias.linears)  # bias_std=0
    without = mlp(3, 8, bias=False, bias_std=1.0)
    assert all(lin.bias is None for lin in without.linears)
    assert len(list(without.parameters())) == 3


def test_bias_std():
    torch.manual_seed(0)
    model = mlp(3, 4000, in_features=2, out_features=4000, bias_std=0.3)
    for lin in model.linears:
        assert abs(_weight_std(lin.bias) / 0.3 - 1) < 0.05
        assert abs(float(lin.bias.detach().mean())) < 0.03


def test_init_std_matches_formula():
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
    torch.manual_seed(0)
    width = 600
    for init, std in (("gaussian", 1.3 / math.sqrt(width)), ("he", 1.3 * math.sqrt(2 / width)),
                      ("xavier", 1.3 / math.sqrt(width))):
        model = mlp(3, width, init=init, gain=1.3)
        for w in model.weights:
            assert abs(_weight_std(w) / std - 1) < 0.01, init


def test_he_init_matches_torch_kaiming_normal():
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
    for init in INITS:
        model = mlp(2, 5, init=init, gain=0.0)
        assert all(torch.count_nonzero(w) == 0 for w in model.weights)


def test_mlp_rejects_bad_arguments():
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
        (ValueError, "dropout", dict(dropout=1.0)),
        (ValueError, "dropout", dict(dropout=-0.1)),
        (ValueError, "dropout", dict(dropout=float("nan"))),
        (TypeError, "dropout", dict(dropout="0.5")),
        (TypeError, "dropout", dict(dropout=True)),
    ]
    for error, name, override in bad:
        kwargs = dict(depth=3, width=8) | override
        with pytest.raises(error, match=name):
            mlp(**kwargs)


def test_init_linear_rejects_bad_arguments():
    with pytest.raises(TypeError, match="layer"):
        init_linear_(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="init"):
        init_linear_(nn.Linear(2, 2), "kaiming")
    with pytest.raises(ValueError, match="gain"):
        init_linear_(nn.Linear(2, 2), "he", gain=-1.0)
    with pytest.raises(ValueError, match="bias_std"):
        init_linear_(nn.Linear(2, 2), "he", bias_std=-1.0)


def test_mlp_slices_are_mlps():
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
# dropout: nn.Dropout after every hidden activation
# ---------------------------------------------------------------------------------------------


def test_mlp_dropout_follows_every_hidden_activation_and_not_the_read_out():
    model = mlp(4, 8, dropout=0.3)
    for block in model[:-1]:
        assert isinstance(block.dropout, nn.Dropout) and block.dropout.p == 0.3
    assert isinstance(model[-1].dropout, nn.Identity)
    assert all(isinstance(block.dropout, nn.Identity) for block in mlp(4, 8))  # p = 0: none


def test_mlp_dropout_is_torch_dropout_after_the_activation():
    """Training mode: the same draws as nn.Dropout applied by hand after each activation
    (norm and residual included); evaluation mode: the network without dropout."""
    for kwargs in ({}, {"norm": "layer"}, {"residual": True, "residual_scale": 0.5}):
        torch.manual_seed(0)
        model = mlp(4, 6, in_features=6, out_features=2, activation="tanh", dropout=0.4, **kwargs)
        x = torch.randn(7, 6)
        torch.manual_seed(1)
        out = model(x)
        torch.manual_seed(1)
        h, drop = x, nn.Dropout(0.4)
        for block in model[:-1]:
            branch = drop(torch.tanh(block.norm(block.linear(h))))
            h = h + 0.5 * branch if block.residual else branch
        torch.testing.assert_close(out, model[-1].linear(h))
        model.eval()
        with torch.no_grad():
            plain = mlp(4, 6, in_features=6, out_features=2, activation="tanh", **kwargs)
            plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), plain(x))


def test_mlp_dropout_keeps_the_weights_and_the_random_stream_of_the_build():
    torch.manual_seed(3)
    plain = mlp(3, 8, bias_std=0.1)
    after_plain = torch.rand(2)
    torch.manual_seed(3)
    dropped = mlp(3, 8, bias_std=0.1, dropout=0.5)
    assert torch.equal(torch.rand(2), after_plain)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), dropped.parameters(), strict=True))


def test_mlp_dropout_masks_have_the_inverted_scaling():
    """Every hidden unit is 0 or 1/(1-p) times its value without dropout, kept with frequency
    1 - p: over 64 x 256 units the kept fraction has standard deviation 0.003."""
    torch.manual_seed(0)
    model = mlp(2, 256, dropout=0.25, activation="linear", bias=False)
    x = torch.randn(64, 256)
    with torch.no_grad():
        hidden = model[0](x)
        plain = model[0].linear(x)
    ratio = hidden[plain != 0] / plain[plain != 0]
    kept = ratio != 0
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / 0.75))
    assert abs(float(kept.float().mean()) - 0.75) < 0.015



# ---------------------------------------------------------------------------------------------
# exploding_mlp: the book's exploding network
# ---------------------------------------------------------------------------------------------


def test_exploding_mlp_structure_and_init():
    model = exploding_mlp()
    assert isinstance(model, MLP) and len(model) == 16
    assert (model.activation_name, model.init_name, model.gain) == ("relu", "he", 1.4)
    assert model.linears[0].in_features == 16 and model.linears[-1].out_features == 1
    assert all(lin.out_features == 32 for lin in model.linears[:-1])
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in model.linears)
    # He times 1.4: std 1.4 sqrt(2 / 32) for the 14 square layers, pooled (14 * 1024 entries)
    square = torch.cat([w.detach().flatten() for w in model.weights[1:-1]])
    assert abs(float(square.double().std()) / (1.4 * math.sqrt(2 / 32)) - 1) < 0.03
    assert model(torch.randn(5, 16)).shape == (5, 1)


def test_exploding_mlp_is_seeded_mlp():
    for seed in (0, 3):
        torch.manual_seed(seed)
        reference = mlp(16, 32, in_features=16, out_features=1, activation="relu", init="he", gain=1.4)
        model = exploding_mlp(seed=seed)
        assert all(torch.equal(p, q) for p, q in
                   zip(model.parameters(), reference.parameters(), strict=True))


def test_exploding_mlp_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = exploding_mlp(seed=5), exploding_mlp(seed=5), exploding_mlp(seed=6)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.weights[0], c.weights[0])


def test_exploding_mlp_dropout_keeps_the_weights():
    model, dropped = exploding_mlp(seed=2), exploding_mlp(seed=2, dropout=0.5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), dropped.parameters(), strict=True))
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 15
    x = torch.randn(4, 16)
    dropped.eval()
    torch.testing.assert_close(dropped(x), model(x))


def test_exploding_mlp_knobs():
    model = exploding_mlp(depth=5, width=8, in_features=3, out_features=2, gain=1.0)
    assert len(model) == 5 and model.gain == 1.0
    assert [(lin.in_features, lin.out_features) for lin in model.linears] == [
        (3, 8), (8, 8), (8, 8), (8, 8), (8, 2)]


def _hidden_growth(gain, seeds, batch=64):
    """Per-layer factor of the mean squared norms of dL/dh_l (toward the input) and of h_l
    (toward the output) over the 15 hidden layers, from a log-linear fit across layers."""
    backward, forward = [], []
    for seed in seeds:
        model = exploding_mlp(gain=gain, seed=seed)
        g = torch.Generator().manual_seed(10_000 + seed)
        h, hidden = torch.randn(batch, 16, generator=g), []
        for block in model:
            h = block(h)
            h.retain_grad()
            hidden.append(h)
        h.backward(torch.randn(h.shape, generator=g))  # a random output gradient
        backward.append([float(s.grad.pow(2).sum()) for s in hidden[:-1]])
        forward.append([float(s.detach().pow(2).sum()) for s in hidden[:-1]])
    layers = torch.arange(1, 16, dtype=torch.float64)

    def factor(sq_norms):
        log_mean = torch.tensor(sq_norms, dtype=torch.float64).mean(dim=0).log()
        slope = torch.linalg.lstsq(torch.stack([layers, torch.ones(15, dtype=torch.float64)], 1),
                                   log_mean[:, None]).solution[0, 0]
        return math.exp(float(slope) / 2)  # squared norms: half the log-slope

    return 1 / factor(backward), factor(forward)


@pytest.mark.parametrize("gain", [1.0, 1.4])
def test_exploding_mlp_gradient_grows_by_gain_per_layer(gain):
    # E||dL/dh_{l-1}||² = gain² E||dL/dh_l||² (the docstring's derivation), so the per-layer
    # factor of the mean squared norm is gain. Over 20 seeds the estimate has a standard deviation
    # of 0.013 at gain 1.4 (measured over 15 disjoint blocks of 20 seeds: mean 1.397, range
    # 1.372 to 1.416), so 0.05 is about 4 standard deviations. The forward signal grows by gain
    # toward the output in the same way.
    backward, forward = _hidden_growth(gain, seeds=range(20))
    assert abs(backward - gain) < 0.05 * gain
    assert abs(forward - gain) < 0.05 * gain


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"depth": 0}, ValueError, "depth"),
        ({"width": 2.0}, TypeError, "width"),
        ({"gain": -1.0}, ValueError, "gain"),
        ({"in_features": 0}, ValueError, "in_features"),
        ({"dropout": 1.0}, ValueError, "dropout"),
    ],
)
def test_exploding_mlp_rejects_bad_arguments(kwargs, error, name):
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    with pytest.raises(error, match=name):
        exploding_mlp(**kwargs)
    assert torch.equal(torch.rand(2), expected)  # a failed call restores the generator too


def test_mlp_residual_scale_rezero_gates_start_at_zero():
    """residual_scale="rezero": every residual layer has its own scalar gate at 0, so the residual
    layers are the identity at initialization and the first gradient reaches only the gates."""
    torch.manual_seed(0)
    model = mlp(5, 8, in_features=3, out_features=2, residual=True, residual_scale="rezero")
    gates = [name for name, _ in model.named_parameters() if name.endswith("gate")]
    assert gates == ["1.gate", "2.gate", "3.gate"]
    assert model[0].gate is None and model[-1].gate is None
    h = torch.randn(4, 8)
    torch.testing.assert_close(model[1:4](h), h)
    model(torch.randn(6, 3)).pow(2).sum().backward()
    for block in model[1:4]:
        assert float(block.gate.grad.abs()) > 0
        assert float(block.linear.weight.grad.abs().max()) == 0
    assert "residual_scale=rezero" in repr(model[1])
    with torch.no_grad():
        model[2].gate.fill_(0.25)
    torch.testing.assert_close(model[2](h), h + 0.25 * torch.relu(model[2].linear(h)))


def test_mlp_residual_scale_sqrt_depth_counts_the_residual_layers():
    """1/sqrt(K) for the K residual layers: 3 of the 5 layers when in_features != width."""
    model = mlp(5, 8, in_features=3, out_features=2, residual=True, residual_scale="sqrt_depth")
    assert [b.residual_scale for b in model if b.residual] == [pytest.approx(1 / math.sqrt(3))] * 3
    square = mlp(17, 8, residual=True, residual_scale="sqrt_depth")
    assert all(b.residual_scale == pytest.approx(0.25) for b in square if b.residual)
    # the number is kept as before, and ignored without residual=True
    assert mlp(3, 8, residual=True, residual_scale=0.5)[0].residual_scale == 0.5
    assert not any(b.residual for b in mlp(3, 8, residual_scale=0.5))


@pytest.mark.parametrize("kwargs, error", [
    ({"residual": True, "residual_scale": "fixup"}, ValueError),
    ({"residual": True, "residual_scale": "SQRT_DEPTH"}, ValueError),
    ({"residual_scale": "rezero"}, ValueError),
    ({"residual_scale": "sqrt_depth"}, ValueError),
    ({"residual": True, "residual_scale": True}, TypeError),
    ({"residual": True, "residual_scale": float("inf")}, ValueError),
])
def test_mlp_residual_scale_bad_input(kwargs, error):
    with pytest.raises(error, match="residual_scale"):
        mlp(3, 8, **kwargs)


def test_block_residual_scale_bad_input():
    with pytest.raises(ValueError, match="residual_scale"):
        Block(nn.Linear(4, 4), residual=True, residual_scale="sqrt_depth")
    with pytest.raises(TypeError, match="residual_scale"):
        Block(nn.Linear(4, 4), residual=True, residual_scale=None)
