"""Tests for gradlab.exercises."""


# --- Chapter "Gradient clipping": check_clip_grad_norm -------------------------------------------


def test_check_clip_grad_norm_accepts_torch_and_gradlab():
    import torch

    from gradlab import clip
    from gradlab.exercises import check_clip_grad_norm

    assert check_clip_grad_norm(torch.nn.utils.clip_grad_norm_)
    result = check_clip_grad_norm(lambda ps, m: clip.clip_grad_norm_(ps, m), n_cases=20, seed=3)
    assert result.passed and result.cases == 20 and "match" in str(result)


def test_check_clip_grad_norm_explains_mistakes():
    import pytest
    import torch

    from gradlab.exercises import check_clip_grad_norm

    def always_rescale(ps, max_norm):  # forgets the min(1, .): small gradients get blown up
        grads = [p.grad for p in ps if p.grad is not None]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
        return norm

    def per_tensor(ps, max_norm):  # clips each tensor on its own
        norms = []
        for p in ps:
            if p.grad is not None:
                norms.append(p.grad.norm())
                p.grad.mul_(min(1.0, max_norm / (float(norms[-1]) + 1e-6)))
        return torch.stack(norms).norm()

    def crashes_on_none(ps, max_norm):
        torch.sqrt(sum((p.grad**2).sum() for p in ps))  # p.grad may be None
        return torch.nn.utils.clip_grad_norm_(ps, max_norm)

    for wrong, words in [(always_rescale, "gradient of parameter"), (per_tensor, "gradient of parameter"),
                         (crashes_on_none, "raised TypeError"), (lambda ps, m: "n/a", "returned str")]:
        result = check_clip_grad_norm(wrong)
        assert not result.passed and words in result.message, result.message
    with pytest.raises(TypeError, match="callable"):
        check_clip_grad_norm(3)


# --- Chapter "Learning rate, schedules and warm-up": check_max_stable_lr, check_hvp -------------


def test_check_max_stable_lr_accepts_eigvalsh_and_power_iteration():
    import torch

    from gradlab.exercises import check_max_stable_lr

    assert check_max_stable_lr(lambda a: 2 / torch.linalg.eigvalsh(a).max())

    def power(a, iters=3000):
        v = torch.ones(a.shape[0], dtype=a.dtype)
        for _ in range(iters):
            v = a @ v
            v = v / v.norm()
        return 2 / float(v @ a @ v)

    result = check_max_stable_lr(power, n_cases=12, seed=1)
    assert result.passed and result.cases == 12, result.message


def test_check_max_stable_lr_names_the_slip():
    import torch

    from gradlab.exercises import check_max_stable_lr

    one_over = check_max_stable_lr(lambda a: 1 / torch.linalg.eigvalsh(a).max())
    assert not one_over and "1/λ_max" in str(one_over) and "expected" in str(one_over)
    smallest = check_max_stable_lr(lambda a: 2 / torch.linalg.eigvalsh(a)[0], seed=2)
    assert not smallest and "λ_min" in str(smallest)
    entry = check_max_stable_lr(lambda a: 2 / a.abs().max(), seed=3)
    assert not entry
    broken = check_max_stable_lr(lambda a: a.nope)
    assert not broken and "AttributeError" in str(broken) and broken.cases == 1
    assert not check_max_stable_lr(lambda a: "big")


def test_check_hvp_accepts_double_backward_and_torch():
    import torch

    from gradlab.exercises import check_hvp

    def double_backward(f, x, v):
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
        (hv,) = torch.autograd.grad(grad @ v, x)
        return hv

    assert check_hvp(double_backward)
    result = check_hvp(lambda f, x, v: torch.autograd.functional.hvp(f, x, v)[1], n_cases=10, seed=4)
    assert result.passed and result.cases == 10


