"""Tests for gradlab.exercises.clipping: check_clip_grad_norm."""

import pytest
import torch

from gradlab import clip
from gradlab.exercises.clipping import CLIP_SLIPS, _clip_case, check_clip_grad_norm


def _only_slip(word):
    (slip,) = [s for s in CLIP_SLIPS if word in s]
    return slip


def _total_norm(ps):
    return torch.sqrt(sum((p.grad**2).sum() for p in ps if p.grad is not None))


def _clip_by(ps, factor):
    for p in ps:
        if p.grad is not None:
            p.grad.mul_(factor)


def per_layer(ps, max_norm):  # clips each tensor on its own
    norm = _total_norm(ps)
    for p in ps:
        if p.grad is not None:
            p.grad.mul_(min(1.0, max_norm / (float(p.grad.norm()) + 1e-6)))
    return norm


def norm_after(ps, max_norm):
    _clip_by(ps, min(1.0, max_norm / (float(_total_norm(ps)) + 1e-6)))
    return _total_norm(ps)


def squared(ps, max_norm):
    norm = _total_norm(ps)
    _clip_by(ps, min(1.0, max_norm / (float(norm) + 1e-6)))
    return norm**2


def always_rescale(ps, max_norm):  # forgets the min(1, .): small gradients get blown up
    norm = _total_norm(ps)
    _clip_by(ps, max_norm / (float(norm) + 1e-6))
    return norm


def no_epsilon(ps, max_norm):
    norm = _total_norm(ps)
    _clip_by(ps, min(1.0, max_norm / float(norm)) if norm > 0 else 1.0)
    return norm


def zeros_for_none(ps, max_norm):
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return torch.nn.utils.clip_grad_norm_(ps, max_norm)


CLIP_WRONG = {
    "per-layer": per_layer,
    "after clipping": norm_after,
    "squared": squared,
    "always rescaled": always_rescale,
    "no 1e-6": no_epsilon,
    "whose .grad was None": zeros_for_none,
}


def test_check_clip_grad_norm_accepts_torch_and_gradlab():
    assert check_clip_grad_norm(torch.nn.utils.clip_grad_norm_)
    result = check_clip_grad_norm(lambda ps, m: clip.clip_grad_norm_(ps, m), n_cases=20, seed=3)
    assert result.passed and result.cases == 20
    assert str(result) == "clip_grad_norm: all 20 random cases match torch."


@pytest.mark.parametrize("word", CLIP_WRONG)
def test_check_clip_grad_norm_names_each_slip(word):
    result = check_clip_grad_norm(CLIP_WRONG[word])
    assert not result.passed and "max_norm=" in result.message and "shapes=[" in result.message
    assert f"Known slip: {_only_slip(word)}." in result.message


def test_every_clip_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in CLIP_WRONG) == sorted(CLIP_SLIPS)


def test_per_layer_clipping_is_named_where_a_gradient_is_wrong():
    result = check_clip_grad_norm(per_layer)
    assert "the gradient of parameter" in result.message and "is wrong" in result.message
    assert "Known slip: per-layer clipping" in result.message


def test_the_epsilon_cases_separate_the_slip_from_the_tolerance():
    # every 6th case: N = 1.5 to 5 times max_norm = 1e-3, so 1e-6 / N is far above rtol = 1e-6
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        case = _clip_case(g, i)
        if i % 6 == 5:
            assert case.args[1] == 1e-3 and 1.5e-3 <= case.data["norm"] <= 5e-3
    assert check_clip_grad_norm(no_epsilon).cases == 6


def test_check_clip_grad_norm_reports_errors_and_wrong_returns():
    def crashes_on_none(ps, max_norm):
        torch.sqrt(sum((p.grad**2).sum() for p in ps))  # p.grad may be None
        return torch.nn.utils.clip_grad_norm_(ps, max_norm)

    result = check_clip_grad_norm(crashes_on_none)
    assert not result and "raised TypeError" in result.message
    assert "Hint: some parameters have no gradient (.grad is None): skip them" in result.message
    assert ".grad None for parameters [0]" in result.message
    result = check_clip_grad_norm(lambda ps, m: "n/a")
    assert not result
    assert "the returned norm (of all gradients together, before clipping) is str" in result.message


def test_the_case_reference_is_torch_and_cases_cover_none_and_zero_gradients():
    g = torch.Generator().manual_seed(4)
    kinds = set()
    for i in range(35):
        case = _clip_case(g, i)
        params, max_norm = case.args
        kinds |= {"none" if p.grad is None else "zero" if not p.grad.any() else "grad" for p in params}
        kinds |= {"0-dim" for p in params if p.ndim == 0}
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([gr.flatten() for gr in grads]) if grads else torch.zeros(0, dtype=torch.float64)
        norm = torch.linalg.vector_norm(flat)
        assert abs(case.data["norm"] - float(norm)) <= 1e-12 * (1 + float(norm))
    assert kinds == {"none", "zero", "grad", "0-dim"}
