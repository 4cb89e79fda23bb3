"""Tests for gradlab.propagation: the pre-activations and their gradients against a hand-written
forward pass and autograd, the correlations against a direct computation, the measurement
helpers' shapes, seeds and inputs. (Their agreement with the mean-field predictions is tested in
tests/test_theory_mean_field.py and tests/test_theory_correlation.py.)"""

import math

import numpy as np
import pytest
import torch

from gradlab import propagation, theory
from gradlab.models import mlp
from gradlab.utils import seeded


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 256-wide layers on a shared CPU: a second thread costs more than it gives
    yield
    torch.set_num_threads(threads)


def _net(depth=4, width=16, seed=0):
    with seeded(seed):
        return mlp(depth, width, activation="tanh", init="gaussian", gain=1.3, bias_std=0.2)


def test_preactivations_are_the_linear_outputs_and_their_gradients():
    net = _net()
    x = torch.randn(5, 16)
    v = torch.randn(5, 16)
    zs = propagation.preactivations(net, x, grad_output=v)
    assert len(zs) == 4
    # the same forward pass by hand, differentiated by autograd
    h, manual = x, []
    for k, linear in enumerate(net.linears):
        z = linear(h)
        manual.append(z)
        h = torch.tanh(z) if k < 3 else z
    grads = torch.autograd.grad((h * v).sum(), manual)
    for z, z_manual, g in zip(zs, manual, grads, strict=True):
        torch.testing.assert_close(z.detach(), z_manual.detach())
        torch.testing.assert_close(z.grad, g)
    torch.testing.assert_close(zs[-1].grad, v)  # dL/dz_L = grad_output at the read-out


def test_preactivations_without_gradient_run_without_a_graph():
    zs = propagation.preactivations(_net(), torch.randn(3, 16))
    assert all(not z.requires_grad for z in zs)
    assert [tuple(z.shape) for z in zs] == [(3, 16)] * 4


def test_layer_correlations_match_the_cosine_of_the_preactivations():
    net = _net()
    x_a, x_b = torch.randn(6, 16), torch.randn(6, 16)
    c = propagation.layer_correlations(net, x_a, x_b)
    za, zb = propagation.preactivations(net, x_a), propagation.preactivations(net, x_b)
    expected = np.array([[float(a[k] @ b[k] / (a[k].norm() * b[k].norm()))
                          for a, b in zip(za, zb, strict=True)] for k in range(6)])
    np.testing.assert_allclose(c, expected, rtol=1e-5)
    np.testing.assert_allclose(propagation.layer_correlations(net, x_a, x_a), 1.0, rtol=1e-6)


def test_gradient_growth_rows_are_seeded_networks_normalized_at_the_read_out():
    ratios = propagation.gradient_growth("tanh", 1.5, 0.3, depth=6, width=32, batch=8, seeds=3)
    assert ratios.shape == (3, 6)
    np.testing.assert_array_equal(ratios[:, -1], 1.0)
    np.testing.assert_array_equal(ratios, propagation.gradient_growth("tanh", 1.5, 0.3, depth=6, width=32,
                                                                      batch=8, seeds=3))
    # row i is network i: the first row does not depend on how many seeds follow
    np.testing.assert_array_equal(ratios[:1], propagation.gradient_growth("tanh", 1.5, 0.3, depth=6,
                                                                          width=32, batch=8, seeds=1))
    # the same quantity by hand for network 0
    with seeded(0):
        net = mlp(6, 32, activation="tanh", init="gaussian", gain=1.5, bias_std=0.3)
    g = torch.Generator().manual_seed(0)
    std = math.sqrt((theory.q_star("tanh", 1.5, 0.3) - 0.09) / 1.5**2)
    x, v = std * torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    norms = np.array([float(z.grad.double().norm()) ** 2 for z in propagation.preactivations(net, x, v)])
    np.testing.assert_allclose(ratios[0], norms / norms[-1], rtol=1e-10)


def test_inputs_start_at_the_fixed_point_length():
    """The helpers draw inputs so that q_1 = q* (unit variance where q* does not exist)."""
    for activation, sigma_w, sigma_b, q in [("tanh", 2.0, 0.3, theory.q_star("tanh", 2.0, 0.3)),
                                            ("linear", 1.1, 0.0, 1.1**2)]:
        std = propagation._input_std(activation, sigma_w, sigma_b)
        assert math.isclose(sigma_w**2 * std**2 + sigma_b**2, q, rel_tol=1e-12)


def test_pair_correlations_start_near_the_bias_share_and_are_seeded():
    c = propagation.pair_correlations("tanh", 1.7, 0.4, depth=5, width=512, pairs=16, seeds=4)
    assert c.shape == (4, 5)
    # independent inputs: c_1 = (sigma_w² <x_a, x_b>/n + sigma_b²) / q*, and <x_a, x_b>/n ~ 0
    expected = 0.4**2 / theory.q_star("tanh", 1.7, 0.4)
    assert abs(c[:, 0].mean() - expected) < 0.02
    np.testing.assert_array_equal(c, propagation.pair_correlations("tanh", 1.7, 0.4, depth=5, width=512,
                                                                   pairs=16, seeds=4))