def test_check_hvp_explains_mistakes():
    import pytest
    import torch

    from gradlab.exercises import check_hvp

    def gradient_only(f, x, v):
        x = x.detach().requires_grad_()
        return torch.autograd.grad(f(x), x)[0]

    def no_requires_grad(f, x, v):
        return torch.autograd.grad(f(x), x)[0]

    wrong = check_hvp(gradient_only)
    assert not wrong and "gradient" in str(wrong) and "expected" in str(wrong)
    raised = check_hvp(no_requires_grad)
    assert not raised and "requires_grad_" in str(raised)
    shape = check_hvp(lambda f, x, v: torch.zeros(len(x) + 1, dtype=x.dtype))
    assert not shape and "shape" in str(shape)
    with pytest.raises(TypeError):
        check_hvp("hvp")


# ---------------------------------------------------------------------------------------------
# check_function, CheckResult, and the chapter 1-2 checkers
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------


def _core_square_cases():
    import torch

    return [(torch.tensor([1.0, -2.0, 3.0]),), (torch.tensor(0.5),), (torch.arange(4.0).reshape(2, 2),)]


def test_check_function_passes_a_correct_function():
    from gradlab.exercises import CheckResult, check_function

    result = check_function(lambda t: t * t, lambda t: t**2, _core_square_cases(), name="square")
    assert isinstance(result, CheckResult)
    assert result.passed and bool(result)
    assert result.cases == 3
    assert result.message == "square: all 3 random cases match."
    # plain Python numbers and lists are accepted as return values
    result = check_function(lambda a, b: float(a + b), lambda a, b: a + b, [(1, 2), (0.5, 0.25)],
                            name="add")
    assert result and result.cases == 2


def test_check_function_names_the_failing_case_and_shows_both_values():
    import torch

    from gradlab.exercises import check_function

    def wrong(t):
        return t * t if t.ndim != 0 else t * 3  # wrong on case 2 only

    result = check_function(wrong, lambda t: t**2, _core_square_cases(), name="square")
    assert not result and result.passed is False
    assert result.cases == 2
    assert result.message.startswith("square: case 2 is wrong")
    assert "largest error 1.25" in result.message
    assert "expected: [0.25]" in result.message
    assert "returned: [1.5]" in result.message
    long = check_function(lambda t: t + 1, lambda t: t, [(torch.zeros(10),)], name="long")
    assert "expected: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0] ..." in long.message
    assert "returned: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0] ..." in long.message


def test_check_function_tolerances():
    from gradlab.exercises import check_function

    cases = [(1.0,)]
    assert check_function(lambda x: x + 1e-9, lambda x: x, cases, name="f")
    assert not check_function(lambda x: x + 1e-3, lambda x: x, cases, name="f")
    assert check_function(lambda x: x + 1e-3, lambda x: x, cases, name="f", rtol=1e-2)
    assert not check_function(lambda x: float("nan"), lambda x: x, cases, name="f")


def test_check_function_reports_exceptions_of_the_candidate():
    from gradlab.exercises import check_function

    def broken(t):
        raise ZeroDivisionError("oops")

    result = check_function(broken, lambda t: t, _core_square_cases(), name="square")
    assert not result
    assert result.cases == 1
    assert result.message == "square: case 1 raised ZeroDivisionError: oops"


def test_check_function_reports_wrong_shapes_and_types():
    from gradlab.exercises import check_function

    result = check_function(lambda t: t.reshape(-1), lambda t: t, _core_square_cases()[2:], name="flat")
    assert not result
    assert result.message == "flat: case 1 returned shape (4,), expected (2, 2)"
    result = check_function(lambda t: "abc", lambda t: t, _core_square_cases(), name="str")
    assert not result
    assert "case 1 returned str" in result.message
    result = check_function(lambda t: None, lambda t: t, _core_square_cases(), name="none")
    assert not result and "returned NoneType" in result.message


def test_check_function_rejects_a_non_callable_candidate():
    import pytest

    from gradlab.exercises import check_function

    for candidate in (None, 3, "f"):
        with pytest.raises(TypeError, match="callable"):
            check_function(candidate, lambda t: t, _core_square_cases(), name="x")


