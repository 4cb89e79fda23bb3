"""The measured claims of book/normalization.md that rest on the chapter's own set-up: the
verdict on "batch normalization prevents gradient explosion", the transformers' gradients at
initialization, and the warm-up experiment. (The agreements with gl.theory.normalization are in
tests/test_theory_normalization.py.)"""

import math

import numpy as np
import pytest
import torch

import gradlab as gl
from gradlab.models import Transformer, lm_loss
from gradlab.theory import norm_gradient_growth
from gradlab.utils import seeded


def _growth(activation, norm, batch, **options):
    factors = gl.propagation.normalized_gradient_growth(activation, norm, batch, **options)
    return float(factors.mean()), float(factors.std(ddof=1) / math.sqrt(len(factors)))


def test_claim_verdict_batchnorm_networks_explode_at_initialization():
    """The verdict "false": with ReLU and BatchNorm the per-layer factor exceeds 1 by more than
    four standard errors at every batch size the chapter measures (16 to 128), and is at least
    pi/(pi - 1) minus 1%; with LayerNorm it is within 5% of 1."""
    for batch in (16, 32, 64, 128):
        m, se = _growth("relu", "batch", batch)
        assert m - 4 * se > 1.0 and m > norm_gradient_growth("relu") * 0.99, (batch, m, se)
    m, _ = _growth("relu", "layer", 32)
    assert abs(m - 1) < 0.05


def test_batchnorm_explodes_for_every_measured_activation():
    """The chapter's verdict: at B = 32 the BatchNorm factor exceeds 1 for ReLU, tanh, sigmoid,
    by more than four standard errors, and is at least the large-batch limit (minus 1%)."""
    for name in ("relu", "tanh", "sigmoid"):
        m, se = _growth(name, "batch", 32)
        assert m > 1.0 + 4 * se, (name, m, se)
        assert m > 0.99 * norm_gradient_growth(name)


def test_ffn_weight_gradients_at_initialization_pre_and_post_ln():
    """The chapter's statements, eight models each on the bigram Markov text: the Pre-LN
    last-block gradient falls by more than a factor 1.5 from 2 to 16 blocks, the Post-LN one does
    not fall, and at 16 blocks Post-LN's is more than twice Pre-LN's."""
    tokens = gl.data.markov_tokens(20_000, vocab_size=16, seed=0)

    def last_block(position, n_layer):
        values = []
        for seed in range(8):
            with seeded(seed):
                model = Transformer(16, d_model=32, n_head=4, n_layer=n_layer, context=16,
                                    norm_position=position)
            idx, targets = gl.data.token_batches(tokens, batch_size=8, context=16, seed=seed)(0)
            values.append(gl.propagation.ffn_weight_gradients(model, idx, targets)[-1])
        return float(np.mean(values))

    pre = {n: last_block("pre", n) for n in (2, 16)}
    post = {n: last_block("post", n) for n in (2, 16)}
    assert pre[2] > 1.5 * pre[16]
    assert post[16] >= post[2]
    assert post[16] > 2 * pre[16]


def test_post_ln_collapses_without_warmup_at_a_high_learning_rate():
    """The chapter's warm-up experiment, two seeds: Adam at lr 0.02 on the 16-symbol bigram text.
    Post-LN without warm-up ends near the entropy of the symbol frequencies with logits that no
    longer depend on the input; Post-LN with 30 warm-up steps and Pre-LN without get below 1 nat."""
    tokens = gl.data.markov_tokens(20_000, vocab_size=16, order=1, branching=2, seed=0)
    freq = torch.bincount(tokens, minlength=16) / len(tokens)
    unigram = float(-torch.special.xlogy(freq, freq).sum())
    probe, _ = gl.data.token_batches(tokens, batch_size=8, context=16, seed=10_000)(0)
    for seed in range(2):
        for position, warm in (("post", 0), ("post", 30), ("pre", 0)):
            with gl.utils.seeded(seed):
                model = Transformer(16, d_model=32, n_head=4, n_layer=4, context=16, norm_position=position)
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-2, betas=(0.9, 0.98))
            schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, w=warm: min(1.0, (s + 1) / w))
                        if warm else None)
            data = gl.data.token_batches(tokens, batch_size=8, context=16, seed=seed)
            history = gl.fit(model, lm_loss, data, optimizer, steps=80, scheduler=schedule, progress=False)
            with torch.no_grad():
                spread = float(model(probe).std(dim=(0, 1)).mean())
            final = float(history.loss[-10:].mean())
            if position == "post" and not warm:
                assert abs(final - unigram) < 0.1 and spread < 1e-3, (seed, final, spread)
            else:
                assert history.loss.min() < 1.0 and spread > 1.0, (seed, position, warm, final, spread)


def test_relu_batchnorm_line_ends_below_the_limit_and_width_raises_the_factor():
    """The chapter's reading of the large-batch fit: the line a + b/B through B = 16 .. 128 at
    width 256 ends below pi/(pi - 1) by more than two standard errors (but within 1.5%); at
    B = 256 (depth 10) networks of width 1024 have a larger factor than networks of width 256,
    by more than one standard error of the difference, and width 256 is within 0.5% of the
    limit."""
    limit = norm_gradient_growth("relu")
    measured = {B: _growth("relu", "batch", B) for B in (16, 32, 64, 128)}
    coef, cov = np.polyfit([1 / B for B in measured], [m for m, _ in measured.values()], 1,
                           w=[1 / se for _, se in measured.values()], cov="unscaled")
    assert limit - 2 * math.sqrt(cov[1, 1]) > coef[1] > limit * 0.985
    narrow = _growth("relu", "batch", 256, width=256, depth=10, seeds=5)
    wide = _growth("relu", "batch", 256, width=1024, depth=10, seeds=3)
    assert wide[0] - narrow[0] > math.hypot(wide[1], narrow[1])
    assert narrow[0] == pytest.approx(limit, rel=0.005)


def test_eval_mode_linear_factor_between_unbiased_correction_and_one():
    """The chapter's eval-mode statement at B = 32 with 20 calibration batches: the linear
    network's factor lies below 1 and above (B - 1)/B (by more than two standard errors)."""
    m, se = _growth("linear", "batch", 32, seeds=3, mode="eval", calibrate=20)
    assert 31 / 32 + 2 * se < m < 1.0
