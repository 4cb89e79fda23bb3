"""Tests for gradlab.claims: every verdict of the chapter "Popular claims, tested" recomputed and
asserted (so none can flip silently), the measured numbers against their predictions, and bad
input."""

import math
import re

import pytest
import torch

from gradlab import claims
from gradlab.models import exploding_mlp

EXPECTED = {
    1: "conditional", 2: "conditional", 3: "false", 4: "false", 5: "conditional", 6: "false",
    7: "false", 8: "false", 9: "false", 10: "false", 11: "conditional", 12: "false", 13: "false",
}
"""The verdicts the chapter states."""


@pytest.fixture(scope="module")
def verdicts():
    torch.set_num_threads(1)  # the chapter's thread policy: the same numbers as the book
    return {v.number: v for v in (claim() for claim in claims.CLAIMS)}


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_each_verdict_is_the_one_the_chapter_states(verdicts, number):
    v = verdicts[number]
    assert v.number == number
    assert v.verdict == EXPECTED[number], f"claim {number} ({v.claim}) flipped: {v.evidence}"
    assert (v.verdict == "conditional") == bool(v.condition)
    assert v.chapter and all(math.isfinite(x) or math.isinf(x) for x in v.evidence.values())


def test_claims_are_numbered_in_order_and_link_existing_chapters(verdicts):
    from pathlib import Path

    book = Path(__file__).parent.parent / "book"
    assert list(verdicts) == list(range(1, 14))  # CLAIMS[i]() is claim i + 1
    text = (book / "claims.md").read_text(encoding="utf-8")
    for v in verdicts.values():
        assert (book / f"{v.chapter}.md").exists(), v.chapter
        # the chapter's summary table links the chapter this verdict names
        assert re.search(rf"^\| {v.number} \|.*\{{doc\}}`{v.chapter}` \|$", text, flags=re.M), v.number


def test_measurements_agree_with_their_predictions(verdicts):
    # Mean field: the gradient grows by the gain per ReLU layer (15 layers). The geometric mean
    # of three networks of width 64 is within a factor 2 of gain^15 (seen: 141 against 156, the
    # standard error a factor 1.08), and within 3 standard errors.
    e = verdicts[2].evidence

    def within(measured, predicted, se):
        off = abs(math.log(measured / predicted))
        return off < math.log(2) and off < 3 * math.log(se)

    assert within(e["gain_1.4"], e["gain_1.4_predicted"], e["gain_1.4_se"])
    assert within(e["gain_1"], 1.0, e["gain_1_se"])
    # ReLU without and with BatchNorm: 1.4^29 and (pi / (pi - 1))^(29/2) (wide, large-batch
    # limit), each within a factor 2 and 3 standard errors (seen: 1.2 and 1.4 standard errors).
    e = verdicts[1].evidence
    assert within(e["relu_bn"], e["relu_bn_predicted"], e["relu_bn_se"])
    assert within(e["relu_plain"], e["relu_plain_predicted"], e["relu_plain_se"])
    # The linear BN network at batch 6 explodes, below the wide-limit mean-square prediction
    # (seen: 43 against 65; tests/test_theory_normalization.py checks the per-layer factor).
    assert claims.EXPLODES <= e["linear_bn"] <= e["linear_bn_predicted"]
    # Dropout enlarges the growth. With a loss whose output gradient does not depend on the output,
    # mean(out * y), the ratio G_with / G_without over twenty networks is (1 - p)^(-15/2) = 5.3
    # within 3 standard errors and a factor 1.5 (seen: 5.29, se a factor 1.09). With the MSE the
    # ratio is above the prediction by more than 2 standard errors (seen: 7.9, se 1.11; 8.9 over
    # 30 networks, 6.6 at width 128, 5.6 at width 512 in an independent NumPy/torch check): the
    # MSE weights each example by its output, which shares the masks with its backward gain.
    e = verdicts[3].evidence
    assert within(e["ratio_output_free"], e["ratio_predicted"], e["ratio_output_free_se"]) and \
        abs(math.log(e["ratio_output_free"] / e["ratio_predicted"])) < math.log(1.5)
    assert math.log(e["ratio"] / e["ratio_predicted"]) > 2 * math.log(e["ratio_se"])
    assert e["ratio"] > e["ratio_output_free"] > 1
    # Accumulation and DDP give the one-batch gradient to float32 rounding.
    assert verdicts[6].evidence["relative_difference"] < claims.SAME
    assert verdicts[12].evidence["relative_difference"] < claims.SAME
    assert verdicts[12].evidence["growth"] == pytest.approx(verdicts[6].evidence["growth"], rel=1e-6)
    # Normalized step: small gradients scaled up 10 times, large ones down 10 times, like clipping.
    e = verdicts[7].evidence
    assert e["normalized_small"] == pytest.approx(10, rel=1e-4)
    assert e["clipped_small"] == pytest.approx(1, rel=1e-6)
    assert e["normalized_large"] == pytest.approx(e["clipped_large"], rel=1e-4)
    # Norm clipping keeps the direction exactly; value clipping does not.
    assert verdicts[8].evidence["angle_norm_to_original"] < 0.1
    # The huge gradient is finite, and a NaN/Inf comes only at a later step.
    e = verdicts[13].evidence
    assert math.isfinite(e["first_grad_norm"]) and e["first_grad_norm"] > claims.HUGE
    assert e["nonfinite_step"] >= 1
    # Its float32 norm overflows (the square of 8.9e20 is above 3.4e38) though every entry is finite.
    assert e["first_grad_max_entry"] < 3.4e38 and e["first_grad_norm_float32"] == math.inf
    # Weight decay: the first gradient is the same with and without; the decay acted on the steps taken.
    e = verdicts[4].evidence
    assert e["first_grad_norm_with"] == e["first_grad_norm_without"]
    assert e["weight_shrink"] == pytest.approx((1 - 1e-3 * 1e-2) ** e["nonfinite_step_with"])
    # A lower rate: (b) the exploding network diverges at 1e-4, not at 1e-6, whose loss falls while
    # the gradient still explodes at the start (G is computed before any step) and grows at the end
    # by more than 10; (c) the first loss overflows.
    e = verdicts[5].evidence
    assert e["deep_nonfinite_step_high"] >= 1 and e["deep_nonfinite_step_low"] == -1
    assert e["deep_loss_ratio_low"] < 1 and e["deep_growth_first"] >= claims.EXPLODES
    assert e["deep_growth_last"] > 10 and e["overflow_first_loss"] == math.inf
    # Adam: the blow-up at lr 0.03 is the rate's, not the initialization's.
    e = verdicts[9].evidence
    assert e["default_lr_growth"] < 2 and e["gain_1_growth"] >= 10
    # At He's initialization the gradient does not grow with depth; at depth 48 it shrinks
    # (finite width; seen 0.58 over three networks, 0.46 over twenty in an independent check).
    e = verdicts[11].evidence
    assert e["gain_1_depth_48"] < 1


