"""Chapter-level measurements of "Learning rate, schedules and warm-up", repeated over several
initializations: the edge of stability of gradient descent, heavy ball, Nesterov and Adam, and
the catapult window of a two-layer linear network.

Each test builds what the chapter builds (the teacher regression task, the 3-layer tanh network,
full-batch training with `fit` and a sharpness measurement in its callback) and asserts the
chapter's claim with a stated tolerance; the seed-to-seed spread is printed with `-s`.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import gradlab as gl
from gradlab.hessian import adam_preconditioner, preconditioned_top_eigenvalue, top_eigenvalue

X, Y = gl.data.teacher_regression(128, 5, kind="sine", seed=0)
MSE = torch.nn.MSELoss()
BETA = 0.9


def _tanh_net(seed):
    with gl.utils.seeded(seed):
        return gl.mlp(3, 32, in_features=5, out_features=1, activation="tanh", init="xavier")


def _sharpness_along(net, optimizer, steps, every=10, adam=False):
    """The chapter's train_with_sharpness: full-batch fit, sharpness after every `every`-th step
    (10 Lanczos steps, warm-started); with `adam`, Adam's λ_max(P⁻¹H) (20 steps) instead."""
    closure = lambda: MSE(net(X), Y)  # noqa: E731
    values, vector = [], None

    def measure():
        nonlocal vector
        if adam:
            top = preconditioned_top_eigenvalue(closure, net, adam_preconditioner(optimizer), iters=20,
                                                tol=1e-3, init=vector)
        else:
            top = top_eigenvalue(closure, net, iters=10, tol=1e-3, init=vector)
        values.append(top.value)
        vector = top.vector

    def callback(record):
        if (record.step + 1) % every == 0 and not record.skipped:
            measure()

    if not adam:
        measure()  # at initialization (Adam's P needs a first step)
    history = gl.fit(net, MSE, (X, Y), optimizer, steps=steps, callback=callback)
    assert not history.stopped
    return np.array(values), history


def _report(name, values):
    values = np.asarray(values, dtype=float)
    sem = values.std(ddof=1) / math.sqrt(len(values))
    print(f"{name}: {np.round(values, 3).tolist()} mean {values.mean():.3f} ± {sem:.3f} (s.e.)")


# -- the edge of stability ------------------------------------------------------------------------


def test_gradient_descent_hovers_at_two_over_eta():
    """After first reaching 2/η, the mean sharpness is within 15% of 2/η (the chapter: 1.04)."""
    means = []
    for seed in range(3):
        net = _tanh_net(seed)
        s, _ = _sharpness_along(net, torch.optim.SGD(net.parameters(), lr=0.125), steps=400)
        assert s[0] < 16 and (s >= 16).any()
        means.append(s[np.argmax(s >= 16):].mean() / 16)
    _report("GD mean sharpness / (2/η) after reaching it", means)
    assert all(0.95 < m < 1.15 for m in means)


def test_heavy_ball_rises_to_its_own_threshold_far_above_two_over_eta():
    """Heavy ball (PyTorch SGD momentum 0.9): the largest sharpness is within [0.95, 1.2] times
    (2 + 2β)/η (the chapter: 1.05), which is 1.9 times plain gradient descent's 2/η."""
    largest = []
    eta = (2 + 2 * BETA) / 16
    for seed in range(3):
        net = _tanh_net(seed)
        s, _ = _sharpness_along(net, torch.optim.SGD(net.parameters(), lr=eta, momentum=BETA), steps=400)
        largest.append(s.max() / 16)
    _report("heavy ball largest sharpness / ((2 + 2β)/η)", largest)
    assert all(0.95 < v < 1.2 for v in largest)
    assert all(v * 16 * eta / 2 > 1.7 for v in largest)  # far above 2/η


def test_nesterov_crosses_its_threshold_and_falls_back():
    """Nesterov: the sharpness reaches (2 + 2β)/((1 + 2β)η), overshoots it by less than 50%
    (the chapter: 26%) and does not stay above it."""
    largest = []
    for seed in range(3):
        net = _tanh_net(seed)
        opt = torch.optim.SGD(net.parameters(), lr=(2 + 2 * BETA) / ((1 + 2 * BETA) * 16), momentum=BETA,
                              nesterov=True)
        s, _ = _sharpness_along(net, opt, steps=400)
        first = int(np.argmax(s >= 16))
        assert s[first] >= 16 and (s[first:] < 16).any()
        largest.append(s.max() / 16)
    _report("Nesterov largest sharpness / threshold", largest)
    assert all(1.0 <= v < 1.5 for v in largest)


