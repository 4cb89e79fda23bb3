"""Tests for gradlab.monitor."""

import numpy as np
import pytest
import torch
from torch import nn

from gradlab.models import mlp
from gradlab.monitor import GradientMonitor, NonFiniteError, NonFiniteEvent


class NaNGrad(torch.autograd.Function):
    """Identity forward; its backward turns the incoming gradient into NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(in_features=5, out_features=3, activation="tanh", bias_std=0.1)
    options.update(kwargs)
    return mlp(4, 16, **options)


def _capture_outputs(model):
    """Forward hooks (ours, not the monitor's) that keep each Linear's output with retain_grad."""
    outputs, handles = [], []

    def hook(module, args, output):
        output.retain_grad()
        outputs.append(output)

    for layer in model.linears:
        handles.append(layer.register_forward_hook(hook))
    return outputs, handles


def test_one_row_per_backward_and_layer_names_in_forward_order():
    model = _model()
    x = torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        assert mon.attached
        for _ in range(3):
            model.zero_grad()
            model(x).pow(2).sum().backward()
    assert not mon.attached
    assert mon.layer_names == ["0.linear", "1.linear", "2.linear", "3.linear"]
    assert mon.steps == 3
    for table in (mon.grad_norms, mon.output_grad_norms, mon.output_means,
                  mon.output_stds, mon.update_ratios):
        assert table.shape == (3, 4)
    assert np.isfinite(mon.grad_norms).all()
    assert np.isnan(mon.update_ratios).all()  # no optimizer given
    assert repr(mon) == "GradientMonitor(4 layers, 8 parameters, 3 steps, detached)"


def test_statistics_equal_hand_computed_values():
    model = _model()
    x = torch.randn(8, 5)
    outputs, handles = _capture_outputs(model)
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    for h in handles:
        h.remove()
    assert mon.steps == 1
    for i, (layer, out) in enumerate(zip(model.linears, outputs, strict=True)):
        expected_grad = float(torch.linalg.vector_norm(layer.weight.grad))
        np.testing.assert_allclose(mon.grad_norms[0, i], expected_grad, rtol=1e-5)
        expected_out_grad = float(torch.linalg.vector_norm(out.grad))
        np.testing.assert_allclose(mon.output_grad_norms[0, i], expected_out_grad, rtol=1e-5)
        std, mean = torch.std_mean(out.detach(), correction=0)  # population std
        np.testing.assert_allclose(mon.output_means[0, i], float(mean), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mon.output_stds[0, i], float(std), rtol=1e-4)


def test_output_grad_norms_match_autograd_grad():
    model = _model(seed=1)
    x = torch.randn(6, 5)
    outputs, handles = _capture_outputs(model)
    loss = model(x).pow(2).sum()
    expected = [float(torch.linalg.vector_norm(g)) for g in torch.autograd.grad(loss, outputs)]
    for h in handles:
        h.remove()
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    np.testing.assert_allclose(mon.output_grad_norms[0], expected, rtol=1e-5)


def test_gradient_accumulation_gives_one_row_per_backward_and_nan_update_where_no_step():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x1, x2 = torch.randn(8, 5), torch.randn(8, 5)
    with GradientMonitor(model, optimizer) as mon:
        optimizer.zero_grad()
        model(x1).pow(2).sum().backward()
        first = [layer.weight.grad.clone() for layer in model.linears]
        model(x2).pow(2).sum().backward()
        # .grad now holds the sum; the monitor records each backward pass on its own
        second = [layer.weight.grad - g for layer, g in zip(model.linears, first, strict=True)]
        old = [layer.weight.detach().clone() for layer in model.linears]
        optimizer.step()
    assert mon.steps == 2
    np.testing.assert_allclose(mon.grad_norms[0], [float(g.norm()) for g in first], rtol=1e-5)
    np.testing.assert_allclose(mon.grad_norms[1], [float(g.norm()) for g in second], rtol=1e-4)
    assert np.isnan(mon.update_ratios[0]).all()
    expected = [
        float((layer.weight.detach() - w).norm() / w.norm())
        for layer, w in zip(model.linears, old, strict=True)
    ]
    np.testing.assert_allclose(mon.update_ratios[1], expected, rtol=1e-5)


def test_update_ratios_of_sgd_steps():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    with GradientMonitor(model, optimizer) as mon:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 5)).pow(2).sum().backward()
            old = [layer.weight.detach().clone() for layer in model.linears]
            optimizer.step()
            expected.append([
                float(torch.linalg.vector_norm(layer.weight.detach() - w) / torch.linalg.vector_norm(w))
                for layer, w in zip(model.linears, old, strict=True)
            ])
    assert mon.steps == 3
    np.testing.assert_allclose(mon.update_ratios, expected, rtol=1e-5)
    assert (mon.update_ratios > 0).all()
    assert optimizer._optimizer_step_pre_hooks == {} and optimizer._optimizer_step_post_hooks == {}


def test_no_grad_forward_creates_no_row():
    model = _model()
    x = torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        with torch.no_grad():
            model(x)
            model(x)
        assert mon.steps == 0
        assert mon.grad_norms.shape == (0, 4)
        model(x).sum().backward()
        with torch.no_grad():  # evaluation between training steps
            model(x)
        model(x).sum().backward()
        with torch.no_grad():
            model(x)
    assert mon.steps == 2
    assert np.isfinite(mon.grad_norms).all()


def test_output_columns_come_from_the_forward_before_the_backward():
    model = _model()
    x_eval, x_train = torch.randn(8, 5) * 10, torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        with torch.no_grad():
            model(x_eval)
        out = model[0].linear(x_train).detach()
        model(x_train).sum().backward()
    np.testing.assert_allclose(mon.output_means[0, 0], float(out.mean()), rtol=1e-4, atol=1e-6)


def test_hooks_are_removed_on_exit_and_no_rows_are_added_afterwards():
    model = _model()
    x = torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        pending = model(x).sum()  # graph built while attached, differentiated after exit
    for module in model.modules():
        assert len(module._forward_hooks) == 0
        assert len(module._forward_pre_hooks) == 0
    for p in model.parameters():
        assert not p._backward_hooks
    assert mon.steps == 1
    model(x).sum().backward()
    pending.backward()
    assert mon.steps == 1
    assert mon.grad_norms.shape == (1, 4)


def test_hooks_are_removed_when_the_body_raises():
    model = _model()
    with pytest.raises(KeyError), GradientMonitor(model) as mon:
        raise KeyError("boom")
    assert not mon.attached
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_reset_and_reattach():
    model = _model()
    x = torch.randn(8, 5)
    mon = GradientMonitor(model)
    mon.attach()
    model(x).sum().backward()
    mon.detach()
    assert mon.steps == 1
    mon.reset()
    assert mon.steps == 0 and mon.first_nonfinite is None
    with mon:
        model(x).sum().backward()
        model(x).sum().backward()
    assert mon.steps == 2


def test_attaching_twice_raises():
    mon = GradientMonitor(_model())
    with mon, pytest.raises(RuntimeError, match="already attached"):
        mon.attach()


def test_nan_in_input_is_named_at_the_first_layer():
    model = _model()
    x = torch.randn(8, 5)
    x[3, 2] = float("nan")
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
    event = mon.first_nonfinite
    assert event == NonFiniteEvent(step=0, layer="0.linear", where="output")
    assert str(event) == "step 0: non-finite output in layer '0.linear'"


def test_nan_seen_at_a_later_step_reports_that_step():
    model = _model()
    x = torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        model(x).sum().backward()
        model(x).sum().backward()
        x[0, 0] = float("inf")
        model(x).sum().backward()
    assert mon.first_nonfinite.step == 2
    assert mon.first_nonfinite.layer == "0.linear"
    assert np.isfinite(mon.grad_norms[:2]).all()


def test_nan_from_the_loss_gradient_names_the_output_layer():
    model = _model()
    with GradientMonitor(model) as mon:
        out = model(torch.randn(8, 5))
        NaNGrad.apply(out).sum().backward()
    assert mon.first_nonfinite == NonFiniteEvent(0, "3.linear", "output_grad")
    assert np.isnan(mon.grad_norms[0]).all()


def test_inf_gradient_of_the_loss_names_the_output_layer():
    # d sqrt(|y|) / dy is infinite at y = 0: a zero read-out gives a finite loss, a bad gradient
    model = _model(bias=False)
    with torch.no_grad():
        model.linears[-1].weight.zero_()
    with GradientMonitor(model) as mon:
        loss = torch.sqrt(model(torch.randn(8, 5)).abs()).sum()
        assert torch.isfinite(loss)
        loss.backward()
    assert mon.first_nonfinite == NonFiniteEvent(0, "3.linear", "output_grad")


def test_nan_introduced_in_the_middle_of_backward_names_the_first_layer_below_it():
    model = _model()
    # The gradient turns NaN on its way from block 2 into block 1's output.
    handle = model[1].register_forward_hook(lambda module, args, output: NaNGrad.apply(output))
    with GradientMonitor(model) as mon:
        model(torch.randn(8, 5)).sum().backward()
    handle.remove()
    assert mon.first_nonfinite == NonFiniteEvent(0, "1.linear", "output_grad")
    assert np.isfinite(mon.grad_norms[0, 2:]).all()
    assert np.isnan(mon.grad_norms[0, :2]).all()
    assert np.isfinite(mon.output_means).all()


def test_raise_mode_raises_from_forward():
    model = _model()
    x = torch.randn(8, 5)
    x[0, 0] = float("nan")
    with GradientMonitor(model, on_nonfinite="raise") as mon:
        with pytest.raises(NonFiniteError, match="0.linear") as info:
            model(x)
    assert info.value.event == NonFiniteEvent(0, "0.linear", "output")
    assert isinstance(info.value, FloatingPointError)
    assert mon.first_nonfinite == info.value.event


def test_raise_mode_raises_from_backward():
    model = _model()
    with GradientMonitor(model, on_nonfinite="raise"):
        loss = NaNGrad.apply(model(torch.randn(8, 5))).sum()
        with pytest.raises(NonFiniteError) as info:
            loss.backward()
    assert info.value.event == NonFiniteEvent(0, "3.linear", "output_grad")


def test_huge_but_finite_gradients_are_not_flagged():
    model = _model(activation="linear")
    with GradientMonitor(model) as mon:
        # every output gradient is 1e25: finite in float32, its sum of squares is not
        (model(torch.randn(8, 5)) * 1e25).sum().backward()
    assert mon.first_nonfinite is None
    assert np.isfinite(mon.grad_norms).all() and np.isfinite(mon.output_grad_norms).all()
    assert mon.output_grad_norms[0, -1] == pytest.approx(1e25 * np.sqrt(8 * 3), rel=1e-5)
    for i, layer in enumerate(model.linears):
        expected = float(torch.linalg.vector_norm(layer.weight.grad, dtype=torch.float64))
        assert mon.grad_norms[0, i] == pytest.approx(expected, rel=1e-4)
        assert mon.grad_norms[0, i] > 1e25


def test_huge_but_finite_outputs_are_not_flagged():
    layer = nn.Linear(1000, 1000)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(1e36)  # the float32 sum of the 4000 outputs overflows
    model = nn.Sequential(layer)
    with GradientMonitor(model) as mon:
        model(torch.randn(4, 1000)).sum().backward()
    assert mon.first_nonfinite is None
    assert mon.output_means[0, 0] == pytest.approx(1e36, rel=1e-6)
    assert mon.output_stds[0, 0] == pytest.approx(0.0, abs=1e30)


def test_conv_layers_are_monitored():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    )
    x = torch.randn(5, 3, 8, 8)
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    assert mon.layer_names == ["0", "2", "4"]
    expected = [float(torch.linalg.vector_norm(model[i].weight.grad)) for i in (0, 2, 4)]
    np.testing.assert_allclose(mon.grad_norms[0], expected, rtol=1e-5)
    conv_out = model[0](x).detach()
    np.testing.assert_allclose(mon.output_means[0, 0], float(conv_out.mean()), rtol=1e-4, atol=1e-6)


def test_frozen_layers_have_no_weight_gradient_but_an_output_gradient():
    model = _model()
    model.linears[0].weight.requires_grad_(False)
    with GradientMonitor(model) as mon:
        model(torch.randn(8, 5)).sum().backward()
    assert np.isnan(mon.grad_norms[0, 0])
    assert np.isfinite(mon.grad_norms[0, 1:]).all()


def test_bad_constructor_arguments():
    model = _model()
    with pytest.raises(TypeError, match="model"):
        GradientMonitor("not a model")
    with pytest.raises(TypeError, match="optimizer"):
        GradientMonitor(model, optimizer="sgd")
    with pytest.raises(ValueError, match="on_nonfinite"):
        GradientMonitor(model, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="no trainable parameter and no nn.Linear"):
        GradientMonitor(nn.Sequential(nn.ReLU(), nn.Tanh()))
    frozen = nn.Sequential(nn.LayerNorm(3))
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        GradientMonitor(frozen)


def test_update_ratio_goes_to_the_backward_row_even_after_an_eval_forward():
    torch.manual_seed(0)
    model = mlp(3, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with GradientMonitor(model, opt) as mon:
        for _ in range(2):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            with torch.no_grad():
                model(x)  # evaluation between backward() and step()
            opt.step()
    ratios = mon.update_ratios
    assert ratios.shape == (2, 3)
    assert (ratios > 0).all()  # each step's ratio landed in its own row, none lost or shifted


# -- the per-parameter view on any nn.Module --------------------------------------------------
# Every expected value below is computed from the tensors themselves, in float64, after the
# backward pass or around the optimizer step: independent of the monitor's own reductions.

def _transformer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                       batch_first=True)
    model = nn.Sequential(nn.Embedding(30, 16),
                          nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
                          nn.Linear(16, 3))
    return model, torch.randint(0, 30, (4, 7))


def _conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return model, torch.randn(5, 3, 8, 8)


def _embedding_model(sparse=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 6, sparse=sparse), nn.Flatten(), nn.LayerNorm(18),
                          nn.Linear(18, 2))
    return model, torch.tensor([[1, 4, 1], [4, 4, 7], [0, 1, 11]])  # repeated rows


def _mlp():
    torch.manual_seed(0)
    return mlp(4, 16, in_features=5, out_features=3, activation="tanh"), torch.randn(8, 5)


MODELS = {"transformer": _transformer, "conv": _conv_net, "embedding": _embedding_model, "mlp": _mlp}
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),  # the update read from the gradient
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


def _norm(t):
    if t.is_sparse:
        t = t.coalesce().values()
    return float(torch.linalg.vector_norm(t.detach().double()))


def _ratio(change, old):
    return change / old if old != 0 else (np.inf if change > 0 else 0.0)


@pytest.mark.parametrize("name", MODELS)
def test_param_grad_norms_cover_every_trainable_parameter(name):
    model, x = MODELS[name]()
    with GradientMonitor(model) as mon:
        for _ in range(2):
            model.zero_grad()
            model(x).pow(2).mean().backward()
            expected = [_norm(p.grad) for _, p in model.named_parameters()]
    assert mon.param_names == [n for n, _ in model.named_parameters()]
    assert mon.param_grad_norms.shape == (2, len(expected))
    np.testing.assert_allclose(mon.param_grad_norms[1], expected, rtol=1e-5)
    # the per-layer weight-gradient norms are the weights' columns of the per-parameter table
    weights = [mon.param_names.index(f"{n}.weight" if n else "weight") for n in mon.layer_names]
    np.testing.assert_array_equal(mon.grad_norms, mon.param_grad_norms[:, weights])


def test_transformer_parameters_and_layers_that_are_not_called():
    model, x = _transformer()
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
               if n.endswith(("linear1", "linear2"))]
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    for h in handles:
        h.remove()
    for name, out in outputs.items():  # outputs of shape (batch, sequence, features)
        i = mon.layer_names.index(name)
        assert mon.output_grad_norms[0, i] == pytest.approx(_norm(out.grad), rel=1e-5)
        assert mon.output_stds[0, i] == pytest.approx(float(out.detach().double().std(correction=0)),
                                                      rel=1e-5)
    for name in ("0.weight", "1.layers.0.self_attn.in_proj_weight", "1.layers.0.norm1.weight",
                 "1.layers.1.norm2.bias", "1.layers.1.linear2.bias"):
        assert name in mon.param_names
    # nn.MultiheadAttention applies out_proj functionally: no output columns, but a gradient
    out_proj = mon.layer_names.index("1.layers.0.self_attn.out_proj")
    assert np.isnan(mon.output_means[0, out_proj]) and np.isnan(mon.output_grad_norms[0, out_proj])
    assert mon.grad_norms[0, out_proj] == pytest.approx(
        _norm(model[1].layers[0].self_attn.out_proj.weight.grad), rel=1e-5)
    linear1 = mon.layer_names.index("1.layers.0.linear1")
    assert np.isfinite(mon.output_stds[0, linear1])


def test_conv_net_covers_batch_norm_and_conv_biases():
    model, x = _conv_net()
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    assert mon.param_names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias",
                               "6.weight", "6.bias"]
    assert mon.layer_names == ["0", "3", "6"]
    out = model[0](x).detach().double()
    assert mon.output_means[0, 0] == pytest.approx(float(out.mean()), rel=1e-5, abs=1e-7)
    assert mon.output_stds[0, 0] == pytest.approx(float(out.std(correction=0)), rel=1e-5)


def test_a_model_with_parameters_but_no_linear_layer():
    torch.manual_seed(0)
    model = nn.LayerNorm(4)
    with GradientMonitor(model) as mon:
        model(torch.randn(3, 4)).pow(3).sum().backward()
    assert mon.layer_names == [] and mon.param_names == ["weight", "bias"]
    assert mon.grad_norms.shape == (1, 0) and mon.output_means.shape == (1, 0)
    np.testing.assert_allclose(mon.param_grad_norms[0], [_norm(model.weight.grad), _norm(model.bias.grad)],
                               rtol=1e-5)


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("name", MODELS)
def test_param_update_ratios_equal_the_change_of_the_weights(name, opt_name):
    model, x = MODELS[name]()
    params = list(model.parameters())
    opt = OPTIMIZERS[opt_name](params)
    realized, intended = [], []
    with GradientMonitor(model, opt) as mon:
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            old = [p.detach().clone() for p in params]
            grads = [_norm(p.grad) for p in params]
            opt.step()
            realized.append([_ratio(_norm(p - w), _norm(w)) for p, w in zip(params, old, strict=True)])
            intended.append([_ratio(0.05 * g, _norm(w)) for g, w in zip(grads, old, strict=True)])
    realized = np.array(realized)
    ratios = mon.param_update_ratios
    assert ratios.shape == realized.shape
    np.testing.assert_array_equal(np.isinf(ratios), np.isinf(realized))  # zero-initialized biases
    finite = np.isfinite(realized)
    if opt_name == "sgd":
        # SGD's step read from the gradient: lr * ||g|| / ||W||, within the documented rounding
        np.testing.assert_allclose(ratios[finite], np.array(intended)[finite], rtol=1e-5)
        bound = 2.0**-24 * (1 + 3 * realized[finite]) + 1e-5 * realized[finite]
        assert (np.abs(ratios[finite] - realized[finite]) <= bound).all()
    else:
        np.testing.assert_allclose(ratios[finite], realized[finite], rtol=1e-5)
    weights = [mon.param_names.index(f"{n}.weight" if n else "weight") for n in mon.layer_names]
    np.testing.assert_array_equal(mon.update_ratios, ratios[:, weights])


def _step_with(change_between, opt_name):
    """One monitored step where ``change_between(model)`` runs between backward and step;
    returns (recorded, realized) update ratios per parameter."""
    model = _mlp()[0]
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    opt = OPTIMIZERS[opt_name](params)
    with GradientMonitor(model, opt) as mon:
        model(x).pow(2).mean().backward()
        change_between(model)
        old = [p.detach().clone() for p in params]
        opt.step()
    realized = [_ratio(_norm(p - w), _norm(w)) for p, w in zip(params, old, strict=True)]
    return mon.param_update_ratios[0], np.array(realized)


def _clip(model):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)


def _replace_grads(model):
    for p in model.parameters():
        p.grad = p.grad * 0.5  # a new tensor


def _shrink_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)


def _new_weights(model):
    for p in model.parameters():
        p.data = p.data * 3.0  # a new storage


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("change_between", [_clip, _replace_grads, _shrink_weights, _new_weights])
def test_update_ratio_sees_changes_between_backward_and_step(change_between, opt_name):
    """Norms and copies taken in the backward hooks are not used once W or .grad changed."""
    recorded, realized = _step_with(change_between, opt_name)
    unchanged, _ = _step_with(lambda model: None, opt_name)
    finite = np.isfinite(realized)
    bound = 2.0**-24 * (1 + 3 * realized[finite]) + 1e-5 * realized[finite]  # as documented
    assert (np.abs(recorded[finite] - realized[finite]) <= bound).all()
    if opt_name == "sgd" or change_between in (_shrink_weights, _new_weights):  # Adam: no effect
        assert (np.abs(recorded[finite] / unchanged[finite] - 1) > 0.1).all()  # the change was seen
    assert np.array_equal(np.isinf(recorded), np.isinf(realized))


def test_sgd_update_ratio_after_accumulated_backward_passes():
    model, x = _mlp()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    with GradientMonitor(model, opt) as mon:
        model(x).pow(2).mean().backward()
        model(x[:3]).pow(2).mean().backward()  # .grad is now a sum: its norm is not the hook's
        old = [p.detach().clone() for p in params]
        opt.step()
    realized = np.array([_ratio(_norm(p - w), _norm(w)) for p, w in zip(params, old, strict=True)])
    finite = np.isfinite(realized)
    assert np.isnan(mon.param_update_ratios[0]).all()
    np.testing.assert_allclose(mon.param_update_ratios[1][finite], realized[finite], rtol=1e-4)


def test_parameters_without_gradient_or_outside_the_optimizer_have_nan_ratios():
    model, x = _mlp()
    opt = torch.optim.SGD(list(model.parameters())[2:], lr=0.1)  # not the first layer
    with GradientMonitor(model, opt) as mon:
        model(x).sum().backward()
        model[3].linear.bias.grad = None  # the optimizer skips it
        opt.step()
    ratios = mon.param_update_ratios[0]
    assert np.isnan(ratios[:2]).all()
    assert np.isnan(ratios[mon.param_names.index("3.linear.bias")])
    assert (ratios[2:-1] > 0).all()


def test_sparse_embedding_gradients():
    model, x = _embedding_model(sparse=True)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    with GradientMonitor(model, opt) as mon:
        model(x).pow(2).sum().backward()
        assert model[0].weight.grad.is_sparse
        expected = [_norm(p.grad) for p in params]  # the coalesced rows: duplicates summed
        old = [p.detach().clone() for p in params]
        opt.step()
    np.testing.assert_allclose(mon.param_grad_norms[0], expected, rtol=1e-5)
    realized = [_ratio(_norm(p - w), _norm(w)) for p, w in zip(params, old, strict=True)]
    np.testing.assert_allclose(mon.param_update_ratios[0], realized, rtol=1e-4)


def test_bfloat16_model():
    torch.manual_seed(0)
    model = mlp(3, 16, in_features=5, out_features=2).to(torch.bfloat16)
    x = torch.randn(8, 5, dtype=torch.bfloat16)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)  # bfloat16: the change is measured, not predicted
    outputs, handles = _capture_outputs(model)
    realized = []
    with GradientMonitor(model, opt) as mon:
        for _ in range(3):
            outputs.clear()
            opt.zero_grad()
            model(x).float().pow(2).sum().backward()
            old = [p.detach().clone() for p in params]
            opt.step()
            realized.append([_ratio(_norm(p - w), _norm(w)) for p, w in zip(params, old, strict=True)])
    for h in handles:
        h.remove()
    np.testing.assert_allclose(mon.param_grad_norms[-1], [_norm(p.grad) for p in params], rtol=1e-5)
    np.testing.assert_allclose(mon.output_stds[-1], [float(o.detach().double().std(correction=0))
                                                     for o in outputs], rtol=1e-5)
    finite = np.isfinite(realized)
    np.testing.assert_allclose(mon.param_update_ratios[finite], np.array(realized)[finite], rtol=1e-5)


# -- a layer called several times, a bare layer, stable statistics ----------------------------

class Twice(nn.Module):
    """The same Linear applied twice in one forward pass."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_a_layer_called_twice_is_measured_over_both_calls():
    torch.manual_seed(0)
    model = Twice()
    with torch.no_grad():
        model.inner.bias.fill_(1.0)  # the two calls' outputs differ in mean
    x = torch.randn(16, 6)
    outputs = []

    def keep(module, args, output):
        output.retain_grad()
        outputs.append(output)

    handle = model.inner.register_forward_hook(keep)
    with GradientMonitor(model) as mon:
        model(x).pow(2).sum().backward()
    handle.remove()
    assert len(outputs) == 2
    per_call = [_norm(o.grad) for o in outputs]
    both = torch.cat([o.detach().reshape(-1) for o in outputs]).double()
    assert mon.output_grad_norms[0, 0] == pytest.approx(np.hypot(*per_call), rel=1e-5)
    assert mon.output_grad_norms[0, 0] > max(per_call) * 1.01  # more than either call alone
    assert mon.output_means[0, 0] == pytest.approx(float(both.mean()), rel=1e-6)
    assert mon.output_stds[0, 0] == pytest.approx(float(both.std(correction=0)), rel=1e-5)
    assert mon.grad_norms[0, 0] == pytest.approx(_norm(model.inner.weight.grad), rel=1e-5)


@pytest.mark.parametrize("layer", [nn.Linear(5, 3), nn.Conv1d(2, 3, 3)])
def test_a_bare_layer_is_its_own_model(layer):
    torch.manual_seed(0)
    x = torch.randn(4, 5) if isinstance(layer, nn.Linear) else torch.randn(4, 2, 7)
    with GradientMonitor(layer) as mon:
        out = layer(x)
        out.retain_grad()
        out.pow(2).sum().backward()
    assert mon.layer_names == [""] and mon.param_names == ["weight", "bias"]
    expected = out.detach().double()
    assert mon.output_means[0, 0] == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-7)
    assert mon.output_stds[0, 0] == pytest.approx(float(expected.std(correction=0)), rel=1e-5)
    assert mon.output_grad_norms[0, 0] == pytest.approx(_norm(out.grad), rel=1e-5)


