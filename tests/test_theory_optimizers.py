"""Tests for gradlab.theory.optimizers: each closed form against torch.optim.Adam (or, for the
frozen-preconditioner threshold, against the iteration it describes), and bad input."""

import math

import numpy as np
import pytest
import torch

from gradlab.theory import (
    adam_noise_step_mean,
    adam_noise_step_rms,
    adam_spike_ratio,
    adam_spike_recovery,
    adam_stability_threshold,
    adam_step_bound,
)

DT = torch.float64


def _adam_steps(grads, betas=(0.9, 0.999), amsgrad=False) -> torch.Tensor:
    """Feed the rows of ``grads`` (T x n) to torch's Adam (lr 1, eps 0, float64); return the steps."""
    p = torch.nn.Parameter(torch.zeros(grads.shape[1], dtype=DT))
    opt = torch.optim.Adam([p], lr=1.0, betas=betas, eps=0.0, amsgrad=amsgrad)
    steps = torch.empty_like(grads)
    for t in range(len(grads)):
        before = p.detach().clone()
        p.grad = grads[t].clone()
        opt.step()
        steps[t] = p.detach() - before
    return steps


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99), (0.95, 0.99)])
@pytest.mark.parametrize("T", [1, 7, 60])
def test_step_bound_is_attained_by_geometric_growth(betas, T):
    b1, b2 = betas
    k = torch.arange(T, dtype=DT)
    # beta1 = 0: growth "by beta2 / 0", one gradient after (almost) nothing; 1e-150 keeps v > 0.
    grads = (b1 / b2) ** (T - 1 - k) if b1 > 0 else torch.full((T,), 1e-150, dtype=DT)
    grads[-1] = 1.0
    last = float(_adam_steps(grads.unsqueeze(1), betas)[-1].abs())
    assert last == pytest.approx(adam_step_bound(T, b1, b2), rel=1e-10)


def test_step_bound_holds_for_random_sequences_and_grows_to_c_infinity():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(300, 64, generator=g, dtype=DT) * torch.logspace(-3, 3, 64, dtype=DT)
    steps = _adam_steps(grads).abs()
    bounds = torch.tensor([adam_step_bound(t) for t in range(1, 301)], dtype=DT)
    assert (steps <= bounds[:, None] * (1 + 1e-12)).all()
    c_inf = adam_step_bound(math.inf)
    assert c_inf == pytest.approx(0.1 / math.sqrt(0.001 * (1 - 0.81 / 0.999)))
    assert adam_step_bound(10**6) == pytest.approx(c_inf, rel=1e-9)
    assert all(adam_step_bound(t) < adam_step_bound(t + 1) for t in range(1, 200))


def test_step_bound_without_a_finite_limit():
    # gamma = beta1² / beta2 = 1 exactly: the history factor is sqrt(t); still attained by
    # gradients that change by beta2 / beta1 per step (here they halve).
    b1, b2 = 0.5, 0.25
    T = 40
    grads = (b1 / b2) ** (T - 1 - torch.arange(T, dtype=DT))
    last = float(_adam_steps(grads.unsqueeze(1), (b1, b2))[-1].abs())
    assert last == pytest.approx(adam_step_bound(T, b1, b2), rel=1e-10)
    assert adam_step_bound(math.inf, b1, b2) == math.inf
    assert adam_step_bound(math.inf, 0.9, 0.5) == math.inf  # gamma > 1