def test_dropout_excess_over_the_prediction_fades_with_width():
    # Claim 3's sentence "the correlation fades as the layers widen": the MSE ratio G_with / G_without
    # at p = 0.2 is closer to (1 - p)^(-15/2) at width 128 than at width 32 (seen: 7.9 at 32,
    # 6.6 at 128, over twenty networks; the standard errors a factor 1.11 and 1.04).
    torch.set_num_threads(1)
    x, y = claims._data(64)

    def log_ratio(width):
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for s in range(20):
                g = [claims.layer_growth(exploding_mlp(seed=s, width=width, dropout=p), x, y)
                     for p in (0.0, 0.2)]
                out.append(math.log(g[1] / g[0]))
        return sum(out) / len(out)

    predicted = 7.5 * math.log(1 / 0.8)
    narrow, wide = log_ratio(32) - predicted, log_ratio(128) - predicted
    assert 0 < wide < narrow


def test_torch_clipping_zeroes_the_finite_gradient_whose_float32_norm_overflows():
    # The sentence of claim 13: every entry of the gain-5 network's first gradient is finite, its
    # float32 norm is inf, and torch.nn.utils.clip_grad_norm_ then scales the gradients by 0.
    x, y = claims._data(64)
    model = exploding_mlp(seed=0, gain=5.0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) == math.inf
    assert all(torch.isfinite(p.grad).all() and not p.grad.any() for p in model.parameters())


