"""Tests for gradlab.theory."""

import math

# ---------------------------------------------------------------------------------------------
# Chapter 1-2: Jacobians, slopes, spectral bounds, growth rates (compared with measurements)
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------

_CH12_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "gelu")


def _ch12_torch_activation(name):
    import torch

    return {
        "linear": lambda t: t,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": torch.nn.functional.gelu,
    }[name]


def test_layer_jacobians_and_product_equal_autograd_of_an_mlp():
    import torch

    from gradlab import theory
    from gradlab.models import mlp

    for k, activation in enumerate(_CH12_ACTIVATIONS):
        torch.manual_seed(k)
        model = mlp(4, 6, in_features=3, out_features=2, activation=activation,
                    bias_std=0.5).double()
        x = torch.randn(3, dtype=torch.float64)
        weights = [lin.weight for lin in model.linears]
        biases = [lin.bias for lin in model.linears]
        jacobians = theory.layer_jacobians(weights, biases, x, activation)
        assert [tuple(j.shape) for j in jacobians] == [(6, 3), (6, 6), (6, 6), (2, 6)]
        expected = torch.autograd.functional.jacobian(model, x)
        torch.testing.assert_close(theory.jacobian_product(jacobians), expected,
                                   rtol=1e-10, atol=1e-12)
        # each factor is the Jacobian of one block, at the hidden state that block sees
        h = x
        for block, jac in zip(model, jacobians, strict=True):
            torch.testing.assert_close(jac, torch.autograd.functional.jacobian(block, h),
                                       rtol=1e-10, atol=1e-12)
            h = block(h)
        assert not any(j.requires_grad for j in jacobians)


def test_layer_jacobians_without_biases():
    import torch

    from gradlab import theory
    from gradlab.models import mlp

    torch.manual_seed(0)
    model = mlp(3, 5, activation="tanh", bias=False).double()
    x = torch.randn(5, dtype=torch.float64)
    jacobians = theory.layer_jacobians(model.weights, [None] * 3, x, "tanh")
    torch.testing.assert_close(theory.jacobian_product(jacobians),
                               torch.autograd.functional.jacobian(model, x))


def test_jacobian_product_order():
    import torch

    from gradlab import theory

    a, b, c = torch.randn(4, 3), torch.randn(5, 4), torch.randn(2, 5)
    torch.testing.assert_close(theory.jacobian_product([a, b, c]), c @ b @ a)
    torch.testing.assert_close(theory.jacobian_product([a]), a)


def test_activation_derivative_equals_autograd():
    import torch

    from gradlab import theory

    z = torch.cat([torch.linspace(-8, 8, 401, dtype=torch.float64),
                   torch.tensor([-1e-3, 1e-3, 30.0, -30.0], dtype=torch.float64)])
    for activation in _CH12_ACTIVATIONS:
        zz = z.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(_ch12_torch_activation(activation)(zz).sum(), zz)
        got = theory.activation_derivative(activation, z)
        assert got.shape == z.shape and got.dtype == z.dtype
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    zero = torch.zeros(3, requires_grad=True)
    (relu_at_zero,) = torch.autograd.grad(torch.relu(zero).sum(), zero)
    torch.testing.assert_close(theory.activation_derivative("relu", torch.zeros(3)), relu_at_zero)


def test_max_slope():
    import math

    import torch

    from gradlab import theory

    assert theory.max_slope("sigmoid") == 0.25
    for activation in ("linear", "relu", "tanh"):
        assert theory.max_slope(activation) == 1.0
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    for activation in _CH12_ACTIVATIONS:
        measured = float(theory.activation_derivative(activation, grid).abs().max())
        assert theory.max_slope(activation) == _ch12_approx(measured, 1e-9), activation
    assert theory.max_slope("gelu") > 1.12
    # the peak is at z = sqrt(2), where gelu'' = pdf(z) (2 - z^2) vanishes
    z = torch.tensor(math.sqrt(2.0), dtype=torch.float64)
    assert float(theory.activation_derivative("gelu", z)) == _ch12_approx(theory.max_slope("gelu"), 1e-14)


def _ch12_approx(value, rel):
    import pytest

    return pytest.approx(value, rel=rel)


def test_spectral_norm_equals_largest_singular_value():
    import torch

    from gradlab import theory

    torch.manual_seed(0)
    for shape in ((5, 5), (3, 7), (8, 2)):
        a = torch.randn(*shape)
        assert theory.spectral_norm(a) == _ch12_approx(float(torch.linalg.svdvals(a.double()).max()), 1e-12)
    assert theory.spectral_norm(torch.diag(torch.tensor([3.0, -5.0, 1.0]))) == _ch12_approx(5.0, 1e-12)
    assert theory.spectral_norm(torch.randn(4, 4, requires_grad=True)) > 0