def test_adam_trains_at_the_preconditioned_edge_not_at_two_over_eta():
    """Full-batch Adam, η = 0.01: λ_max(P⁻¹H) reaches (2 + 2β₁)/((1 - β₁)η) = 3800 and its mean
    from there is within 15% of it (the chapter: 0.94); λ_max(H) stays below 2/η / 3."""
    eta = 1e-2
    edge = (2 + 2 * BETA) / ((1 - BETA) * eta)
    means = []
    for seed in range(3):
        net = _tanh_net(seed)
        opt = torch.optim.Adam(net.parameters(), lr=eta)
        pre, _ = _sharpness_along(net, opt, steps=400, adam=True)
        assert pre[0] < 0.5 * edge and (pre >= edge).any()
        means.append(pre[np.argmax(pre >= edge):].mean() / edge)
        plain = top_eigenvalue(lambda net=net: MSE(net(X), Y), net, iters=50, tol=1e-4).value
        assert plain * eta / 2 < 1 / 3
    _report("Adam mean preconditioned sharpness / threshold", means)
    assert all(0.85 < m < 1.15 for m in means)


# -- the catapult ---------------------------------------------------------------------------------


def _whitened(x):
    centered = x - x.mean(0)
    chol = torch.linalg.cholesky(centered.T @ centered / len(x))
    return torch.linalg.solve_triangular(chol, centered.T, upper=False).T


X_WHITE = _whitened(X)


def _two_layer(seed, width=512):
    with gl.utils.seeded(seed):
        return gl.mlp(2, width, in_features=5, out_features=1, activation="linear", init="xavier")


def _lambda0(net):
    return top_eigenvalue(lambda: MSE(net(X_WHITE), Y), net, iters=100, tol=1e-6).value


def _gd(net, eta, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fit warns when it stops a divergent run
        return gl.fit(net, MSE, (X_WHITE, Y), torch.optim.SGD(net.parameters(), lr=eta), steps=steps)


def _catapult_limit(seed, width, steps=200, bisections=5, bracket=(3.8, 4.4)):
    """The chapter's criterion, bisected: the largest η λ₀ from which the loss after `steps` steps
    is below the initial loss, bracketed in `bracket` to ±0.01 (a limit outside the bracket would
    come out at one of its ends, and fail the test)."""
    lam = _lambda0(_two_layer(seed, width))
    low, high = bracket
    for _ in range(bisections):
        mid = (low + high) / 2
        hist = _gd(_two_layer(seed, width), mid / lam, steps)
        converged = hist.stopped_at is None and hist.loss[-1] < hist.loss[0]
        low, high = (mid, high) if converged else (low, mid)
    return (low + high) / 2


def test_catapult_window_ends_near_four_over_lambda0_and_closer_when_wider():
    """Proposition: the window ends at η λ₀ = 4 for the one-input model. For the whitened
    two-layer linear network the mean limit over initializations is within 0.15 of 4 at width 512
    (8 initializations; measured 4.10 ± 0.03) and within 0.05 at width 2048 (4 initializations;
    measured 4.01 ± 0.01), and the gap to 4 is smaller at the larger width: a finite-width
    effect. Each limit is bracketed to ±0.01, inside [3.8, 4.4] (measured: 4.00 to 4.22 at width
    512, 3.98 to 4.03 at 2048)."""
    gaps = {}
    for width, seeds, tolerance in ((512, range(8), 0.15), (2048, range(4), 0.05)):
        limits = [_catapult_limit(seed, width) for seed in seeds]
        _report(f"catapult limit η λ₀, width {width}", limits)
        assert all(3.81 < v < 4.39 for v in limits)  # inside the bracket
        gaps[width] = abs(np.mean(limits) - 4.0)
        assert gaps[width] < tolerance
    assert gaps[2048] < gaps[512]


def test_catapult_loss_rises_then_the_run_converges_below_two_over_eta():
    """At η λ₀ = 3 the loss first rises above its start, then converges to the least-squares
    optimum, and η λ_max ends below 2 (part 1 of the proposition)."""
    for seed in range(3):
        net = _two_layer(seed)
        eta = 3.0 / _lambda0(net)
        hist = _gd(net, eta, steps=100)
        assert hist.loss[:5].max() > 1.5 * hist.loss[0]
        end = _lambda0(net) * eta
        print(f"seed {seed}: peak / start {hist.loss.max() / hist.loss[0]:.2f}, η λ at the end {end:.3f}")
        assert end < 2.0
        # The network is linear: its best loss is that of least squares on [X, 1].
        design = torch.cat([X_WHITE, torch.ones(len(X), 1)], 1).double()
        residual = Y.double() - design @ torch.linalg.lstsq(design, Y.double()).solution
        assert hist.loss[-1] == pytest.approx(residual.pow(2).mean().item(), rel=1e-3)