def _constant_layer(mean, std, n_in=16, n_out=256):
    """A Linear whose outputs are ``mean`` plus noise of standard deviation about ``std``."""
    torch.manual_seed(0)
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.normal_(0.0, std / np.sqrt(n_in))
        layer.bias.fill_(mean)
    return layer


@pytest.mark.parametrize("mean,std", [(1e4, 1e-2), (-3e3, 1e-3), (0.4, 1.0), (0.0, 1.0)])
def test_output_std_is_computed_stably(mean, std):
    layer = _constant_layer(mean, std)
    x = torch.randn(64, 16)
    with GradientMonitor(layer) as mon:
        out = layer(x)
        out.sum().backward()
    values = out.detach().double()
    assert mon.output_means[0, 0] == pytest.approx(float(values.mean()), rel=1e-8, abs=1e-8)
    assert mon.output_stds[0, 0] == pytest.approx(float(values.std(correction=0)), rel=1e-5)
    if abs(mean) > 100 * std:
        # the formula used before, ||y||^2/n - mean^2 in float32, is useless on this output
        y = out.detach().reshape(-1)
        naive = float(torch.dot(y, y)) / y.numel() - float(y.mean()) ** 2
        assert not naive > 0 or abs(np.sqrt(naive) / float(values.std()) - 1) > 0.1


