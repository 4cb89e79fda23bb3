"""Tests for gradlab.train."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradlab as gl
from gradlab.clip import clip_grad_value_
from gradlab.train import History, fit


def _regression(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])[:d]
    return x, x @ w + 0.3


def _model(seed=0, depth=2, width=8, d=3):
    torch.manual_seed(seed)
    return gl.mlp(depth, width, in_features=d, out_features=1, activation="tanh")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


mse = nn.functional.mse_loss


def test_learns_tiny_regression_and_shapes():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    hist = fit(model, mse, _regression(), opt, steps=150)
    assert isinstance(hist, History)
    for name in ("loss", "grad_norm", "clipped_grad_norm", "lr", "step_time", "skipped"):
        assert getattr(hist, name).shape == (150,), name
    assert hist.skipped.dtype == bool and not hist.skipped.any()
    assert hist.loss[-1] < 0.05 * hist.loss[0]
    assert hist.stopped_at is None and hist.stop_reason is None and hist.nonfinite_layer is None
    np.testing.assert_array_equal(hist.grad_norm, hist.clipped_grad_norm)  # no clipping
    assert np.all(hist.step_time > 0) and np.all(hist.lr == 0.02)
    assert "150 of 150 steps" in hist.summary() and "History(steps=150/150" in repr(hist)


def test_grad_norm_is_the_global_norm_of_the_gradient():
    model = _model()
    x, y = _regression()
    ref = _model()
    mse(ref(x), y).backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ref.parameters()]))
    hist = fit(model, mse, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), steps=1)
    assert hist.grad_norm[0] == pytest.approx(float(expected), rel=1e-5)
    assert hist.loss[0] == pytest.approx(float(mse(ref(x), y).detach()), rel=1e-6)


def _nan_data(bad_step, x, y):
    def data(step):
        if step == bad_step:
            xb = x.clone()
            xb[0, 0] = math.nan
            return xb, y
        return x, y

    return data


def test_nan_in_data_stops_before_the_optimizer_step():
    x, y = _regression()
    model, reference = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with pytest.warns(RuntimeWarning, match="loss is nan at step 4"):
        hist = fit(model, mse, _nan_data(4, x, y), opt, steps=10)
    assert hist.stopped_at == 4 and len(hist) == 5
    assert hist.stop_reason.startswith("loss is nan at step 4")
    # Without a monitor the layer is the first non-finite gradient in backward order: the read-out.
    assert hist.nonfinite_layer == "1.linear.bias"
    assert math.isnan(hist.loss[4]) and hist.skipped.tolist() == [False] * 4 + [True]
    # The failing gradients are left in .grad for inspection.
    assert any(p.grad is not None and not p.grad.isfinite().all() for p in model.parameters())
    # The weights are those of 4 clean steps: the NaN step was never applied.
    fit(reference, mse, (x, y), torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9), steps=4)
    assert _same(_state(model), _state(reference))
    assert "stopped: loss is nan at step 4" in hist.summary()


def test_nan_at_first_step_leaves_weights_unchanged():
    x, y = _regression()
    model = _model()
    before = _state(model)
    with pytest.warns(RuntimeWarning):
        hist = fit(model, mse, _nan_data(0, x, y), torch.optim.Adam(model.parameters()), steps=3)
    assert hist.stopped_at == 0 and _same(before, _state(model))


def test_monitor_names_the_layer_where_the_nan_appears():
    x, y = _regression()
    model = _model(depth=3)
    mon = gl.GradientMonitor(model)
    with pytest.warns(RuntimeWarning):
        hist = fit(model, mse, _nan_data(2, x, y), torch.optim.SGD(model.parameters(), lr=0.01),
                   steps=5, monitor=mon)
    assert hist.stopped_at == 2 and hist.nonfinite_layer == "0.linear"  # input side, forward
    assert not mon.attached and mon.steps == 3


def test_nonfinite_gradient_with_finite_loss_names_the_parameter():
    class SqrtAtZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(1, 1)
            self.outer = nn.Linear(1, 1)

        def forward(self, x):
            return self.outer(torch.sqrt(self.inner(x)))  # d sqrt(u)/du = inf at u = 0

    model = SqrtAtZero()
    with torch.no_grad():
        model.inner.weight.fill_(1.0)
        model.inner.bias.fill_(0.0)
    x = torch.zeros(4, 1)
    with pytest.warns(RuntimeWarning, match="gradient of 'inner"):
        hist = fit(model, mse, (x, torch.ones(4, 1)), torch.optim.SGD(model.parameters(), lr=0.1),
                   steps=3)
    assert hist.stopped_at == 0 and math.isfinite(hist.loss[0])
    assert hist.nonfinite_layer in ("inner.bias", "inner.weight")
    assert hist.stop_reason == f"gradient of {hist.nonfinite_layer!r} is inf at step 0" or (
        hist.stop_reason == f"gradient of {hist.nonfinite_layer!r} is nan at step 0"
    )


def test_skip_mode_goes_on_and_marks_skipped_steps():
    x, y = _regression()
    bad = {2, 5, 6}

    def data(step):
        xb = x.clone()
        if step in bad:
            xb[1, 1] = math.inf
        return xb, y

    model, reference = _model(), _model()
    with pytest.warns(RuntimeWarning) as record:
        hist = fit(model, mse, data, torch.optim.SGD(model.parameters(), lr=0.05), steps=10,
                   on_nonfinite="skip")
    assert len(hist) == 10 and hist.stopped_at is None
    assert np.flatnonzero(hist.skipped).tolist() == sorted(bad)
    assert np.all(np.isnan(hist.clipped_grad_norm[hist.skipped]))
    assert np.all(np.isfinite(hist.loss[~hist.skipped]))
    messages = [str(w.message) for w in record]
    assert any("skipped a step" in m for m in messages) and any("skipped 3 of 10" in m for m in messages)
    assert "skipped 3 steps" in hist.summary()
    # Skipped steps change nothing: same weights as 7 clean steps.
    fit(reference, mse, (x, y), torch.optim.SGD(reference.parameters(), lr=0.05), steps=7)
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_raise_mode_raises_floating_point_error():
    x, y = _regression()
    model = _model()
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        fit(model, mse, _nan_data(3, x, y), torch.optim.SGD(model.parameters(), lr=0.01), steps=6,
            on_nonfinite="raise")


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_matches_one_big_batch(k):
    b = 8
    x, y = _regression(n=k * b)
    micro = [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(k)]

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = fit(model, mse, micro, opt, steps=3, accumulate=k)

    # The manual loop: one batch of k*b, plain torch.
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    norms, losses = [], []
    for _ in range(3):
        ref_opt.zero_grad()
        loss = mse(ref(x), y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), math.inf)))
        losses.append(loss.item())
        ref_opt.step()
    np.testing.assert_allclose(hist.grad_norm, norms, rtol=1e-5)
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-5)
    for a, c in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_iterable_data_is_cycled_and_callable_gets_micro_batch_counter():
    x, y = _regression(n=12)
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    model = _model()
    hist = fit(model, mse, batches, torch.optim.SGD(model.parameters(), lr=0.01), steps=7)
    assert len(hist) == 7
    calls = []

    def data(i):
        calls.append(i)
        return x, y

    fit(model, mse, data, torch.optim.SGD(model.parameters(), lr=0.01), steps=3, accumulate=2)
    assert calls == list(range(6))


def test_generator_that_runs_out_raises():
    x, y = _regression(n=4)
    model = _model()
    gen = ((x, y) for _ in range(2))
    with pytest.raises(ValueError, match="generator"):
        fit(model, mse, gen, torch.optim.SGD(model.parameters(), lr=0.01), steps=5)
    with pytest.raises(ValueError, match="empty"):
        fit(model, mse, [], torch.optim.SGD(model.parameters(), lr=0.01), steps=1)


def test_norm_clipping_records_norms_before_and_after():
    model = _model()
    x, y = _regression()
    y = y * 100  # large gradients
    hist = fit(model, mse, (x, y), torch.optim.SGD(model.parameters(), lr=1e-4), steps=5, clip=1.0)
    assert np.all(hist.grad_norm > 1.0)
    np.testing.assert_allclose(hist.clipped_grad_norm, 1.0, rtol=1e-4)
    assert "clipped on 5 of 5 steps" in hist.summary()


def test_infinite_clip_only_measures():
    model, reference = _model(), _model()
    x, y = _regression()
    hist = fit(model, mse, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), steps=3, clip=math.inf)
    fit(reference, mse, (x, y), torch.optim.SGD(reference.parameters(), lr=0.1), steps=3)
    np.testing.assert_allclose(hist.clipped_grad_norm, hist.grad_norm, rtol=1e-6)
    assert _same(_state(model), _state(reference))


def test_callable_clip_is_applied_to_the_parameters():
    model = _model()
    x, y = _regression()
    seen = []

    def clip(ps):
        seen.append(len(ps))
        clip_grad_value_(ps, 1e-3)

    hist = fit(model, mse, (x, y * 50), torch.optim.SGD(model.parameters(), lr=0.01), steps=2, clip=clip)
    n_params = len(list(model.parameters()))
    assert seen == [n_params, n_params]
    n_values = sum(p.numel() for p in model.parameters())
    assert np.all(hist.clipped_grad_norm <= 1e-3 * math.sqrt(n_values) + 1e-7)
    assert np.all(hist.clipped_grad_norm < hist.grad_norm)


def test_scheduler_learning_rate_is_recorded():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    hist = fit(model, mse, _regression(), opt, steps=6, scheduler=sched)
    np.testing.assert_allclose(hist.lr, [1, 1, 0.5, 0.5, 0.25, 0.25])


def test_monitor_is_attached_for_the_run_only():
    model = _model()
    mon = gl.GradientMonitor(model)
    fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.01), steps=4,
        accumulate=2, monitor=mon)
    assert not mon.attached and mon.steps == 8  # one row per micro-batch


def test_progress_bar_writes_to_stderr_only_when_asked(capsys):
    model = _model()
    fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.01), steps=3)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.01), steps=3, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_no_warning_on_a_clean_run():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.01), steps=3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"accumulate": 0}, ValueError, "accumulate"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"clip": "big"}, TypeError, "clip"),
        ({"scheduler": 3}, TypeError, "scheduler"),
        ({"monitor": "yes"}, TypeError, "monitor"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    model = _model()
    args = {"steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.01), **args)


def test_bad_model_optimizer_data_and_monitor():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(TypeError, match="model"):
        fit(lambda x: x, mse, _regression(), opt, steps=1)
    with pytest.raises(TypeError, match="optimizer"):
        fit(model, mse, _regression(), "sgd", steps=1)
    with pytest.raises(TypeError, match="data"):
        fit(model, mse, torch.zeros(3), opt, steps=1)
    with pytest.raises(TypeError, match="pair"):
        fit(model, mse, [torch.zeros(3, 3)], opt, steps=1)
    with pytest.raises(ValueError, match="different model"):
        fit(model, mse, _regression(), opt, steps=1, monitor=gl.GradientMonitor(_model()))
    with pytest.raises(TypeError, match="scalar"):
        fit(model, lambda out, y: out - y, _regression(), opt, steps=1)