def test_spectral_bound_bounds_the_measured_gradient_gain():
    import torch

    from gradlab import theory
    from gradlab.models import mlp

    for k, activation in enumerate(_CH12_ACTIVATIONS):
        torch.manual_seed(10 + k)
        model = mlp(5, 12, in_features=6, out_features=4, activation=activation, gain=1.5,
                    bias_std=0.5).double()
        # hidden layers are followed by phi (slope <= gamma); the read-out is linear
        bound = (theory.spectral_bound(model.weights[:-1], theory.max_slope(activation))
                 * theory.spectral_norm(model.weights[-1]))
        x = torch.randn(64, 6, dtype=torch.float64, requires_grad=True)
        g = torch.randn(64, 4, dtype=torch.float64)
        (grad,) = torch.autograd.grad(model(x), x, g)  # row i is J(x_i)^T g_i
        gains = grad.norm(dim=1) / g.norm(dim=1)
        assert (gains <= bound * (1 + 1e-12)).all(), activation
        assert gains.max() > 1e-3 * bound  # a bound, but not a vacuous one here


def test_spectral_bound_of_a_product():
    import torch

    from gradlab import theory

    torch.manual_seed(0)
    weights = [torch.randn(6, 6) for _ in range(4)]
    expected = 1.0
    for w in weights:
        expected *= float(torch.linalg.svdvals(w.double()).max()) * 0.5
    assert theory.spectral_bound(weights, 0.5) == _ch12_approx(expected, 1e-12)
    assert theory.spectral_bound([]) == 1.0
    # the bound holds for the product of the matrices themselves
    product = weights[3] @ weights[2] @ weights[1] @ weights[0]
    assert theory.spectral_norm(product) <= theory.spectral_bound(weights) * (1 + 1e-6)


def test_average_growth_factor_is_rms_singular_value():
    import torch

    from gradlab import theory

    torch.manual_seed(0)
    w = torch.randn(40, 40) / 6
    s = torch.linalg.svdvals(w.double())
    assert theory.average_growth_factor(w) == _ch12_approx(float(s.pow(2).mean().sqrt()), 1e-10)
    assert theory.average_growth_factor(w) <= theory.spectral_norm(w)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    assert theory.average_growth_factor(2 * q) == _ch12_approx(2.0, 1e-12)


def test_average_growth_factor_matches_monte_carlo():
    import torch

    from gradlab import theory

    torch.manual_seed(1)
    for shape in ((30, 30), (20, 50), (50, 20)):
        w = torch.randn(*shape, dtype=torch.float64) * torch.linspace(0.1, 3, shape[1], dtype=torch.float64)
        g = torch.randn(40_000, shape[0], dtype=torch.float64)  # gradients w.r.t. the output
        ratios = (g @ w).pow(2).sum(1) / g.pow(2).sum(1)  # ||W^T g||^2 / ||g||^2
        assert float(ratios.mean()) == _ch12_approx(theory.average_growth_factor(w) ** 2, 0.02), shape


def _measured_log_slopes(gain, width, depth, seeds):
    """Per-seed mean of log(||g_{l-1}|| / ||g_l||) backpropagated through Gaussian linear nets."""
    import torch

    from gradlab.models import mlp

    slopes = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = mlp(depth, width, activation="linear", init="gaussian", gain=gain, bias=False)
        g = torch.randn(width, dtype=torch.float64)
        start = g.norm().log()
        for w in reversed(model.weights):
            g = w.detach().double().T @ g
        slopes.append(float((g.norm().log() - start) / depth))
    return slopes


def test_log_growth_rate_matches_deep_gaussian_linear_nets():
    import math

    from gradlab import theory

    depth, seeds = 60, 20
    for gain, width in ((1.0, 64), (1.5, 8), (0.8, 16)):
        slopes = _measured_log_slopes(gain, width, depth, seeds)
        measured = sum(slopes) / seeds
        # every per-layer log ratio is independent: the mean of depth*seeds of them
        sigma = math.sqrt(theory.log_growth_variance(width) / (depth * seeds))
        predicted = theory.log_growth_rate(gain, width)
        assert abs(measured - predicted) < 4 * sigma, (gain, width, measured, predicted)
    # at width 8 the drift is visibly below log(gain): the correction is measured, not noise
    slopes = _measured_log_slopes(1.5, 8, depth, seeds)
    sigma = math.sqrt(theory.log_growth_variance(8) / (depth * seeds))
    assert math.log(1.5) - sum(slopes) / seeds > 5 * sigma


def test_log_growth_variance_matches_the_spread_of_one_layer():
    import torch

    from gradlab import theory

    torch.manual_seed(0)
    width, n = 16, 20_000
    w = torch.randn(n, width, width, dtype=torch.float64) / width**0.5
    g = torch.randn(n, width, dtype=torch.float64)
    logs = (torch.einsum("nij,ni->nj", w, g).norm(dim=1) / g.norm(dim=1)).log()
    assert float(logs.mean()) == _ch12_approx(theory.log_growth_rate(1.0, width), 0.1)
    assert float(logs.var()) == _ch12_approx(theory.log_growth_variance(width), 0.05)


