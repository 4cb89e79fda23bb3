"""Tests for gradlab.hessian: Hessian-vector products and the top eigenvalue against the
explicit Hessian, and the stability threshold η = 2/λ_max that the chapter derives."""

import pytest
import torch
from torch.func import functional_call

import gradlab as gl
from gradlab.hessian import (
    Eigenpair,
    adam_preconditioner,
    hvp,
    preconditioned_top_eigenvalue,
    top_eigenvalue,
)

DT = torch.float64


def _small_problem(seed: int = 0, activation: str = "tanh"):
    torch.manual_seed(seed)
    net = gl.mlp(3, 5, in_features=3, out_features=2, activation=activation).to(DT)
    x = torch.randn(16, 3, dtype=DT)
    y = torch.randn(16, 2, dtype=DT)

    def closure():
        return torch.nn.functional.mse_loss(net(x), y)

    return net, x, y, closure


def _explicit_hessian(net, x, y) -> torch.Tensor:
    """The full Hessian of the MSE loss in the flat parameter vector, by autograd."""
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach() for p in net.parameters()]

    def loss_of(theta):
        pieces = torch.split(theta, [p.numel() for p in params])
        state = {n: t.view_as(p) for n, t, p in zip(names, pieces, params, strict=True)}
        return torch.nn.functional.mse_loss(functional_call(net, state, (x,)), y)

    flat = torch.cat([p.reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss_of, flat)


def _quadratic(eigenvalues, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=DT)) @ q.T
    a = (a + a.T) / 2
    theta = torch.randn(n, generator=g, dtype=DT).requires_grad_()
    return a, theta, (lambda: 0.5 * theta @ a @ theta)


# -- hvp ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_hvp_equals_explicit_hessian_times_v(activation):
    net, x, y, closure = _small_problem(1, activation)
    hess = _explicit_hessian(net, x, y)
    v = torch.randn(hess.shape[0], dtype=DT, generator=torch.Generator().manual_seed(2))
    got = hvp(closure, net, v)  # flat in, flat out
    torch.testing.assert_close(got, hess @ v, rtol=1e-10, atol=1e-12)


def test_hvp_parameter_shaped_vectors_round_trip():
    net, x, y, closure = _small_problem(3)
    params = list(net.parameters())
    v = [torch.randn_like(p) for p in params]
    got = hvp(closure, params, v)
    assert isinstance(got, list) and [g.shape for g in got] == [p.shape for p in params]
    flat_v = torch.cat([t.reshape(-1) for t in v])
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in got]), _explicit_hessian(net, x, y) @ flat_v)


def test_hvp_matches_torch_functional_hvp_on_a_quadratic():
    a, theta, closure = _quadratic([3.0, -1.0, 0.5, 2.0])
    v = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=DT)
    torch.testing.assert_close(hvp(closure, [theta], v), a @ v)
    _, reference = torch.autograd.functional.hvp(lambda t: 0.5 * t @ a @ t, theta.detach(), v)
    torch.testing.assert_close(hvp(closure, [theta], v), reference)


def test_hvp_unused_and_linear_parameters_give_zeros():
    w = torch.randn(3, dtype=DT, requires_grad=True)
    unused = torch.randn(2, dtype=DT, requires_grad=True)
    out = hvp(lambda: (w * 2.0).sum(), [w, unused], [torch.ones(3, dtype=DT), torch.ones(2, dtype=DT)])
    assert all(torch.equal(o, torch.zeros_like(o)) for o in out)


# -- top_eigenvalue -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eigenvalue_matches_eigvalsh_on_a_small_mlp(seed):
    net, x, y, closure = _small_problem(seed)
    expected = torch.linalg.eigvalsh(_explicit_hessian(net, x, y)).max().item()
    result = top_eigenvalue(closure, net, iters=5000, tol=1e-10, seed=seed)
    assert isinstance(result, Eigenpair) and result.converged
    assert result.value == pytest.approx(expected, rel=1e-7)
    # The returned vector is a unit eigenvector: H v = λ v.
    hv = hvp(closure, net, result.vector)
    flat = torch.cat([t.reshape(-1) for t in result.vector])
    assert flat.norm().item() == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in hv]), result.value * flat, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "spectrum",
    [
        [10.0, 5.0, 3.0, 1.0, 0.1, 0.0],  # positive semi-definite
        [4.0, 2.0, 1.0, -1.0, -3.0],  # indefinite, positive end dominant
        [2.0, 1.0, 0.0, -0.5, -7.0],  # negative end dominant: power iteration would find -7
        [-1.0, -2.0, -6.0],  # negative definite: λ_max = -1
    ],
)
def test_top_eigenvalue_on_a_quadratic_with_known_spectrum(spectrum):
    _, theta, closure = _quadratic(spectrum, seed=len(spectrum))
    result = top_eigenvalue(closure, [theta], iters=5000, tol=1e-10)
    assert result.converged
    assert result.value == pytest.approx(max(spectrum), rel=1e-7)