@pytest.mark.parametrize("norm", [None, "batch"])
def test_per_example_norms_are_the_per_example_gradients_of_autograd(norm):
    """One forward pass in training mode (dropout masks and batch statistics shared), then each
    example's own loss <net(x)_b, v_b> differentiated alone: its gradient of W_l has squared
    Frobenius norm inputs[b, l] * deltas[b, l]. (With BatchNorm the examples of a batch are
    coupled, but the gradient at z_l of the summed loss is still row by row the sum's.)"""
    with seeded(0):
        net = mlp(4, 12, in_features=5, out_features=3, dropout=0.4, norm=norm, bias_std=0.1)
    x, v = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    net = net.double()
    torch.manual_seed(1)
    norms = propagation.per_example_norms(net, x, v)
    assert norms.inputs.shape == norms.deltas.shape == (6, 4)
    torch.manual_seed(1)
    zs = propagation.preactivations(net, x, grad_output=v)
    expected = np.stack([z.grad.pow(2).sum(1).numpy() for z in zs], axis=1)
    np.testing.assert_allclose(norms.deltas, expected, rtol=1e-12)
    if norm is None:  # examples independent: per-example autograd of the same forward pass
        torch.manual_seed(1)
        out = net(x)
        for b in range(6):
            grads = torch.autograd.grad(out[b] @ v[b], net.weights, retain_graph=True)
            np.testing.assert_allclose(norms.weight_grads[b], [float(g.pow(2).sum()) for g in grads],
                                       rtol=1e-10)
    np.testing.assert_allclose(norms.inputs[:, 0], x.pow(2).sum(1).numpy(), rtol=1e-12)


def test_per_example_norms_see_the_dropped_inputs():
    """The inputs recorded after a dropout layer are the dropped and rescaled activations."""
    with seeded(0):
        net = mlp(2, 64, dropout=0.5, activation="linear", bias=False)
    x = torch.randn(3, 64)
    torch.manual_seed(0)
    train = propagation.per_example_norms(net, x, torch.ones(3, 64))
    net.eval()
    plain = propagation.per_example_norms(net, x, torch.ones(3, 64))
    np.testing.assert_allclose(train.inputs[:, 0], plain.inputs[:, 0])
    assert not np.allclose(train.inputs[:, 1], plain.inputs[:, 1])
    np.testing.assert_allclose(train.deltas[:, 1], plain.deltas[:, 1])  # the read-out's delta is v


BAD_INPUTS = [
    (TypeError, "net", lambda: propagation.per_example_norms(torch.nn.Linear(3, 3), torch.randn(2, 3),
                                                              torch.randn(2, 3))),
    (ValueError, "x", lambda: propagation.per_example_norms(_net(), torch.randn(16), torch.randn(16))),
    (TypeError, "grad_output", lambda: propagation.per_example_norms(_net(), torch.randn(2, 16), 1.0)),
    (ValueError, "grad_output",
     lambda: propagation.per_example_norms(_net(), torch.randn(2, 16), torch.randn(2, 3))),
    (TypeError, "net", lambda: propagation.preactivations(torch.nn.Linear(3, 3), torch.randn(2, 3))),
    (TypeError, "x", lambda: propagation.preactivations(_net(), [[1.0] * 16])),
    (ValueError, "grad_output",
     lambda: propagation.preactivations(_net(), torch.randn(2, 16), torch.randn(3, 16))),
    (ValueError, "same shape",
     lambda: propagation.layer_correlations(_net(), torch.randn(2, 16), torch.randn(3, 16))),
    (ValueError, "x_a", lambda: propagation.layer_correlations(_net(), torch.randn(16), torch.randn(16))),
    (ValueError, "sigma_w", lambda: propagation.gradient_growth("tanh", 0.0, 0.1)),
    (ValueError, "sigma_b", lambda: propagation.gradient_growth("tanh", 1.0, -0.1)),
    (ValueError, "depth", lambda: propagation.gradient_growth("tanh", 1.0, 0.1, depth=0)),
    (ValueError, "batch", lambda: propagation.gradient_growth("tanh", 1.0, 0.1, batch=0)),
    (ValueError, "seeds", lambda: propagation.gradient_growth("tanh", 1.0, 0.1, seeds=0)),
    (ValueError, "pairs", lambda: propagation.pair_correlations("tanh", 1.0, 0.1, pairs=0)),
    (TypeError, "width", lambda: propagation.pair_correlations("tanh", 1.0, 0.1, width=2.5)),
    (ValueError, "activation", lambda: propagation.gradient_growth("softsign", 1.0, 0.1)),
]


@pytest.mark.parametrize("error, match, call", BAD_INPUTS)
def test_bad_inputs_raise_and_name_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
