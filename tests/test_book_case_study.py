"""The measured claims of book/case_study.md, recomputed with the chapter's set-up: the failing
run (Post-LN, Adam at 0.05, no warm-up) stalls at the entropy of the character frequencies;
warm-up, Pre-LN and a learning rate of 0.01 each fix it by more than the spread of the seeds,
clipping at 0.25 and eps = 1e-6 do not; a learning rate of 0.2 stalls too, without a NaN, and
neither warm-up nor Pre-LN fixes it there; the first block's gradients vanish in the failing run,
as the inputs of the Post-LN norms grow, not from a large gradient at initialization; Adam's
first update ratio is lr * sqrt(fan_in); the doctor flags the update ratios at initialization and
a vanishing gradient in the stalled models."""

import math
import warnings

import numpy as np
import pytest
import torch

import gradlab as gl
from gradlab.utils import seeded

CONTEXT, BATCH, STEPS, SEEDS, LR = 32, 16, 80, (0, 1, 2), 0.05


@pytest.fixture(scope="module")
def text():
    text = gl.data.load_text("shakespeare")
    codec = gl.data.CharCodec(text)
    ids = codec.encode(text)
    split = int(0.9 * len(ids))
    val = gl.data.token_batches(ids[split:], batch_size=64, context=CONTEXT, seed=10**6)(0)
    freq = torch.bincount(ids).double() / len(ids)
    return {"codec": codec, "train": ids[:split], "val": val,
            "entropy": float(-(freq[freq > 0] * freq[freq > 0].log()).sum())}


def _model(text, norm_position, seed):
    with seeded(seed):
        return gl.models.Transformer(text["codec"].vocab_size, d_model=32, n_head=4, n_layer=2,
                                     context=CONTEXT, norm_position=norm_position)


def _run(text, *, norm_position="post", lr=LR, warmup=0, clip=None, eps=1e-8, seed=0):
    model = _model(text, norm_position, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=eps)
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
                if warmup else None)
    monitor = gl.GradientMonitor(model, optimizer)
    probe = text["val"][0][:16]

    sigmas = []  # per step: {norm name: std over coordinates of its input, mean over positions}

    def spread():
        step = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: step.__setitem__(n, float(i[0].std(-1).mean())))
                 for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
        with torch.no_grad():
            value = float(model(probe).std(dim=(0, 1)).mean())
        for h in hooks:
            h.remove()
        sigmas.append(step)
        return value

    spreads = [spread()]
    data = gl.data.token_batches(text["train"], batch_size=BATCH, context=CONTEXT, seed=seed)
    history = gl.fit(model, gl.models.lm_loss, data, optimizer, steps=STEPS, clip=clip,
                     scheduler=schedule, monitor=monitor, callback=lambda record: spreads.append(spread()))
    with torch.no_grad():
        logits = model(text["val"][0])
    return {"model": model, "history": history, "monitor": monitor, "spreads": np.array(spreads),
            "sigmas": sigmas,
            "val": float(gl.models.lm_loss(logits, text["val"][1])),
            "spread": float(logits.std(dim=(0, 1)).mean())}


CONFIGS = {"failing": {}, "warm-up": {"warmup": 30}, "Pre-LN": {"norm_position": "pre"},
           "lr 0.01": {"lr": 0.01}, "clipping": {"clip": 0.25}, "eps": {"eps": 1e-6},
           "lr 0.2": {"lr": 0.2}, "lr 0.2 warm-up": {"lr": 0.2, "warmup": 30},
           "lr 0.2 Pre-LN": {"lr": 0.2, "norm_position": "pre"}}


@pytest.fixture(scope="module")
def runs(text):
    return {name: [_run(text, seed=s, **change) for s in SEEDS] for name, change in CONFIGS.items()}


def _vals(runs, name):
    return [r["val"] for r in runs[name]]


def test_failing_run_stalls_at_the_unigram_entropy_without_nan(runs, text):
    """Every seed ends within 0.05 nats of the entropy of the character frequencies (3.300), with
    logits that barely depend on the input (spread < 0.2, against > 0.5 in the fixed runs), and
    no NaN/Inf; the largest gradient norm of any step stays below 5 (no explosion)."""
    for r in runs["failing"]:
        assert abs(r["val"] - text["entropy"]) < 0.05, r["val"]
        assert r["spread"] < 0.2 and not r["history"].stopped
        assert r["history"].grad_norm.max() < 5.0
    assert abs(text["entropy"] - 3.300) < 5e-4