def test_log_growth_rate_tends_to_log_gain():
    import math

    from gradlab import theory

    for gain in (0.5, 1.0, 2.0):
        gaps = [math.log(gain) - theory.log_growth_rate(gain, w) for w in (1, 2, 8, 64, 1024, 10**6)]
        assert all(gap > 0 for gap in gaps)
        assert gaps == sorted(gaps, reverse=True)
        assert gaps[-1] < 1e-6
        # digamma(x) ~ log x - 1/(2x): the gap is about 1/(2 width)
        assert gaps[-2] == _ch12_approx(1 / 2048, 0.01)
    assert theory.log_growth_variance(10**4) == _ch12_approx(1 / (2 * 10**4), 0.01)


def test_matrix_power_norms_of_a_non_normal_matrix_grow_then_decay():
    import torch

    from gradlab import theory

    a = torch.tensor([[0.9, 5.0], [0.0, 0.9]], dtype=torch.float64)
    assert theory.spectral_radius(a) == _ch12_approx(0.9, 1e-12)
    norms = theory.matrix_power_norms(a, 150)
    assert norms.shape == (151,) and norms.dtype == torch.float64
    assert float(norms[0]) == _ch12_approx(1.0, 1e-12)
    # A^k = [[l^k, k c l^(k-1)], [0, l^k]]: the off-diagonal entry peaks near k* = -1/log(l),
    # and the spectral norm lies between that entry and the Frobenius norm.
    lam, c = 0.9, 5.0
    k_star = -1.0 / math.log(lam)
    peak = int(norms.argmax())
    assert abs(peak - k_star) <= 1.0
    for k in (1, peak, 40, 150):
        off_diagonal = k * c * lam ** (k - 1)
        frobenius = math.sqrt(2 * lam ** (2 * k) + off_diagonal**2)
        assert off_diagonal <= float(norms[k]) <= frobenius + 1e-12
    assert float(norms[-1]) < 1.0
    assert (norms[peak:].diff() < 0).all()
    for k in (0, 1, 7, 150):
        expected = torch.linalg.matrix_norm(torch.linalg.matrix_power(a, k), ord=2)
        assert float(norms[k]) == _ch12_approx(float(expected), 1e-9)
    # a normal matrix with the same eigenvalues only decays
    normal = torch.diag(torch.tensor([0.9, 0.9], dtype=torch.float64))
    assert (theory.matrix_power_norms(normal, 20).diff() < 0).all()


def test_spectral_radius():
    import math

    import torch

    from gradlab import theory

    c, s = math.cos(0.3), math.sin(0.3)
    rotation = torch.tensor([[c, -s], [s, c]]) * 1.7  # complex eigenvalues of modulus 1.7
    assert theory.spectral_radius(rotation) == _ch12_approx(1.7, 1e-6)
    nilpotent = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert theory.spectral_radius(nilpotent) == 0.0 and theory.spectral_norm(nilpotent) == 1.0
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    expected = float(torch.linalg.eigvals(a.double()).abs().max())
    assert theory.spectral_radius(a) == _ch12_approx(expected, 1e-12)
    assert theory.spectral_radius(a) <= theory.spectral_norm(a) + 1e-12


