"""Tests for gradlab.spectral: the weight matrices a model uses, their singular values, and the
orthogonality penalty, against torch.linalg and torch's spectral_norm/orthogonal parametrizations."""

import pytest
import torch
from torch.nn.utils.parametrizations import orthogonal, spectral_norm

import gradlab as gl
from gradlab.spectral import orthogonality_penalty, singular_values, spectral_norms, weight_matrices


def _rnn(seed=0, gain=1.5):
    torch.manual_seed(seed)
    return gl.models.VanillaRNN(3, 12, 2, gain=gain)


def test_weight_matrices_of_plain_models_are_their_parameters():
    model = gl.mlp(3, 8, in_features=4, out_features=2)
    matrices = weight_matrices(model)
    assert list(matrices) == ["0.linear.weight", "1.linear.weight", "2.linear.weight"]
    for block, w in zip(model, matrices.values(), strict=True):
        torch.testing.assert_close(w, block.linear.weight.detach(), rtol=0, atol=0)
    rnn = _rnn()
    assert list(weight_matrices(rnn)) == ["W", "U", "readout.weight"]
    conv = torch.nn.Conv2d(3, 5, 3)
    (w,) = weight_matrices(conv).values()
    assert w.shape == (5, 27)


def test_parametrized_weights_are_read_as_the_forward_pass_uses_them():
    rnn = spectral_norm(_rnn(), "W")
    matrices = weight_matrices(rnn)
    assert "W" in matrices and not any("original" in k for k in matrices)
    rnn.eval()  # in eval mode, reading W does not run the power iteration
    torch.testing.assert_close(matrices["W"], rnn.W.detach(), rtol=0, atol=0)


def test_measuring_leaves_spectral_norm_state_and_modes_unchanged():
    rnn = spectral_norm(_rnn(), "W")
    chain = rnn.parametrizations.W
    u, v = chain[0]._u.clone(), chain[0]._v.clone()
    spectral_norms(rnn)
    singular_values(rnn)
    torch.testing.assert_close(chain[0]._u, u, rtol=0, atol=0)
    torch.testing.assert_close(chain[0]._v, v, rtol=0, atol=0)
    assert rnn.training and chain.training and chain[0].training


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_norms_match_torch_matrix_norm(seed):
    torch.manual_seed(seed)
    model = gl.mlp(4, 16, in_features=5, out_features=3, gain=1.3)
    norms = spectral_norms(model)
    for block, (name, value) in zip(model, norms.items(), strict=True):
        expected = torch.linalg.matrix_norm(block.linear.weight.detach().double(), ord=2).item()
        assert value == pytest.approx(expected, rel=1e-12), name


def test_spectral_norm_parametrization_gives_sigma_over_its_estimate_at_least_one():
    """Under spectral_norm the weight is W / (u^T W v); the estimate is below sigma_max, so the
    normalized matrix has largest singular value >= 1, = sigma_max / estimate."""
    for seed in range(5):
        rnn = spectral_norm(_rnn(seed, gain=2.0), "W")
        chain = rnn.parametrizations.W
        original = chain.original.detach().double()
        estimate = chain[0]._u.double() @ original @ chain[0]._v.double()
        expected = torch.linalg.matrix_norm(original, ord=2).item() / estimate.item()
        measured = spectral_norms(rnn)["W"]
        assert measured == pytest.approx(expected, rel=1e-5)
        assert measured >= 1.0 - 1e-6


def test_orthogonal_parametrization_has_unit_singular_values():
    rnn = orthogonal(_rnn(), "W")
    s = singular_values(rnn)["W"]
    torch.testing.assert_close(s, torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-5)


def test_singular_values_match_svdvals_largest_first():
    rnn = _rnn(3)
    for name, s in singular_values(rnn).items():
        w = dict(rnn.named_parameters())[name].detach().double()
        torch.testing.assert_close(s, torch.linalg.svdvals(w))
        assert s.dtype == torch.float64 and bool((s[:-1] >= s[1:]).all())


@pytest.mark.parametrize("shape", [(6, 6), (9, 4), (3, 7), (1, 5)])
def test_orthogonality_penalty_is_the_sum_over_singular_values(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    expected = ((s**2 - 1) ** 2).sum()
    torch.testing.assert_close(orthogonality_penalty(w), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 6), (9, 4), (3, 7)])
def test_orthogonality_penalty_gradient_is_4_w_gram_minus_identity(shape):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(orthogonality_penalty(w), w)
    m, n = shape
    wd = w.detach()
    expected = (4 * wd @ (wd.T @ wd - torch.eye(n, dtype=wd.dtype)) if m >= n
                else 4 * (wd @ wd.T - torch.eye(m, dtype=wd.dtype)) @ wd)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)


