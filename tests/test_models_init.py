"""Tests for gradlab.models.init: lsuv_init_ (Mishkin & Matas 2016)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradlab.models import LSUV_LAYERS, lsuv_init_, mlp
from gradlab.utils import seeded


def _output_variances(model, x):
    """Population variance of every LSUV layer's output on x, in forward order (hooks)."""
    seen = []
    layers = [m for m in model.modules() if isinstance(m, LSUV_LAYERS)]
    hooks = [m.register_forward_hook(lambda mod, a, out: seen.append(out.detach().double()))
             for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return np.array([float(o.var(unbiased=False)) for o in seen])


def _reference_lsuv(model, x, tol, max_iter):
    """The paper's Algorithm 1 written out: full forward passes, no early stop."""
    layers = [m for m in model.modules() if isinstance(m, LSUV_LAYERS)]
    with torch.no_grad():
        for m in layers:
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
        for i, m in enumerate(layers):
            for _ in range(max_iter):
                var = _output_variances(model, x)[i]
                if abs(var - 1.0) < tol:
                    break
                m.weight.div_(math.sqrt(var))
    return model


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu"])
def test_every_layer_of_an_mlp_has_unit_output_variance_on_the_batch(activation):
    torch.manual_seed(0)
    model = mlp(8, 64, in_features=20, out_features=3, activation=activation, bias_std=0.5)
    x = 3.0 * torch.randn(256, 20) + 1.0  # neither centred nor unit scale
    assert lsuv_init_(model, x, tol=0.01) is model
    variances = _output_variances(model, x)
    assert len(variances) == 8
    assert np.all(np.abs(variances - 1.0) < 0.01), variances
    for linear in model.linears:
        assert torch.count_nonzero(linear.bias) == 0
        # a multiple of an orthogonal matrix: rows orthonormal up to one scale (out <= in) or
        # columns (out > in)
        w = linear.weight.detach().double()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        scale = gram.diagonal().mean()
        assert torch.allclose(gram / scale, torch.eye(len(gram), dtype=torch.float64), atol=1e-5)


def test_fresh_data_from_the_same_distribution_has_variance_close_to_one():
    """The scales fitted on one batch of 256 carry over to a fresh batch of 4096: the largest
    deviation over the 10 layers, over 6 networks, is a sampling error under 2 percent."""
    worst = []
    for seed in range(6):
        torch.manual_seed(seed)
        model = mlp(10, 64, activation="tanh")
        lsuv_init_(model, torch.randn(256, 64), tol=0.01)
        worst.append(np.abs(_output_variances(model, torch.randn(4096, 64)) - 1.0).max())
    assert max(worst) < 0.05, worst  # measured: at most 0.017


def test_agrees_with_the_algorithm_written_out():
    for seed, activation in ((0, "relu"), (1, "tanh")):
        x = torch.randn(128, 16)
        with seeded(seed):
            ours = lsuv_init_(mlp(5, 32, in_features=16, activation=activation), x, tol=0.1)
        with seeded(seed):
            reference = _reference_lsuv(mlp(5, 32, in_features=16, activation=activation), x, 0.1, 10)
        for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_plain_sequential_with_convolutions():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )
    x = torch.randn(64, 3, 16, 16)
    lsuv_init_(model, x, tol=0.02)
    variances = _output_variances(model, x)
    assert len(variances) == 3 and np.all(np.abs(variances - 1.0) < 0.02), variances
    # torch's orthogonal_ flattens a kernel to (out, in * k * k): rows orthonormal up to a scale
    w = model[2].weight.detach().double().flatten(1)
    gram = w @ w.T
    assert torch.allclose(gram / gram.diagonal().mean(), torch.eye(16, dtype=torch.float64), atol=1e-5)


def test_conv1d_and_a_bare_linear_layer():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(4, 6, 5), nn.ReLU(), nn.Conv1d(6, 6, 3))
    lsuv_init_(conv, torch.randn(32, 4, 50), tol=0.01)
    assert np.all(np.abs(_output_variances(conv, torch.randn(32, 4, 50)) - 1.0) < 0.1)
    linear = nn.Linear(10, 10)
    x = torch.randn(512, 10)
    lsuv_init_(linear, x, tol=0.01)
    assert abs(float(linear(x).detach().var(unbiased=False)) - 1.0) < 0.01


