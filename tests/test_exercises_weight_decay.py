"""Tests for gradlab.exercises.weight_decay: check_adamw_step."""

import pytest
import torch

from gradlab.exercises.weight_decay import ADAMW_SLIPS, STEP, M, V, _adamw_case, check_adamw_step


def _only_slip(word):
    (slip,) = [s for s in ADAMW_SLIPS if word in s]
    return slip


def adam_parts(grad, m, v, t, beta1, beta2, eps, bias_correction=True):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    if bias_correction:
        return m, v, (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
    return m, v, m / (v.sqrt() + eps)


def adamw_step(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad, m, v, t, beta1, beta2, eps)
    return theta * (1 - lr * weight_decay) - lr * direction, m, v


def l2_penalty(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad + weight_decay * theta, m, v, t, beta1, beta2, eps)
    return theta - lr * direction, m, v


def decay_after(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad, m, v, t, beta1, beta2, eps)
    return (theta - lr * direction) * (1 - lr * weight_decay), m, v


def decay_without_lr(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad, m, v, t, beta1, beta2, eps)
    return theta * (1 - weight_decay) - lr * direction, m, v


def decay_normalized(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad, m, v, t, beta1, beta2, eps)
    denominator = (v / (1 - beta2**t)).sqrt() + eps
    return theta - lr * direction - lr * weight_decay * theta / denominator, m, v


def no_decay(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    return adamw_step(theta, grad, m, v, t, lr, beta1, beta2, eps, 0.0)


def no_bias_correction(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m, v, direction = adam_parts(grad, m, v, t, beta1, beta2, eps, bias_correction=False)
    return theta * (1 - lr * weight_decay) - lr * direction, m, v


ADAMW_WRONG = {
    "an L2 penalty": l2_penalty,
    "decay applied after": decay_after,
    "decay without the learning rate": decay_without_lr,
    "divided by sqrt(v_hat)": decay_normalized,
    "no decay at all": no_decay,
    "without bias correction": no_bias_correction,
}


def test_check_adamw_step_accepts_by_hand_and_torch():
    def with_torch(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
        opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = grad.clone()
        opt.step()
        return p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    assert check_adamw_step(adamw_step)
    result = check_adamw_step(with_torch, n_cases=12, seed=5)
    assert result.passed and result.cases == 12 and "torch.optim.AdamW" in str(result)


@pytest.mark.parametrize("word", ADAMW_WRONG)
def test_check_adamw_step_names_each_slip(word):
    result = check_adamw_step(ADAMW_WRONG[word])
    assert not result.passed
    assert "adamw step: case " in result.message and " (t=" in result.message
    assert "weight_decay=" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_adamw_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in ADAMW_WRONG) == sorted(ADAMW_SLIPS)


def test_check_adamw_step_names_the_wrong_quantity_and_form():
    def v_of_abs(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        new_theta, m, _ = adamw_step(theta, grad, m, v, t, lr, beta1, beta2, eps, weight_decay)
        return new_theta, m, beta2 * v + (1 - beta2) * grad.abs()

    result = check_adamw_step(v_of_abs)
    assert f"{V} is wrong" in result.message and "Known slip" not in result.message
    result = check_adamw_step(lambda *a: a[0])
    assert "returned Tensor; return the three new tensors (theta, m, v)" in result.message
    result = check_adamw_step(lambda *a: ("theta", a[2], a[3]))
    assert "the returned theta is str, expected a tensor" in result.message
    result = check_adamw_step(lambda *a: 1 / 0)
    assert not result.passed and "ZeroDivisionError" in result.message and result.cases == 1


def test_adamw_cases_reach_every_step_and_make_the_decay_visible():
    """Every case is one torch.optim.AdamW step from the state handed over; lr * weight_decay
    spans 1e-5 to 0.1, and decaying after the step differs from torch by more than the checker's
    tolerance in every case."""
    g = torch.Generator().manual_seed(0)
    steps, products = set(), []
    for i in range(60):
        case = _adamw_case(g, i)
        theta, grad, m, v, t, lr, beta1, beta2, eps, wd = case.args
        steps.add(t)
        products.append(lr * wd)
        if t == 1:
            assert not m.any() and not v.any()
        torch.testing.assert_close(case.expected[M], beta1 * m + (1 - beta1) * grad, rtol=1e-12, atol=0.0)
        wrong_step = decay_after(*case.args)[0] - theta
        assert not torch.allclose(wrong_step, case.expected[STEP], rtol=1e-6, atol=1e-13)
    assert steps == set(range(1, 7))
    assert min(products) >= 1e-5 and max(products) <= 0.1
