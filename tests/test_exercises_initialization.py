"""Tests for gradlab.exercises.initialization: check_init_std."""

import math

import pytest
import torch
from torch.nn import init

from gradlab.exercises import check_init_std
from gradlab.exercises.initialization import INIT_STD_SLIPS, _init_std_case


def _only_slip(word):
    (slip,) = [s for s in INIT_STD_SLIPS if word in s]
    return slip


def _fans(shape):
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def correct(shape, nonlinearity, mode):
    fan_in, fan_out = _fans(shape)
    return init.calculate_gain(nonlinearity) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def _wrong(std_from_gain_and_fan, *, swap=False, no_kernel=False, gain_of=init.calculate_gain):
    def fn(shape, nonlinearity, mode):
        fan_in, fan_out = _fans((*shape[:2],) if no_kernel else shape)
        if swap:
            fan_in, fan_out = fan_out, fan_in
        return std_from_gain_and_fan(gain_of(nonlinearity), fan_in if mode == "fan_in" else fan_out)

    return fn


INIT_STD_WRONG = {
    "swapped": _wrong(lambda g, f: g / math.sqrt(f), swap=True),
    "kernel left out": _wrong(lambda g, f: g / math.sqrt(f), no_kernel=True),
    "gain squared": _wrong(lambda g, f: g * g / math.sqrt(f)),
    "variance returned": _wrong(lambda g, f: g * g / f),
    "square root left out": _wrong(lambda g, f: g / f),
    "He's ReLU gain": _wrong(lambda g, f: g / math.sqrt(f), gain_of=lambda name: math.sqrt(2.0)),
}


def test_check_init_std_accepts_a_correct_solution():
    result = check_init_std(correct)
    assert result
    assert result.message == ("kaiming_normal_ std: all 30 random cases match "
                              "torch.nn.init.kaiming_normal_.")
    assert check_init_std(correct, n_cases=60, seed=7).cases == 60


def test_the_reference_is_the_std_torch_draws_with():
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        case = _init_std_case(g, i)
        if case is None:
            continue
        shape, nonlinearity, mode = case.args
        w = torch.empty(shape)
        init.kaiming_normal_(w, mode=mode, nonlinearity=nonlinearity)
        # the sample std of n normal entries has relative standard error 1/sqrt(2n)
        assert float(w.std()) == pytest.approx(case.expected, rel=5 / math.sqrt(2 * w.numel()))


@pytest.mark.parametrize("word", INIT_STD_WRONG)
def test_check_init_std_names_each_slip(word):
    result = check_init_std(INIT_STD_WRONG[word])
    assert not result.passed and "mode=fan_" in result.message and "shape=(" in result.message
    assert "Known slip" in result.message and _only_slip(word) in result.message


def test_every_init_std_slip_has_a_wrong_solution():
    assert sorted(_only_slip(w) for w in INIT_STD_WRONG) == sorted(INIT_STD_SLIPS)


def test_check_init_std_reports_exceptions_and_wrong_types():
    result = check_init_std(lambda shape, nonlinearity, mode: {}[mode])
    assert not result.passed and "raised KeyError" in result.message
    result = check_init_std(lambda shape, nonlinearity, mode: "0.1")
    assert not result.passed and "returned str, expected a number" in result.message