@pytest.mark.parametrize("fix", ["warm-up", "Pre-LN", "lr 0.01"])
def test_each_fix_beats_the_failing_run_by_more_than_the_seed_spread(runs, fix):
    failing = _vals(runs, "failing")
    spread = max(failing) - min(failing)
    gap = min(failing) - max(_vals(runs, fix))
    assert gap > spread and gap > 0.1, (fix, gap, spread)
    assert min(r["spread"] for r in runs[fix]) > 0.5


@pytest.mark.parametrize("change", ["clipping", "eps"])
def test_clipping_and_eps_leave_the_run_stalled(runs, text, change):
    """Every seed within 0.1 nat of the unigram entropy (here within 0.03; with two threads'
    rounding one clipped seed ended 0.08 below it), far from the fixes (below 3.1), and not
    separated from the failing run by the chapter's rule (more than the failing spread and 0.1)."""
    failing = _vals(runs, "failing")
    for v in _vals(runs, change):
        assert abs(v - text["entropy"]) < 0.1, (change, v)
        assert min(failing) - v < max(max(failing) - min(failing), 0.1), (change, v)


def test_four_times_the_learning_rate_stalls_too_without_nan(runs, text):
    """lr 0.2: every seed within 0.1 nat of the unigram entropy, no NaN/Inf (no divergence)."""
    for r in runs["lr 0.2"]:
        assert abs(r["val"] - text["entropy"]) < 0.1 and not r["history"].stopped, r["val"]


@pytest.mark.parametrize("fix", ["lr 0.2 warm-up", "lr 0.2 Pre-LN"])
def test_warm_up_and_pre_ln_stop_working_at_lr_0_2(runs, text, fix):
    """Where the fixes stop: at lr 0.2 every seed ends within 0.2 nat of the unigram entropy
    (measured 3.344 to 3.368 with warm-up, 3.210 to 3.391 with Pre-LN; independent code 3.345 to
    3.365 and 3.264 to 3.283), far above the lr 0.05 fixes (below 3.1)."""
    for v in _vals(runs, fix):
        assert v > text["entropy"] - 0.2, (fix, v)


def test_first_block_gradients_vanish_only_in_the_failing_run(runs):
    """The chapter's monitor reading: the median over the first block's layers of (gradient norm
    at step 0) / (median over the last 20 steps) is above 100 for every failing seed and below 50
    for every Pre-LN seed."""
    def drop(r):
        names = r["monitor"].layer_names
        cols = [i for i, n in enumerate(names) if n.startswith("blocks.0.")]
        g = r["monitor"].grad_norms[:, cols]
        return float(np.median(g[0] / np.median(g[-20:], axis=0)))

    assert min(drop(r) for r in runs["failing"]) > 100
    assert max(drop(r) for r in runs["Pre-LN"]) < 50

    def ratio_to_step0(r):
        g = r["monitor"].grad_norms[:, [i for i, n in enumerate(r["monitor"].layer_names)
                                        if n.startswith("blocks.0.")]]
        return np.median(g / g[0], axis=1)

    # "It happens early": below 1/100 of step 0 within the first 10 steps; never for Pre-LN.
    assert all((ratio_to_step0(r)[:10] < 1e-2).any() for r in runs["failing"])
    assert not any((ratio_to_step0(r) < 1e-2).any() for r in runs["Pre-LN"])


def _first_block_drop(r):
    names = r["monitor"].layer_names
    g = r["monitor"].grad_norms[:, [i for i, n in enumerate(names) if n.startswith("blocks.0.")]]
    return float(np.median(g[0] / np.median(g[-20:], axis=0)))


