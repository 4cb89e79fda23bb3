"""Checker for "Initialization": the standard deviation that ``torch.nn.init.kaiming_normal_``
draws a weight with, computed from the weight's shape, against PyTorch's own fan and gain."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import init

from .harness import Case, CheckResult, Slips, describe, run

INIT_STD_NONLINEARITIES = ("linear", "relu", "tanh", "sigmoid", "selu")
"""The nonlinearities the reader's function is tried on, cycled in this order."""

INIT_STD_MODES = ("fan_in", "fan_out")


def _reference_std(shape: tuple[int, ...], nonlinearity: str, mode: str) -> float:
    """``gain / sqrt(fan)`` from PyTorch's own fan and gain, as ``kaiming_normal_`` computes it."""
    fan = init._calculate_correct_fan(torch.empty(shape), mode)
    return init.calculate_gain(nonlinearity) / math.sqrt(fan)


def _init_std_case(g: torch.Generator, i: int) -> Case | None:
    """Case ``i``: a Linear weight ``(out, in)`` for even ``i``, a Conv1d or Conv2d kernel
    ``(out, in, k...)`` with kernel sides 2 to 5 for odd ``i``; sizes 1 to 300 (out and in
    drawn apart, so that the two fans differ); the ``i``-th nonlinearity; a random mode."""
    ints = torch.randint(1, 301, (2,), generator=g).tolist()
    if i % 2 == 0:
        shape = tuple(ints)
    else:
        sides = torch.randint(2, 6, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g).tolist()
        shape = (*ints, *sides)
    if shape[0] == shape[1]:
        return None  # the fans must differ, or a swapped mode would go unnoticed
    nonlinearity = INIT_STD_NONLINEARITIES[i % len(INIT_STD_NONLINEARITIES)]
    mode = INIT_STD_MODES[int(torch.randint(0, 2, (1,), generator=g))]
    other = INIT_STD_MODES[1 - INIT_STD_MODES.index(mode)]
    receptive = math.prod(shape[2:])
    fan = shape[1] * receptive if mode == "fan_in" else shape[0] * receptive
    data = {
        "gain": init.calculate_gain(nonlinearity),
        "fan": fan,
        "swapped": _reference_std(shape, nonlinearity, other),
        "receptive": receptive,
    }
    return Case((shape, nonlinearity, mode), _reference_std(shape, nonlinearity, mode),
                describe(nonlinearity, mode=mode, shape=shape), data)


INIT_STD_SLIPS: Slips = {
    "fan_in and fan_out swapped: a weight of shape (out, in, k...) has fan_in = in * (kernel "
    "size) and fan_out = out * (kernel size)": lambda c: c.data["swapped"],
    "the kernel left out of the fan: for a convolution the fan is the number of channels times the "
    "product of the kernel sides (in_channels * k... for fan_in, out_channels * k... for fan_out)":
        lambda c: (c.data["gain"] / math.sqrt(c.data["fan"] / c.data["receptive"])
                   if c.data["receptive"] > 1 else None),
    "the gain squared: the gain multiplies the standard deviation, std = gain / sqrt(fan)":
        lambda c: c.data["gain"] ** 2 / math.sqrt(c.data["fan"]),
    "the variance returned: std = gain / sqrt(fan), its square is the variance":
        lambda c: c.data["gain"] ** 2 / c.data["fan"],
    "the square root left out: std = gain / sqrt(fan), not gain / fan":
        lambda c: c.data["gain"] / c.data["fan"],
    "He's ReLU gain sqrt(2) used for every nonlinearity: take torch.nn.init.calculate_gain's "
    "value for this one": lambda c: math.sqrt(2.0) / math.sqrt(c.data["fan"]),
}


def check_init_std(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(shape, nonlinearity, mode)``: the standard deviation ``gain / sqrt(fan)`` that
    ``torch.nn.init.kaiming_normal_(w, mode=mode, nonlinearity=nonlinearity)`` draws a weight
    ``w`` of ``shape`` with. ``fan`` is ``in * prod(kernel)`` for ``mode="fan_in"`` and
    ``out * prod(kernel)`` for ``"fan_out"`` (``shape = (out, in, *kernel)``); ``gain`` is
    ``torch.nn.init.calculate_gain(nonlinearity)``. Random Linear and convolution shapes and the
    nonlinearities of :data:`INIT_STD_NONLINEARITIES`; compared with PyTorch's own fan and gain.
    A wrong answer is compared with :data:`INIT_STD_SLIPS`."""
    return run("kaiming_normal_ std", fn, _init_std_case, n_cases, seed, rtol=1e-9, atol=0.0,
               slips=INIT_STD_SLIPS, reference="torch.nn.init.kaiming_normal_")


__all__ = ["INIT_STD_MODES", "INIT_STD_NONLINEARITIES", "INIT_STD_SLIPS", "check_init_std"]
