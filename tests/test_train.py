"""Tests for gradlab.train."""

import math
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradlab as gl
from gradlab.clip import clip_grad_value_
from gradlab.hessian import top_eigenvalue
from gradlab.train import History, StepRecord, fit


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
        ({"callback": 3}, TypeError, "callback"),
        ({"callback": lambda r: 1.5}, TypeError, "callback must return"),
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



# -- overflow: finite entries, a float32 norm beyond 1.8e19 -------------------------------------


def _overflowing_linear():
    """One weight w = 1, input 1e10, target 0: loss 1e20 (finite in float32), dL/dw = 2e20."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    return model, (torch.full((1, 1), 1e10), torch.zeros(1, 1))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_clip_on_an_overflowing_float32_norm_scales_instead_of_zeroing(momentum):
    model, data = _overflowing_linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean run: nothing to warn about
        hist = fit(model, mse, data, opt, steps=1, clip=1.0)
    assert hist.grad_norm[0] == pytest.approx(2e20, rel=1e-6)
    assert hist.clipped_grad_norm[0] == pytest.approx(1.0, rel=1e-5)  # was 0: every gradient zeroed
    # The clipped gradient is (1, 1e-10): the weight moves by lr, the bias by lr * 1e-10.
    assert model.weight.item() == pytest.approx(0.9, rel=1e-6)
    assert model.bias.item() == pytest.approx(-1e-11, rel=1e-4)


def test_a_clip_that_leaves_nan_stops_before_the_optimizer_step():
    model = _model()
    before = _state(model)

    def broken_clip(ps):
        ps[0].grad.fill_(math.nan)

    with pytest.warns(RuntimeWarning, match="after clipping at step 0"):
        hist = fit(model, mse, _regression(), torch.optim.SGD(model.parameters(), lr=0.1), steps=3,
                   clip=broken_clip)
    assert hist.stopped_at == 0 and hist.diverged and _same(before, _state(model))
    assert hist.nonfinite_layer == "0.linear.weight" and math.isnan(hist.clipped_grad_norm[0])


# -- accumulation weighted by micro-batch size --------------------------------------------------


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_short_last_micro_batch_is_weighted_by_its_size():
    """A DataLoader of 36 examples in batches of 32 gives micro-batches 32 and 4: fit must weight
    them 32/36 and 4/36 (1/2 each is 53% off), to match one batch of 36 in float64."""
    x, y = _regression(n=36)
    x, y = x.double(), y.double()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    assert [len(b[0]) for b in loader] == [32, 4]

    model, ref = _model().double(), _model().double()
    seen = []
    hist = fit(model, mse, loader, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps=3,
               accumulate=2, callback=lambda r: seen.append(_flat_grad(r.model).clone()))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for s in range(3):
        ref_opt.zero_grad()
        loss = mse(ref(x), y)
        loss.backward()
        torch.testing.assert_close(seen[s], _flat_grad(ref), rtol=1e-12, atol=1e-14)
        assert hist.loss[s] == pytest.approx(loss.item(), rel=1e-12)  # the mean over 36 examples
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_step_spans_the_end_of_a_pass_and_a_short_batch_alone_is_its_mean():
    """Seven examples in batches of 3 give 3, 3, 1: with accumulate=2 the second step holds the
    short batch and the first batch of the next pass, weighted 1/4 and 3/4 (the docstring of
    fit); with accumulate=1 the short batch is a step of its own, on the mean over its example."""
    x, y = _regression(n=7)
    x, y = x.double(), y.double()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    assert [len(b[0]) for b in loader] == [3, 3, 1]

    def grads(accumulate, steps):
        model, seen = _model().double(), []
        hist = fit(model, mse, loader, torch.optim.SGD(model.parameters(), lr=0.0), steps=steps,
                   accumulate=accumulate, callback=lambda r: seen.append(_flat_grad(r.model).clone()))
        return model, seen, hist

    def full_batch_grad(model, idx):
        model.zero_grad()
        loss = mse(model(x[idx]), y[idx])
        loss.backward()
        return _flat_grad(model), loss.item()

    model, seen, hist = grads(2, 2)
    for s, idx in enumerate(([0, 1, 2, 3, 4, 5], [6, 0, 1, 2])):
        expected, loss = full_batch_grad(model, idx)
        torch.testing.assert_close(seen[s], expected, rtol=1e-12, atol=1e-14)
        assert hist.loss[s] == pytest.approx(loss, rel=1e-12)
    model, seen, hist = grads(1, 4)
    for s, idx in enumerate(([0, 1, 2], [3, 4, 5], [6], [0, 1, 2])):
        expected, loss = full_batch_grad(model, idx)
        torch.testing.assert_close(seen[s], expected, rtol=1e-12, atol=1e-14)
        assert hist.loss[s] == pytest.approx(loss, rel=1e-12)


def test_history_loss_is_the_mean_over_examples():
    x, y = _regression(n=10)
    micro = [(x[:2], y[:2]), (x[2:], y[2:])]  # 2 and 8 examples
    model = _model()
    hist = fit(model, mse, micro, torch.optim.SGD(model.parameters(), lr=0.0), steps=1, accumulate=2)
    per_batch = [mse(model(xb), yb).item() for xb, yb in micro]
    assert hist.loss[0] == pytest.approx(0.2 * per_batch[0] + 0.8 * per_batch[1], rel=1e-6)
    assert hist.loss[0] != pytest.approx(np.mean(per_batch), rel=1e-3)


def _accumulated_vs_large(model, loss_fn, micro):
    """Relative distance between fit's accumulated gradient and the gradient on all examples."""
    seen = []
    fit(model, loss_fn, micro, torch.optim.SGD(model.parameters(), lr=0.0), steps=1,
        accumulate=len(micro), callback=lambda r: seen.append(_flat_grad(r.model).clone()))
    model.zero_grad()
    loss_fn(model(torch.cat([m[0] for m in micro])), torch.cat([m[1] for m in micro])).backward()
    large = _flat_grad(model)
    return float((seen[0] - large).norm() / large.norm())