def test_no_large_gradient_at_init_post_ln_norm_inputs_grow(runs):
    """The chapter's mechanism. At step 0 (same initial weights) no layer's Post-LN gradient is
    more than 1.6 times its Pre-LN one (measured 1.36; independent code 1.37 over 8 seeds), and
    the last block's feed-forward ones about sqrt(2) times (Xiong et al. 2020, L = 2). Over the
    run, the product of the input sigmas of the three norms between the first block and the head
    grows > 1e4 times in Post-LN, more than the first block's gradient falls; in Pre-LN the final
    norm's sigma grows < 200 times and the first block's gradient falls < 50 times."""
    ratio = np.mean([p["monitor"].grad_norms[0] / q["monitor"].grad_norms[0]
                     for p, q in zip(runs["failing"], runs["Pre-LN"], strict=True)], axis=0)
    assert ratio.max() < 1.6 and ratio.min() > 0.8, ratio
    # Xiong et al.'s Theorem 1: the bounds on the last layer's feed-forward gradients differ by
    # sqrt(L) = sqrt(2) here; measured 1.34 (independent code: 1.32 and 1.37 over 8 seeds)
    names = runs["failing"][0]["monitor"].layer_names
    last_ffn = [i for i, n in enumerate(names) if n.startswith("blocks.1.ffn.")]
    assert abs(ratio[last_ffn].mean() - math.sqrt(2)) < 0.15, ratio[last_ffn]
    path = ("blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2")
    for r in runs["failing"]:
        product = [float(np.prod([step[n] for n in path])) for step in (r["sigmas"][0], r["sigmas"][-1])]
        assert product[1] / product[0] > max(1e4, _first_block_drop(r)), (product, _first_block_drop(r))
    for r in runs["Pre-LN"]:
        assert r["sigmas"][-1]["norm_f"] / r["sigmas"][0]["norm_f"] < 200
        assert _first_block_drop(r) < 50


def test_logit_spread_collapses_after_the_first_step_only_in_post_ln(runs):
    """The chapter's callback reading: after step 1 the Post-LN spread is below 0.15 of its
    initial value and the Pre-LN one above 0.15; after 10 steps Post-LN is below 0.01; Pre-LN
    ends above its initial value."""
    for r in runs["failing"]:
        ratio = r["spreads"] / r["spreads"][0]
        assert ratio[1] < 0.15 and ratio[10] < 0.01, ratio[:11]
    for r in runs["Pre-LN"]:
        ratio = r["spreads"] / r["spreads"][0]
        assert ratio[1] > 0.15 and ratio[-1] > 1.0, ratio[[1, -1]]


def test_adam_first_update_ratio_is_lr_sqrt_fan_in(runs, text):
    """Every linear weight of every seed: the first step's ||dW|| / ||W|| within 5% of
    lr * sqrt(fan_in) and within 3.5 times the scatter of ||W|| around its mean, and the mean over
    layers and seeds within 1%."""
    model = _model(text, "post", 0)
    names = runs["failing"][0]["monitor"].layer_names
    fan_in = np.array([dict(model.named_modules())[n].in_features for n in names])
    measured = np.array([r["monitor"].update_ratios[0] for r in runs["failing"]])
    rel = measured / (LR * np.sqrt(fan_in)) - 1
    assert np.abs(rel).max() < 0.05, rel
    assert abs(rel.mean()) < 0.01
    # the deviations are the scatter of ||W|| at init, relative sd 1/sqrt(2 m n) (independent code,
    # 8 seeds x 9 weights: deviations / that scatter have sd 0.92)
    fan_out = np.array([dict(model.named_modules())[n].out_features for n in names])
    assert np.abs(rel * np.sqrt(2 * fan_in * fan_out)).max() < 3.5


def test_doctor_flags_only_update_ratios_in_post_and_pre_ln(text):
    batch = gl.data.token_batches(text["train"], batch_size=BATCH, context=CONTEXT, seed=0)(0)
    for position in ("post", "pre"):
        model = _model(text, position, 0)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = gl.doctor(model, gl.models.lm_loss, batch, optimizer=optimizer)
        assert report.kinds == {"update_ratio"}
        ratios = report.of_kind("update_ratio")[0].values["ratios"]
        assert min(ratios.values()) > 0.03 and max(ratios.values()) < 1.0  # 40 to 300 times the band
        assert math.isfinite(sum(ratios.values()))


def test_doctor_finds_the_vanishing_gradient_in_the_stalled_models_only(runs, text):
    """After training: a vanishing gradient (a factor > 1000, at blocks.0.attn.qkv) on at least 2
    of the 3 stalled models, no warning or error on the Pre-LN ones."""
    batch = gl.data.token_batches(text["train"], batch_size=BATCH, context=CONTEXT, seed=0)(0)
    found = [gl.doctor(r["model"], gl.models.lm_loss, batch).of_kind("vanishing_gradient")
             for r in runs["failing"]]
    flagged = [f[0] for f in found if f]
    assert len(flagged) >= 2
    assert all(1 / f.values["growth"] > 1000 and f.where == "blocks.0.attn.qkv" for f in flagged)
    for r in runs["Pre-LN"]:
        assert gl.doctor(r["model"], gl.models.lm_loss, batch).kinds == set()