def test_a_layer_that_does_not_converge_gets_a_warning_naming_it():
    class Squashed(nn.Linear):
        """Not linear in its weight: one division does not give variance 1."""

        def forward(self, x):
            return 3.0 * torch.tanh(super().forward(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Squashed(8, 8))
    x = torch.randn(256, 8)
    with pytest.warns(RuntimeWarning, match=r"layer '1' has output variance .* after 1 rescalings"):
        lsuv_init_(model, x, tol=1e-3, max_iter=1)
    lsuv_init_(model, x, tol=1e-3, max_iter=50)  # the paper's loop gets there in the end
    assert abs(_output_variances(model, x)[1] - 1.0) < 1e-3


def test_bad_input_is_refused_naming_the_argument():
    model = mlp(2, 4)
    x = torch.randn(8, 4)
    with pytest.raises(TypeError, match="model"):
        lsuv_init_("net", x)
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv"):
        lsuv_init_(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(TypeError, match="x"):
        lsuv_init_(model, [[1.0] * 4])
    with pytest.raises(TypeError, match="floating-point"):
        lsuv_init_(model, torch.ones(8, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        lsuv_init_(model, torch.full((8, 4), math.nan))
    for tol in (0.0, -0.1):
        with pytest.raises(ValueError, match="tol"):
            lsuv_init_(model, x, tol=tol)
    with pytest.raises(TypeError, match="tol"):
        lsuv_init_(model, x, tol="0.1")
    with pytest.raises(ValueError, match="max_iter"):
        lsuv_init_(model, x, max_iter=0)
    with pytest.raises(TypeError, match="max_iter"):
        lsuv_init_(model, x, max_iter=2.0)


def test_a_constant_layer_output_is_refused():
    # zero inputs and zero biases: the first layer's output is 0 whatever its scale
    with pytest.raises(ValueError, match=r"layer '0.linear' is constant on x"):
        lsuv_init_(mlp(3, 4), torch.zeros(8, 4))
    # a single output entry has no variance either
    with pytest.raises(ValueError, match="constant"):
        lsuv_init_(nn.Linear(3, 1), torch.randn(1, 3))


def test_lsuv_finds_he_scale_for_relu_and_the_chaotic_normalizing_scale_for_tanh():
    """From PyTorch's default init, LSUV scales the hidden weights of a ReLU network to He's
    sqrt(2) and those of a tanh network to normalizing_sigma_w("tanh") = 1.5925; the tanh network's
    squared gradient then grows by gradient_factor("tanh", 1, 1.5925) = 1.178 per layer."""
    from gradlab import theory  # noqa: PLC0415 - only this test needs the theory

    expected = {"relu": math.sqrt(2.0), "tanh": theory.normalizing_sigma_w("tanh")}
    for activation, scale in expected.items():
        torch.manual_seed(0)
        model = mlp(20, 128, activation=activation)
        for linear in model.linears:
            linear.reset_parameters()
        lsuv_init_(model, torch.randn(256, 128))
        scales = [float(torch.linalg.svdvals(lin.weight.detach()).mean()) for lin in model.linears[1:-1]]
        assert np.mean(scales) == pytest.approx(scale, rel=0.02), (activation, np.mean(scales))
    zs = []

    def keep(module, args, z):
        z.retain_grad()
        zs.append(z)

    hooks = [lin.register_forward_hook(keep) for lin in model.linears]
    out = model(torch.randn(256, 128))
    out.backward(torch.randn_like(out))
    for h in hooks:
        h.remove()
    g = np.array([float(z.grad.double().pow(2).sum()) for z in zs])
    fit = math.exp(-np.polyfit(np.arange(19), np.log(g[:-1] / g[-1]), 1)[0])
    assert fit == pytest.approx(theory.gradient_factor("tanh", 1.0, expected["tanh"]), rel=0.02)