def test_accumulation_is_not_a_large_batch_with_batchnorm_or_token_means():
    """The exceptions the docstring names, measured: both differ by far more than rounding."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    bn = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    micro = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    assert _accumulated_vs_large(bn, mse, micro) > 0.1
    bn.eval()  # running statistics: no coupling between examples, so exact again
    assert _accumulated_vs_large(bn, mse, micro) < 1e-12

    # Token-mean loss over sequences padded to 6 steps: target -1 marks padding.
    emb = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5)).double()
    tokens = torch.randint(0, 5, (8, 6), generator=torch.Generator().manual_seed(1))
    targets = tokens.roll(-1, dims=1)
    targets[:4, 2:] = -1  # the first micro-batch has 2 tokens per sequence, the second 6

    def token_mean(logits, t):
        return nn.functional.cross_entropy(logits.reshape(-1, 5), t.reshape(-1), ignore_index=-1)

    halves = [(tokens[:4], targets[:4]), (tokens[4:], targets[4:])]
    assert _accumulated_vs_large(emb, token_mean, halves) > 0.1


# -- the per-step callback ----------------------------------------------------------------------


def test_callback_sees_each_record_and_the_applied_gradients():
    model = _model()
    x, y = _regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    records, grad_norms = [], []

    def callback(r):
        records.append(r)
        grad_norms.append(float(_flat_grad(r.model).norm()))  # the clipped gradient, still there
        time.sleep(0.5)  # far longer than a step, even on a loaded machine

    hist = fit(model, mse, (x, y * 100), opt, steps=4, clip=1.0, callback=callback)
    assert [r.step for r in records] == [0, 1, 2, 3] and all(isinstance(r, StepRecord) for r in records)
    for name in ("loss", "grad_norm", "clipped_grad_norm", "lr", "step_time", "skipped"):
        np.testing.assert_array_equal([getattr(r, name) for r in records], getattr(hist, name))
    np.testing.assert_allclose(grad_norms, hist.clipped_grad_norm, rtol=1e-6)
    assert np.all(hist.grad_norm > 1.0)
    assert all(r.model is model and r.optimizer is opt for r in records)
    assert np.all(hist.step_time < 0.5)  # the callback's time is not the step's
    assert all(p.grad is None for p in model.parameters())  # zeroed after the callback


@pytest.mark.parametrize("answer, reason", [(True, "the callback returned True after step 2"),
                                            ("loss below target", "loss below target")])
def test_callback_stops_the_run_after_the_step(answer, reason):
    x, y = _regression()
    model, reference = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stop asked for is not a warning
        hist = fit(model, mse, (x, y), torch.optim.SGD(model.parameters(), lr=0.05), steps=10,
                   callback=lambda r: answer if r.step == 2 else None)
    assert len(hist) == 3 and hist.stopped_at == 2 and hist.stopped_by == "callback"
    assert hist.stopped and not hist.diverged and not hist.skipped.any()
    assert hist.stop_reason == reason and f"stopped by the callback: {reason}" in hist.summary()
    fit(reference, mse, (x, y), torch.optim.SGD(reference.parameters(), lr=0.05), steps=3)
    assert _same(_state(model), _state(reference))  # step 2 was applied


def test_callback_on_skipped_and_stopped_steps():
    x, y = _regression()
    data = _nan_data(1, x, y)
    calls = []

    def callback(r):
        calls.append((r.step, r.skipped, math.isnan(r.clipped_grad_norm),
                      not torch.isfinite(_flat_grad(r.model)).all().item()))

    model = _model()
    with pytest.warns(RuntimeWarning):
        hist = fit(model, mse, data, torch.optim.SGD(model.parameters(), lr=0.01), steps=3,
                   on_nonfinite="skip", callback=callback)
    # Step 1 is called too, with the non-finite gradient it did not apply.
    assert calls == [(0, False, False, False), (1, True, True, True), (2, False, False, False)]
    assert hist.stopped_by is None and hist.skipped.tolist() == [False, True, False]
    calls.clear()
    with pytest.warns(RuntimeWarning, match="fit stopped"):
        hist = fit(_model(), mse, data, torch.optim.SGD(model.parameters(), lr=0.01), steps=3,
                   callback=callback)
    assert calls == [(0, False, False, False), (1, True, True, True)]
    assert hist.stopped_by == "nonfinite" and hist.diverged and hist.stopped_at == 1


# -- the chapters' private loops, rebuilt on the callback ----------------------------------------

H0, T_CLIFF, TARGET = 0.5, 50, -0.5


def _cliff_loss(p):
    """rnn_cliff's one-unit tanh RNN: (h_50 - y*)² with h_t = tanh(w h_{t-1} + b), h_0 = 0.5."""
    h = torch.full_like(p[0], H0)
    for _ in range(T_CLIFF):
        h = torch.tanh(p[0] * h + p[1])
    return (h - TARGET) ** 2


