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
    for table in (mon.grad_norms, mon.output_grad_norms, mon.activation_means,
                  mon.activation_stds, mon.update_ratios):
        assert table.shape == (3, 4)
    assert np.isfinite(mon.grad_norms).all()
    assert np.isnan(mon.update_ratios).all()  # no optimizer given
    assert repr(mon) == "GradientMonitor(4 layers, 3 steps, detached)"


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
        np.testing.assert_allclose(mon.activation_means[0, i], float(mean), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mon.activation_stds[0, i], float(std), rtol=1e-4)


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


def test_activation_columns_come_from_the_forward_before_the_backward():
    model = _model()
    x_eval, x_train = torch.randn(8, 5) * 10, torch.randn(8, 5)
    with GradientMonitor(model) as mon:
        with torch.no_grad():
            model(x_eval)
        out = model[0].linear(x_train).detach()
        model(x_train).sum().backward()
    np.testing.assert_allclose(mon.activation_means[0, 0], float(out.mean()), rtol=1e-4, atol=1e-6)


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
    assert event == NonFiniteEvent(step=0, layer="0.linear", where="activation")
    assert str(event) == "step 0: non-finite activation in layer '0.linear'"


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
    assert np.isfinite(mon.activation_means).all()


def test_raise_mode_raises_from_forward():
    model = _model()
    x = torch.randn(8, 5)
    x[0, 0] = float("nan")
    with GradientMonitor(model, on_nonfinite="raise") as mon:
        with pytest.raises(NonFiniteError, match="0.linear") as info:
            model(x)
    assert info.value.event == NonFiniteEvent(0, "0.linear", "activation")
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


def test_huge_but_finite_activations_are_not_flagged():
    layer = nn.Linear(1000, 1000)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(1e36)  # the float32 sum of the 4000 outputs overflows
    model = nn.Sequential(layer)
    with GradientMonitor(model) as mon:
        model(torch.randn(4, 1000)).sum().backward()
    assert mon.first_nonfinite is None
    assert mon.activation_means[0, 0] == pytest.approx(1e36, rel=1e-6)
    assert mon.activation_stds[0, 0] == pytest.approx(0.0, abs=1e30)


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
    np.testing.assert_allclose(mon.activation_means[0, 0], float(conv_out.mean()), rtol=1e-4, atol=1e-6)


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
    with pytest.raises(ValueError, match="no nn.Linear"):
        GradientMonitor(nn.Sequential(nn.ReLU(), nn.Tanh()))


def test_update_ratio_goes_to_the_backward_row_even_after_an_eval_forward():
    import torch

    import gradlab as gl

    gl.seed_everything(0)
    model = gl.mlp(3, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with gl.GradientMonitor(model, opt) as mon:
        for _ in range(2):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            with torch.no_grad():
                model(x)  # evaluation between backward() and step()
            opt.step()
    ratios = mon.update_ratios
    assert ratios.shape == (2, 3)
    assert (ratios > 0).all()  # each step's ratio landed in its own row, none lost or shifted
