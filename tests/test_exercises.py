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