def test_chapter_1_2_functions_reject_bad_inputs():
    import pytest
    import torch

    from gradlab import theory

    w, b, x = torch.randn(3, 3), torch.randn(3), torch.randn(3)
    cases = [
        (ValueError, "activation", lambda: theory.activation_derivative("softplus", x)),
        (TypeError, "z", lambda: theory.activation_derivative("relu", [1.0])),
        (ValueError, "activation", lambda: theory.max_slope("elu")),
        (ValueError, "weights", lambda: theory.layer_jacobians([], [], x, "relu")),
        (ValueError, "biases", lambda: theory.layer_jacobians([w, w], [b], x, "relu")),
        (ValueError, "x", lambda: theory.layer_jacobians([w], [b], x[None], "relu")),
        (TypeError, "x", lambda: theory.layer_jacobians([w], [b], [1.0, 2.0, 3.0], "relu")),
        (ValueError, r"weights\[1\]", lambda: theory.layer_jacobians([w, b], [b, b], x, "relu")),
        (ValueError, "activation", lambda: theory.layer_jacobians([w, w], [b, b], x, "swish")),
        (ValueError, "jacobians", lambda: theory.jacobian_product([])),
        (ValueError, r"jacobians\[1\]", lambda: theory.jacobian_product([w, torch.randn(2, 4)])),
        (ValueError, r"jacobians\[0\]", lambda: theory.jacobian_product([b])),
        (TypeError, "matrix", lambda: theory.spectral_norm([[1.0]])),
        (ValueError, "matrix", lambda: theory.spectral_norm(b)),
        (ValueError, "slope", lambda: theory.spectral_bound([w], slope=-1.0)),
        (ValueError, r"weights\[0\]", lambda: theory.spectral_bound([b])),
        (ValueError, "weight", lambda: theory.average_growth_factor(b)),
        (ValueError, "gain", lambda: theory.log_growth_rate(0.0, 8)),
        (ValueError, "gain", lambda: theory.log_growth_rate(-1.0, 8)),
        (ValueError, "width", lambda: theory.log_growth_rate(1.0, 0)),
        (TypeError, "width", lambda: theory.log_growth_rate(1.0, 8.0)),
        (ValueError, "width", lambda: theory.log_growth_variance(0)),
        (ValueError, "matrix", lambda: theory.matrix_power_norms(torch.randn(2, 3), 3)),
        (ValueError, "max_power", lambda: theory.matrix_power_norms(w, -1)),
        (TypeError, "max_power", lambda: theory.matrix_power_norms(w, 2.5)),
        (ValueError, "matrix", lambda: theory.spectral_radius(torch.randn(2, 3))),
        (ValueError, "matrix", lambda: theory.spectral_radius(b)),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


# ---------------------------------------------------------------------------------------------
# Chapter 4: recurrent networks (BPTT Jacobians, the Pascanu bound, the single-unit cliff)
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------


def _recurrence(activation, n=5, steps=12, scale=1.0, seed=0):
    """A random recurrence in float64, differentiable through every state: returns W, the
    preactivations a_1..a_T (rows) and the list of states h_0..h_T."""
    import torch

    from gradlab.theory import _apply

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * scale / n**0.5
    drives = 0.5 * torch.randn(steps, n, generator=g, dtype=torch.float64)
    hs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(True)]
    preacts = []
    for c in drives:
        a = W @ hs[-1] + c
        preacts.append(a)
        hs.append(_apply(activation, a))
    return W, torch.stack(preacts).detach(), hs


def _autograd_jacobians(hs):
    """d h_T / d h_t for every t = 0..T-1, by one batched backward pass per output unit."""
    import torch

    n = hs[-1].shape[0]
    rows = [torch.autograd.grad(hs[-1][i], hs[:-1], retain_graph=True) for i in range(n)]
    return [torch.stack([r[t] for r in rows]) for t in range(len(hs) - 1)]


def test_bptt_jacobian_matches_autograd():
    import torch

    from gradlab.theory import bptt_jacobian

    for activation in ("linear", "tanh", "relu", "sigmoid"):
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


def test_bptt_jacobian_norms_match_autograd():
    import torch

    from gradlab.theory import bptt_jacobian_norms

    for activation in ("linear", "tanh"):
        W, preacts, hs = _recurrence(activation, n=6, steps=30, scale=1.2, seed=1)
        measured = _autograd_jacobians(hs)
        norms = bptt_jacobian_norms(W, preacts, activation)
        assert norms.shape == (31,) and norms[0] == 1.0
        expected = torch.stack([torch.linalg.matrix_norm(j, ord=2) for j in measured[::-1]])
        torch.testing.assert_close(norms[1:], expected, rtol=1e-9, atol=1e-14)


def test_bptt_jacobian_norms_linear_are_matrix_powers():
    import torch

    from gradlab.theory import bptt_jacobian_norms, matrix_power_norms

    W, preacts, _ = _recurrence("linear", n=7, steps=25, scale=1.1, seed=2)
    torch.testing.assert_close(bptt_jacobian_norms(W, preacts, "linear"), matrix_power_norms(W, 25))


def test_linear_growth_rate_is_spectral_radius():
    # Gelfand: ||W^k||^(1/k) -> rho(W). The ratio over lags 100..200 is within 1% of rho for a
    # 32 x 32 Gaussian W (the next eigenvalue modulus is well below rho at this size).
    import torch

    from gradlab.models import VanillaRNN
    from gradlab.theory import bptt_jacobian_norms, spectral_radius

    torch.manual_seed(0)
    for rho in (0.8, 1.0, 1.2):
        model = VanillaRNN(1, 32, activation="linear", spectral_radius=rho)
        W = model.W.detach().double()
        norms = bptt_jacobian_norms(W, torch.zeros(200, 32), "linear")
        rate = float(norms[200] / norms[100]) ** (1 / 100)
        assert abs(rate - spectral_radius(W)) < 0.01 * rho


def test_pascanu_bound_holds_and_is_tight_for_orthogonal_linear():
    import torch

    from gradlab.theory import bptt_jacobian_norms, max_slope, pascanu_bound, spectral_norm

    for activation in ("linear", "tanh", "relu", "sigmoid"):
        for seed in range(4):
            W, preacts, _ = _recurrence(activation, n=6, steps=40, scale=0.5 + seed, seed=seed)
            norms = bptt_jacobian_norms(W, preacts, activation)
            for lag in range(41):
                assert norms[lag] <= pascanu_bound(W, activation, lag) * (1 + 1e-9)
            gamma_lambda = max_slope(activation) * spectral_norm(W)
            assert pascanu_bound(W, activation, 7) == gamma_lambda**7
    # A scaled orthogonal W with linear activation meets the bound with equality.
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    norms = bptt_jacobian_norms(1.1 * q, torch.zeros(20, 8), "linear")
    bound = torch.tensor([pascanu_bound(1.1 * q, "linear", k) for k in range(21)], dtype=torch.float64)
    torch.testing.assert_close(norms, bound, rtol=1e-10, atol=0)