def test_orthogonality_penalty_is_zero_on_torch_orthogonal_matrices():
    for shape in [(8, 8), (10, 4), (4, 10)]:
        w = torch.nn.init.orthogonal_(torch.empty(shape, dtype=torch.float64))
        assert orthogonality_penalty(w).item() < 1e-20
    layer = orthogonal(torch.nn.Linear(6, 6))
    assert orthogonality_penalty(layer.weight.detach()).item() < 1e-10


def test_gradient_descent_on_the_penalty_reaches_an_orthogonal_matrix():
    """The soft penalty alone, minimized, gives what torch's hard parametrization imposes."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(8, 8, generator=g, dtype=torch.float64) / 8**0.5).requires_grad_()
    opt = torch.optim.SGD([w], lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        orthogonality_penalty(w).backward()
        opt.step()
    s = torch.linalg.svdvals(w.detach())
    torch.testing.assert_close(s, torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: orthogonality_penalty([[1.0, 0.0], [0.0, 1.0]]), TypeError, "weight"),
        (lambda: orthogonality_penalty(torch.ones(3)), ValueError, "weight"),
        (lambda: orthogonality_penalty(torch.ones(2, 2, 2)), ValueError, "weight"),
        (lambda: orthogonality_penalty(torch.ones(2, 2, dtype=torch.int64)), TypeError, "weight"),
        (lambda: weight_matrices(torch.ones(3, 3)), TypeError, "model"),
        (lambda: spectral_norms("model"), TypeError, "model"),
        (lambda: singular_values(None), TypeError, "model"),
    ],
)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=name):
        call()


# --- the chapter's statements about spectral_norm on a recurrent matrix -------------------------


def _normalized_rnn(seed, activation, n=48):
    torch.manual_seed(seed)
    net = spectral_norm(gl.models.VanillaRNN(4, n, activation=activation, spectral_radius=1.5), "W")
    net.eval()
    return net


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", ["linear", "tanh"])
def test_spectral_norm_jacobians_obey_the_bound_of_their_largest_singular_value(seed, activation):
    """Theorem thm-sn-no-explosion: ||dh_T/dh_{T-k}|| <= sigma_max(W_SN)^k, and the gradient of
    a last-state loss with respect to W is at most ||grad l|| * sum_t ||h_{t-1}||."""
    net = _normalized_rnn(seed, activation)
    w = net.W.detach()
    x = 0.1 * torch.randn(60, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        hs, preacts = net.states(x[None])
    norms = gl.theory.bptt_jacobian_norms(w, preacts[0], activation)
    sigma = gl.theory.spectral_norm(w)
    assert bool((norms <= sigma ** torch.arange(61, dtype=torch.float64) * (1 + 1e-9)).all())
    plain = gl.models.VanillaRNN(4, 48, activation=activation)  # the same cell, W unparametrized
    with torch.no_grad():
        plain.W.copy_(w)
        plain.U.copy_(net.U)
        plain.b.copy_(net.b)
    direction = torch.randn(48, generator=torch.Generator().manual_seed(1))
    states, _ = plain.states(x[None])
    (grad_w,) = torch.autograd.grad(states[0, -1] @ direction, plain.W)
    bound = direction.norm() * hs[0, :-1].norm(dim=1).sum()
    assert grad_w.norm() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_spectral_norm_gradient_vanishes_at_its_spectral_radius(seed):
    """Gelfand: the factor per step of lag between lags 40 and 90 is rho(W_SN), which is about
    half of sigma_max for a Gaussian matrix. Tolerance 2 % (a finite window)."""
    net = _normalized_rnn(seed, "linear")
    w = net.W.detach()
    norms = gl.theory.bptt_jacobian_norms(w, torch.zeros(100, 48), "linear")
    rate = float(norms[90] / norms[40]) ** (1 / 50)
    rho = gl.theory.spectral_radius(w)
    assert rate == pytest.approx(rho, rel=0.02)
    assert 0.4 < rho < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_at_lag_30_fails_under_spectral_norm_and_works_with_orthogonal(seed):
    """The chapter's recall task (first input after 29 zeros), 32 tanh units from a Gaussian W of
    gain 1.5, Adam 2e-2 for 150 steps: spectral_norm stays at the loss of forgetting, torch's
    orthogonal parametrization learns."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(128, 30, 1)
    x[:, 0, 0] = torch.randn(128, generator=g)
    y = x[:, 0].clone()
    forget = float(y.var(unbiased=False))
    finals = {}
    for version, parametrization in (("sn", spectral_norm), ("orth", orthogonal)):
        with gl.utils.seeded(seed):
            net = parametrization(gl.models.VanillaRNN(1, 32, 1, gain=1.5), "W")
        gl.fit(net, torch.nn.functional.mse_loss, (x, y), torch.optim.Adam(net.parameters(), lr=2e-2),
               steps=150)
        with torch.no_grad():
            finals[version] = float(torch.nn.functional.mse_loss(net(x), y))
    assert finals["sn"] > 0.99 * forget
    assert finals["orth"] < 0.05 * forget
