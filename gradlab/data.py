"""Synthetic data sets, generated on the fly: a teacher regression task for the feed-forward
chapters, two sequence tasks with long time lags for the recurrent ones, and a token stream with
a known entropy rate (plus random windows of it) for language models; and one real text shipped
with the package (:func:`load_text`, with :class:`CharCodec` to turn it into token ids).

Each generator draws from its own ``torch.Generator`` seeded with ``seed``, so the same
arguments always give the same tensors and the global random state is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ._validate import check_choice, check_int, check_real, check_tensor
from .models.mlp import mlp  # the submodule: gradlab.models may be half-imported here (zoo imports data)
from .utils import seeded

TEACHER_KINDS: tuple[str, ...] = ("sine", "mlp", "linear")
"""The target functions of :func:`teacher_regression`."""

TEACHER_DEPTH, TEACHER_WIDTH = 3, 32
"""Layers and width of the tanh teacher network of ``teacher_regression(kind="mlp")``."""

SINE_FREQUENCY = 2.0
"""The ``2`` in ``y = sin(2 w·x / sqrt(d))``: the target varies on the scale of the inputs."""


def teacher_regression(
    n: int, in_features: int, *, kind: str = "sine", noise: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A regression task whose targets a fixed random "teacher" computes from Gaussian inputs.

    The inputs are ``x ~ N(0, I_d)`` with ``d = in_features``. The clean target ``f(x)`` is

    - ``kind="sine"``:   ``sin(2 w·x / sqrt(d))`` with ``w ~ N(0, I_d)``; ``w·x / sqrt(d)`` has
      variance ``s = |w|²/d`` (1 on average over teachers), so ``Var f = (1 - exp(-8 s)) / 2``,
      0.49 to 0.5 for ``s`` from 0.5 up;
    - ``kind="mlp"``:    a random tanh network ``gl.mlp(3, 32, in_features=d, out_features=1,
      activation="tanh")`` (He init), its outputs then standardized over the ``n`` examples to
      sample mean 0 and sample variance 1 (so a constant predictor has loss about 1);
    - ``kind="linear"``: ``w·x / sqrt(d)`` with ``w ~ N(0, I_d)``; variance ``s = |w|²/d``, which
      is 1 on average over teachers and spreads by ``sqrt(2/d)`` around it.

    and ``y = f(x) + noise * eps`` with ``eps ~ N(0, 1)``, so the best possible mean squared
    error is ``noise²``. The teacher (``w`` or the network) depends on ``seed`` only, and
    ``noise`` is drawn last, so changing ``noise`` leaves ``x`` and ``f(x)`` as they were.

    ``teacher_regression(n, d, kind="sine", seed=s)`` draws ``x`` then ``w`` from one
    generator seeded with ``s``: it equals ``x = torch.randn(n, d, generator=g)``,
    ``w = torch.randn(d, generator=g)``, ``y = sin(2 x @ w / sqrt(d))``.

    Returns:
        ``(x, y)``: float32 tensors of shapes ``(n, in_features)`` and ``(n, 1)``.
    """
    n = check_int("n", n, minimum=1)
    in_features = check_int("in_features", in_features, minimum=1)
    kind = check_choice("kind", kind, TEACHER_KINDS)
    noise = check_real("noise", noise, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    if kind == "mlp" and n < 2:
        raise ValueError(f"n must be >= 2 for kind='mlp' (targets are standardized over n), got {n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)
    if kind == "mlp":
        # The network draws its weights from the global generator: seed it, locally, from g.
        teacher_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        with seeded(teacher_seed), torch.no_grad():
            teacher = mlp(TEACHER_DEPTH, TEACHER_WIDTH, in_features=in_features, out_features=1,
                          activation="tanh")
            y = teacher(x)
        y = (y - y.mean()) / y.std()
    else:
        w = torch.randn(in_features, generator=g)
        z = x @ w / math.sqrt(in_features)
        y = (torch.sin(SINE_FREQUENCY * z) if kind == "sine" else z).unsqueeze(1)
    if noise > 0:
        y = y + noise * torch.randn(n, 1, generator=g)
    return x, y

TEMPORAL_ORDER_SYMBOLS: tuple[str, ...] = ("a", "b", "c", "d", "X", "Y", "E", "B")
"""Symbols of :func:`temporal_order`, in the order of the one-hot channels."""

TEMPORAL_ORDER_CLASSES: tuple[str, ...] = ("XX", "XY", "YX", "YY")
"""Class names of :func:`temporal_order`: the two relevant symbols in the order they appear."""

TEMPORAL_ORDER_MIN_LEN = 10


def adding_problem(n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem: sum the two marked numbers.

    This is the simplified form common in later work of experiment 4 of Hochreiter &
    Schmidhuber (1997), whose values lie in ``[-1, 1]`` and whose markers sit in fixed windows.

    Every sequence has ``seq_len`` steps of two channels. Channel 0 holds numbers drawn
    uniformly from ``[0, 1)``. Channel 1 is a marker that is 1 at exactly two steps, ``i`` drawn
    uniformly from the first half ``{0, ..., seq_len // 2 - 1}`` and ``j`` from the second half
    ``{seq_len // 2, ..., seq_len - 1}``, and 0 elsewhere. The target is
    ``y = x[i, 0] + x[j, 0] = sum_t x[t, 0] * x[t, 1]``.

    A model that ignores the inputs and predicts the mean ``y = 1`` has mean squared error
    ``Var(y) = 2 / 12 = 1/6``; beating it means carrying the first marked number from its
    position to the end of the sequence: at least ``seq_len / 2`` steps, about ``3 * seq_len / 4`` on average.

    Returns:
        ``(x, y)``: float32 tensors of shapes ``(n, seq_len, 2)`` and ``(n,)``.
    """
    n = check_int("n", n, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, seq_len, generator=g)
    half = seq_len // 2
    rows = torch.arange(n)
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, seq_len, (n,), generator=g)
    marker = torch.zeros(n, seq_len)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    x = torch.stack([values, marker], dim=-1)
    y = (values * marker).sum(dim=1)
    return x, y


def temporal_order(n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The temporal-order task (Hochreiter & Schmidhuber 1997, experiment 6a), at fixed length.

    The rules, with 0-based positions and ``T = seq_len`` (at least 10):

    - step ``0`` holds the start symbol ``E`` and step ``T - 1`` the trigger symbol ``B``;
    - two relevant steps ``t1`` and ``t2`` are drawn uniformly from the windows
      ``{T // 10, ..., 2 * T // 10}`` and ``{5 * T // 10, ..., 6 * T // 10}`` (10..20 and
      50..60 for ``T = 100``, as in the original, whose lengths vary from 100 to 110);
    - each of them holds ``X`` or ``Y``; the label says which, in order:
      ``XX -> 0``, ``XY -> 1``, ``YX -> 2``, ``YY -> 3`` (the original's classes Q, R, S, U).
      Labels are drawn uniformly, so the classes are balanced in expectation;
    - every other step holds a distractor drawn uniformly from ``a, b, c, d``.

    Symbols are one-hot over :data:`TEMPORAL_ORDER_SYMBOLS` = ``(a, b, c, d, X, Y, E, B)``.

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(n, seq_len, 8)``, ``y`` int64 of shape ``(n,)``.
    """
    n = check_int("n", n, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=2)
    if seq_len < TEMPORAL_ORDER_MIN_LEN:
        raise ValueError(
            f"seq_len must be >= {TEMPORAL_ORDER_MIN_LEN} for temporal_order (the two windows "
            f"for the relevant symbols need room), got {seq_len}"
        )
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    index = {s: i for i, s in enumerate(TEMPORAL_ORDER_SYMBOLS)}
    symbols = torch.randint(0, 4, (n, seq_len), generator=g)  # distractors a, b, c, d
    symbols[:, 0] = index["E"]
    symbols[:, -1] = index["B"]
    rows = torch.arange(n)
    t1 = torch.randint(seq_len // 10, 2 * seq_len // 10 + 1, (n,), generator=g)
    t2 = torch.randint(5 * seq_len // 10, 6 * seq_len // 10 + 1, (n,), generator=g)
    y = torch.randint(0, len(TEMPORAL_ORDER_CLASSES), (n,), generator=g)
    symbols[rows, t1] = index["X"] + y // 2  # first relevant symbol: X for classes 0, 1
    symbols[rows, t2] = index["X"] + y % 2  # second: X for classes 0, 2
    x = torch.nn.functional.one_hot(symbols, len(TEMPORAL_ORDER_SYMBOLS)).to(torch.float32)
    return x, y


MARKOV_MAX_CONTEXTS = 1_000_000
"""The largest ``vocab_size ** order`` (the successor table) :func:`markov_tokens` builds."""


def markov_tokens(
    n_tokens: int, *, vocab_size: int = 16, order: int = 1, branching: int = 2, seed: int = 0
) -> torch.Tensor:
    """A token stream from a random Markov chain of the given ``order`` whose entropy rate is
    exactly ``log(branching)`` nats per token.

    Each context (the last ``order`` tokens, ``vocab_size ** order`` of them) is given
    ``branching`` distinct successors drawn at random from the vocabulary; the next token is one
    of its context's successors, uniformly. So whatever context a model has seen, the best it can
    do is ``log(branching)`` nats per token, while a model that ignores the context and predicts
    the token frequencies pays their entropy (about ``log(vocab_size)``). The first ``order``
    tokens are uniform.

    Returns:
        an int64 tensor of shape ``(n_tokens,)`` with values in ``[0, vocab_size)``.
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    order = check_int("order", order, minimum=1)
    branching = check_int("branching", branching, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if branching > vocab_size:
        raise ValueError(f"branching must be <= vocab_size={vocab_size}, got {branching}")
    n_contexts = vocab_size**order
    if n_contexts > MARKOV_MAX_CONTEXTS:
        raise ValueError(f"vocab_size ** order must be <= {MARKOV_MAX_CONTEXTS}, got {n_contexts}")
    g = torch.Generator().manual_seed(seed)
    successors = torch.argsort(torch.rand(n_contexts, vocab_size, generator=g), dim=1)[:, :branching]
    start = torch.randint(0, vocab_size, (order,), generator=g).tolist()
    choices = torch.randint(0, branching, (n_tokens,), generator=g).tolist()
    table = successors.tolist()
    tokens = start[:n_tokens]
    context = 0
    for token in start:
        context = context * vocab_size + token  # the last `order` tokens in base vocab_size
    for t in range(len(tokens), n_tokens):
        token = table[context][choices[t]]
        tokens.append(token)
        context = (context * vocab_size + token) % n_contexts
    return torch.tensor(tokens, dtype=torch.long)


def token_batches(
    tokens: torch.Tensor, *, batch_size: int, context: int, seed: int = 0
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Random windows of a token stream for next-token prediction, as a ``data`` callable for
    :func:`gradlab.train.fit`: ``draw(i)`` returns ``(x, y)`` of shape ``(batch_size, context)``
    with ``y[b, t] = tokens[s_b + t + 1]`` for ``x[b, t] = tokens[s_b + t]``, the starts ``s_b``
    uniform. Batch ``i`` depends only on ``seed`` and ``i``, so a run can be repeated exactly.
    """
    tokens = check_tensor("tokens", tokens, ndim=1)
    if tokens.dtype != torch.long:
        raise TypeError(f"tokens must be token ids of dtype torch.long, got {tokens.dtype}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    context = check_int("context", context, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if len(tokens) < context + 1:
        raise ValueError(f"tokens must hold at least context + 1 = {context + 1} tokens, got {len(tokens)}")
    offsets = torch.arange(context)

    def draw(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = check_int("i", i, minimum=0)
        # torch's CPU generator keeps only the low 32 bits of a seed: mix (seed, i) into them
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        starts = torch.randint(0, len(tokens) - context, (batch_size, 1), generator=g)
        return tokens[starts + offsets], tokens[starts + offsets + 1]

    return draw


CORPORA: dict[str, str] = {"shakespeare": "shakespeare.txt"}
"""The texts shipped in ``gradlab/corpus`` (source, licence and SHA-256 in its README), by name."""


def load_text(name: str = "shakespeare") -> str:
    """The text ``name`` of :data:`CORPORA`, read from the package (no download).

    ``"shakespeare"``: the first 199,995 characters of Karpathy's tiny-shakespeare (plays of
    Shakespeare, public domain), cut at a line end; see ``gradlab/corpus/README.md``.
    """
    name = check_choice("name", name, tuple(CORPORA))
    from importlib.resources import files  # only this function reads package data

    return files("gradlab.corpus").joinpath(CORPORA[name]).read_text(encoding="utf-8")


class CharCodec:
    """Characters to token ids and back, with the vocabulary of a text.

    The vocabulary is the sorted set of the characters of ``text``; character ``c`` has id
    ``vocab.index(c)``. ``encode`` refuses a character outside the vocabulary (a model has no
    embedding for it) and ``decode`` an id outside ``[0, vocab_size)``.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text must hold at least one character, got ''")
        self.vocab: tuple[str, ...] = tuple(sorted(set(text)))
        self._index = {c: i for i, c in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters."""
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """The ids of the characters of ``text``, an int64 tensor of shape ``(len(text),)``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = sorted(set(text) - self._index.keys())
        if unknown:
            raise ValueError(f"text holds characters outside the vocabulary: {unknown[:5]!r}")
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The characters of the ids ``ids`` (a 1-d tensor or a list of ints), joined."""
        if isinstance(ids, torch.Tensor):
            ids = check_tensor("ids", ids, ndim=1)
            if ids.dtype != torch.long:
                raise TypeError(f"ids must be token ids of dtype torch.long, got {ids.dtype}")
            ids = ids.tolist()
        elif not isinstance(ids, list | tuple) or not all(isinstance(i, int) for i in ids):
            raise TypeError(f"ids must be a 1-d long tensor or a list of ints, got {type(ids).__name__}")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return "".join(self.vocab[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharCodec(vocab_size={self.vocab_size})"