def test_vanishing_when_gamma_lambda_below_one():
    # The sufficient condition: lambda_1 < 1/gamma forces geometric decay at least that fast.
    import torch

    from gradlab.theory import bptt_jacobian_norms, max_slope, spectral_norm

    W, preacts, _ = _recurrence("sigmoid", n=6, steps=60, scale=2.0, seed=3)
    gl1 = max_slope("sigmoid") * spectral_norm(W)
    assert spectral_norm(W) > 1 and gl1 < 1  # sigmoid: gamma = 1/4 allows lambda_1 up to 4
    norms = bptt_jacobian_norms(W, preacts, "sigmoid")
    assert norms[60] <= gl1**60
    assert norms[60] < 1e-6
    assert torch.all(norms[1:] <= norms[:-1] * (1 + 1e-12))  # each factor has norm < 1


def test_recurrence_theory_bad_arguments():
    import pytest
    import torch

    from gradlab.theory import bptt_jacobian, bptt_jacobian_norms, pascanu_bound

    W = torch.eye(3)
    with pytest.raises(ValueError, match="W"):
        bptt_jacobian_norms(torch.ones(3, 4), torch.zeros(5, 3), "tanh")
    with pytest.raises(ValueError, match="preacts"):
        bptt_jacobian_norms(W, torch.zeros(5, 4), "tanh")
    with pytest.raises(ValueError, match="preacts"):
        bptt_jacobian(W, torch.zeros(5), "tanh")
    with pytest.raises(TypeError, match="W"):
        bptt_jacobian([[1.0]], torch.zeros(5, 1), "tanh")
    with pytest.raises(ValueError, match="activation"):
        bptt_jacobian_norms(W, torch.zeros(5, 3), "gelu")
    with pytest.raises(ValueError, match="t"):
        bptt_jacobian(W, torch.zeros(5, 3), "tanh", t=6)
    with pytest.raises(TypeError, match="t"):
        bptt_jacobian(W, torch.zeros(5, 3), "tanh", t=1.0)
    with pytest.raises(ValueError, match="lag"):
        pascanu_bound(W, "tanh", -1)
    with pytest.raises(ValueError, match="W"):
        pascanu_bound(torch.ones(2, 3), "tanh", 2)


def _single_unit(w, b, h0, steps):
    import torch

    h = torch.as_tensor(h0, dtype=torch.float64)
    for _ in range(steps):
        h = torch.tanh(w * h + b)
    return h


def test_cliff_bias_is_an_unstable_fixed_point():
    # On the wall h_t stays at h0; 1e-3 to either side it leaves for the two stable fixed points.
    # Tolerance: rounding (1e-16) grows like s^T = 1.5^50 ~ 6e8 over the run.
    from gradlab.theory import cliff_bias

    h0, T = 0.5, 50
    for w in (1.5, 2.0):  # s = w (1 - h0^2) <= 1.5; at w = 3 rounding would grow to O(1)
        b = cliff_bias(w, h0)
        assert abs(float(_single_unit(w, b, h0, T)) - h0) < 1e-6
        assert float(_single_unit(w, b + 1e-3, h0, T)) > h0 + 0.1  # upper fixed point
        assert float(_single_unit(w, b - 1e-3, h0, T)) < -0.5  # lower fixed point


def test_cliff_gradient_norm_matches_autograd():
    import math

    import torch

    from gradlab.theory import cliff_bias, cliff_gradient_norm

    for w, h0, T in ((1.5, 0.5, 50), (2.0, 0.5, 50), (1.0, 0.3, 20), (4 / 3, 0.5, 30), (0.8, -0.2, 10)):
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(cliff_bias(w, h0), dtype=torch.float64, requires_grad=True)
        gw, gb = torch.autograd.grad(_single_unit(wt, bt, h0, T), [wt, bt])
        measured = math.hypot(float(gw), float(gb))
        assert math.isclose(cliff_gradient_norm(w, h0, T), measured, rel_tol=1e-6)


def test_cliff_bad_arguments():
    import pytest

    from gradlab.theory import cliff_bias, cliff_gradient_norm

    with pytest.raises(ValueError, match="h0"):
        cliff_bias(2.0, 1.0)
    with pytest.raises(TypeError, match="w"):
        cliff_bias("2", 0.5)
    with pytest.raises(ValueError, match="steps"):
        cliff_gradient_norm(2.0, 0.5, -1)
    with pytest.raises(ValueError, match="h0"):
        cliff_gradient_norm(2.0, -1.5, 10)