def test_warm_start_from_the_eigenvector_converges_at_once():
    net, _, _, closure = _small_problem(4)
    first = top_eigenvalue(closure, net, iters=5000, tol=1e-10)
    again = top_eigenvalue(closure, net, iters=5000, tol=1e-6, init=first.vector)
    assert again.iterations <= 2
    assert again.value == pytest.approx(first.value, rel=1e-8)
    flat = torch.cat([t.reshape(-1) for t in first.vector])
    assert top_eigenvalue(closure, net, iters=5, tol=1e-6, init=flat).iterations <= 2


def test_same_seed_same_result_and_float32_works():
    net, _, _, closure = _small_problem(5)
    a = top_eigenvalue(closure, net, iters=20, tol=0.0, seed=7)
    b = top_eigenvalue(closure, net, iters=20, tol=0.0, seed=7)
    assert a.value == b.value and a.iterations == 20
    net32 = gl.mlp(2, 4, in_features=3, out_features=1, activation="tanh")
    x = torch.randn(8, 3)
    r = top_eigenvalue(lambda: net32(x).pow(2).mean(), net32, iters=50)
    assert r.vector[0].dtype == torch.float32 and r.value == r.value


# -- the top of the spectrum, whatever the signs ------------------------------------------------


def _true_residual(closure, params, pair):
    """``‖Hv - λv‖ / |λ|`` recomputed from scratch for the returned pair."""
    hv = torch.cat([h.reshape(-1) for h in hvp(closure, params, pair.vector)])
    v = torch.cat([t.reshape(-1) for t in pair.vector])
    return float((hv - pair.value * v).norm() / abs(pair.value)), float(v.norm())


