"""Tests for gradlab.propagation: the pre-activations and their gradients against a hand-written
forward pass and autograd, the correlations against a direct computation, the measurement
helpers' shapes, seeds and inputs. (Their agreement with the mean-field predictions is tested in
tests/test_theory_mean_field.py, tests/test_theory_correlation.py and
tests/test_theory_normalization.py.)"""

import copy
import math

import numpy as np
import pytest
import torch

from gradlab import propagation, theory
from gradlab.models import Transformer, lm_loss, mlp
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


def test_normalized_gradient_growth_is_the_hand_computed_ratio():
    """One network, by hand: BatchNorm after each hidden layer, the ratios of squared gradient
    norms at consecutive hidden linear outputs, the first pair left out."""
    factors = propagation.normalized_gradient_growth("relu", "batch", 8, depth=6, width=32, seeds=2)
    assert factors.shape == (2,) and factors.dtype == np.float64
    for seed in range(2):
        with seeded(seed):
            net = mlp(6, 32, activation="relu", init="he", norm="batch")
        g = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn(8, 32, generator=g)
        v = torch.randn(8, 32, generator=g)
        h, zs = x, []
        for block in list(net)[:-1]:
            z = block.linear(h)
            z.retain_grad()
            zs.append(z)
            h = torch.relu(block.norm(z))
        net[-1].linear(h).backward(v)
        sq = [float(z.grad.double().pow(2).sum()) for z in zs]
        ratios = [sq[k - 1] / sq[k] for k in range(2, len(sq))]
        assert factors[seed] == pytest.approx(np.mean(ratios), rel=1e-5)


def test_normalized_gradient_growth_modes_and_calibration():
    """Evaluation mode with fresh running statistics is the plain network (He: factor about 2
    for linear); calibration sets the running statistics; LayerNorm ignores the mode."""
    fresh = propagation.normalized_gradient_growth("linear", "batch", 16, seeds=2, mode="eval")
    assert np.all(np.abs(fresh - 2.0) < 0.1)
    calibrated = propagation.normalized_gradient_growth("linear", "batch", 16, seeds=2, mode="eval",
                                                        calibrate=5)
    assert np.all(calibrated < 1.0)
    train = propagation.normalized_gradient_growth("relu", "layer", 16, seeds=2)
    evaluated = propagation.normalized_gradient_growth("relu", "layer", 16, seeds=2, mode="eval")
    np.testing.assert_allclose(train, evaluated)


def _pre_ln(seed=0, **kwargs):
    with seeded(seed):
        return Transformer(16, d_model=32, n_head=4, n_layer=3, context=8, **kwargs)


def test_residual_stream_against_a_manual_forward():
    model = _pre_ln()
    idx = torch.randint(0, 16, (5, 8), generator=torch.Generator().manual_seed(0))
    record = propagation.residual_stream(model, idx)
    assert set(record) == {"stream", "attention", "attention_first", "ffn"}
    assert record["stream"].shape == (4,) and record["ffn"].shape == (3,)
    with torch.no_grad():
        x = model.embed(idx)
        stream, attn, first, ffn = [x.pow(2).sum(-1).mean() / 32], [], [], []
        for block in model.blocks:
            a = block.attn(block.norm1(x))
            x = x + a
            f = block.ffn(block.norm2(x))
            x = x + f
            attn.append(a.pow(2).sum(-1).mean() / 32)
            first.append(a[:, 0].pow(2).sum(-1).mean() / 32)
            ffn.append(f.pow(2).sum(-1).mean() / 32)
            stream.append(x.pow(2).sum(-1).mean() / 32)
    for key, manual in (("stream", stream), ("attention", attn), ("attention_first", first), ("ffn", ffn)):
        np.testing.assert_allclose(record[key], [float(t) for t in manual], rtol=1e-5)
    # a Post-LN stream leaves every block normalized: E||x||²/d = 1 (up to the norm's eps)
    post = propagation.residual_stream(_pre_ln(norm_position="post"), idx)
    np.testing.assert_allclose(post["stream"][1:], 1.0, atol=1e-3)
    assert not any(p.grad is not None for p in model.parameters())