# ---------------------------------------------------------------------------------------------
# Chapter 3: signal propagation at initialization (length map, q*, chi_1, critical line)
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------

_CH3_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "gelu")


def _ch3_trapezoid_expectation(fn, q, half_width=14.0, points=400_001):
    """E[fn(sqrt(q) z)] by the trapezoid rule on a fine grid: an independent reference that
    converges exponentially fast for smooth integrands."""
    import numpy as np

    z = np.linspace(-half_width, half_width, points)
    density = np.exp(-0.5 * z**2)
    return float(np.dot(fn(np.sqrt(q) * z), density) / density.sum())


def test_ch3_quadrature_matches_closed_forms():
    import math

    import numpy as np

    from gradlab.theory import gaussian_expectation

    for q in (1e-4, 0.3, 1.0, 7.5, 1e3):
        relu_sq = gaussian_expectation(lambda x: np.maximum(x, 0.0) ** 2, q)
        assert math.isclose(relu_sq, q / 2, rel_tol=1e-8)  # E[relu(sqrt(q) z)²] = q/2
        assert math.isclose(gaussian_expectation(lambda x: (x > 0).astype(float), q), 0.5, rel_tol=1e-8)
        assert math.isclose(gaussian_expectation(lambda x: x**2, q), q, rel_tol=1e-8)  # linear
        assert math.isclose(gaussian_expectation(lambda x: x**4, q), 3 * q * q, rel_tol=1e-8)
        assert math.isclose(gaussian_expectation(np.ones_like, q), 1.0, rel_tol=1e-12)
        # E[erf'(x)²] = (4/pi) / sqrt(1 + 4q): a spike of width 1/sqrt(q) at 0, like tanh'².
        assert math.isclose(gaussian_expectation(lambda x: 4 / math.pi * np.exp(-2 * x**2), q),
                            4 / math.pi / math.sqrt(1 + 4 * q), rel_tol=1e-8)
    assert math.isclose(gaussian_expectation(np.cos, 0.0), 1.0, rel_tol=1e-14)
    for q in (1e-4, 0.3, 1.0, 7.5):  # E[sin²] = (1 - e^{-2q})/2, E[cos²] = (1 + e^{-2q})/2
        assert math.isclose(gaussian_expectation(lambda x: np.sin(x) ** 2, q),
                            (1 - math.exp(-2 * q)) / 2, rel_tol=1e-8)
        assert math.isclose(gaussian_expectation(lambda x: np.cos(x) ** 2, q),
                            (1 + math.exp(-2 * q)) / 2, rel_tol=1e-8)


def test_ch3_quadrature_matches_fine_trapezoid_for_tanh_sigmoid_gelu():
    import math

    from gradlab import theory

    for name in ("tanh", "sigmoid", "gelu"):
        phi, dphi = theory._NP_ACTIVATIONS[name]
        for q in (0.01, 1.0, 30.0, 1e3):
            for fn in (lambda x, f=phi: f(x) ** 2, lambda x, f=dphi: f(x) ** 2):
                assert math.isclose(theory.gaussian_expectation(fn, q),
                                    _ch3_trapezoid_expectation(fn, q), rel_tol=1e-8), (name, q)


def test_ch3_numpy_activations_match_torch_and_autograd_derivatives():
    import numpy as np
    import torch

    from gradlab import theory
    from gradlab.models import ACTIVATIONS

    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    for name in _CH3_ACTIVATIONS:
        phi, dphi = theory._NP_ACTIVATIONS[name]
        expected = ACTIVATIONS[name].module()(x).numpy()
        np.testing.assert_allclose(phi(x.numpy()), expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dphi(x.numpy()), theory.activation_derivative(name, x).numpy(),
                                   rtol=1e-12, atol=1e-14)


def test_ch3_q_star_is_a_fixed_point_of_the_length_map():
    import math

    from gradlab import theory

    for name in _CH3_ACTIVATIONS:
        for sigma_w, sigma_b in ((0.5, 0.1), (0.9, 0.3), (1.3, 0.05), (1.2, 1.0), (1.0, 0.0)):
            try:
                q = theory.q_star(name, sigma_w, sigma_b)
            except ValueError:
                assert name == "linear" and sigma_w > 1  # the only diverging cases here
                continue
            assert q >= 0
            assert math.isclose(theory.length_map(name, q, sigma_w, sigma_b), q,
                                rel_tol=1e-10, abs_tol=1e-14), (name, sigma_w, sigma_b, q)


