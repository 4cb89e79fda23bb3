"""Tests for gradlab.exercises.accumulation: check_accumulated_gradient."""

import pytest
import torch

from gradlab.exercises.accumulation import ACCUMULATION_SLIPS, _accumulation_case, check_accumulated_gradient
from gradlab.train import fit


def _only_slip(word):
    (slip,) = [s for s in ACCUMULATION_SLIPS if word in s]
    return slip


def weighted_by_size(model, loss_fn, micro_batches):
    total = sum(len(x) for x, _ in micro_batches)
    for x, y in micro_batches:
        (loss_fn(model(x), y) * len(x) / total).backward()


def _weighted_by(weight, *, zero_inside=False):
    """A wrong accumulation: micro-batch j's loss times ``weight(n_j, N, k)``."""
    def wrong(model, loss_fn, micro_batches):
        total = sum(len(x) for x, _ in micro_batches)
        for x, y in micro_batches:
            if zero_inside:
                model.zero_grad()
            (loss_fn(model(x), y) * weight(len(x), total, len(micro_batches))).backward()

    return wrong


ACCUMULATION_WRONG = {
    "the sum of the micro-batch gradients": _weighted_by(lambda n, total, k: 1.0),
    "equal weights 1/k": _weighted_by(lambda n, total, k: 1 / k),
    "divided by k on top": _weighted_by(lambda n, total, k: n / total / k),
    "micro-batch's gradient only": _weighted_by(lambda n, total, k: 1.0, zero_inside=True),
    "weighted gradient only": _weighted_by(lambda n, total, k: n / total, zero_inside=True),
    "divided by the micro-batch's size": _weighted_by(lambda n, total, k: 1 / total),
}


def test_check_accumulated_gradient_accepts_size_weights_and_fit():
    def with_fit(model, loss_fn, micro_batches):
        # fit zeroes the gradients after its step; an SGD step with lr=0 leaves the model as it
        # was, and a clip callable is where the accumulated gradient can be read.
        seen = {}
        fit(model, loss_fn, micro_batches, torch.optim.SGD(model.parameters(), lr=0.0), steps=1,
            accumulate=len(micro_batches), clip=lambda ps: seen.update(g=[p.grad.clone() for p in ps]))
        for p, g in zip(model.parameters(), seen["g"], strict=True):
            p.grad = g

    result = check_accumulated_gradient(weighted_by_size)
    assert result
    assert result.message == "accumulated gradient: all 30 random cases match the full-batch gradient."
    assert check_accumulated_gradient(weighted_by_size, n_cases=10, seed=2)
    result = check_accumulated_gradient(with_fit, n_cases=10)
    assert result.passed and result.cases == 10, result.message


@pytest.mark.parametrize("word", ACCUMULATION_WRONG)
def test_check_accumulated_gradient_names_each_slip(word):
    result = check_accumulated_gradient(ACCUMULATION_WRONG[word])
    assert not result.passed and " micro-batches of " in result.message
    assert "the gradient left in .grad (all parameters, flattened) is wrong" in result.message
    # in a case where k = n_j, two slips can give the same answer: both are named
    assert "Known slip" in result.message and _only_slip(word) in result.message


def test_every_accumulation_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in ACCUMULATION_WRONG) == sorted(ACCUMULATION_SLIPS)


def test_check_accumulated_gradient_reports_missing_gradients_and_errors():
    def no_backward(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            loss_fn(model(x), y)

    result = check_accumulated_gradient(no_backward)
    assert not result.passed and "some parameters have no .grad afterwards" in result.message
    result = check_accumulated_gradient(lambda *a: [][0])
    assert not result.passed and "raised IndexError" in result.message


def test_accumulation_cases_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        _accumulation_case(g, i)
    assert torch.equal(torch.rand(3), expected)


def test_cases_have_equal_and_unequal_micro_batches_and_a_short_last_one():
    g = torch.Generator().manual_seed(0)
    sizes = [_accumulation_case(g, i).data["sizes"] for i in range(16)]
    assert sum(len(set(n)) == 1 for n in sizes) == 8
    assert sum(len(set(n)) > 1 for n in sizes) == 8
    assert any(len(set(n[:-1])) == 1 and n[-1] < n[0] for n in sizes if len(set(n)) > 1)


def test_equal_weights_pass_equal_sizes_and_fail_unequal_ones_with_the_slip():
    """Dividing every micro-batch's loss by k is right for equal sizes only: the first unequal
    case (case 3) fails, and the hint names the equal-weight slip and n_j/N."""
    result = check_accumulated_gradient(ACCUMULATION_WRONG["equal weights 1/k"])
    assert not result.passed and result.cases == 3 and "n_j=" in result.message
    assert "weight micro-batch j by n_j/N" in result.message
    assert check_accumulated_gradient(ACCUMULATION_WRONG["equal weights 1/k"], n_cases=2).passed