def test_ffn_weight_gradients_are_the_fc2_gradients():
    model = _pre_ln()
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(0, 16, (4, 8), generator=g) for _ in range(2))
    norms = propagation.ffn_weight_gradients(model, idx, targets)
    again = propagation.ffn_weight_gradients(model, idx, targets)  # earlier gradients are cleared
    np.testing.assert_allclose(norms, again)
    manual = _pre_ln()
    lm_loss(manual(idx), targets).backward()
    np.testing.assert_allclose(norms, [float(b.ffn.fc2.weight.grad.norm()) for b in manual.blocks], rtol=1e-6)


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
    (ValueError, "norm", lambda: propagation.normalized_gradient_growth("relu", "group", 8)),
    (ValueError, "batch", lambda: propagation.normalized_gradient_growth("relu", "batch", 1)),
    (ValueError, "depth", lambda: propagation.normalized_gradient_growth("relu", "batch", 8, depth=3)),
    (ValueError, "mode", lambda: propagation.normalized_gradient_growth("relu", "batch", 8, mode="test")),
    (ValueError, "calibrate",
     lambda: propagation.normalized_gradient_growth("relu", "batch", 8, calibrate=-1)),
    (TypeError, "seeds", lambda: propagation.normalized_gradient_growth("relu", "batch", 8, seeds=2.0)),
    (ValueError, "activation", lambda: propagation.normalized_gradient_growth("softsign", "batch", 8)),
    (TypeError, "model", lambda: propagation.residual_stream(_net(), torch.zeros(2, 3, dtype=torch.long))),
    (TypeError, "idx", lambda: propagation.residual_stream(_pre_ln(), torch.zeros(2, 3))),
    (TypeError, "model", lambda: propagation.ffn_weight_gradients(_net(), torch.zeros(2, 3, dtype=torch.long),
                                                                  torch.zeros(2, 3, dtype=torch.long))),
]


@pytest.mark.parametrize("error, match, call", BAD_INPUTS)
def test_bad_inputs_raise_and_name_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()


# --- residual stacks: stack_norms, residual_gains, first_step_change ---------------------------


def _resblocks(L=4, width=8, seed=0, **kw):
    from gradlab.models import resmlp

    with seeded(seed):
        return resmlp(L, width, **kw).blocks.double()


def test_stack_norms_against_autograd():
    blocks = _resblocks()
    x = torch.randn(3, 8, dtype=torch.float64)
    v = torch.randn(3, 8, dtype=torch.float64)
    norms = propagation.stack_norms(blocks, x, v)
    assert norms.stream.shape == (5,) and norms.grads.shape == (5,)
    xs = [x.clone().requires_grad_()]
    for block in blocks:
        xs.append(block(xs[-1]))
    grads = torch.autograd.grad(xs[-1], xs, v)
    np.testing.assert_allclose(norms.stream, [t.pow(2).sum().item() for t in xs], rtol=1e-12)
    np.testing.assert_allclose(norms.grads, [float(g.pow(2).sum()) for g in grads], rtol=1e-12)
    assert norms.grads[-1] == pytest.approx(float(v.pow(2).sum()))
    # a list of modules and a single module work too
    np.testing.assert_allclose(propagation.stack_norms(list(blocks), x, v).stream, norms.stream)
    assert propagation.stack_norms(blocks[0], x, v).stream.shape == (2,)


def test_stack_norms_bad_input():
    blocks = _resblocks()
    x = torch.randn(3, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="blocks"):
        propagation.stack_norms([], x, x)
    with pytest.raises(TypeError, match="blocks"):
        propagation.stack_norms("blocks", x, x)
    with pytest.raises(TypeError, match="x"):
        propagation.stack_norms(blocks, x.numpy(), x)
    with pytest.raises(ValueError, match="grad_output"):
        propagation.stack_norms(blocks, x, torch.randn(2, 8, dtype=torch.float64))


def test_residual_gains_shapes_seeds_and_bad_input():
    gains = propagation.residual_gains(1.0, 3, width=8, batch=4, seeds=3)
    assert gains.gradient.shape == (3,) and gains.stream.shape == (3,)
    again = propagation.residual_gains(1.0, 3, width=8, batch=4, seeds=3)
    np.testing.assert_array_equal(gains.gradient, again.gradient)
    assert np.all(propagation.residual_gains("rezero", 5, width=8, seeds=2).gradient == 1.0)
    plain = propagation.residual_gains(1.0, 3, width=8, seeds=2, residual=False)
    assert not np.allclose(plain.gradient, gains.gradient[:2])
    for kwargs, error in (({"depth": 0}, ValueError), ({"depth": 2, "seeds": 0}, ValueError),
                          ({"depth": 2, "width": 1.5}, TypeError),
                          ({"depth": 2, "dtype": torch.float16}, ValueError)):
        with pytest.raises(error):
            propagation.residual_gains(1.0, **kwargs)


def test_first_step_change_equals_an_sgd_step_and_leaves_blocks_unchanged():
    blocks = _resblocks(residual_scale=0.5)
    before = [p.detach().clone() for p in blocks.parameters()]
    x = torch.randn(2, 8, dtype=torch.float64)
    v = torch.randn(2, 8, dtype=torch.float64)
    change = propagation.first_step_change(blocks, x, v, 0.01)
    for p, q in zip(blocks.parameters(), before, strict=True):
        assert torch.equal(p, q)
    model = copy.deepcopy(blocks)
    out = model(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    (out * v).sum().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(change, model(x) - out.detach())
    with pytest.raises(ValueError, match="lr"):
        propagation.first_step_change(blocks, x, v, -1.0)
    with pytest.raises(ValueError, match="grad_output"):
        propagation.first_step_change(blocks, x, v[:1], 0.01)
    with pytest.raises(ValueError, match="no parameters"):
        propagation.first_step_change([torch.nn.Identity()], x, v, 0.01)