def test_device_reductions_in_float64_agree(monkeypatch):
    """Off the CPU, hooks keep float64 device scalars and read them once per pass; the same code
    runs here on CPU tensors when _on_host says no."""
    model, x = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    results = []
    for on_host in (True, False):
        monkeypatch.setattr("gradlab.monitor._on_host", lambda t, on_host=on_host: on_host)
        model, _ = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with GradientMonitor(model, opt) as mon:
            for _ in range(2):
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                opt.step()
        results.append(mon)
    host, device = results
    for table in ("param_grad_norms", "output_grad_norms", "output_means", "output_stds",
                  "param_update_ratios"):
        np.testing.assert_allclose(getattr(device, table), getattr(host, table), rtol=1e-5, atol=1e-7)
    layer = _constant_layer(1e4, 1e-2)
    with GradientMonitor(layer) as mon:
        out = layer(torch.randn(64, 16))
        out.sum().backward()
    assert mon.output_stds[0, 0] == pytest.approx(float(out.detach().double().std(correction=0)),
                                                  rel=1e-5)
    x_bad = x.clone()
    x_bad[0, 0] = float("nan")
    with GradientMonitor(model) as mon:
        model(x_bad).sum().backward()
    assert mon.first_nonfinite == NonFiniteEvent(0, "0.linear", "output")