def test_check_result_truthiness_str_and_markdown():
    from gradlab.exercises import CheckResult

    ok, bad = CheckResult(True, 5, "all good"), CheckResult(False, 2, "case 2 is wrong")
    assert bool(ok) and not bool(bad)
    assert str(ok) == "all good" and str(bad) == "case 2 is wrong"
    assert ok._repr_markdown_() == "✅ all good"
    assert bad._repr_markdown_() == "❌ case 2 is wrong"


def _core_chain_gradient(weights, x):
    import math

    grad, h = 1.0, x
    for a in weights:
        h = math.tanh(a * h)
        grad *= a * (1.0 - h * h)
    return grad


def test_check_scalar_chain_gradient_passes_a_correct_implementation():
    from gradlab.exercises import check_scalar_chain_gradient

    result = check_scalar_chain_gradient(_core_chain_gradient)
    assert result and result.cases == 50
    assert check_scalar_chain_gradient(_core_chain_gradient, n_cases=7, seed=3).cases == 7


def test_check_scalar_chain_gradient_fails_wrong_implementations():
    import math

    from gradlab.exercises import check_scalar_chain_gradient

    def no_tanh_derivative(weights, x):
        return math.prod(weights)

    result = check_scalar_chain_gradient(no_tanh_derivative)
    assert not result
    assert "scalar chain gradient: case 1 is wrong" in result.message
    assert "expected:" in result.message and "returned:" in result.message

    def off_by_one_layer(weights, x):
        return _core_chain_gradient(weights[:-1], x)

    assert not check_scalar_chain_gradient(off_by_one_layer)

    def crashes(weights, x):
        return weights[100]

    result = check_scalar_chain_gradient(crashes)
    assert not result and "raised IndexError" in result.message


def _core_layer_jacobian(w, b, x, activation):
    from gradlab.theory import activation_derivative

    return activation_derivative(activation, w @ x + b)[:, None] * w


def test_check_layer_jacobian_passes_a_correct_implementation():
    from gradlab.exercises import check_layer_jacobian

    result = check_layer_jacobian(_core_layer_jacobian)
    assert result and result.cases == 40
    assert "layer Jacobian: all 40 random cases match." == result.message
    assert check_layer_jacobian(_core_layer_jacobian, n_cases=8, seed=5)


def test_check_layer_jacobian_fails_a_transposed_jacobian():
    from gradlab.exercises import check_layer_jacobian

    def transposed(w, b, x, activation):
        return _core_layer_jacobian(w, b, x, activation).T

    result = check_layer_jacobian(transposed)
    assert not result
    assert "layer Jacobian: case" in result.message
    # a non-square case gives a shape message, a square one a value message
    assert "returned shape" in result.message or "is wrong" in result.message


def test_check_layer_jacobian_fails_when_the_activation_derivative_is_forgotten():
    from gradlab.exercises import check_layer_jacobian

    def weights_only(w, b, x, activation):
        return w

    result = check_layer_jacobian(weights_only)
    assert not result
    # the first case uses the identity activation, for which W is right: case 2 (relu) fails
    assert result.cases >= 2
    assert f"case {result.cases} is wrong" in result.message

    def wrong_slope(w, b, x, activation):  # uses tanh' whatever the activation
        return _core_layer_jacobian(w, b, x, "tanh")

    assert not check_layer_jacobian(wrong_slope)


# ---------------------------------------------------------------------------------------------
# Chapter 4: check_bptt_jacobian
# Imports are inside the tests: other sections of this file are written concurrently.
# ---------------------------------------------------------------------------------------------


def _bptt_product(W, hs, t, *, order="right", slope_shift=0, transpose=False, columns=False):
    import torch

    J = torch.eye(W.shape[0], dtype=torch.float64)
    for k in range(t + 1, hs.shape[0]):
        slope = 1.0 - hs[k - slope_shift] ** 2
        factor = W * slope[None, :] if columns else slope[:, None] * W
        J = factor @ J if order == "right" else J @ factor
    return J.T if transpose else J


