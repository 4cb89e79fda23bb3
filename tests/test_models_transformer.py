"""Tests for gradlab.models.transformer: shapes, causality, Pre-LN/Post-LN structure, equality with
torch.nn.TransformerEncoderLayer, initialization, generation, the loss, and bad input."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab as gl
from gradlab.models import NORM_POSITIONS, Transformer, TransformerBlock, lm_loss
from gradlab.models.transformer import FFN_EXPANSION, NORM_EPS


def _model(**kwargs):
    config = {"d_model": 32, "n_head": 4, "n_layer": 2, "context": 12, **kwargs}
    with gl.utils.seeded(0):
        return Transformer(11, **config)


def _idx(batch=3, time=12, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_shapes_and_dtype(norm_position, norm):
    model = _model(norm_position=norm_position, norm=norm)
    for time in (1, 5, 12):
        logits = model(_idx(time=time))
        assert logits.shape == (3, time, 11) and logits.dtype == torch.float32
    assert model.double()(_idx()).dtype == torch.float64


@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
def test_causality(norm_position):
    """The logits at position t do not change when the tokens after t change, and do change when a
    token at or before t changes."""
    model = _model(norm_position=norm_position, n_layer=3).double()
    idx = _idx()
    base = model(idx)
    for t in (0, 4, 10):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 11
        out = model(changed)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-12)
        if t + 1 < idx.shape[1]:
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    earlier = idx.clone()
    earlier[:, 0] = (earlier[:, 0] + 1) % 11
    assert (model(earlier) - base).abs()[:, -1].max() > 1e-6  # the last position sees position 0


def test_pre_and_post_structure():
    pre, post = _model(norm_position="pre"), _model(norm_position="post")
    assert isinstance(pre.norm_f, nn.LayerNorm) and isinstance(post.norm_f, nn.Identity)
    assert all(b.norm_position == "pre" for b in pre.blocks)
    assert all(b.norm_position == "post" for b in post.blocks)
    # the same parameters except the final norm
    names_pre = {n for n, _ in pre.named_parameters()}
    names_post = {n for n, _ in post.named_parameters()}
    assert names_pre - names_post == {"norm_f.weight", "norm_f.bias"} and not names_post - names_pre
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    # Post-LN: every block's output is normalized (mean 0, norm sqrt(d) per token at init);
    # Pre-LN: the block adds to its input, which is not normalized
    out_post = post.double().blocks[0](x)
    torch.testing.assert_close(out_post.mean(-1), torch.zeros(2, 7, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out_post.pow(2).mean(-1), torch.ones(2, 7, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    block = pre.double().blocks[0]
    expected = x + block.attn(block.norm1(x))
    expected = expected + block.ffn(block.norm2(expected))
    torch.testing.assert_close(block(x), expected)
    assert (block(x).pow(2).mean(-1) - 1).abs().max() > 0.1


def _copy_into_encoder_layer(block, activation, norm_first):
    d = block.norm1.normalized_shape[0]
    n_head = block.attn.n_head
    ref = nn.TransformerEncoderLayer(d, n_head, FFN_EXPANSION * d, dropout=0.0, activation=activation,
                                     batch_first=True, norm_first=norm_first, layer_norm_eps=NORM_EPS)
    ref = ref.double()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(block.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(block.attn.proj.bias)
        ref.linear1.weight.copy_(block.ffn.fc1.weight)
        ref.linear1.bias.copy_(block.ffn.fc1.bias)
        ref.linear2.weight.copy_(block.ffn.fc2.weight)
        ref.linear2.bias.copy_(block.ffn.fc2.bias)
        for mine, theirs in ((block.norm1, ref.norm1), (block.norm2, ref.norm2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    return ref


@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_block_equals_torch_transformer_encoder_layer(norm_position, activation):
    """Weights copied into nn.TransformerEncoderLayer(norm_first=...) with a causal mask give the
    same output (float64); without the mask they do not, so the causal mask is what matches."""
    model = _model(norm_position=norm_position, activation=activation).double()
    block = model.blocks[0]
    with torch.no_grad():  # move every parameter away from its initial value (biases, gains)
        g = torch.Generator().manual_seed(3)
        for p in block.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ref = _copy_into_encoder_layer(block, activation, norm_first=norm_position == "pre")
    x = torch.randn(4, 9, 32, dtype=torch.float64, generator=g)
    mask = nn.Transformer.generate_square_subsequent_mask(9, dtype=torch.float64)
    torch.testing.assert_close(block(x), ref(x, src_mask=mask, is_causal=True), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(block(x), ref(x), atol=1e-3)


@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
def test_model_equals_a_reference_built_from_torch(norm_position):
    """The whole model: embeddings, a torch encoder stack with copied weights, the final norm
    (Pre-LN only) and the head."""
    model = _model(norm_position=norm_position, n_layer=3).double()
    layers = [_copy_into_encoder_layer(b, "relu", norm_position == "pre") for b in model.blocks]
    idx = _idx(time=10)
    x = model.tok(idx) + model.pos(torch.arange(10))
    mask = nn.Transformer.generate_square_subsequent_mask(10, dtype=torch.float64)
    for layer in layers:
        x = layer(x, src_mask=mask, is_causal=True)
    if norm_position == "pre":
        x = F.layer_norm(x, (32,), model.norm_f.weight, model.norm_f.bias, NORM_EPS)
    torch.testing.assert_close(model(idx), model.head(x), rtol=1e-10, atol=1e-10)


def test_attention_written_out_equals_the_fused_kernel():
    """softmax(q k^T / sqrt(head size) + causal mask) v per head, by hand."""
    model = _model().double()
    attn = model.blocks[0].attn
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(32, dim=2)
    heads = []
    for h in range(4):
        sl = slice(8 * h, 8 * (h + 1))
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8)
        scores = scores.masked_fill(torch.triu(torch.ones(6, 6, dtype=torch.bool), 1), -math.inf)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, dim=-1)))


def test_rms_norm_layers():
    model = _model(norm="rms")
    norms = [m for m in model.modules() if isinstance(m, nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1 and not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert all(m.eps == NORM_EPS for m in norms)


def test_initialization():
    with gl.utils.seeded(1):
        model = Transformer(50, d_model=64, n_head=4, n_layer=3, context=64)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = float(module.weight.detach().std())
            assert std == pytest.approx(1 / math.sqrt(module.in_features), rel=0.1), name
            assert torch.all(module.bias == 0), name
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    for emb in (model.tok, model.pos):
        assert float(emb.weight.detach().var()) == pytest.approx(0.5, rel=0.1)
    # the residual stream starts with unit variance per coordinate
    idx = torch.randint(0, 50, (32, 64), generator=torch.Generator().manual_seed(0))
    x0 = model.embed(idx).detach()
    assert float(x0.pow(2).mean()) == pytest.approx(1.0, rel=0.15)
    # the same seed builds the same model; reset_parameters draws anew
    with gl.utils.seeded(1):
        again = Transformer(50, d_model=64, n_head=4, n_layer=3, context=64)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    again.reset_parameters()
    assert not torch.equal(again.head.weight, model.head.weight)


def test_initial_loss_is_near_log_vocab():
    model = _model()
    idx = _idx(batch=16)
    loss = float(lm_loss(model(idx), _idx(batch=16, seed=1)).detach())
    assert math.log(11) < loss < math.log(11) + 1.5


def test_dropout_only_in_training_mode():
    model = _model(dropout=0.5)
    idx = _idx()
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    with gl.utils.seeded(0):
        plain = Transformer(11, d_model=32, n_head=4, n_layer=2, context=12)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.eval()(idx), model(idx))


def test_lm_loss_equals_cross_entropy():
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (3, 5))
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(lm_loss(logits, targets), manual)


@pytest.mark.parametrize(
    ("logits", "targets", "error", "name"),
    [
        (torch.randn(3, 7), torch.zeros(3, dtype=torch.long), ValueError, "logits"),
        (torch.randn(3, 5, 7), torch.zeros(3, dtype=torch.long), ValueError, "targets"),
        (torch.randn(3, 5, 7), torch.zeros(3, 4, dtype=torch.long), ValueError, "targets"),
        ([[1.0]], torch.zeros(1, 1, dtype=torch.long), TypeError, "logits"),
    ],
)
def test_lm_loss_bad_input(logits, targets, error, name):
    with pytest.raises(error, match=name):
        lm_loss(logits, targets)


def test_generate():
    model = _model().eval()
    start = _idx(batch=2, time=3)
    out = model.generate(start, 20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 23) and torch.equal(out[:, :3], start)
    assert 0 <= int(out.min()) and int(out.max()) < 11
    again = model.generate(start, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(model.generate(start, 0), start)
    # a low temperature follows the argmax
    greedy = model.generate(start, 1, temperature=1e-6)
    assert torch.equal(greedy[:, -1], model(start)[:, -1].argmax(-1))
    # longer than the context: it sees the last `context` tokens
    long = model.generate(_idx(batch=1, time=12), 3, generator=torch.Generator().manual_seed(1))
    assert long.shape == (1, 15)


def test_training_with_fit_reaches_the_markov_floor():
    """A Pre-LN model trained with gl.fit on a bigram Markov text gets near its entropy rate."""
    tokens = gl.data.markov_tokens(5000, vocab_size=8, branching=2, seed=0)
    with gl.utils.seeded(0):
        model = Transformer(8, d_model=32, n_head=4, n_layer=2, context=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = gl.fit(model, lm_loss, gl.data.token_batches(tokens, batch_size=16, context=16),
                     optimizer, steps=60, progress=False)
    assert history.loss[0] > 1.8 and history.loss[-10:].mean() < math.log(2) + 0.15


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"vocab_size": 5.0}, TypeError, "vocab_size"),
        ({"d_model": 30}, ValueError, "d_model"),
        ({"n_head": 0}, ValueError, "n_head"),
        ({"n_layer": 0}, ValueError, "n_layer"),
        ({"context": 0}, ValueError, "context"),
        ({"norm_position": "middle"}, ValueError, "norm_position"),
        ({"norm": "batch"}, ValueError, "norm"),
        ({"activation": "swish"}, ValueError, "activation"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": -0.1}, ValueError, "dropout"),
    ],
)
def test_constructor_bad_input(kwargs, error, name):
    config = {"vocab_size": 11, "d_model": 32, "n_head": 4, **kwargs}
    vocab = config.pop("vocab_size")
    with pytest.raises(error, match=name):
        Transformer(vocab, **config)


def test_keyword_only_sizes():
    with pytest.raises(TypeError):
        Transformer(11, 32)


@pytest.mark.parametrize(
    ("idx", "error", "match"),
    [
        ([[1, 2]], TypeError, "idx"),
        (torch.zeros(2, 3), TypeError, "torch.long"),
        (torch.zeros(3, dtype=torch.long), ValueError, "idx"),
        (torch.zeros(2, 13, dtype=torch.long), ValueError, "context"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, "idx"),
        (torch.full((2, 3), 11), ValueError, r"\[0, 11\)"),
        (torch.full((2, 3), -1), ValueError, r"\[0, 11\)"),
    ],
)
def test_forward_bad_input(idx, error, match):
    model = _model()
    with pytest.raises(error, match=match):
        model(idx)


def test_generate_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="new_tokens"):
        model.generate(_idx(time=2), -1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(_idx(time=2), 1, temperature=0.0)
    with pytest.raises(TypeError, match="idx"):
        model.generate([[1]], 1)


def test_exported():
    assert gl.models.Transformer is Transformer and gl.models.TransformerBlock is TransformerBlock
    assert gl.models.lm_loss is lm_loss and gl.models.NORM_POSITIONS == ("pre", "post")