# -- non-finite values in the per-parameter view ----------------------------------------------

def test_nan_in_a_parameter_gradient_names_the_parameter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    handle = model[1].weight.register_hook(lambda g: g * float("nan"))  # before the monitor's
    with GradientMonitor(model) as mon:
        model(torch.randn(5, 4)).sum().backward()
    handle.remove()
    assert mon.first_nonfinite == NonFiniteEvent(0, "1.weight", "param_grad")
    assert str(mon.first_nonfinite) == "step 0: non-finite param_grad in parameter '1.weight'"
    assert np.isfinite(mon.output_grad_norms).all()
    assert np.isnan(mon.param_grad_norms[0, mon.param_names.index("1.weight")])


def test_huge_but_finite_parameter_gradients_are_not_flagged():
    model, x = _embedding_model()
    with GradientMonitor(model) as mon:
        (model(x) * 1e25).sum().backward()  # float32 sums of squares overflow, entries do not
    assert mon.first_nonfinite is None
    expected = [_norm(p.grad) for p in model.parameters()]
    assert max(expected) > 1e25
    np.testing.assert_allclose(mon.param_grad_norms[0], expected, rtol=1e-5)


def test_a_backward_that_raises_midway_does_not_block_later_rows():
    model, x = _mlp()

    def boom(grad):
        raise KeyError("boom")

    with GradientMonitor(model) as mon:
        handle = model[1].linear.weight.register_hook(boom)
        with pytest.raises(KeyError):
            model(x).sum().backward()
        handle.remove()
        model.zero_grad()
        model(x).sum().backward()
    assert mon.steps == 1
    np.testing.assert_allclose(mon.param_grad_norms[0], [_norm(p.grad) for p in model.parameters()],
                               rtol=1e-5)