def _noise_measurement(seed, ratios, n_each=500, T=1000, burn_in=300):
    """Late RMS and mean of torch Adam's step / lr for Gaussian gradients of mean r, sd 1."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor(ratios, dtype=DT).repeat_interleave(n_each)
    noise = torch.randn(T, len(mu), generator=g, dtype=DT)
    steps = -_adam_steps(mu + noise)[burn_in:]
    per_ratio = steps.view(T - burn_in, len(ratios), n_each)
    return (per_ratio**2).mean(dim=(0, 2)).sqrt(), per_ratio.mean(dim=(0, 2))


def test_noise_step_rms_and_mean_match_torch_adam_over_seeds():
    """The chapter's measurement, on 4 seeds: the RMS step agrees with the beta2 -> 1 limit
    within 1% (it neglects the fluctuations of v-hat; measured about 0.3%), with a standard
    error over seeds below 0.3%; the mean step within 0.01 learning rates."""
    ratios = [0.0, 0.5, 1.0, 4.0]
    runs = [_noise_measurement(seed, ratios) for seed in range(4)]
    rms = torch.stack([r for r, _ in runs])
    mean = torch.stack([m for _, m in runs])
    rms_mean, rms_se = rms.mean(0), rms.std(0) / 2
    for k, r in enumerate(ratios):
        predicted = adam_noise_step_rms(r, 1.0)
        assert float(rms_se[k]) < 0.003 * predicted
        assert float(rms_mean[k]) == pytest.approx(predicted, rel=0.01), (r, float(rms_se[k]))
        assert float(mean[:, k].mean()) == pytest.approx(adam_noise_step_mean(r, 1.0), abs=0.01)
    assert adam_noise_step_rms(0.0, 1.0) == pytest.approx(math.sqrt(0.1 / 1.9))


def test_noise_step_closed_form_limits():
    assert adam_noise_step_rms(3.0, 0.0) == 1.0 and adam_noise_step_mean(-3.0, 0.0) == -1.0
    assert adam_noise_step_rms(0.0, 2.0, beta1=0.0) == 1.0  # no averaging: every step is +-1
    assert adam_noise_step_rms(1.0, 1.0) > adam_noise_step_mean(1.0, 1.0)


@pytest.mark.parametrize("G, s", [(100.0, 20), (10.0, 1), (1000.0, 300), (0.5, 5)])
def test_spike_ratio_matches_torch_adam(G, s):
    T = s + 400
    grads = torch.full((T, 1), -0.3, dtype=DT)
    grads[s - 1] *= G  # the spike at Adam's step s (steps counted from 1)
    spiked = _adam_steps(grads)[:, 0]
    plain = _adam_steps(torch.full((T, 1), -0.3, dtype=DT))[:, 0]
    for tau in (0, 1, 5, 50, 399):
        n = s + tau
        assert float(spiked[n - 1] / plain[n - 1]) == pytest.approx(
            adam_spike_ratio(tau, n, G), rel=1e-10)


def test_spike_recovery_matches_torch_adam_late_in_training():
    # Spike at step 10,000 (beta2^n < 5e-5): the step is back above half after tau* steps.
    s, G = 10_000, 100.0
    grads = torch.ones(s + 1400, 1, dtype=DT)
    grads[s - 1] = G
    ratio = -_adam_steps(grads)[s - 1:, 0]  # ratio[tau]: the plain step is -1 here
    below = np.flatnonzero(ratio.numpy() < 0.5)
    tau_star = adam_spike_recovery(G)
    assert below[-1] + 1 == pytest.approx(tau_star, abs=2)
    r = (1 + (G**2 - 1) * 0.001 * 0.999**tau_star) ** -0.5
    assert r == pytest.approx(0.5)
    assert adam_spike_recovery(10.0) == 0.0  # (G² - 1)(1 - beta2) = 0.099 < 3


def _frozen_adam_diverges(H, P, lr, beta1=0.9, steps=4000) -> bool:
    """Adam with its preconditioner P frozen, on 0.5 x^T H x: x <- x - lr P^-1 m."""
    x = np.ones(len(H))
    m = np.zeros(len(H))
    for _ in range(steps):
        m = beta1 * m + (1 - beta1) * (H @ x)
        x = x - lr * m / P
        if np.linalg.norm(x) > 1e6:  # diverged; stop before it overflows
            return True
    return not np.linalg.norm(x) < 1.0


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9, 0.99])
def test_stability_threshold_separates_convergence_from_divergence(beta1):
    g = np.random.default_rng(1)
    A = g.standard_normal((4, 4))
    H = A @ A.T + 0.1 * np.eye(4)
    P = np.exp(g.standard_normal(4))
    top = float(np.linalg.eigvals(H / P[:, None]).real.max())  # lambda_max(P^-1 H)
    lr_edge = adam_stability_threshold(1.0, beta1) / top  # lr at which lambda_max = threshold
    assert not _frozen_adam_diverges(H, P, 0.98 * lr_edge, beta1)
    assert _frozen_adam_diverges(H, P, 1.02 * lr_edge, beta1)
    assert adam_stability_threshold(1e-3) == pytest.approx(38_000)


@pytest.mark.parametrize("call, name", [
    (lambda: adam_step_bound(0), "t"),
    (lambda: adam_step_bound(2.5), "t"),
    (lambda: adam_step_bound(3, beta1=1.0), "beta1"),
    (lambda: adam_step_bound(3, beta2=0.0), "beta2"),
    (lambda: adam_step_bound(3, beta2=1.0), "beta2"),
    (lambda: adam_noise_step_rms(0.0, 0.0), "mu and sigma"),
    (lambda: adam_noise_step_rms(1.0, -1.0), "sigma"),
    (lambda: adam_noise_step_rms(1.0, 1.0, beta1=1.0), "beta1"),
    (lambda: adam_noise_step_mean(math.nan, 1.0), "mu"),
    (lambda: adam_spike_ratio(-1, 5, 10.0), "tau"),
    (lambda: adam_spike_ratio(5, 5, 10.0), "n must be > tau"),
    (lambda: adam_spike_ratio(1, 5, -2.0), "G"),
    (lambda: adam_spike_recovery(10.0, beta2=1.5), "beta2"),
    (lambda: adam_stability_threshold(0.0), "lr"),
    (lambda: adam_stability_threshold(1e-3, beta1=-0.1), "beta1"),
    (lambda: adam_step_bound("3"), "t"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
