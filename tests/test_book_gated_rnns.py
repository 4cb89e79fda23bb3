"""Chapter-level measurements of "Gated recurrent networks": the growth factor per step of the
gradient across time at initialization, against the forget-gate bias and the carousel of the
chapter's corollary, the explosion of the cell path for large biases and recurrent weights, and
the growth of the cell."""

import math

import numpy as np
import pytest
import torch

import gradlab as gl

N_HIDDEN, T_LAG, SEEDS = 32, 60, (0, 1, 2)


@pytest.fixture(scope="module")
def x_lag():
    return gl.data.adding_problem(2, T_LAG, seed=1)[0]


def _rate(norms, start=10, stop=50):
    return (norms[..., stop] / norms[..., start]) ** (1 / (stop - start))


def _rates(make, x, path, seeds=SEEDS):
    """The mean rate over the sequences, for each seed."""
    out = []
    for seed in seeds:
        with gl.utils.seeded(seed):
            out.append(float(_rate(gl.models.state_jacobian_norms(make(), x)[path]).mean()))
    return np.array(out)


def _lstm(b=None, s=1.0):
    def make():
        model = gl.models.LSTM(2, N_HIDDEN, forget_bias=b)
        with torch.no_grad():
            model.rnn.weight_hh_l0.mul_(s)
        return model
    return make


def _se(values):
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _carousel_rate(model, x):
    """The rate of max_j prod f_k,j from the forget gates seen along the run."""
    rnn, n = model.rnn, model.hidden_size
    h = c = torch.zeros(x.shape[0], n)
    gates = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            a = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
            gates.append(torch.sigmoid(a[:, n : 2 * n]).double())
            h, c = model.cell((h, c), x[:, t])
    products = torch.stack(gates, 1).flip(1).log().cumsum(1).exp().amax(-1)
    return float(_rate(torch.cat([torch.ones(x.shape[0], 1, dtype=torch.float64), products], 1)).mean())


def test_pytorch_init_lstm_vanishes_at_least_as_fast_as_the_vanilla_network(x_lag):
    """The chapter: at PyTorch's initialization the LSTM's cell path shrinks faster per step
    than the vanilla network's state (three seeds; the gap exceeds 2 standard errors)."""
    lstm = _rates(_lstm(), x_lag, "c")
    vanilla = _rates(lambda: gl.models.VanillaRNN(2, N_HIDDEN), x_lag, "h")
    gap = vanilla.mean() - lstm.mean()
    assert gap > 2 * math.hypot(_se(lstm), _se(vanilla)), (lstm, vanilla)


@pytest.mark.parametrize("b", [0.0, 1.0, 2.0, 3.0])
def test_forget_bias_sets_the_carousel_and_the_paths_through_h_add_gain(x_lag, b):
    """The carousel computed from the gates lies above sigma(b_f) by less than 0.05 (the inputs
    move each unit's gate a little and the norm follows the largest); the measured cell path
    lies above the carousel by more than 2 standard errors over the seeds."""
    sigma = 1 / (1 + math.exp(-b))
    carousel = []
    for seed in SEEDS:
        with gl.utils.seeded(seed):
            carousel.append(_carousel_rate(_lstm(b)(), x_lag))
    carousel = np.array(carousel)
    assert np.all((carousel > sigma) & (carousel < sigma + 0.05)), (carousel, sigma)
    measured = _rates(_lstm(b), x_lag, "c")
    assert measured.mean() - carousel.mean() > 2 * _se(measured - carousel), (measured, carousel)


def test_cell_path_decays_at_bias_one_and_grows_at_bias_three(x_lag):
    one, three = _rates(_lstm(1.0), x_lag, "c"), _rates(_lstm(3.0), x_lag, "c")
    assert one.mean() + 2 * _se(one) < 1 < three.mean() - 2 * _se(three), (one, three)


def test_larger_bias_and_recurrent_weights_raise_the_rate(x_lag):
    """The grid of the chapter (two seeds): the rate rises with b_f at every scale s and with s
    at every bias; b_f = 1 grows at s = 4."""
    grid = {(b, s): _rates(_lstm(b, s), x_lag, "c", seeds=SEEDS[:2]).mean()
            for b in (1.0, 3.0, 5.0) for s in (1.0, 2.0, 4.0)}
    for s in (1.0, 2.0, 4.0):
        assert grid[1.0, s] < grid[3.0, s] < grid[5.0, s], grid
    for b in (1.0, 3.0, 5.0):
        assert grid[b, 1.0] < grid[b, 2.0] < grid[b, 4.0], grid
    assert grid[1.0, 4.0] > 1


def test_loss_gradient_at_initialization_grows_with_the_forget_bias():
    x, y = gl.data.adding_problem(256, 30, seed=5)
    norms = {}
    for b in (1.0, 5.0):
        norms[b] = []
        for seed in SEEDS:
            with gl.utils.seeded(seed):
                model = gl.models.LSTM(2, N_HIDDEN, forget_bias=b)
            torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
            norms[b].append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
    assert min(norms[5.0]) > 2 * max(norms[1.0]), norms


def test_a_large_forget_bias_lets_the_cell_grow_and_saturate():
    x, _ = gl.data.adding_problem(64, 200, seed=2)
    sizes, slopes = {}, {}
    for b in (1.0, 5.0):
        with gl.utils.seeded(0):
            model = gl.models.LSTM(2, N_HIDDEN, forget_bias=b)
        h = c = torch.zeros(64, N_HIDDEN)
        sizes[b] = []
        with torch.no_grad():
            for t in range(200):
                h, c = model.cell((h, c), x[:, t])
                sizes[b].append(float(c.abs().mean()))
        slopes[b] = float((1 - torch.tanh(c) ** 2).mean())
    assert sizes[5.0][199] > 10 * sizes[5.0][9] and slopes[5.0] < 0.2
    assert abs(sizes[1.0][199] / sizes[1.0][9] - 1) < 0.2 and slopes[1.0] > 0.8


def test_adding_problem_vanilla_stays_at_the_baseline_and_keeps_vanishing(x_lag):
    """The chapter's training run, seed 0: Adam at 0.02, clipping at 1, 64 fresh sequences of 30
    steps per step. The vanilla network ends (400 steps) within 15% of the baseline 1/6 on 2000
    validation sequences and, after training, its gradient across time still shrinks by less
    than 0.95 per step (lags 10 to 50); the LSTM with forget bias 1 goes below 0.02."""
    x_val, y_val = gl.data.adding_problem(2000, 30, seed=10**6)

    def mse(out, y):
        return torch.nn.functional.mse_loss(out.squeeze(-1), y)

    def train(make, steps):
        with gl.utils.seeded(0):
            model = make()
        losses = []

        def stop(record):
            losses.append(record.loss)
            if len(losses) >= 20 and np.mean(losses[-20:]) < 0.01:
                return "solved"

        gl.fit(model, mse, lambda step: gl.data.adding_problem(64, 30, seed=step),
               torch.optim.Adam(model.parameters(), lr=0.02), steps=steps, clip=1.0, callback=stop)
        with torch.no_grad():
            return model, float(mse(model(x_val), y_val))

    vanilla, vanilla_val = train(lambda: gl.models.VanillaRNN(2, N_HIDDEN), 400)
    assert abs(6 * vanilla_val - 1) < 0.15
    assert float(_rate(gl.models.state_jacobian_norms(vanilla, x_lag)["h"]).max()) < 0.95
    _, lstm_val = train(lambda: gl.models.LSTM(2, N_HIDDEN, forget_bias=1.0), 400)
    assert lstm_val < 0.02
