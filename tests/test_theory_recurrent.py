"""Tests for gradlab.theory.recurrent: BPTT Jacobians against autograd, the Pascanu bound,
the single-unit cliff and its saddle-node bifurcation against autograd and simulation."""

import math

import pytest
import torch

from gradlab.activations import ACTIVATIONS
from gradlab.models import VanillaRNN, single_unit_last_state
from gradlab.theory import (
    bptt_jacobian,
    bptt_jacobian_norms,
    cliff_bias,
    cliff_gradient_norm,
    dominant_mode_norms,
    matrix_power_norms,
    max_slope,
    pascanu_bound,
    saddle_node_bias,
    saddle_node_offset,
    spectral_norm,
    spectral_radius,
)

NAMES = list(ACTIVATIONS)


def _recurrence(activation, n=5, steps=12, scale=1.0, seed=0):
    """A random recurrence in float64, differentiable through every state: returns W, the
    preactivations a_1..a_T (rows) and the list of states h_0..h_T."""
    phi = ACTIVATIONS[activation].fn
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * scale / n**0.5
    drives = 0.5 * torch.randn(steps, n, generator=g, dtype=torch.float64)
    hs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(True)]
    preacts = []
    for c in drives:
        a = W @ hs[-1] + c
        preacts.append(a)
        hs.append(phi(a))
    return W, torch.stack(preacts).detach(), hs


def _autograd_jacobians(hs):
    """d h_T / d h_t for every t = 0..T-1, by one backward pass per output unit."""
    n = hs[-1].shape[0]
    rows = [torch.autograd.grad(hs[-1][i], hs[:-1], retain_graph=True) for i in range(n)]
    return [torch.stack([r[t] for r in rows]) for t in range(len(hs) - 1)]