@pytest.mark.parametrize(
    "spectrum",
    [
        [5.0, -5.0, 1.0],  # the ± pair that stalled the power iteration (4.65, not converged)
        [3.0, -3.0, 2.0, -2.0, 1.0, -1.0],  # symmetric about 0
        [-5.0, 5.0 - 1e-3, 1.0, -1.0],  # the negative end dominant by a hair
        torch.linspace(-10.0, 10.0, 50).tolist(),  # many eigenvalues, symmetric
        [4.0, 4.0, 4.0, 1.0, 1.0, -2.0],  # degenerate: the Krylov space has 3 dimensions
        [-3.0, -3.0, -3.0],  # negative definite and degenerate
        [-1.0, -2.0, -6.0, -6.5],  # negative definite: λ_max = -1, the smallest in magnitude
        [0.0, 0.0, -1e-3],  # positive semi-definite end at 0
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_top_eigenvalue_is_the_algebraic_top_on_signed_spectra(spectrum, seed):
    _, theta, closure = _quadratic(spectrum, seed=seed)
    result = top_eigenvalue(closure, [theta], iters=200, tol=1e-9, seed=seed)
    assert result.converged and result.iterations <= len(spectrum)
    assert result.value == pytest.approx(max(spectrum), rel=1e-8, abs=1e-12)


def test_top_eigenvalue_stops_at_the_tolerance_and_reports_its_own_residual():
    _, theta, closure = _quadratic(torch.linspace(-10.0, 10.0, 60).tolist(), seed=4)
    for tol in (1e-2, 1e-5):
        result = top_eigenvalue(closure, [theta], iters=200, tol=tol)
        true, norm = _true_residual(closure, [theta], result)
        assert result.converged and result.residual <= tol and norm == pytest.approx(1.0, rel=1e-12)
        assert true == pytest.approx(result.residual, rel=1e-6, abs=1e-13)
        # A symmetric matrix has an eigenvalue within the residual: here it must be the top, 10.
        assert abs(result.value - 10.0) <= tol * abs(result.value)
    stopped = top_eigenvalue(closure, [theta], iters=3, tol=0.0)
    true, _ = _true_residual(closure, [theta], stopped)
    assert not stopped.converged and stopped.iterations == 3
    assert true == pytest.approx(stopped.residual, rel=1e-10)  # value, vector, residual: one pair
    assert stopped.value < 10.0  # a Ritz value never exceeds λ_max


@pytest.mark.parametrize("activation, seed", [("tanh", 5), ("relu", 6), ("gelu", 7), ("sigmoid", 8)])
def test_top_eigenvalue_matches_eigvalsh_on_networks_with_indefinite_hessians(activation, seed):
    net, x, y, closure = _small_problem(seed, activation)
    eigenvalues = torch.linalg.eigvalsh(_explicit_hessian(net, x, y))
    assert eigenvalues.min() < 0 < eigenvalues.max()  # a saddle: both signs present
    result = top_eigenvalue(closure, net, iters=500, tol=1e-10, seed=seed)
    assert result.converged and result.iterations <= len(eigenvalues)
    assert result.value == pytest.approx(eigenvalues.max().item(), rel=1e-8)
    true, _ = _true_residual(closure, net, result)
    assert true == pytest.approx(result.residual, rel=1e-4, abs=1e-12)


def test_a_start_with_no_top_component_is_completed_by_a_random_restart():
    """From an eigenvector of -5 the Krylov space is that one line (an invariant subspace):
    with tol = 0 the iteration goes on from a random orthogonal vector and finds 5."""
    a = torch.diag(torch.tensor([5.0, -5.0, 1.0], dtype=DT))
    theta = torch.zeros(3, dtype=DT, requires_grad=True)

    def closure():
        return 0.5 * theta @ a @ theta

    start = torch.tensor([0.0, 1.0, 0.0], dtype=DT)
    full = top_eigenvalue(closure, [theta], iters=10, tol=0.0, init=start)
    assert full.converged and full.value == pytest.approx(5.0, rel=1e-12)
    # The documented limit: with a tolerance, a start that is already an eigenvector converges
    # on its own eigenvalue. A warm start trusts that the top eigenvector has not moved away.
    warm = top_eigenvalue(closure, [theta], iters=10, tol=1e-6, init=start)
    assert warm.iterations == 1 and warm.value == pytest.approx(-5.0)


def test_zero_hessian_gives_zero():
    w = torch.randn(4, dtype=DT, requires_grad=True)
    result = top_eigenvalue(lambda: (3.0 * w).sum(), [w], iters=10)
    assert result.value == 0.0 and result.converged and result.residual == 0.0


# -- the chapter's prediction: GD on ½ xᵀAx is stable iff η < 2/λ_max ---------------------------


def test_gradient_descent_threshold_is_two_over_top_eigenvalue():
    a, theta, closure = _quadratic([9.0, 4.0, 2.0, 1.0, 0.3], seed=11)
    lam = top_eigenvalue(closure, [theta], iters=5000, tol=1e-12).value
    x0 = torch.ones(5, dtype=DT)

    def final_norm(eta, steps=400):
        x = x0.clone()
        for _ in range(steps):
            x = x - eta * (a @ x)
        return x.norm().item(), x

    below, _ = final_norm(0.99 * 2 / lam)
    above, _ = final_norm(1.01 * 2 / lam)
    assert below < 1e-1 * x0.norm().item()
    assert above > 1e2 * x0.norm().item()
    # Above the threshold the norm grows by |1 - ηλ_max| per step (tolerance 1e-6 relative).
    eta = 1.01 * 2 / lam
    n1, x = final_norm(eta, 300)
    n2 = (x - eta * (a @ x)).norm().item()
    assert n2 / n1 == pytest.approx(abs(1 - eta * lam), rel=1e-6)


def _frozen_adam_final_norm(a, p, eta, beta1, steps=3000):
    """Adam with a frozen preconditioner on ½ xᵀAx: m ← β₁m + (1 - β₁)Ax, x ← x - η P⁻¹m."""
    x = torch.ones(a.shape[0], dtype=DT)
    m = torch.zeros_like(x)
    for _ in range(steps):
        m = beta1 * m + (1 - beta1) * (a @ x)
        x = x - eta * m / p
    return x.norm().item()


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_frozen_adam_threshold_is_set_by_the_preconditioned_sharpness(beta1):
    """The learning-rate chapter's corollary (Cohen et al. 2022): stable iff
    λ_max(P⁻¹A) < (2 + 2β₁) / ((1 - β₁) η); the plain 2/λ_max(A) is far off here."""
    a, theta, closure = _quadratic([9.0, 4.0, 2.0, 1.0, 0.3], seed=12)
    p = 10.0 ** (3 * torch.rand(5, generator=torch.Generator().manual_seed(5), dtype=DT) - 2)
    lam_p = preconditioned_top_eigenvalue(closure, [theta], p, iters=100, tol=1e-12).value
    lam = top_eigenvalue(closure, [theta], iters=100, tol=1e-12).value
    eta_star = (2 + 2 * beta1) / ((1 - beta1) * lam_p)
    assert abs(eta_star * lam - 2) > 0.5  # the two thresholds differ: the test can tell them apart
    # 2% on either side: 3000 steps separate them by many decades (below shrinks 10x, above
    # grows 100x).
    assert _frozen_adam_final_norm(a, p, 0.98 * eta_star, beta1) < 0.1
    assert _frozen_adam_final_norm(a, p, 1.02 * eta_star, beta1) > 100.0


# -- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    net, _, _, closure = _small_problem(0)
    params = list(net.parameters())
    v = [torch.zeros_like(p) for p in params]
    with pytest.raises(TypeError, match="closure"):
        hvp("loss", params, v)
    with pytest.raises(TypeError, match="params"):
        hvp(closure, params[0], v)
    with pytest.raises(ValueError, match="params"):
        hvp(closure, [], v)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        hvp(closure, [torch.zeros(3)], [torch.zeros(3)])
    with pytest.raises(TypeError, match=r"params\[1\]"):
        hvp(closure, [params[0], 3.0], v[:2])
    with pytest.raises(ValueError, match="vector"):
        hvp(closure, params, v[:-1])
    with pytest.raises(ValueError, match=r"vector\[0\]"):
        hvp(closure, params, [torch.zeros(2)] + v[1:])
    with pytest.raises(ValueError, match="vector"):
        hvp(closure, params, torch.zeros(3))
    with pytest.raises(TypeError, match="vector"):
        hvp(closure, params, 1.0)
    with pytest.raises(ValueError, match="closure"):
        hvp(lambda: net(torch.zeros(4, 3, dtype=DT)), params, v)
    with pytest.raises(ValueError, match="closure"):
        hvp(lambda: closure() * float("nan"), params, v)
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(closure, net, iters=0)
    with pytest.raises(TypeError, match="iters"):
        top_eigenvalue(closure, net, iters=2.5)
    with pytest.raises(ValueError, match="tol"):
        top_eigenvalue(closure, net, tol=-1.0)
    with pytest.raises(ValueError, match="seed"):
        top_eigenvalue(closure, net, seed=-1)
    with pytest.raises(ValueError, match="init"):
        top_eigenvalue(closure, net, init=v)


# -- Adam's preconditioned sharpness ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preconditioned_top_eigenvalue_matches_the_explicit_matrix(seed):
    net, x, y, closure = _small_problem(seed)
    h = _explicit_hessian(net, x, y)
    g = torch.Generator().manual_seed(seed)
    pre = [torch.exp(2 * torch.randn(p.shape, generator=g, dtype=DT)) for p in net.parameters()]
    flat = torch.cat([q.reshape(-1) for q in pre])
    expected = torch.linalg.eigvals(h / flat[:, None]).real.max().item()  # lambda_max(P^-1 H)
    top = preconditioned_top_eigenvalue(closure, net, pre, iters=500, tol=1e-10)
    assert top.converged
    assert top.value == pytest.approx(expected, rel=1e-7)
    # The flat form of P gives the same answer; a constant P = c divides the sharpness by c.
    assert preconditioned_top_eigenvalue(closure, net, flat, iters=500, tol=1e-10).value == (
        pytest.approx(expected, rel=1e-7))
    c = [torch.full_like(p, 4.0) for p in net.parameters()]
    plain = top_eigenvalue(closure, net, iters=500, tol=1e-10).value
    assert preconditioned_top_eigenvalue(closure, net, c, iters=500, tol=1e-10).value == (
        pytest.approx(plain / 4, rel=1e-7))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.5, 0.9), eps=1e-3, amsgrad=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0),
])
def test_adam_preconditioner_reproduces_torch_adams_last_step(make):
    net, x, y, closure = _small_problem(3)
    opt = make(net.parameters())
    for _ in range(5):  # the step is -lr * m_t / P_t, with torch's own m_t
        before = [p.detach().clone() for p in net.parameters()]
        opt.zero_grad()
        closure().backward()
        opt.step()
        pre = adam_preconditioner(opt)
        for p, b, q in zip(net.parameters(), before, pre, strict=True):
            expected = -opt.param_groups[0]["lr"] * opt.state[p]["exp_avg"] / q
            torch.testing.assert_close(p.detach() - b, expected, rtol=1e-10, atol=1e-15)


def test_adam_preconditioner_and_preconditioned_sharpness_bad_inputs():
    net, _, _, closure = _small_problem(0)
    with pytest.raises(TypeError, match="optimizer"):
        adam_preconditioner(torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="step"):
        adam_preconditioner(torch.optim.Adam(net.parameters()))
    ones = [torch.ones_like(p) for p in net.parameters()]
    with pytest.raises(ValueError, match="preconditioner"):
        preconditioned_top_eigenvalue(closure, net, [-o for o in ones])
    with pytest.raises(ValueError, match="preconditioner"):
        preconditioned_top_eigenvalue(closure, net, ones[:-1])
    with pytest.raises(TypeError, match="preconditioner"):
        preconditioned_top_eigenvalue(closure, net, 2.0)
    with pytest.raises(ValueError, match="iters"):
        preconditioned_top_eigenvalue(closure, net, ones, iters=0)