def _descend_by_hand(start, lr, n_steps, max_norm):
    """rnn_cliff's `descend`, as the chapter writes it."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    path, norms = [p.detach().clone()], []
    for _ in range(n_steps):
        p.grad = None
        _cliff_loss(p).backward()
        norms.append(float(p.grad.norm()))
        if max_norm is not None:
            gl.clip.clip_grad_norm_(p, max_norm)
        with torch.no_grad():
            p -= lr * p.grad
        path.append(p.detach().clone())
    return torch.stack(path), np.array(norms)


class _Point(nn.Module):
    """The two parameters (w, b) as a module whose output is the loss itself."""

    def __init__(self, start):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self, _):
        return _cliff_loss(self.p)


def _descend_with_fit(start, lr, n_steps, max_norm):
    model = _Point(start)
    path, norms = [model.p.detach().clone()], []

    def record(r):
        path.append(r.model.p.detach().clone())
        norms.append(r.grad_norm)

    fit(model, lambda loss, _: loss, (torch.zeros(1), torch.zeros(1)),
        torch.optim.SGD(model.parameters(), lr=lr), steps=n_steps, clip=max_norm,
        on_nonfinite="raise", callback=record)
    return torch.stack(path), np.array(norms)


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_callback_reproduces_rnn_cliff_descend(max_norm):
    path, norms = _descend_with_fit((2.0, 0.25), 0.1, 40, max_norm)
    ref_path, ref_norms = _descend_by_hand((2.0, 0.25), 0.1, 40, max_norm)
    assert norms.max() > 10  # the run meets the wall
    torch.testing.assert_close(path, ref_path, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-10)


class _HookStepRecorder:
    """optimizers' `StepRecorder`, as the chapter writes it (optimizer pre/post hooks)."""

    def __init__(self, model, optimizer):
        self.weights, self.rows = model.weights, []
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)

    def _before(self, *_):
        self._grads = [w.grad.detach().clone() for w in self.weights]
        self._old = [w.detach().clone() for w in self.weights]

    def _after(self, *_):
        deltas = [w.detach() - old for w, old in zip(self.weights, self._old, strict=True)]
        grads = self._grads
        self.rows.append({"grad_max": [g.abs().max().item() for g in grads],
                          "step_max": [d.abs().max().item() for d in deltas],
                          "loss_change": [(g * d).sum().item() for g, d in zip(grads, deltas, strict=True)]})


