"""Tests for gradlab.exercises.optimizers: check_adam_step."""

import pytest
import torch

from gradlab.exercises.optimizers import ADAM_SLIPS, M, V, _adam_case, check_adam_step


def _only_slip(word):
    (slip,) = [s for s in ADAM_SLIPS if word in s]
    return slip


def adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return theta - lr * m_hat / (v_hat.sqrt() + eps), m, v


def no_bias_correction(theta, grad, m, v, t, lr, beta1, beta2, eps):
    return adam_step(theta, grad, m, v, 10**9, lr, beta1, beta2, eps)


def eps_inside(theta, grad, m, v, t, lr, beta1, beta2, eps):
    _, m, v = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
    return theta - lr * (m / (1 - beta1**t)) / (v / (1 - beta2**t) + eps).sqrt(), m, v


def plus_gradient(theta, grad, m, v, t, lr, beta1, beta2, eps):
    new_theta, m, v = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
    return 2 * theta - new_theta, m, v


def t_plus_one(theta, grad, m, v, t, lr, beta1, beta2, eps):
    return adam_step(theta, grad, m, v, t + 1, lr, beta1, beta2, eps)


def raw_gradient(theta, grad, m, v, t, lr, beta1, beta2, eps):
    _, m, v = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
    return theta - lr * grad / ((v / (1 - beta2**t)).sqrt() + eps), m, v


def corrected_m(theta, grad, m, v, t, lr, beta1, beta2, eps):
    new_theta, m, v = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
    return new_theta, m / (1 - beta1**t), v


def corrected_v(theta, grad, m, v, t, lr, beta1, beta2, eps):
    new_theta, m, v = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
    return new_theta, m, v / (1 - beta2**t)


ADAM_WRONG = {
    "without bias correction": no_bias_correction,
    "inside the square root": eps_inside,
    "+gradient": plus_gradient,
    "t + 1": t_plus_one,
    "raw gradient": raw_gradient,
    "m returned bias-corrected": corrected_m,
    "v returned bias-corrected": corrected_v,
}


def test_check_adam_step_accepts_by_hand_and_torch():
    def with_torch(theta, grad, m, v, t, lr, beta1, beta2, eps):
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
        opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = grad.clone()
        opt.step()
        return p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    assert check_adam_step(adam_step)
    result = check_adam_step(with_torch, n_cases=12, seed=5)
    assert result.passed and result.cases == 12 and "torch.optim.Adam" in str(result)


@pytest.mark.parametrize("word", ADAM_WRONG)
def test_check_adam_step_names_each_slip(word):
    result = check_adam_step(ADAM_WRONG[word])
    assert not result.passed
    assert "adam step: case " in result.message and " (t=" in result.message and "lr=" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_adam_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in ADAM_WRONG) == sorted(ADAM_SLIPS)


def test_check_adam_step_names_the_wrong_quantity_and_form():
    def v_of_abs(theta, grad, m, v, t, lr, beta1, beta2, eps):  # |g| where g² belongs
        new_theta, m, _ = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
        return new_theta, m, beta2 * v + (1 - beta2) * grad.abs()

    result = check_adam_step(v_of_abs)
    assert f"{V} is wrong" in result.message and "Known slip" not in result.message
    result = check_adam_step(lambda *a: a[0])
    assert "returned Tensor; return the three new tensors (theta, m, v)" in result.message
    result = check_adam_step(lambda *a: ("theta", a[2], a[3]))
    assert "the returned theta is str, expected a tensor" in result.message
    result = check_adam_step(lambda *a: 1 / 0)
    assert not result.passed and "ZeroDivisionError" in result.message and result.cases == 1


def test_adam_cases_reach_every_step_and_the_eps_regime():
    g = torch.Generator().manual_seed(0)
    steps, tiny = set(), 0
    for i in range(40):
        case = _adam_case(g, i)
        theta, grad, m, v, t, lr, beta1, beta2, eps = case.args
        steps.add(t)
        tiny += bool(grad.abs().max() ** 2 < eps)
        if t == 1:
            assert not m.any() and not v.any()
        # torch's state after the step is the update of the state handed to the reader
        torch.testing.assert_close(case.expected[M], beta1 * m + (1 - beta1) * grad, rtol=1e-12, atol=0.0)
    assert steps == set(range(1, 7)) and tiny >= 5
