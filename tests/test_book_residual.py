"""The measured claims of book/residual.md that rest on the chapter's own set-up: the depth sweep
from 10 to 1000 blocks, the float32 overflow, Fixup's first step at every depth, the gradient of a
ReZero stack, the training run and the one-layer branches of gl.mlp. (The agreements with
gl.theory.residual at fixed depth are in tests/test_theory_residual.py.)"""

import math
import warnings

import numpy as np
import torch
from torch import nn

import gradlab as gl
from gradlab.propagation import first_step_change, residual_gains, stack_norms
from gradlab.theory import fixup_update_size, residual_growth
from gradlab.utils import seeded


def test_depth_sweep_plain_explodes_and_remedies_stay_bounded():
    """Width 64, 2 seeds (the chapter uses 1 at L = 1000): s = 1/sqrt(L) within 30% of (1 + 1/L)^L
    at L = 10, 100, 1000; the plain stack at 1000 blocks between 10^280 and 10^302 (the mean
    2^1000 = 10^301), that is 1.905 to 2.004 per block; Fixup and ReZero exactly 1."""
    for L in (10, 100, 1000):
        scaled = residual_gains("sqrt_depth", L, width=64, seeds=2).gradient
        assert np.all(np.abs(scaled / residual_growth(L**-0.5, 1.0, L) - 1) < 0.3), (L, scaled)
    log_plain = np.log10(residual_gains(1.0, 1000, width=64, seeds=2).gradient)
    assert np.all((log_plain > 280) & (log_plain < 302)), log_plain
    for scheme in ("fixup", "rezero"):
        assert np.all(residual_gains(scheme, 100, seeds=1).gradient == 1.0)


def test_float32_stream_overflows_near_the_estimate():
    """The chapter's plain stack of width 128 in float32 overflows within 10% of the estimated
    block 2 log2(float32 max / max|x_0|), and within 2% of the estimate from the network's own
    growth rate of its largest entry, measured in float64 over 200 blocks (the gap between the two
    is the single network's growth below 2 per block)."""
    with seeded(0):
        plain = gl.models.resmlp(400, 128, residual_scale=1.0)
    h = torch.randn(16, 128, generator=torch.Generator().manual_seed(10_000))
    headroom = math.log2(torch.finfo(torch.float32).max / float(h.abs().max()))
    with torch.no_grad():
        h64 = h.double()
        for block in plain.double().blocks[:200]:
            h64 = block(h64)
        plain.float()
        rate = (math.log2(float(h64.abs().max())) - math.log2(float(h.abs().max()))) / 200
    assert 0.45 < rate < 0.5, rate
    block_index = 0
    with torch.no_grad():
        while torch.isfinite(h).all():
            h = plain.blocks[block_index](h)
            block_index += 1
    assert abs(block_index / (2 * headroom) - 1) < 0.1, (block_index, 2 * headroom)
    assert block_index > 2 * headroom and abs(block_index / (headroom / rate) - 1) < 0.02, (block_index, rate)


def test_sqrt_depth_sweep_spread_is_the_scatter_of_single_networks():
    """The chapter's sentence on the 1/sqrt(L) sweep: at 10 blocks of width 64, over 32 seeds, the
    mean is within 4 standard errors and 5% of (1 + 1/10)^10 and one network's standard deviation
    is 3% to 10% of the mean (the chapter says about 6%); the chapter's own 2-seed sweep values at
    10 and 100 blocks lie within 3 such standard deviations of the prediction."""
    predicted = residual_growth(10**-0.5, 1.0, 10)
    gains = residual_gains("sqrt_depth", 10, width=64, seeds=32).gradient
    m, sd = gains.mean(), gains.std(ddof=1)
    assert abs(m - predicted) < 4 * sd / math.sqrt(32) and abs(m / predicted - 1) < 0.05, (m, sd)
    assert 0.03 < sd / m < 0.10, sd / m
    for L in (10, 100):
        sweep = residual_gains("sqrt_depth", L, width=64, seeds=2).gradient
        assert np.all(np.abs(sweep - residual_growth(L**-0.5, 1.0, L)) < 3 * sd), (L, sweep)


def _fixup_ratio(L, seed, branch_scale=None, width=128, lr=1e-3):
    with seeded(seed):
        blocks = [gl.models.FixupBlock(width, L, branch_scale=branch_scale) for _ in range(L)]
    g = torch.Generator().manual_seed(10_000 + seed)
    x, v = torch.randn(1, width, generator=g), torch.randn(1, width, generator=g)
    change = float(first_step_change(blocks, x, v, lr).norm())
    predicted = fixup_update_size(lr, float(x.pow(2).sum()), L, multiplier=branch_scale)
    return change / float(v.norm()), change / (predicted * float(v.norm()))


