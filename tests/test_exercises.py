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
