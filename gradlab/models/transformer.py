"""A small decoder-only transformer: a character-level language model with Pre-LN or Post-LN blocks.

The layout is nanoGPT's (token and position embeddings, ``n_layer`` blocks of causal
self-attention and a feed-forward network, a final norm, a linear head); the knob the book turns
is where each block puts its normalization (Xiong et al. 2020):

- ``norm_position="post"`` (the original transformer of Vaswani et al. 2017):
  ``x = norm(x + attn(x))``, then ``x = norm(x + ffn(x))``;
- ``norm_position="pre"`` (GPT-2 and most models since): ``x = x + attn(norm(x))``, then
  ``x = x + ffn(norm(x))``, and one more norm before the head.

A block computes what ``torch.nn.TransformerEncoderLayer(d_model, n_head, 4 * d_model,
norm_first=(norm_position == "pre"))`` computes with a causal mask (the tests copy the weights
across and compare).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._validate import check_choice, check_int, check_real, check_tensor
from ..activations import ACTIVATIONS

NORM_POSITIONS = ("pre", "post")
"""Where a block normalizes: before each sub-layer (inside the residual branch) or after the sum."""

NORM_KINDS = ("layer", "rms")
"""``"layer"``: ``nn.LayerNorm`` (Ba et al. 2016); ``"rms"``: ``nn.RMSNorm`` (Zhang & Sennrich 2019)."""

FFN_EXPANSION = 4
"""Hidden width of the feed-forward network in units of ``d_model``, as in Vaswani et al. 2017."""

NORM_EPS = 1e-5
"""The ``eps`` of every norm layer (PyTorch's LayerNorm default)."""


def _norm(kind: str, d_model: int) -> nn.Module:
    return nn.LayerNorm(d_model, eps=NORM_EPS) if kind == "layer" else nn.RMSNorm(d_model, eps=NORM_EPS)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``0..t`` only.

    ``qkv`` is one ``d_model -> 3 d_model`` projection, split into queries, keys and values in
    that order (the layout of ``nn.MultiheadAttention.in_proj_weight``); ``proj`` mixes the heads.
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        # (batch, time, d_model) -> (batch, heads, time, head size): each head attends on its own
        q, k, v = (t.view(batch, time, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        # softmax(q k^T / sqrt(head size) + causal mask) v, fused; dropout on the weights as in
        # nn.MultiheadAttention
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, time, d_model))


class FeedForward(nn.Module):
    """The position-wise network ``fc2(phi(fc1(x)))``, ``d_model -> 4 d_model -> d_model``."""

    def __init__(self, d_model: int, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, FFN_EXPANSION * d_model)
        self.act = ACTIVATIONS[activation].module()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FFN_EXPANSION * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """One transformer block: attention, then the feed-forward network, each with a residual
    connection, normalized before (``"pre"``) or after (``"post"``) the residual sum."""

    def __init__(self, d_model: int, n_head: int, *, norm_position: str = "pre", norm: str = "layer",
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_position = norm_position
        self.norm1 = _norm(norm, d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.norm2 = _norm(norm, d_model)
        self.ffn = FeedForward(d_model, activation, dropout)
        self.drop = nn.Dropout(dropout)  # on each sub-layer's output, before the residual sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_position == "pre":
            # The residual stream x itself is never normalized: it only accumulates.
            x = x + self.drop(self.attn(self.norm1(x)))
            return x + self.drop(self.ffn(self.norm2(x)))
        # Post-LN: every sum is normalized, so the stream leaves each block with norm sqrt(d).
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.drop(self.ffn(x)))

    def extra_repr(self) -> str:
        return f"norm_position={self.norm_position!r}"


class Transformer(nn.Module):
    """A decoder-only (GPT-style) transformer: ``forward(idx)`` maps token ids to next-token logits.

    ``idx`` of shape ``(batch, time)`` with ``time <= context`` becomes
    ``x_0 = token_embedding(idx) + position_embedding(0..time-1)``, passes ``n_layer``
    :class:`TransformerBlock` layers and, for Pre-LN only, a final norm (a Post-LN stream already
    leaves every block normalized), then a linear head gives logits of shape
    ``(batch, time, vocab_size)``.

    Initialization (what the chapter's derivations assume, after Xiong et al. 2020): every linear
    weight is drawn from ``N(0, 1 / fan_in)`` (Xavier's variance for square matrices), so each
    output coordinate of a layer has, in expectation, the mean square of its input's coordinates;
    every bias is zero; the norms start with gain 1 and shift 0 (LayerNorm then maps each token
    onto the sphere of radius ``sqrt(d_model)``); token and position embeddings are ``N(0, 1/2)``
    each, so that ``x_0`` has unit variance per coordinate: ``E||x_0||² = d_model``.

    Args:
        vocab_size: number of token ids (at least 1).
        d_model: width of the residual stream; a multiple of ``n_head``.
        n_head: attention heads.
        n_layer: blocks (at least 1).
        context: the longest sequence the position embedding covers.
        norm_position: ``"pre"`` or ``"post"`` (see the module docstring).
        norm: ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm).
        activation: the feed-forward activation, a name of :data:`gradlab.activations.ACTIVATIONS`
            (``"relu"`` as in Vaswani et al. 2017; ``"gelu"`` as in GPT-2).
        dropout: dropout probability on the embeddings, the attention weights, the feed-forward
            hidden layer and each sub-layer output (0 disables it).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_model: int = 64,
        n_head: int = 4,
        n_layer: int = 4,
        context: int = 64,
        norm_position: str = "pre",
        norm: str = "layer",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.n_head = check_int("n_head", n_head, minimum=1)
        if d_model % n_head:
            raise ValueError(f"d_model must be a multiple of n_head, got d_model={d_model}, n_head={n_head}")
        self.n_layer = check_int("n_layer", n_layer, minimum=1)
        self.context = check_int("context", context, minimum=1)
        self.norm_position = check_choice("norm_position", norm_position, NORM_POSITIONS)
        self.norm = check_choice("norm", norm, NORM_KINDS)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.dropout = check_real("dropout", dropout, minimum=0.0)
        if dropout >= 1.0:
            raise ValueError(f"dropout must be < 1, got {dropout}")

        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_head, norm_position=norm_position, norm=norm, activation=activation,
                  dropout=dropout)
            for _ in range(n_layer)
        )
        self.norm_f = _norm(norm, d_model) if norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the initial weights described in the class docstring (from the global generator)."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features))
                    module.bias.zero_()
                elif isinstance(module, nn.Embedding):
                    module.weight.normal_(0.0, math.sqrt(0.5))
                elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                    module.reset_parameters()

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """``x_0 = token_embedding(idx) + position_embedding(0..time-1)``, before dropout."""
        idx = self._check_idx(idx)
        return self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, time, vocab_size)`` for the token ids ``idx`` of shape ``(batch, time)``;
        the logits at position ``t`` depend on ``idx[:, :t+1]`` only."""
        x = self.drop(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``new_tokens`` sampled tokens to ``idx`` (shape ``(batch, time)``), one at a time,
        each from ``softmax(logits / temperature)`` at the last position, seeing at most the last
        ``context`` tokens. Returns ``(batch, time + new_tokens)``. Call it in eval mode to turn
        dropout off."""
        idx = self._check_idx(idx, any_length=True)
        new_tokens = check_int("new_tokens", new_tokens, minimum=0)
        temperature = check_real("temperature", temperature, minimum=0.0, strict=True)
        for _ in range(new_tokens):
            logits = self(idx[:, -self.context:])[:, -1] / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    def _check_idx(self, idx: object, any_length: bool = False) -> torch.Tensor:
        idx = check_tensor("idx", idx, ndim=2)
        if idx.dtype != torch.long:
            raise TypeError(f"idx must hold token ids of dtype torch.long, got {idx.dtype}")
        if idx.shape[1] < 1 or (not any_length and idx.shape[1] > self.context):
            raise ValueError(f"idx must have 1 to context={self.context} positions, got shape "
                             f"{tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(f"idx must hold token ids in [0, {self.vocab_size}), got values from "
                             f"{int(idx.min())} to {int(idx.max())}")
        return idx

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, d_model={self.d_model}, n_head={self.n_head}, "
                f"n_layer={self.n_layer}, context={self.context}, norm_position={self.norm_position!r}")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy in nats: ``-mean_{b,t} log softmax(logits[b, t])[targets[b, t]]``.

    ``logits`` has shape ``(batch, time, vocab)`` and ``targets`` ``(batch, time)`` (token ids);
    this is the ``loss_fn`` to give :func:`gradlab.train.fit` for a :class:`Transformer`.
    """
    logits = check_tensor("logits", logits, ndim=3)
    targets = check_tensor("targets", targets, ndim=2)
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:2])} (the logits' batch and "
                         f"time), got {tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


__all__ = ["FFN_EXPANSION", "NORM_EPS", "NORM_KINDS", "NORM_POSITIONS", "CausalSelfAttention",
           "FeedForward", "Transformer", "TransformerBlock", "lm_loss"]