class _StepRecorder:
    """The same with fit's callback: the gradient is in .grad, the previous weights are kept."""

    def __init__(self, model):
        self.weights, self.rows = model.weights, []
        self._old = [w.detach().clone() for w in self.weights]

    def __call__(self, r):
        deltas = [w.detach() - old for w, old in zip(self.weights, self._old, strict=True)]
        grads = [w.grad for w in self.weights]
        self.rows.append({"grad_max": [g.abs().max().item() for g in grads],
                          "step_max": [d.abs().max().item() for d in deltas],
                          "loss_change": [(g * d).sum().item() for g, d in zip(grads, deltas, strict=True)]})
        self._old = [w.detach().clone() for w in self.weights]


@pytest.mark.parametrize("make", [lambda ps: torch.optim.SGD(ps, lr=1e-2),
                                  lambda ps: torch.optim.Adam(ps, lr=1e-3)])
def test_callback_reproduces_optimizers_step_recorder(make):
    x, y = _regression(n=32)
    x, y = x.double(), y.double()
    a, b = _model(depth=4).double(), _model(depth=4).double()
    opt_a = make(a.parameters())
    hooks = _HookStepRecorder(a, opt_a)
    fit(a, mse, (x, y), opt_a, steps=4, clip=0.5)
    rec = _StepRecorder(b)
    fit(b, mse, (x, y), make(b.parameters()), steps=4, clip=0.5, callback=rec)
    assert len(rec.rows) == len(hooks.rows) == 4
    for ours, theirs in zip(rec.rows, hooks.rows, strict=True):
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


def _sharpness_by_hooks(net, closure, optimizer, steps, every, iters):
    """learning_rate's `train_with_sharpness`, as the chapter writes it (a post-step hook)."""
    rec = {"steps": [], "sharpness": [], "vector": None, "t": 0}

    def measure():
        top = top_eigenvalue(closure, net, iters=iters, tol=1e-3, init=rec["vector"])
        rec["steps"].append(rec["t"])
        rec["sharpness"].append(top.value)
        rec["vector"] = top.vector

    def after_step(*_):
        rec["t"] += 1
        if rec["t"] % every == 0:
            measure()

    measure()
    handle = optimizer.register_step_post_hook(after_step)
    x, y = closure.data
    fit(net, mse, (x, y), optimizer, steps=steps)
    handle.remove()
    return rec["steps"], rec["sharpness"]


def _sharpness_by_callback(net, closure, optimizer, steps, every, iters):
    """The same with the callback: after step t (0-based), t + 1 steps have been taken."""
    rec = {"steps": [], "sharpness": [], "vector": None}

    def measure(t):
        top = top_eigenvalue(closure, net, iters=iters, tol=1e-3, init=rec["vector"])
        rec["steps"].append(t)
        rec["sharpness"].append(top.value)
        rec["vector"] = top.vector

    def callback(r):
        if (r.step + 1) % every == 0 and not r.skipped:
            measure(r.step + 1)

    measure(0)
    x, y = closure.data
    fit(net, mse, (x, y), optimizer, steps=steps, callback=callback)
    return rec["steps"], rec["sharpness"]


def test_callback_reproduces_learning_rate_train_with_sharpness():
    x, y = _regression(n=32)

    def run(how):
        net = _model(seed=3, depth=3)

        def closure():
            return mse(net(x), y)

        closure.data = (x, y)
        return how(net, closure, torch.optim.SGD(net.parameters(), lr=0.2), steps=20, every=5, iters=10)

    steps_hook, sharp_hook = run(_sharpness_by_hooks)
    steps_cb, sharp_cb = run(_sharpness_by_callback)
    assert steps_cb == steps_hook == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(sharp_cb, sharp_hook)
    assert all(s > 0 for s in sharp_cb)
