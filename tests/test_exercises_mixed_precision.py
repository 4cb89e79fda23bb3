"""Tests for gradlab.exercises_mixed_precision: check_update_scale accepts torch's rule (and
LossScaler's) and explains the usual mistakes."""

import math

import pytest
import torch
from torch import nn

from gradlab.amp import LossScaler
from gradlab.exercises_mixed_precision import check_update_scale

FLT32_MAX = torch.finfo(torch.float32).max


def _float32(v):
    return torch.tensor(v, dtype=torch.float32).item()


def correct(scale, tracker, found_inf, growth, backoff, interval):
    if found_inf:
        return _float32(scale * backoff), 0
    if tracker + 1 == interval:
        grown = _float32(scale * growth)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, tracker + 1


def via_loss_scaler(scale, tracker, found_inf, growth, backoff, interval):
    """One LossScaler iteration from the given state: the package's rule, checked by the checker."""
    scaler = LossScaler(init_scale=scale, growth_factor=growth, backoff_factor=backoff,
                        growth_interval=interval)
    scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": tracker})
    p = nn.Parameter(torch.ones(1))
    scaler.scale(p.sum() * (math.inf if found_inf else 1.0)).backward()
    scaler.step(torch.optim.SGD([p], lr=0.0))
    scaler.update()
    return scaler.get_scale(), scaler.state_dict()["_growth_tracker"]


def test_accepts_the_rule_and_loss_scaler():
    result = check_update_scale(correct)
    assert result.passed and result.cases == 60 and "match" in str(result)
    assert check_update_scale(via_loss_scaler, n_cases=25, seed=3)


def test_returns_of_tensors_are_accepted():
    result = check_update_scale(lambda *a: (torch.tensor(correct(*a)[0]), torch.tensor(correct(*a)[1])))
    assert result.passed, result.message


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda s, t, f, g, b, n: (s * b, 0) if f else (((s * g if s * g < FLT32_MAX else s), 0)
                                                         if t + 1 == n else (s, t + 1)),
         "round the new scale to float32"),
        (lambda s, t, f, g, b, n: (s * b, 0) if f else ((s * g, 0) if t + 1 == n else (s, t + 1)),
         "overflow float32"),
        (lambda s, t, f, g, b, n: correct(s, t, f, g, b, n) if f or t + 1 != n else (_float32(s * g), 0),
         "not grown"),
        (lambda s, t, f, g, b, n: (_float32(s * b), t) if f else correct(s, t, f, g, b, n),
         "resets the growth tracker"),
        (lambda s, t, f, g, b, n: correct(s, t, f, g, b, n) if f or t + 1 == n else (s, t),
         "adds 1 to the tracker"),
        (lambda s, t, f, g, b, n: (s, t), "expected"),
        (lambda *a: 1.0, "return a pair"),
        (lambda *a: 1 / 0, "raised ZeroDivisionError"),
    ],
    ids=["no-float32-rounding", "grows-past-float32", "grows-to-inf", "tracker-kept-on-inf",
         "tracker-not-counted", "no-op", "not-a-pair", "raises"],
)
def test_explains_mistakes(wrong, words):
    result = check_update_scale(wrong)
    assert not result.passed and words in result.message, result.message


def test_rejects_a_non_callable():
    with pytest.raises(TypeError, match="callable"):
        check_update_scale(3)
