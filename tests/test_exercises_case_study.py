"""Tests for gradlab.exercises.case_study: check_warmup_cosine."""

import math

import pytest
import torch

from gradlab.exercises.case_study import (
    WARMUP_COSINE_SLIPS,
    _schedule_case,
    check_warmup_cosine,
    warmup_cosine_reference,
)


def _only_slip(word):
    (slip,) = [s for s in WARMUP_COSINE_SLIPS if word in s]
    return slip


def warmup_cosine(step, warmup, total, base_lr, min_lr):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def _cos(fraction, base_lr, min_lr):
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


def _decay(wrong):
    """Right in the warm-up, ``wrong`` in the decay."""
    return lambda s, w, t, b, m: warmup_cosine(s, w, t, b, m) if s < w else wrong(s, w, t, b, m)


WRONG = {
    "warm-up from zero": lambda s, w, t, b, m: b * s / w if s < w else warmup_cosine(s, w, t, b, m),
    "counted from step 0": _decay(lambda s, w, t, b, m: _cos(s / t, b, m)),
    "spread over all the steps": _decay(lambda s, w, t, b, m: _cos((s - w) / t, b, m)),
    "ends at 0": _decay(lambda s, w, t, b, m: _cos((s - w) / (t - w), b, 0.0)),
    "a step early": _decay(lambda s, w, t, b, m: _cos((s - w + 1) / (t - w), b, m)),
    "at the last step": _decay(lambda s, w, t, b, m: _cos((s - w) / (t - w - 1), b, m)),
    "cos without": _decay(lambda s, w, t, b, m: m + (b - m) * math.cos(math.pi * (s - w) / (t - w))),
}


@pytest.mark.parametrize(("warmup", "total", "min_lr"), [(2, 4, 0.0), (5, 40, 1e-4), (30, 80, 0.0),
                                                         (1, 10, 0.0)])
def test_reference_is_the_closed_form(warmup, total, min_lr):
    lrs = warmup_cosine_reference(warmup, total, 3e-3, min_lr)
    assert len(lrs) == total
    for s, lr in enumerate(lrs):
        assert lr == pytest.approx(warmup_cosine(s, warmup, total, 3e-3, min_lr), rel=1e-9, abs=1e-15)


def test_check_warmup_cosine_accepts_the_closed_form_and_a_lambda_lr():
    result = check_warmup_cosine(warmup_cosine)
    assert result, result.message
    assert result.message == ("warm-up + cosine schedule: all 30 random cases match "
                              "SequentialLR(LinearLR, CosineAnnealingLR).")

    def via_lambda_lr(step, warmup, total, base_lr, min_lr):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup, total, base_lr, min_lr) / base_lr)
        for _ in range(step):
            opt.step()
            sched.step()
        return opt.param_groups[0]["lr"]

    assert check_warmup_cosine(via_lambda_lr, n_cases=10, seed=3)


def test_cases_cover_both_phases_and_a_nonzero_floor():
    g = torch.Generator().manual_seed(0)
    cases = [_schedule_case(g, i) for i in range(30)]
    assert sum(c.args[0] < c.args[1] for c in cases) == 15
    assert sum(c.args[4] > 0 for c in cases) == 10
    assert all(2 <= c.args[1] <= c.args[2] // 2 and 0 <= c.args[0] < c.args[2] for c in cases)


@pytest.mark.parametrize("word", WRONG)
def test_check_warmup_cosine_names_each_slip(word):
    result = check_warmup_cosine(WRONG[word])
    assert not result and "expected: " in str(result) and "warmup=" in str(result)
    assert f"Known slip: {_only_slip(word)}." in str(result)


def test_every_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in WRONG) == sorted(WARMUP_COSINE_SLIPS)


def test_check_warmup_cosine_reports_errors_and_non_numbers():
    broken = check_warmup_cosine(lambda s, w, t, b, m: math.cosine(s))
    assert not broken and "AttributeError" in str(broken) and broken.cases == 1
    text = check_warmup_cosine(lambda *args: "fast")
    assert not text and "returned str, expected a number" in str(text)