def test_fixup_first_step_at_every_depth_and_the_zero_last_layer_alone():
    """Width 128, lr 1e-3: Fixup's step is within 25% of the prediction at L = 10 (4 seeds), 10% at
    L = 100 (2 seeds) and 3% at L = 1000 (1 seed). The zero last layer alone is within 20% of its
    first-order prediction at L = 10 (4 seeds); at L = 100 (2 seeds) it moves the output by more
    than 30 ||v||, more than 3 times even its first-order prediction."""
    for L, seeds, tol in ((10, 4, 0.25), (100, 2, 0.10), (1000, 1, 0.03)):
        for seed in range(seeds):
            assert abs(_fixup_ratio(L, seed)[1] - 1) < tol, (L, seed)
    assert abs(np.mean([_fixup_ratio(10, s, 1.0)[1] for s in range(4)]) - 1) < 0.2
    deep = np.array([_fixup_ratio(100, s, 1.0) for s in range(2)])
    assert np.all(deep[:, 0] > 30) and np.all(deep[:, 1] > 3), deep


def test_rezero_first_gradient_reaches_only_the_gates():
    with seeded(0):
        rezero = gl.models.resmlp(30, 128, residual_scale="rezero")
    (rezero.blocks(torch.randn(1, 128)) * torch.randn(1, 128)).sum().backward()
    nonzero = [n for n, p in rezero.blocks.named_parameters()
               if p.grad is not None and p.grad.abs().max() > 0]
    assert len(nonzero) == 30 and all(n.endswith("gate") for n in nonzero)


def test_training_plain_stack_stops_and_the_remedies_train():
    """The chapter's run: 20 blocks of width 32, SGD lr 0.01, 100 steps. The plain stack stops on a
    NaN within 2 steps; the three remedies run all steps and lower the loss by
    at least 25%."""
    x, y = gl.data.teacher_regression(256, 16, kind="sine", seed=0)
    for scale in (1.0, "sqrt_depth", "fixup", "rezero"):
        with seeded(0):
            model = gl.models.resmlp(20, 32, in_features=16, residual_scale=scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            h = gl.train.fit(model, nn.functional.mse_loss, (x, y),
                             torch.optim.SGD(model.parameters(), lr=0.01), steps=100)
        if scale == 1.0:
            assert h.stopped_by == "nonfinite" and h.stopped_at <= 2
        else:
            assert h.stopped_at is None and h.loss[-1] < 0.75 * h.loss[0], (scale, h.loss[[0, -1]])


def test_one_layer_relu_branches_are_not_bounded_by_sqrt_depth():
    """gl.mlp(..., residual=True, residual_scale="sqrt_depth"), width 128, 3 seeds: the squared
    gradient gain exceeds 10 at 50 blocks and 1e3 at 200, while the mean-free two-layer branch of
    resmlp stays within 30% of (1 + 1/200)^200 < e."""
    for K, bound in ((50, 10.0), (200, 1e3)):
        for seed in range(3):
            with seeded(seed):
                net = gl.mlp(K + 1, 128, residual=True, residual_scale="sqrt_depth")
            g = torch.Generator().manual_seed(10_000 + seed)
            x, v = torch.randn(16, 128, generator=g), torch.randn(16, 128, generator=g)
            norms = stack_norms(net[:-1], x, v)
            assert norms.grads[0] / norms.grads[-1] > bound, (K, seed)
    two_layer = residual_gains("sqrt_depth", 200, width=128, seeds=3).gradient
    assert np.all(np.abs(two_layer / residual_growth(200**-0.5, 1.0, 200) - 1) < 0.3)


def _one_layer_gain(K, seed, variant, width=128):
    """Independent of gl.mlp: K blocks x + K^(-1/2) f(x) with f one ReLU layer at He's scale,
    as gl.mlp builds them; ``centred`` subtracts the expected mean sqrt(2/n)||x||/sqrt(2 pi) of each
    unit (held fixed in the backward pass), ``signs`` multiplies each unit by a random sign."""
    g = torch.Generator().manual_seed(777 + seed)
    x0 = torch.randn(16, width, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(16, width, generator=g, dtype=torch.float64)
    x = x0
    for _ in range(K):
        f = torch.relu(x @ (torch.randn(width, width, generator=g, dtype=torch.float64)
                            * math.sqrt(2 / width)).T)
        if variant == "centred":
            f = f - (x.pow(2).sum(1, keepdim=True) * 2 / width).sqrt().detach() / math.sqrt(2 * math.pi)
        elif variant == "signs":
            f = f * (torch.randint(0, 2, (width,), generator=g).double() * 2 - 1)
        x = x + K**-0.5 * f
    (x * v).sum().backward()
    return float(x0.grad.pow(2).sum() / v.pow(2).sum())


def test_one_layer_branch_growth_is_mostly_its_mean():
    """The chapter's explanation of gl.mlp's growth, K = 200 blocks of width 128, 3 seeds: the plain
    one-layer ReLU branch exceeds 1e3; with its expected mean subtracted it stays below 10 (yet
    above (1 + 1/K)^K, from the Jacobian W^T D whose gate D is set by W); with a random sign per
    unit (mean-free, independent of W) it is within 30% of (1 + 1/K)^K."""
    bound = residual_growth(200**-0.5, 1.0, 200)
    for seed in range(3):
        assert _one_layer_gain(200, seed, "relu") > 1e3
        assert bound < _one_layer_gain(200, seed, "centred") < 10
        assert abs(_one_layer_gain(200, seed, "signs") / bound - 1) < 0.3
