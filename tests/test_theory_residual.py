"""Tests for gradlab.theory.residual: the closed forms, bad input, and each prediction against a
measurement on real residual stacks (several seeds, with the tolerance stated in each test)."""

import math

import numpy as np
import pytest
import torch

from gradlab.models import FixupBlock, resmlp
from gradlab.propagation import first_step_change, residual_gains
from gradlab.theory import fixup_multiplier, fixup_update_size, residual_growth, rezero_update_size
from gradlab.utils import seeded


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mean_se(a):
    return float(np.mean(a)), float(np.std(a, ddof=1) / math.sqrt(len(a)))


def test_closed_forms():
    assert residual_growth(1.0, 1.0, 10) == 1024
    assert residual_growth(0.5, 2.0, 3) == pytest.approx(1.5**3)
    assert residual_growth(-1.0, 1.0, 4) == 16  # the sign of s does not matter
    assert residual_growth(3.0, 1.0, 0) == 1
    # (1 + 1/L)^L increases towards e and stays below it
    values = [residual_growth(L**-0.5, 1.0, L) for L in (1, 10, 100, 1000, 10**6)]
    assert values == sorted(values) and values[-1] < math.e and values[-1] == pytest.approx(math.e, rel=1e-5)
    assert fixup_multiplier(100, 2) == pytest.approx(0.1)
    assert fixup_multiplier(16, 3) == pytest.approx(0.5)
    for L in (1, 7, 1000):
        for m in (2, 3, 5):
            assert L * fixup_multiplier(L, m) ** (2 * (m - 1)) == pytest.approx(1.0)
            assert fixup_update_size(0.1, 4.0, L, m) == pytest.approx(0.4)
    assert fixup_update_size(0.1, 4.0, 50, multiplier=1.0) == pytest.approx(20.0)
    assert rezero_update_size(0.01, 64.0, 30, 64) == pytest.approx(0.3)


@pytest.mark.parametrize("fn, args, error", [
    (residual_growth, (1.0, -0.1, 3), ValueError), (residual_growth, (1.0, 1.0, -1), ValueError),
    (residual_growth, (float("nan"), 1.0, 3), ValueError), (residual_growth, ("1", 1.0, 3), TypeError),
    (residual_growth, (1.0, 1.0, 2.5), TypeError),
    (fixup_multiplier, (0, 2), ValueError), (fixup_multiplier, (10, 1), ValueError),
    (fixup_multiplier, (10.0, 2), TypeError),
    (fixup_update_size, (-0.1, 1.0, 10), ValueError), (fixup_update_size, (0.1, -1.0, 10), ValueError),
    (fixup_update_size, (0.1, 1.0, 0), ValueError), (fixup_update_size, (0.1, 1.0, 10, 1), ValueError),
    (rezero_update_size, (0.1, 1.0, 10, 0), ValueError), (rezero_update_size, (0.1, 1.0, 0, 8), ValueError),
    (rezero_update_size, (None, 1.0, 3, 8), TypeError),
])
def test_bad_input(fn, args, error):
    with pytest.raises(error):
        fn(*args)


def test_fixup_update_size_bad_multiplier():
    with pytest.raises(ValueError, match="multiplier"):
        fixup_update_size(0.1, 1.0, 10, multiplier=-1.0)


def test_residual_growth_matches_measured_gains_at_s_1():
    """s = 1, 10 blocks of width 128, 32 seeds: the mean squared gains of the gradient and of the
    stream are within 4 standard errors and 10% of 2^10 = 1024."""
    gains = residual_gains(1.0, 10, width=128, seeds=32)
    for values in (gains.gradient, gains.stream):
        m, se = _mean_se(values)
        assert abs(m - 1024) < 4 * se and abs(m / 1024 - 1) < 0.10, (m, se)


def test_residual_growth_matches_measured_gains_at_s_1_over_sqrt_L():
    """s = 1/sqrt(20), 20 blocks of width 128, 32 seeds: within 4 standard errors and 5% of
    (1 + 1/20)^20 = 2.653, gradient and stream."""
    predicted = residual_growth(20**-0.5, 1.0, 20)
    gains = residual_gains(20**-0.5, 20, width=128, seeds=32)
    for values in (gains.gradient, gains.stream):
        m, se = _mean_se(values)
        assert abs(m - predicted) < 4 * se and abs(m / predicted - 1) < 0.05, (m, se, predicted)


def test_residual_growth_with_a_branch_chi_other_than_1():
    """A branch scaled by s = 0.6 multiplies chi by 0.36: (1 + 0.36)^8 from residual_growth(0.6, 1, 8)
    equals residual_growth(1, 0.36, 8); measured over 32 seeds within 4 standard errors and 5%."""
    assert residual_growth(0.6, 1.0, 8) == pytest.approx(residual_growth(1.0, 0.36, 8))
    m, se = _mean_se(residual_gains(0.6, 8, width=128, seeds=32).gradient)
    assert abs(m - 1.36**8) < 4 * se and abs(m / 1.36**8 - 1) < 0.05


@pytest.mark.parametrize("L", [10, 100])
def test_fixup_update_size_matches_the_first_sgd_step(L):
    """Fixup blocks of width 64, one input, lr 1e-3: ||Δx_L|| / ||v|| over 6 seeds is within 10% of
    fixup_update_size at L = 10 and 100 (the sum of L terms ||h_l||² scatters less at L = 100)."""
    ratios = []
    for seed in range(6):
        with seeded(seed):
            blocks = [FixupBlock(64, L) for _ in range(L)]
        g = torch.Generator().manual_seed(10_000 + seed)
        x, v = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
        change = float(first_step_change(blocks, x, v, 1e-3).norm())
        ratios.append(change / (fixup_update_size(1e-3, float(x.pow(2).sum()), L) * float(v.norm())))
    m, se = _mean_se(ratios)
    assert abs(m - 1) < 0.10 and abs(m - 1) < 4 * se + 0.02, (m, se)


def test_fixup_update_size_without_the_multiplier_grows_with_depth():
    """Zero last layers without Fixup's multiplier: to first order (lr 1e-5) the step is L times
    Fixup's, within 15% at L = 30 (3 seeds)."""
    ratios = []
    for seed in range(3):
        with seeded(seed):
            blocks = [FixupBlock(64, 30, branch_scale=1.0) for _ in range(30)]
        g = torch.Generator().manual_seed(10_000 + seed)
        x, v = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
        change = float(first_step_change(blocks, x, v, 1e-5).norm())
        predicted = fixup_update_size(1e-5, float(x.pow(2).sum()), 30, multiplier=1.0)
        ratios.append(change / (predicted * float(v.norm())))
    assert abs(np.mean(ratios) - 1) < 0.15, ratios


def test_rezero_update_size_matches_the_mean_step_along_v():
    """ReZero, 30 blocks of width 64, lr 1e-3: -<Δx_L, v>/||v||² over rezero_update_size has mean
    within 4 standard errors and 15% of 1 over 16 seeds."""
    ratios = []
    for seed in range(16):
        with seeded(seed):
            blocks = resmlp(30, 64, residual_scale="rezero").blocks
        g = torch.Generator().manual_seed(10_000 + seed)
        x, v = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
        along = -float((first_step_change(blocks, x, v, 1e-3) * v.double()).sum()) / float(v.pow(2).sum())
        ratios.append(along / rezero_update_size(1e-3, float(x.pow(2).sum()), 30, 64))
    m, se = _mean_se(ratios)
    assert abs(m - 1) < 4 * se and abs(m - 1) < 0.15, (m, se)