def test_layer_growth_on_a_geometric_network():
    x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 1)
    g = claims.layer_growth(exploding_mlp(seed=0, gain=1.4), x, y)
    assert 30 < g < 1000
    model = exploding_mlp(seed=0)
    claims.layer_growth(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_verdict_validates_itself():
    with pytest.raises(ValueError, match="verdict must be one of"):
        claims.Verdict(1, "x", "maybe", "")
    with pytest.raises(ValueError, match="condition"):
        claims.Verdict(1, "x", "conditional", "")
    with pytest.raises(ValueError, match="condition"):
        claims.Verdict(1, "x", "true", "when it rains")
    v = claims.Verdict(1, "x", "true", "", {"a": 1.0}, "clipping")
    with pytest.raises(AttributeError):
        v.verdict = "false"
    with pytest.raises(TypeError):
        v.evidence["a"] = 2.0
    assert hash(v) == hash(claims.Verdict(1, "x", "true", "", {"a": 3.0}, "clipping"))


@pytest.mark.parametrize(("fn", "kwargs", "error", "match"), [
    (claims.layer_growth, {"model": "net", "x": torch.zeros(2, 16), "y": torch.zeros(2, 1)}, TypeError,
     "model"),
    (claims.layer_growth, {"model": exploding_mlp(), "x": [1.0], "y": torch.zeros(2, 1)}, TypeError, "x"),
    (claims.claim_batch_norm, {"depth": 2}, ValueError, "depth"),
    (claims.claim_batch_norm, {"batch_size": 3}, ValueError, "batch_size"),
    (claims.claim_batch_norm, {"seeds": 0}, ValueError, "seeds"),
    (claims.claim_relu, {"width": 0}, ValueError, "width"),
    (claims.claim_relu, {"depth": 2.5}, TypeError, "depth"),
    (claims.claim_dropout, {"p": 1.0}, ValueError, "p"),
    (claims.claim_dropout, {"seeds": 1}, ValueError, "seeds"),
    (claims.claim_lower_lr, {"deep_lrs": [1e-4, 1e-6]}, TypeError, "deep_lrs"),
    (claims.claim_lower_lr, {"deep_lrs": (1e-6, 1e-4)}, ValueError, "deep_lrs"),
    (claims.claim_lower_lr, {"deep_steps": 0}, ValueError, "deep_steps"),
    (claims.claim_adam, {"default_lr": 0.0}, ValueError, "default_lr"),
    (claims.claim_weight_decay, {"weight_decay": -1.0}, ValueError, "weight_decay"),
    (claims.claim_weight_decay, {"lr": 0.0}, ValueError, "lr"),
    (claims.claim_weight_decay, {"steps": 0}, ValueError, "steps"),
    (claims.claim_lower_lr, {"lr_high": 0.01, "lr_low": 0.1}, ValueError, "lr_low"),
    (claims.claim_lower_lr, {"lr_high": "big"}, TypeError, "lr_high"),
    (claims.claim_accumulation, {"micro_batches": 3, "n": 64}, ValueError, "multiple"),
    (claims.claim_accumulation, {"micro_batches": 0}, ValueError, "micro_batches"),
    (claims.claim_normalized_step, {"alpha": 0.0}, ValueError, "alpha"),
    (claims.claim_value_vs_norm, {"clip_value": -1.0}, ValueError, "clip_value"),
    (claims.claim_value_vs_norm, {"max_norm": float("nan")}, ValueError, "max_norm"),
    (claims.claim_value_vs_norm, {"scale": 0.0}, ValueError, "scale"),
    (claims.claim_adam, {"lr": -0.1}, ValueError, "lr"),
    (claims.claim_adam, {"seeds": 0}, ValueError, "seeds"),
    (claims.claim_many_parameters, {"seeds": True}, TypeError, "seeds"),
    (claims.claim_deeper, {"depths": [8, 16]}, TypeError, "depths"),
    (claims.claim_deeper, {"depths": (8, 2)}, ValueError, "depths"),
    (claims.claim_multi_gpu, {"world_size": 0}, ValueError, "world_size"),
    (claims.claim_multi_gpu, {"n": 63}, ValueError, "multiple"),
    (claims.claim_multi_gpu, {"timeout": 0.0}, ValueError, "timeout"),
    (claims.claim_always_nan, {"gain": 0.0}, ValueError, "gain"),
    (claims.claim_always_nan, {"steps": 0}, ValueError, "steps"),
])
def test_bad_input_names_the_argument(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(**kwargs)


def test_the_rules_follow_the_evidence():
    # A healthy network (gain 1) does not explode at any depth: claim 11's rule then says "true"
    # only if it did; with a tiny gain for claim 13 nothing is huge and the rule says "true".
    assert claims.claim_always_nan(gain=1.0, steps=2).verdict == "true"
    assert claims.claim_normalized_step(alpha=1.0).verdict == "false"
    # With a clip value above every entry, value clipping changes nothing: the rule then
    # compares the unclipped gradient with the norm-clipped one, which point the same way.
    assert claims.claim_value_vs_norm(clip_value=1e30, max_norm=1.0).verdict == "true"