def test_check_bptt_jacobian_accepts_a_correct_solution():
    from gradlab.exercises import check_bptt_jacobian

    result = check_bptt_jacobian(lambda W, hs, t: _bptt_product(W, hs, t))
    assert result.passed and result.cases == 40
    assert "all 40" in result.message
    assert check_bptt_jacobian(lambda W, hs, t: _bptt_product(W, hs, t), n_cases=5, seed=3)


def test_check_bptt_jacobian_names_common_mistakes():
    from gradlab.exercises import check_bptt_jacobian

    mistakes = {
        "transpose": lambda W, hs, t: _bptt_product(W, hs, t, transpose=True),
        "wrong order": lambda W, hs, t: _bptt_product(W, hs, t, order="left"),
        "off by one": lambda W, hs, t: _bptt_product(W, hs, t, slope_shift=1),
        "columns": lambda W, hs, t: _bptt_product(W, hs, t, columns=True),
    }
    for hint, fn in mistakes.items():
        result = check_bptt_jacobian(fn)
        assert not result.passed
        assert "is wrong" in result.message and hint in result.message, result.message


def test_check_bptt_jacobian_reports_errors_and_shapes():
    import pytest
    import torch

    from gradlab.exercises import check_bptt_jacobian

    def boom(W, hs, t):
        raise RuntimeError("not yet")

    result = check_bptt_jacobian(boom)
    assert not result.passed and "RuntimeError: not yet" in result.message
    result = check_bptt_jacobian(lambda W, hs, t: torch.zeros(W.shape[0] + 1))
    assert not result.passed and "shape" in result.message
    result = check_bptt_jacobian(lambda W, hs, t: W)
    assert not result.passed and "Hint" not in result.message
    with pytest.raises(TypeError, match="callable"):
        check_bptt_jacobian("not a function")
    with pytest.raises(ValueError, match="n_cases"):
        check_bptt_jacobian(lambda W, hs, t: W, n_cases=0)


def test_check_bptt_jacobian_reference_is_autograd():
    # The cases' expected answers equal gradlab.theory.bptt_jacobian on the preactivations
    # recovered from the states (a = atanh(h)), a second, independent route.
    import torch

    from gradlab.exercises import _bptt_cases
    from gradlab.theory import bptt_jacobian

    for W, hs, t, expected in _bptt_cases(20, seed=1):
        preacts = torch.atanh(hs[1:])
        torch.testing.assert_close(bptt_jacobian(W, preacts, "tanh", t), expected, rtol=1e-8, atol=1e-10)


# --- Chapter "Optimizer choice": check_adam_step ------------------------------------------------


