"""Tests for gradlab.exercises.accumulation: check_accumulated_gradient."""

import pytest
import torch

from gradlab.exercises.accumulation import ACCUMULATION_SLIPS, _accumulation_case, check_accumulated_gradient
from gradlab.train import fit


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: on a shared 2-core CPU a second thread costs more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _only_slip(word):
    (slip,) = [s for s in ACCUMULATION_SLIPS if word in s]
    return slip


def loss_over_k(model, loss_fn, micro_batches):
    for x, y in micro_batches:
        (loss_fn(model(x), y) / len(micro_batches)).backward()


def _divided_by(divisor, *, zero_inside=False):
    def wrong(model, loss_fn, micro_batches):
        for x, y in micro_batches:
            if zero_inside:
                model.zero_grad()
            (loss_fn(model(x), y) / divisor(len(micro_batches), len(x))).backward()

    return wrong


ACCUMULATION_WRONG = {
    "k times": _divided_by(lambda k, b: 1),
    "divided by k twice": _divided_by(lambda k, b: k * k),
    "gradient only": _divided_by(lambda k, b: 1, zero_inside=True),
    "gradient divided by k": _divided_by(lambda k, b: k, zero_inside=True),
    "1/b": _divided_by(lambda k, b: k * b),
}


def test_check_accumulated_gradient_accepts_loss_over_k_weights_and_fit():
    def weighted_sum(model, loss_fn, micro_batches):  # b_j / B weights: equal sizes give 1/k
        total = sum(len(x) for x, _ in micro_batches)
        for x, y in micro_batches:
            (loss_fn(model(x), y) * len(x) / total).backward()

    def with_fit(model, loss_fn, micro_batches):
        # fit zeroes the gradients after its step; an SGD step with lr=0 leaves the model as it
        # was, and a clip callable is where the accumulated gradient can be read.
        seen = {}
        fit(model, loss_fn, micro_batches, torch.optim.SGD(model.parameters(), lr=0.0), steps=1,
            accumulate=len(micro_batches), clip=lambda ps: seen.update(g=[p.grad.clone() for p in ps]))
        for p, g in zip(model.parameters(), seen["g"], strict=True):
            p.grad = g

    result = check_accumulated_gradient(loss_over_k)
    assert result
    assert result.message == "accumulated gradient: all 30 random cases match the full-batch gradient."
    assert check_accumulated_gradient(weighted_sum, n_cases=10, seed=2)
    result = check_accumulated_gradient(with_fit, n_cases=10)
    assert result.passed and result.cases == 10, result.message


@pytest.mark.parametrize("word", ACCUMULATION_WRONG)
def test_check_accumulated_gradient_names_each_slip(word):
    result = check_accumulated_gradient(ACCUMULATION_WRONG[word])
    assert not result.passed and " micro-batches of b=" in result.message
    assert "the gradient left in .grad (all parameters, flattened) is wrong" in result.message
    # where k = b, dividing by k twice and by k*b give the same answer: both are named
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