@pytest.mark.parametrize("activation", NAMES)
def test_bptt_jacobian_matches_autograd(activation):
    for seed in range(3):
        W, preacts, hs = _recurrence(activation, seed=seed, scale=1.5)
        measured = _autograd_jacobians(hs)
        T = preacts.shape[0]
        for t in range(T):
            torch.testing.assert_close(
                bptt_jacobian(W, preacts, activation, t), measured[t], rtol=1e-10, atol=1e-12
            )
        torch.testing.assert_close(bptt_jacobian(W, preacts, activation, T),
                                   torch.eye(W.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("activation", NAMES)
def test_bptt_jacobian_norms_match_autograd(activation):
    W, preacts, hs = _recurrence(activation, n=6, steps=30, scale=1.2, seed=1)
    measured = _autograd_jacobians(hs)
    norms = bptt_jacobian_norms(W, preacts, activation)
    assert norms.shape == (31,) and norms[0] == 1.0
    expected = torch.stack([torch.linalg.matrix_norm(j, ord=2) for j in measured[::-1]])
    torch.testing.assert_close(norms[1:], expected, rtol=1e-9, atol=1e-14)


def _masked_recurrence(activation, n=5, steps=10, p=0.4, seed=0):
    """As _recurrence, with dropout multipliers on h_{t-1}: a_t = W (d_t * h_{t-1}) + c_t."""
    phi = ACTIVATIONS[activation].fn
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * 1.3 / n**0.5
    drives = 0.5 * torch.randn(steps, n, generator=g, dtype=torch.float64)
    masks = torch.empty(steps, n, dtype=torch.float64).bernoulli_(1 - p, generator=g) / (1 - p)
    hs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(True)]
    preacts = []
    for c, d in zip(drives, masks, strict=True):
        a = W @ (d * hs[-1]) + c
        preacts.append(a)
        hs.append(phi(a))
    return W, torch.stack(preacts).detach(), masks, hs


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_bptt_jacobian_with_masks_matches_autograd(activation):
    W, preacts, masks, hs = _masked_recurrence(activation)
    measured = _autograd_jacobians(hs)
    for t in range(preacts.shape[0]):
        torch.testing.assert_close(bptt_jacobian(W, preacts, activation, t, masks=masks), measured[t],
                                   rtol=1e-10, atol=1e-12)
    expected = torch.stack([torch.linalg.matrix_norm(j, ord=2) for j in measured[::-1]])
    torch.testing.assert_close(bptt_jacobian_norms(W, preacts, activation, masks)[1:], expected,
                               rtol=1e-9, atol=1e-14)
    ones = torch.ones_like(masks)
    torch.testing.assert_close(bptt_jacobian_norms(W, preacts, activation, ones),
                               bptt_jacobian_norms(W, preacts, activation))


def test_bptt_jacobian_norms_linear_are_matrix_powers():
    W, preacts, _ = _recurrence("linear", n=7, steps=25, scale=1.1, seed=2)
    torch.testing.assert_close(bptt_jacobian_norms(W, preacts, "linear"), matrix_power_norms(W, 25))


def test_linear_growth_rate_is_spectral_radius():
    # Gelfand: ||W^k||^(1/k) -> rho(W). The ratio over lags 100..200 is within 1% of rho for a
    # 32 x 32 Gaussian W (the next eigenvalue modulus is well below rho at this size).
    torch.manual_seed(0)
    for rho in (0.8, 1.0, 1.2):
        model = VanillaRNN(1, 32, activation="linear", spectral_radius=rho)
        W = model.W.detach().double()
        norms = bptt_jacobian_norms(W, torch.zeros(200, 32), "linear")
        rate = float(norms[200] / norms[100]) ** (1 / 100)
        assert abs(rate - spectral_radius(W)) < 0.01 * rho


@pytest.mark.parametrize("activation", NAMES)
def test_pascanu_bound_holds(activation):
    for seed in range(4):
        W, preacts, _ = _recurrence(activation, n=6, steps=40, scale=0.5 + seed, seed=seed)
        norms = bptt_jacobian_norms(W, preacts, activation)
        for lag in range(41):
            assert norms[lag] <= pascanu_bound(W, activation, lag) * (1 + 1e-9)
        gamma_lambda = max_slope(activation) * spectral_norm(W)
        assert pascanu_bound(W, activation, 7) == gamma_lambda**7


def test_pascanu_bound_is_tight_for_orthogonal_linear():
    # A scaled orthogonal W with linear activation meets the bound with equality.
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    norms = bptt_jacobian_norms(1.1 * q, torch.zeros(20, 8), "linear")
    bound = torch.tensor([pascanu_bound(1.1 * q, "linear", k) for k in range(21)], dtype=torch.float64)
    torch.testing.assert_close(norms, bound, rtol=1e-10, atol=0)


def test_vanishing_when_gamma_lambda_below_one():
    # The sufficient condition: lambda_1 < 1/gamma forces geometric decay at least that fast.
    W, preacts, _ = _recurrence("sigmoid", n=6, steps=60, scale=2.0, seed=3)
    gl1 = max_slope("sigmoid") * spectral_norm(W)
    assert spectral_norm(W) > 1 and gl1 < 1  # sigmoid: gamma = 1/4 allows lambda_1 up to 4
    norms = bptt_jacobian_norms(W, preacts, "sigmoid")
    assert norms[60] <= gl1**60
    assert norms[60] < 1e-6
    assert torch.all(norms[1:] <= norms[:-1] * (1 + 1e-12))  # each factor has norm < 1


def _single_unit(w, b, h0, steps):
    h = torch.as_tensor(h0, dtype=torch.float64)
    for _ in range(steps):
        h = torch.tanh(w * h + b)
    return h


def test_cliff_bias_is_an_unstable_fixed_point():
    # On the wall h_t stays at h0; 1e-3 to either side it leaves for the two stable fixed points.
    # Tolerance: rounding (1e-16) grows like s^T = 1.5^50 ~ 6e8 over the run.
    h0, T = 0.5, 50
    for w in (1.5, 2.0):  # s = w (1 - h0^2) <= 1.5; at w = 3 rounding would grow to O(1)
        b = cliff_bias(w, h0)
        assert abs(float(_single_unit(w, b, h0, T)) - h0) < 1e-6
        assert float(_single_unit(w, b + 1e-3, h0, T)) > h0 + 0.1  # upper fixed point
        assert float(_single_unit(w, b - 1e-3, h0, T)) < -0.5  # lower fixed point


def test_cliff_gradient_norm_matches_autograd():
    for w, h0, T in ((1.5, 0.5, 50), (2.0, 0.5, 50), (1.0, 0.3, 20), (4 / 3, 0.5, 30), (0.8, -0.2, 10)):
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(cliff_bias(w, h0), dtype=torch.float64, requires_grad=True)
        gw, gb = torch.autograd.grad(_single_unit(wt, bt, h0, T), [wt, bt])
        measured = math.hypot(float(gw), float(gb))
        assert math.isclose(cliff_gradient_norm(w, h0, T), measured, rel_tol=1e-6)


def test_cliff_sensitivities_follow_the_documented_recurrences():
    # d_t = c (1 + w d_{t-1}) for b and e_t = c (h0 + w e_{t-1}) for w, so e_t = h0 d_t:
    # each step's autograd gradient against the recurrences run by hand.
    w, h0 = 1.7, 0.4
    c = 1 - h0 * h0
    d = e = 0.0
    for T in range(1, 25):
        d, e = c * (1 + w * d), c * (h0 + w * e)
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(cliff_bias(w, h0), dtype=torch.float64, requires_grad=True)
        gw, gb = torch.autograd.grad(_single_unit(wt, bt, h0, T), [wt, bt])
        assert math.isclose(float(gb), d, rel_tol=1e-9) and math.isclose(float(gw), e, rel_tol=1e-9)
        assert math.isclose(e, h0 * d, rel_tol=1e-12)
        assert math.isclose(cliff_gradient_norm(w, h0, T), math.hypot(d, e), rel_tol=1e-12)


def test_dominant_mode_norms_closed_forms():
    # normal: rho^k exactly; a 2 x 2 triangular matrix: the projector onto lambda = 1 along the
    # eigenvector of 1/2 is [[1, 2a], [0, 0]], of norm sqrt(1 + 4a²), for every k
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    torch.testing.assert_close(dominant_mode_norms(0.9 * Q, 20), 0.9 ** torch.arange(21, dtype=torch.float64))
    a = 3.0
    A = torch.tensor([[1.0, a], [0.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(dominant_mode_norms(A, 10), torch.full((11,), math.sqrt(1 + 4 * a * a),
                                                                      dtype=torch.float64))
    assert math.isclose(float(matrix_power_norms(A, 60)[-1]), math.sqrt(1 + 4 * a * a), rel_tol=1e-12)


def test_power_norms_approach_the_dominant_modes_geometrically():
    """For a random non-normal matrix the relative gap between ||W^k|| and the dominant modes'
    norm shrinks like (|lambda_next| / rho)^k: the offset of ||W^k|| above rho^k is set by the
    conditioning of the dominant eigenvectors."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(40, 40, generator=g, dtype=torch.float64) / 40**0.5
    W = W / spectral_radius(W)
    moduli = torch.linalg.eigvals(W).abs().sort(descending=True).values
    second = float(moduli[moduli < 1 - 1e-6][0])
    exact, modes = matrix_power_norms(W, 300), dominant_mode_norms(W, 300)
    gap = ((exact - modes).abs() / modes)
    for k in (100, 200, 300):
        assert float(gap[k]) < 5 * second**k * float(modes[k]), (k, float(gap[k]), second**k)
    assert float(gap[300]) < 1e-3


def _fixed_points(w, b, grid=200_001):
    """Sign changes of tanh(w h + b) - h on a fine grid of h in (-1, 1)."""
    h = torch.linspace(-0.999999, 0.999999, grid, dtype=torch.float64)
    excess = torch.tanh(w * h + b) - h
    return int((torch.sign(excess[1:]) != torch.sign(excess[:-1])).sum())


def test_saddle_node_bias_is_where_two_fixed_points_merge():
    for w in (1.1, 1.5, 3.0):
        b = saddle_node_bias(w)
        h = math.sqrt(1 - 1 / w)
        assert math.isclose(math.tanh(w * h + b), h, rel_tol=1e-12)  # h_sn is a fixed point ...
        assert math.isclose(w * (1 - h * h), 1.0, rel_tol=1e-12)  # ... with slope exactly 1
        assert _fixed_points(w, b + 1e-3) == 3
        assert _fixed_points(w, b - 1e-3) == 1
        assert _fixed_points(w, -b - 1e-3) == 3  # the mirror image at -b_sn
        assert _fixed_points(w, -b + 1e-3) == 1


def _jump(w, steps, h0=0.5):
    """The bias where h_T crosses 0 below saddle_node_bias(w) (h_0 = 0.5 > h_sn), by bisection
    in plain Python, and dh_T/db there by the forward recurrence d_t = (1 - h_t²)(w d_{t-1} + 1)."""
    def final(b):
        h = h0
        for _ in range(steps):
            h = math.tanh(w * h + b)
        return h

    lo, hi = saddle_node_bias(w) - 1.0, saddle_node_bias(w)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if final(mid) > 0 else (mid, hi)
    b = 0.5 * (lo + hi)
    h, d = h0, 0.0
    for _ in range(steps):
        h = math.tanh(w * h + b)
        d = (1 - h * h) * (w * d + 1)
    return b, d


def test_saddle_node_offset_and_the_cubic_growth_of_the_gradient():
    """h_0 = 0.5 > h_sn for w = 1.2, so h_T jumps where the orbit needs T steps to pass the
    vanished fixed point: b_sn - b_T -> pi² / (h_sn T²) as T grows (measured: ratio 0.505 at
    T = 50, 0.944 at 800, 0.986 at 3200; the ratio is about (T / (T + T_0))², since the orbit
    needs T_0 ~ 23 steps fewer than tau: see the next test). The gradient there grows like T³
    (local exponent 2.97 between T = 1600 and 3200), not like s^T."""
    w = 1.2
    ratios, grads = [], []
    for steps in (800, 1600, 3200):
        b, d = _jump(w, steps)
        ratios.append((saddle_node_bias(w) - b) / saddle_node_offset(w, steps))
        grads.append(d)
    assert ratios[0] < ratios[1] < ratios[2] < 1.0
    assert abs(ratios[2] - 1) < 0.03
    exponent = math.log(grads[2] / grads[1]) / math.log(2)
    assert 2.85 < exponent < 3.05, exponent


def test_saddle_node_orbit_needs_a_fixed_number_of_steps_fewer_than_tau():
    """From h_0 = 0.5 at w = 1.2 (h_sn = 0.408) and b = b_sn - eps, the orbit crosses 0 after a
    number of steps N(eps) that falls short of tau = pi / sqrt(h_sn eps) by a constant T_0: tau
    integrates the bottleneck's parabola over the whole line, while the orbit starts 0.09 above
    h_sn and is read at 0. Measured: tau - N = 22.7, 22.8, 22.9 for eps = 1e-4, 1e-5, 1e-6, and
    the jump bias at T = 1600 gives T_0 = T (1 / sqrt(ratio) - 1) = 23.4; the chapter states both."""
    w, h0 = 1.2, 0.5
    h_sn, b_sn = math.sqrt(1 - 1 / w), saddle_node_bias(w)
    shortfalls = []
    for eps in (1e-4, 1e-5, 1e-6):
        h, steps = h0, 0
        while h > 0:
            h = math.tanh(w * h + b_sn - eps)
            steps += 1
        shortfalls.append(math.pi / math.sqrt(h_sn * eps) - steps)
    assert all(21.0 < d < 24.0 for d in shortfalls), shortfalls
    assert max(shortfalls) - min(shortfalls) < 1.0, shortfalls
    b, _ = _jump(w, 1600)
    ratio = (b_sn - b) / saddle_node_offset(w, 1600)
    t0 = 1600 * (1 / math.sqrt(ratio) - 1)
    assert abs(t0 - shortfalls[-1]) < 1.5, (t0, shortfalls)


def test_saddle_node_jump_matches_autograd_of_the_shared_model():
    """The same gradient by autograd through gradlab.models.single_unit_last_state."""
    b, d = _jump(1.2, 50)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(single_unit_last_state(1.2, bt), bt)
    assert math.isclose(float(g), d, rel_tol=1e-9)


W3 = torch.eye(3)
BAD_INPUTS = [
    (ValueError, "W", lambda: bptt_jacobian_norms(torch.ones(3, 4), torch.zeros(5, 3), "tanh")),
    (ValueError, "preacts", lambda: bptt_jacobian_norms(W3, torch.zeros(5, 4), "tanh")),
    (ValueError, "preacts", lambda: bptt_jacobian(W3, torch.zeros(5), "tanh")),
    (TypeError, "W", lambda: bptt_jacobian([[1.0]], torch.zeros(5, 1), "tanh")),
    (ValueError, "activation", lambda: bptt_jacobian_norms(W3, torch.zeros(5, 3), "softplus")),
    (ValueError, "activation", lambda: bptt_jacobian(W3, torch.zeros(5, 3), "swish")),
    (ValueError, "t", lambda: bptt_jacobian(W3, torch.zeros(5, 3), "tanh", t=6)),
    (TypeError, "t", lambda: bptt_jacobian(W3, torch.zeros(5, 3), "tanh", t=1.0)),
    (ValueError, "lag", lambda: pascanu_bound(W3, "tanh", -1)),
    (ValueError, "W", lambda: pascanu_bound(torch.ones(2, 3), "tanh", 2)),
    (ValueError, "activation", lambda: pascanu_bound(W3, "softplus", 2)),
    (ValueError, "h0", lambda: cliff_bias(2.0, 1.0)),
    (TypeError, "w", lambda: cliff_bias("2", 0.5)),
    (ValueError, "steps", lambda: cliff_gradient_norm(2.0, 0.5, -1)),
    (ValueError, "h0", lambda: cliff_gradient_norm(2.0, -1.5, 10)),
    (ValueError, "W", lambda: dominant_mode_norms(torch.ones(2, 3), 3)),
    (ValueError, "max_power", lambda: dominant_mode_norms(W3, -1)),
    (ValueError, "rtol", lambda: dominant_mode_norms(W3, 2, rtol=-0.1)),
    (ValueError, "w", lambda: saddle_node_bias(1.0)),
    (TypeError, "w", lambda: saddle_node_bias("2")),
    (ValueError, "w", lambda: saddle_node_offset(0.5, 10)),
    (ValueError, "masks", lambda: bptt_jacobian_norms(W3, torch.zeros(4, 3), "tanh", torch.ones(4, 2))),
    (ValueError, "masks", lambda: bptt_jacobian(W3, torch.zeros(4, 3), "tanh", 0, torch.ones(3))),
    (TypeError, "masks", lambda: bptt_jacobian_norms(W3, torch.zeros(4, 3), "tanh", [[1.0] * 3] * 4)),
    (ValueError, "steps", lambda: saddle_node_offset(2.0, 0)),
]


@pytest.mark.parametrize("error, name, call", BAD_INPUTS)
def test_bad_inputs_raise_and_name_the_argument(error, name, call):
    with pytest.raises(error, match=name):
        call()