def test_ch3_q_star_is_where_iteration_goes():
    import math

    from gradlab import theory

    for name, sigma_w, sigma_b in (("tanh", 1.5, 0.3), ("tanh", 0.8, 0.2), ("sigmoid", 2.0, 0.0),
                                   ("gelu", 1.2, 0.4), ("relu", 1.1, 0.5)):
        for q0 in (0.05, 1.0, 6.0):
            q = q0
            for _ in range(3000):
                q = theory.length_map(name, q, sigma_w, sigma_b)
            assert math.isclose(theory.q_star(name, sigma_w, sigma_b, q0=q0), q, rel_tol=1e-9)


def test_ch3_homogeneous_closed_forms():
    import math

    from gradlab import theory

    # ReLU: q -> sigma_w² q / 2 + sigma_b², chi_1 = sigma_w² / 2; linear: chi_1 = sigma_w²
    assert math.isclose(theory.q_star("relu", 1.2, 0.3), 0.09 / (1 - 0.72), rel_tol=1e-12)
    assert math.isclose(theory.q_star("linear", 0.7, 0.5), 0.25 / (1 - 0.49), rel_tol=1e-12)
    for sigma_w in (0.3, 1.0, 1.3):
        assert math.isclose(theory.chi1("relu", sigma_w, 0.2), sigma_w**2 / 2, rel_tol=1e-12)
    for sigma_w in (0.3, 0.9):
        assert math.isclose(theory.chi1("linear", sigma_w, 0.2), sigma_w**2, rel_tol=1e-12)
    # On the critical line without bias every q is fixed: He init keeps the input's scale.
    assert theory.q_star("relu", math.sqrt(2), 0.0, q0=3.5) == 3.5
    assert math.isclose(theory.chi1("relu", math.sqrt(2), 0.0), 1.0, rel_tol=1e-12)
    assert theory.chi1("linear", 1.0, 0.0) == 1.0
    # The quadrature agrees with the closed form that chi1 uses.
    q = theory.q_star("relu", 1.2, 0.3)
    relu_prime = theory._NP_ACTIVATIONS["relu"][1]
    assert math.isclose(1.2**2 * theory.gaussian_expectation(lambda x: relu_prime(x) ** 2, q),
                        theory.chi1("relu", 1.2, 0.3), rel_tol=1e-10)


def test_ch3_critical_sigma_w():
    import math

    from gradlab import theory

    assert math.isclose(theory.critical_sigma_w("relu"), math.sqrt(2), rel_tol=1e-14)  # He
    assert theory.critical_sigma_w("linear") == 1.0
    assert math.isclose(theory.critical_sigma_w("tanh", 0.0), 1.0, rel_tol=1e-8)  # Glorot
    previous = 1.0
    for sigma_b in (0.05, 0.3, 1.0, 2.0):
        s = theory.critical_sigma_w("tanh", sigma_b)
        assert s > previous  # bias pushes the critical line to larger sigma_w
        assert math.isclose(theory.chi1("tanh", s, sigma_b), 1.0, rel_tol=1e-9)
        previous = s
    s = theory.critical_sigma_w("sigmoid", 0.0)
    assert 4.0 < s and math.isclose(theory.chi1("sigmoid", s, 0.0), 1.0, rel_tol=1e-9)


def test_ch3_tanh_phases_and_depth_scale():
    import math

    from gradlab import theory

    # tanh without bias: q* = 0 and chi_1 = sigma_w² below sigma_w = 1.
    assert theory.q_star("tanh", 0.8, 0.0) == 0.0
    assert math.isclose(theory.chi1("tanh", 0.8, 0.0), 0.64, rel_tol=1e-12)
    assert theory.chi1("tanh", 1.0, 0.3) < 1 < theory.chi1("tanh", 2.0, 0.3)
    xi = theory.depth_scale("tanh", 1.0, 0.3)
    assert math.isclose(xi, -1 / math.log(theory.chi1("tanh", 1.0, 0.3)), rel_tol=1e-12)
    assert math.isclose(theory.depth_scale("tanh", 2.0, 0.3),
                        1 / math.log(theory.chi1("tanh", 2.0, 0.3)), rel_tol=1e-12)
    assert theory.depth_scale("relu", math.sqrt(2), 0.0) == math.inf
    assert theory.depth_scale("tanh", 0.0, 0.5) == 0.0
    # the depth scale diverges as the critical line is approached
    s = theory.critical_sigma_w("tanh", 0.3)
    assert theory.depth_scale("tanh", 0.99 * s, 0.3) > 10 * theory.depth_scale("tanh", 0.8 * s, 0.3)