def _adam_step_by_hand(theta, grad, m, v, t, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return theta - lr * m_hat / (v_hat.sqrt() + eps), m, v


def _one_thread():
    """Run tiny models on one thread: on a shared 2-core CPU two threads are ~10x slower."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def one_thread():
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    return one_thread()


def test_check_adam_step_accepts_by_hand_and_torch():
    import torch

    from gradlab.exercises import check_adam_step

    def with_torch(theta, grad, m, v, t, lr, beta1, beta2, eps):
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
        opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = grad.clone()
        opt.step()
        return p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    with _one_thread():
        assert check_adam_step(_adam_step_by_hand)
        result = check_adam_step(with_torch, n_cases=12, seed=5)
    assert result.passed and result.cases == 12 and "torch.optim.Adam" in str(result)


def test_check_adam_step_names_the_slip():
    import pytest

    from gradlab.exercises import check_adam_step

    def no_bias_correction(theta, grad, m, v, t, lr, beta1, beta2, eps):
        return _adam_step_by_hand(theta, grad, m, v, 10**9, lr, beta1, beta2, eps)

    def eps_inside(theta, grad, m, v, t, lr, beta1, beta2, eps):
        _, m, v = _adam_step_by_hand(theta, grad, m, v, t, lr, beta1, beta2, eps)
        return theta - lr * (m / (1 - beta1**t)) / (v / (1 - beta2**t) + eps).sqrt(), m, v

    def t_plus_one(theta, grad, m, v, t, lr, beta1, beta2, eps):
        return _adam_step_by_hand(theta, grad, m, v, t + 1, lr, beta1, beta2, eps)

    def v_of_abs(theta, grad, m, v, t, lr, beta1, beta2, eps):  # |g| where g² belongs
        new_theta, m, _ = _adam_step_by_hand(theta, grad, m, v, t, lr, beta1, beta2, eps)
        return new_theta, m, beta2 * v + (1 - beta2) * grad.abs()

    for wrong, words in [(no_bias_correction, "without bias correction"), (eps_inside, "inside the square"),
                         (t_plus_one, "t + 1"), (v_of_abs, "returned v is wrong"),
                         (lambda *a: a[0], "return the three"), (lambda *a: 1 / 0, "ZeroDivisionError")]:
        result = check_adam_step(wrong)
        assert not result.passed and words in result.message, result.message
        assert "case 1" in result.message and "step t=" in result.message or "return" in result.message
    with pytest.raises(TypeError, match="callable"):
        check_adam_step(None)


# --- Chapter "Gradient accumulation": check_accumulated_gradient --------------------------------


def test_check_accumulated_gradient_accepts_loss_over_k_and_fit():
    import torch

    from gradlab.exercises import check_accumulated_gradient
    from gradlab.train import fit

    def loss_over_k(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()

    def weighted_sum(model, loss_fn, micro_batches):  # b_j / B weights: equal sizes give 1/k
        total = sum(len(x) for x, _ in micro_batches)
        for x, y in micro_batches:
            (loss_fn(model(x), y) * len(x) / total).backward()

    with _one_thread():
        assert check_accumulated_gradient(loss_over_k)
        assert check_accumulated_gradient(weighted_sum, n_cases=10, seed=2)

    def with_fit(model, loss_fn, micro_batches):
        # fit zeroes the gradients after its step; an SGD step with lr=0 leaves the model as it
        # was, and a clip callable is where the accumulated gradient can be read.
        seen = {}
        fit(model, loss_fn, micro_batches, torch.optim.SGD(model.parameters(), lr=0.0), steps=1,
            accumulate=len(micro_batches), clip=lambda ps: seen.update(g=[p.grad.clone() for p in ps]))
        for p, g in zip(model.parameters(), seen["g"], strict=True):
            p.grad = g

    with _one_thread():
        result = check_accumulated_gradient(with_fit, n_cases=10)
    assert result.passed and result.cases == 10, result.message


def test_check_accumulated_gradient_names_the_slip():
    import pytest

    from gradlab.exercises import check_accumulated_gradient

    def no_division(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            loss_fn(model(x), y).backward()

    def zero_inside(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            model.zero_grad()
            (loss_fn(model(x), y) / len(micro_batches)).backward()

    def twice(model, loss_fn, micro_batches):
        k = len(micro_batches)
        for x, y in micro_batches:
            (loss_fn(model(x), y) / k / k).backward()

    def no_backward(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            loss_fn(model(x), y)

    for wrong, words in [(no_division, "times the right gradient: divide"), (zero_inside, "zeroed inside"),
                         (twice, "divided by k twice"), (no_backward, "no .grad"),
                         (lambda *a: [][0], "raised IndexError")]:
        result = check_accumulated_gradient(wrong)
        assert not result.passed and words in result.message, result.message
    with pytest.raises(TypeError, match="callable"):
        check_accumulated_gradient("fn")


# --- Chapter 3 "Signal propagation at initialization": check_chi1 -----------------------------


def _ch3_reference_chi1(phi, dphi, sigma_w, sigma_b):
    """A reader's solution: iterate the length map from q = 1, then average phi'² at q*."""
    from gradlab.theory import gaussian_expectation

    q = 1.0
    for _ in range(5000):
        q_next = sigma_w**2 * gaussian_expectation(lambda x: phi(x) ** 2, q) + sigma_b**2
        if abs(q_next - q) <= 1e-14 * q_next:
            break
        q = q_next
    return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, q_next)


def test_check_chi1_accepts_a_correct_solution():
    from gradlab.exercises import check_chi1

    result = check_chi1(_ch3_reference_chi1)
    assert result.passed and result.cases == 18 and "match" in str(result)
    assert check_chi1(_ch3_reference_chi1, n_cases=7, seed=5).cases == 7


def test_check_chi1_cases_agree_with_gradlab_theory():
    import math

    import numpy as np

    from gradlab import theory
    from gradlab.exercises import CHI1_ACTIVATIONS

    # tanh and relu are in both tables: the checker's reference equals theory.chi1 there.
    for name in ("tanh", "relu"):
        phi, dphi = CHI1_ACTIVATIONS[name]
        for sigma_w, sigma_b in ((0.9, 0.2), (1.3, 0.6)):
            assert math.isclose(_ch3_reference_chi1(phi, dphi, sigma_w, sigma_b),
                                theory.chi1(name, sigma_w, sigma_b), rel_tol=1e-9)
    # derivatives in the table are the derivatives of the functions
    x = np.linspace(-3, 3, 61)
    for name, (phi, dphi) in CHI1_ACTIVATIONS.items():
        numeric = (phi(x + 1e-6) - phi(x - 1e-6)) / 2e-6
        mask = np.abs(x) > 1e-3  # relu's kink
        np.testing.assert_allclose(dphi(x)[mask], numeric[mask], rtol=1e-6, atol=1e-8, err_msg=name)


def test_check_chi1_names_the_mistake():
    import pytest

    from gradlab.exercises import check_chi1
    from gradlab.theory import gaussian_expectation

    def at_q1(phi, dphi, sigma_w, sigma_b):
        return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, 1.0)

    def no_gain(phi, dphi, sigma_w, sigma_b):
        return _ch3_reference_chi1(phi, dphi, sigma_w, sigma_b) / sigma_w**2

    def norm_factor(phi, dphi, sigma_w, sigma_b):
        return _ch3_reference_chi1(phi, dphi, sigma_w, sigma_b) ** 0.5

    def no_bias(phi, dphi, sigma_w, sigma_b):
        return _ch3_reference_chi1(phi, dphi, sigma_w, 0.0)

    def crashes(phi, dphi, sigma_w, sigma_b):
        raise RuntimeError("boom")

    def returns_text(phi, dphi, sigma_w, sigma_b):
        return "one"

    for fn, words in ((at_q1, "fixed point"), (no_gain, "without the factor sigma_w"),
                      (norm_factor, "sqrt(chi_1)"), (no_bias, "sigma_b"), (crashes, "RuntimeError: boom"),
                      (returns_text, "expected a number")):
        result = check_chi1(fn)
        assert not result.passed and result.cases == 1
        assert words in result.message and "case 1 (tanh" in result.message
    with pytest.raises(TypeError, match="callable"):
        check_chi1(3)
    with pytest.raises(ValueError, match="n_cases"):
        check_chi1(_ch3_reference_chi1, n_cases=0)


def test_assert_passed_returns_the_result_or_raises_with_the_message():
    import pytest

    from gradlab.exercises import CheckResult

    ok = CheckResult(True, 3, "all 3 random cases match.")
    assert ok.assert_passed() is ok
    with pytest.raises(AssertionError, match="case 2 is wrong"):
        CheckResult(False, 2, "demo: case 2 is wrong").assert_passed()


def test_accumulation_checker_leaves_the_global_rng_alone():
    import torch

    from gradlab.exercises import _accumulation_cases

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for _ in _accumulation_cases(4, seed=0):
        pass
    assert torch.equal(torch.rand(3), expected)
