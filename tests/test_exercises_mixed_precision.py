"""gradlab.exercises.mixed_precision: check_update_scale accepts torch's rule (and LossScaler's),
rejects the usual slips with a hint that names them, and reports the reader's errors."""

import math

import pytest
import torch
from torch import nn

from gradlab.amp import LossScaler
from gradlab.exercises.mixed_precision import UPDATE_SCALE_SLIPS, _update_case, check_update_scale

FLT32_MAX = torch.finfo(torch.float32).max


def _float32(v):
    return torch.tensor(v, dtype=torch.float32).item()


def right(scale, tracker, found_inf, growth, backoff, interval):
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


def test_cases_cover_every_branch_of_the_rule():
    g = torch.Generator().manual_seed(0)
    cases = [_update_case(g, i) for i in range(20)]
    assert any(c.args[2] for c in cases)  # an inf/NaN found
    growth = [c for c in cases if not c.args[2] and c.args[1] + 1 == c.args[5]]
    assert any(c.expected["the new scale"] > c.args[0] for c in growth)  # grown
    assert any(c.expected["the new scale"] == c.args[0] for c in growth)  # growth past float32 refused
    assert any(not c.args[2] and c.args[1] + 1 < c.args[5] for c in cases)  # an ordinary step
    for c in cases:
        assert right(*c.args) == (c.expected["the new scale"], c.expected["the new growth tracker"])


def test_accepts_the_rule_loss_scaler_and_tensors():
    result = check_update_scale(right)
    assert result.passed and result.cases == 60 and "torch's update rule" in str(result)
    assert check_update_scale(via_loss_scaler, n_cases=25, seed=3)
    as_tensors = check_update_scale(lambda *a: tuple(torch.tensor(v) for v in right(*a)), n_cases=20)
    assert as_tensors.passed, as_tensors.message


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda s, t, f, g, b, n: (s * b, 0) if f else ((s * g, 0) if t + 1 == n else (s, t + 1)),
         "not rounded to float32"),
        (lambda s, t, f, g, b, n: right(s, t, f, g, b, n) if f or t + 1 != n else (_float32(s * g), 0),
         "grew to inf"),
        (lambda s, t, f, g, b, n: (_float32(s * b), t) if f else right(s, t, f, g, b, n),
         "kept after an inf/NaN"),
        (lambda s, t, f, g, b, n: right(s, t, f, g, b, n) if f or t + 1 != n else (s, t + 1),
         "compared before counting"),
        (lambda s, t, f, g, b, n: right(s, t, f, g, b, n) if f or t + 1 != n
         else (right(s, t, f, g, b, n)[0], n),
         "not reset after a growth"),
    ],
    ids=["no-float32-rounding", "grows-to-inf", "tracker-kept-on-inf", "tracker-not-counted",
         "tracker-not-reset"],
)
def test_slips_fail_with_a_hint(wrong, hint):
    result = check_update_scale(wrong)
    assert not result.passed and hint in result.message, result.message
    assert "growth_interval=" in result.message  # the failing case is named


def test_the_wrong_solutions_cover_the_slip_table():
    hints = ["not rounded to float32", "grew to inf", "kept after an inf/NaN", "compared before counting",
             "not reset after a growth"]
    assert all(any(h in slip for h in hints) for slip in UPDATE_SCALE_SLIPS)


def test_errors_are_reported():
    assert "raised ZeroDivisionError" in check_update_scale(lambda *a: 1 / 0).message
    assert "return the pair" in check_update_scale(lambda *a: 1.0).message
    assert not check_update_scale(lambda s, t, *rest: (s, t))  # a no-op
    with pytest.raises(TypeError, match="callable"):
        check_update_scale(3)
    with pytest.raises(ValueError, match="n_cases"):
        check_update_scale(right, n_cases=0)
