"""Chapter-level measurements of "What explodes": the random-factor product, the width
correction of the growth rate, and the training run that blows up from a critical start."""

import math
import warnings

import numpy as np
import pytest
import torch

import gradlab as gl


def test_fraction_of_coin_products_below_one_matches_the_binomial():
    """Factors 0.5 or 1.6 with equal probability, 50 layers: the product is below 1 when at most
    29 factors are 1.6, probability 0.8987; 100,000 runs agree within 4 standard errors."""
    depth, runs = 50, 100_000
    gen = torch.Generator().manual_seed(0)
    products = torch.where(torch.rand(runs, depth, generator=gen) < 0.5, 0.5, 1.6).double().prod(1)
    measured = float((products < 1).double().mean())
    k_max = math.ceil(depth * math.log(2) / math.log(3.2)) - 1
    exact = sum(math.comb(depth, k) for k in range(k_max + 1)) / 2**depth
    assert k_max == 29 and exact == pytest.approx(0.8987, abs=1e-4)
    assert abs(measured - exact) < 4 * math.sqrt(exact * (1 - exact) / runs)


def test_narrow_linear_networks_shrink_typical_gradients_as_predicted():
    """400 Gaussian linear networks of width 8 at gain 1, 29 backward steps each: the mean log
    factor is within 4 standard errors of log_growth_rate(1, 8) = -0.065 and more than 10
    standard errors below 0."""
    width, networks, steps = 8, 400, 29
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(networks, width, generator=gen, dtype=torch.float64)
    logs = []
    for _ in range(steps):
        w = torch.randn(networks, width, width, generator=gen, dtype=torch.float64) / math.sqrt(width)
        g_next = torch.einsum("bji,bj->bi", w, g)
        logs.append((g_next.norm(dim=1) / g.norm(dim=1)).log())
        g = g_next
    logs = torch.stack(logs)
    drift, se = float(logs.mean()), float(logs.std()) / math.sqrt(logs.numel())
    predicted = gl.theory.log_growth_rate(1.0, width)
    assert abs(drift - predicted) < 4 * se, (drift, se, predicted)
    assert -drift > 10 * se


def test_a_critical_relu_network_blows_up_from_too_large_a_step():
    """The chapter's run: exploding_mlp(depth=20, width=64, gain=1) on the sine teacher. At
    initialization the gradient is flat across the hidden layers (layer 1 / layer 19 between 0.5
    and 2), yet the sharpness exceeds 2/lr for lr = 0.004; that run's loss rises at step 1 and at
    no later step, its sharpness falls below 2/lr within 5 steps (the catapult), and it finishes
    100 steps below its initial loss, while lr = 0.04 stops on a non-finite loss within 10 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-wide layers: a second thread only adds synchronization
    try:
        _critical_relu_run()
    finally:
        torch.set_num_threads(threads)


def _critical_relu_run():
    x, y = gl.data.teacher_regression(256, 32, kind="sine", noise=0.1, seed=0)
    loss_fn = torch.nn.functional.mse_loss

    def network():
        return gl.models.exploding_mlp(depth=20, width=64, in_features=32, gain=1.0, seed=0)

    def sharpness(model):
        pair = gl.hessian.top_eigenvalue(lambda: loss_fn(model(x), y), model, tol=1e-4)
        assert pair.converged
        return pair.value

    net = network()
    with gl.GradientMonitor(net) as monitor:
        loss_fn(net(x), y).backward()
    per_layer = monitor.output_grad_norms[0]
    assert 0.5 < per_layer[0] / per_layer[-2] < 2
    lr = 0.004
    assert sharpness(net) > 2 / lr
    after = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the small rate must not stop on a NaN
        small = gl.fit(net, loss_fn, (x, y), torch.optim.SGD(net.parameters(), lr=lr), steps=100,
                       callback=lambda r: after.append(sharpness(r.model)) if r.step < 5 else None)
    assert small.loss[1] > small.loss[0] and np.all(np.diff(small.loss[1:]) < 0)
    assert min(after) < 2 / lr
    assert not small.stopped and small.loss[-1] < small.loss[0]
    net = network()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        large = gl.fit(net, loss_fn, (x, y), torch.optim.SGD(net.parameters(), lr=0.04), steps=100)
    assert large.diverged and large.stopped_at < 10
    assert np.isfinite(large.loss[: large.stopped_at]).all()