def test_ch3_bad_inputs_raise_and_name_the_problem():
    import math

    import pytest

    from gradlab import theory

    with pytest.raises(ValueError, match="activation"):
        theory.q_star("softsign", 1.0, 0.0)
    with pytest.raises(ValueError, match="activation"):
        theory.chi1("elu", 1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_w"):
        theory.chi1("tanh", -1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_b"):
        theory.q_star("tanh", 1.0, -0.1)
    with pytest.raises(ValueError, match="sigma_b"):
        theory.critical_sigma_w("tanh", -0.1)
    with pytest.raises(ValueError, match="sigma_w"):
        theory.length_map("relu", 1.0, float("nan"), 0.0)
    with pytest.raises(ValueError, match="q"):
        theory.length_map("relu", -1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="q0"):
        theory.q_star("tanh", 1.0, 0.0, q0=0.0)
    with pytest.raises(TypeError, match="sigma_w"):
        theory.q_star("tanh", "1", 0.0)
    with pytest.raises(TypeError, match="fn"):
        theory.gaussian_expectation(3.0, 1.0)
    # No fixed point: the variance diverges with depth.
    for name, sigma_w, sigma_b in (("relu", math.sqrt(2), 0.1), ("relu", 1.6, 0.0),
                                   ("linear", 1.0, 0.5), ("linear", 1.2, 0.0), ("gelu", 2.5, 0.3)):
        with pytest.raises(ValueError, match="no fixed point"):
            theory.q_star(name, sigma_w, sigma_b)
        with pytest.raises(ValueError, match="no fixed point"):
            theory.chi1(name, sigma_w, sigma_b)
    with pytest.raises(ValueError, match="no critical sigma_w"):
        theory.critical_sigma_w("gelu", 0.0)


def _ch3_measured_growth(activation, sigma_w, sigma_b, depth, width, batch, seeds):
    """Mean over seeds of ||dL/dz^l||² / ||dL/dz^{L-1}||² for every linear layer l (forward
    order), measured with GradientMonitor on an mlp fed inputs whose first pre-activations
    already have second moment q*, with the backward signal v ~ N(0, I) at the read-out."""
    import math

    import numpy as np
    import torch

    from gradlab import theory
    from gradlab.models import mlp
    from gradlab.monitor import GradientMonitor

    q = theory.q_star(activation, sigma_w, sigma_b)
    input_std = math.sqrt((q - sigma_b**2) / sigma_w**2)  # sigma_w² E[x²] + sigma_b² = q*
    ratios = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 256-wide layers: threads cost more than they give on a busy CPU
    try:
        for seed in range(seeds):
            torch.manual_seed(seed)
            net = mlp(depth, width, activation=activation, init="gaussian", gain=sigma_w,
                      bias_std=sigma_b)
            x = input_std * torch.randn(batch, width)
            v = torch.randn(batch, width)
            with GradientMonitor(net) as monitor:
                (net(x) * v).sum().backward()
            g = monitor.output_grad_norms[0]
            ratios.append((g / g[-1]) ** 2)
    finally:
        torch.set_num_threads(threads)
    return np.mean(ratios, axis=0)


def test_ch3_chi1_predicts_measured_per_layer_gradient_growth():
    """The per-layer factor of the squared gradient norm, fitted over 25 layers of width 256
    (4 seeds), is within 3% of chi_1, in the ordered, critical and chaotic phases."""
    import math

    import numpy as np

    from gradlab import theory

    depth = 25
    layers_below = np.arange(depth)[::-1]  # layer l is depth-1-l layers below the read-out
    cases = (("tanh", 1.0, 0.3), ("tanh", 2.5, 0.3), ("relu", math.sqrt(2), 0.0),
             ("relu", 1.2, 0.1))
    for activation, sigma_w, sigma_b in cases:
        ratio = _ch3_measured_growth(activation, sigma_w, sigma_b, depth, 256, 64, 4)
        fitted = math.exp(np.polyfit(layers_below, np.log(ratio), 1)[0])
        predicted = theory.chi1(activation, sigma_w, sigma_b)
        assert abs(fitted / predicted - 1) < 0.03, (activation, sigma_w, sigma_b, fitted, predicted)


def test_ch3_length_map_predicts_measured_forward_variance():
    """Pre-activation second moments of a wide tanh net follow the iterated length map from
    q_0 and settle at q* (within 5% per layer, width 512; one seed deviates by 2.5% at most).
    A larger bias correlates the inputs, and the shared part of the signal fluctuates more."""
    import numpy as np
    import torch

    from gradlab import theory
    from gradlab.models import mlp
    from gradlab.monitor import GradientMonitor

    sigma_w, sigma_b, depth, width = 1.5, 0.1, 12, 512
    for q0 in (0.25, 4.0):
        torch.manual_seed(0)
        net = mlp(depth, width, activation="tanh", init="gaussian", gain=sigma_w, bias_std=sigma_b)
        x = torch.randn(256, width) * np.sqrt((q0 - sigma_b**2) / sigma_w**2)
        with GradientMonitor(net) as monitor:
            net(x).sum().backward()
        measured = monitor.activation_stds[0, :-1] ** 2
        predicted = [q0]
        for _ in range(depth - 2):
            predicted.append(theory.length_map("tanh", predicted[-1], sigma_w, sigma_b))
        np.testing.assert_allclose(measured, predicted, rtol=0.05)
        assert abs(measured[-1] / theory.q_star("tanh", sigma_w, sigma_b) - 1) < 0.05
