"""Tests for gradlab.data."""

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradlab
from gradlab.data import (
    CORPORA,
    TEACHER_KINDS,
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_MIN_LEN,
    TEMPORAL_ORDER_SYMBOLS,
    CharCodec,
    adding_problem,
    load_text,
    markov_tokens,
    teacher_regression,
    temporal_order,
    token_batches,
)
from gradlab.models import mlp
from gradlab.utils import seeded

# ---------------------------------------------------------------------------------------------
# adding_problem
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [2, 3, 10, 51])
def test_adding_shapes_and_dtypes(seq_len):
    x, y = adding_problem(7, seq_len, seed=3)
    assert x.shape == (7, seq_len, 2) and x.dtype == torch.float32
    assert y.shape == (7,) and y.dtype == torch.float32
    values = x[..., 0]
    assert values.min() >= 0.0 and values.max() < 1.0


@pytest.mark.parametrize("seq_len", [2, 3, 10, 51])
def test_adding_two_markers_one_per_half(seq_len):
    x, _ = adding_problem(500, seq_len, seed=1)
    marker = x[..., 1]
    assert set(marker.unique().tolist()) <= {0.0, 1.0}
    half = seq_len // 2
    assert torch.all(marker[:, :half].sum(dim=1) == 1)
    assert torch.all(marker[:, half:].sum(dim=1) == 1)


def test_adding_target_is_sum_of_marked_values():
    x, y = adding_problem(300, 40, seed=2)
    marked = [row[row[:, 1] == 1, 0] for row in x]
    assert all(len(m) == 2 for m in marked)
    expected = torch.stack([m.sum() for m in marked])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)


def test_adding_marker_positions_cover_each_half():
    # Every step of each half is chosen sometimes: the positions are uniform, not fixed.
    x, _ = adding_problem(2000, 12, seed=0)
    counts = x[..., 1].sum(dim=0)
    assert torch.all(counts > 0)
    # each half's 6 positions share 2000 draws: about 333 each
    assert counts.min() > 250 and counts.max() < 420


def test_adding_statistics():
    # y is the sum of two independent U(0, 1): mean 1, variance 1/6 (tolerance: 5 standard errors)
    _, y = adding_problem(20000, 20, seed=5)
    assert abs(float(y.mean()) - 1.0) < 5 * (1 / 6 / 20000) ** 0.5
    assert abs(float(y.var()) - 1 / 6) < 0.01


def _teacher(kind):
    return lambda n, d, seed: teacher_regression(n, d, kind=kind, noise=0.1, seed=seed)


_MAKERS = [adding_problem, temporal_order] + [_teacher(kind) for kind in TEACHER_KINDS]


@pytest.mark.parametrize("make", _MAKERS)
def test_deterministic_and_seed_dependent(make):
    a = make(20, 30, seed=7)
    b = make(20, 30, seed=7)
    c = make(20, 30, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_generators_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    for make in _MAKERS:
        make(10, 20, seed=0)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n": 0, "seq_len": 10}, ValueError, "n"),
        ({"n": 5, "seq_len": 1}, ValueError, "seq_len"),
        ({"n": 2.0, "seq_len": 10}, TypeError, "n"),
        ({"n": 5, "seq_len": "10"}, TypeError, "seq_len"),
        ({"n": 5, "seq_len": 10, "seed": -1}, ValueError, "seed"),
        ({"n": 5, "seq_len": 10, "seed": 0.5}, TypeError, "seed"),
        ({"n": True, "seq_len": 10}, TypeError, "n"),
    ],
)
def test_adding_bad_inputs(kwargs, error, name):
    with pytest.raises(error, match=name):
        adding_problem(**kwargs)


# ---------------------------------------------------------------------------------------------
# temporal_order
# ---------------------------------------------------------------------------------------------

_IDX = {s: i for i, s in enumerate(TEMPORAL_ORDER_SYMBOLS)}


@pytest.mark.parametrize("seq_len", [TEMPORAL_ORDER_MIN_LEN, 37, 100])
def test_temporal_order_shapes_and_one_hot(seq_len):
    x, y = temporal_order(50, seq_len, seed=0)
    assert x.shape == (50, seq_len, len(TEMPORAL_ORDER_SYMBOLS)) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    assert torch.all(x.sum(dim=-1) == 1)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert y.min() >= 0 and y.max() < len(TEMPORAL_ORDER_CLASSES)


@pytest.mark.parametrize("seq_len", [TEMPORAL_ORDER_MIN_LEN, 37, 100])
def test_temporal_order_rules(seq_len):
    x, y = temporal_order(400, seq_len, seed=1)
    symbols = x.argmax(dim=-1)
    assert torch.all(symbols[:, 0] == _IDX["E"])
    assert torch.all(symbols[:, -1] == _IDX["B"])
    for row, label in zip(symbols, y.tolist(), strict=True):
        relevant = torch.nonzero((row == _IDX["X"]) | (row == _IDX["Y"])).flatten().tolist()
        assert len(relevant) == 2
        t1, t2 = relevant
        assert seq_len // 10 <= t1 <= 2 * seq_len // 10
        assert 5 * seq_len // 10 <= t2 <= 6 * seq_len // 10
        order = "".join("X" if row[t] == _IDX["X"] else "Y" for t in (t1, t2))
        assert TEMPORAL_ORDER_CLASSES[label] == order
        others = torch.cat([row[1:t1], row[t1 + 1 : t2], row[t2 + 1 : -1]])
        assert torch.all(others < 4)  # distractors a, b, c, d


def test_temporal_order_original_windows():
    # T = 100 gives the windows 10..20 and 50..60 of Hochreiter & Schmidhuber's experiment 6a
    x, _ = temporal_order(3000, 100, seed=2)
    symbols = x.argmax(dim=-1)
    relevant = (symbols == _IDX["X"]) | (symbols == _IDX["Y"])
    used = torch.nonzero(relevant.any(dim=0)).flatten().tolist()
    assert used == list(range(10, 21)) + list(range(50, 61))


def test_temporal_order_class_balance():
    # 4000 draws of a uniform label: each count is 1000 +- 27 (std); allow 5 std
    _, y = temporal_order(4000, 30, seed=3)
    counts = torch.bincount(y, minlength=4)
    assert torch.all((counts - 1000).abs() < 5 * 27.4)


def test_temporal_order_distractors_uniform():
    x, _ = temporal_order(1000, 50, seed=4)
    counts = x[:, 1:-1, :4].sum(dim=(0, 1))
    share = counts / counts.sum()
    assert torch.all((share - 0.25).abs() < 0.01)




@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n": 0, "seq_len": 20}, ValueError, "n"),
        ({"n": 5, "seq_len": 1}, ValueError, "seq_len"),
        ({"n": 5, "seq_len": TEMPORAL_ORDER_MIN_LEN - 1}, ValueError, "seq_len"),
        ({"n": 5, "seq_len": 20.0}, TypeError, "seq_len"),
        ({"n": "5", "seq_len": 20}, TypeError, "n"),
        ({"n": 5, "seq_len": 20, "seed": -3}, ValueError, "seed"),
    ],
)
def test_temporal_order_bad_inputs(kwargs, error, name):
    with pytest.raises(error, match=name):
        temporal_order(**kwargs)


# ---------------------------------------------------------------------------------------------
# teacher_regression
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TEACHER_KINDS)
@pytest.mark.parametrize(("n", "d"), [(2, 1), (7, 5), (128, 16)])
def test_teacher_shapes_and_dtypes(kind, n, d):
    x, y = teacher_regression(n, d, kind=kind)
    assert x.shape == (n, d) and y.shape == (n, 1)
    assert x.dtype == y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_teacher_sine_formula():
    # the learning-rate chapter's make_data(n, d, seed): x, then w, from one generator
    g = torch.Generator().manual_seed(4)
    x_ref = torch.randn(128, 5, generator=g)
    w = torch.randn(5, generator=g)
    x, y = teacher_regression(128, 5, kind="sine", seed=4)
    assert torch.equal(x, x_ref)
    torch.testing.assert_close(y, torch.sin(2 * x_ref @ w / math.sqrt(5)).unsqueeze(1))
    _, y_lin = teacher_regression(128, 5, kind="linear", seed=4)
    torch.testing.assert_close(y_lin, (x_ref @ w / math.sqrt(5)).unsqueeze(1))


def test_teacher_mlp_is_a_standardized_tanh_network():
    # the documented construction: x from the generator, then the network, seeded from it
    g = torch.Generator().manual_seed(6)
    x_ref = torch.randn(64, 16, generator=g)
    with seeded(int(torch.randint(0, 2**62, (1,), generator=g))), torch.no_grad():
        teacher = mlp(3, 32, in_features=16, out_features=1, activation="tanh")
        raw = teacher(x_ref)
    x, y = teacher_regression(64, 16, kind="mlp", seed=6)
    assert torch.equal(x, x_ref)
    torch.testing.assert_close(y, (raw - raw.mean()) / raw.std())


def test_teacher_inputs_are_standard_normal():
    x, _ = teacher_regression(20000, 4, kind="linear", seed=1)
    # 80000 draws: the mean has std 0.0035, the variance 0.005; allow 5 std
    assert abs(float(x.mean())) < 0.018 and abs(float(x.var()) - 1) < 0.025


def test_teacher_target_variance():
    n = 20000
    # mlp: standardized over the n examples, so sample mean 0 and sample variance 1 exactly
    _, y = teacher_regression(n, 16, kind="mlp", seed=2)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.var()) - 1) < 1e-5
    # sine and linear: Var over x for a fixed w is (1 - exp(-8 s)) / 2 and s, with s = |w|²/d;
    # the relative standard error of a sample variance is sqrt(2/n) for Gaussian targets and
    # smaller for the bounded sine ones: allow 5 of them
    for d, seed in [(5, 0), (16, 3)]:
        g = torch.Generator().manual_seed(seed)
        torch.randn(n, d, generator=g)
        s = float(torch.randn(d, generator=g).pow(2).sum()) / d
        expected = {"sine": (1 - math.exp(-8 * s)) / 2, "linear": s}
        for kind, var in expected.items():
            _, y = teacher_regression(n, d, kind=kind, seed=seed)
            assert abs(float(y.double().var()) / var - 1) < 5 * math.sqrt(2 / n), (kind, d)


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_teacher_noise_is_added_last(kind):
    n, sigma = 20000, 0.3
    x0, y0 = teacher_regression(n, 6, kind=kind, seed=5)
    x1, y1 = teacher_regression(n, 6, kind=kind, noise=sigma, seed=5)
    assert torch.equal(x0, x1)  # the noise leaves the inputs and the teacher as they were
    eps = (y1 - y0).double() / sigma
    # eps ~ N(0, 1): its mean within 5 / sqrt(n), its variance within 5 sqrt(2 / n)
    assert abs(float(eps.mean())) < 5 / math.sqrt(n)
    assert abs(float(eps.var()) - 1) < 5 * math.sqrt(2 / n)


def test_teacher_kinds_differ_and_mlp_teacher_depends_on_seed():
    x, y_sine = teacher_regression(50, 3, kind="sine", seed=0)
    _, y_mlp = teacher_regression(50, 3, kind="mlp", seed=0)
    assert not torch.allclose(y_sine, y_mlp)
    # the mlp teacher is drawn from the seed: another seed, another network
    _, y_other = teacher_regression(50, 3, kind="mlp", seed=1)
    assert not torch.allclose(y_mlp, y_other)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n": 0, "in_features": 3}, ValueError, "n"),
        ({"n": 1, "in_features": 3, "kind": "mlp"}, ValueError, "n"),
        ({"n": 5.0, "in_features": 3}, TypeError, "n"),
        ({"n": 5, "in_features": 0}, ValueError, "in_features"),
        ({"n": 5, "in_features": "3"}, TypeError, "in_features"),
        ({"n": 5, "in_features": 3, "kind": "cosine"}, ValueError, "kind"),
        ({"n": 5, "in_features": 3, "kind": None}, ValueError, "kind"),
        ({"n": 5, "in_features": 3, "noise": -0.1}, ValueError, "noise"),
        ({"n": 5, "in_features": 3, "noise": float("nan")}, ValueError, "noise"),
        ({"n": 5, "in_features": 3, "noise": "0.1"}, TypeError, "noise"),
        ({"n": 5, "in_features": 3, "seed": -1}, ValueError, "seed"),
        ({"n": 5, "in_features": 3, "seed": 1.0}, TypeError, "seed"),
    ],
)
def test_teacher_bad_inputs(kwargs, error, name):
    with pytest.raises(error, match=name):
        teacher_regression(**kwargs)



# ---------------------------------------------------------------------------------------------
# markov_tokens, token_batches
# ---------------------------------------------------------------------------------------------


def _conditional_entropy(tokens, order):
    """Empirical entropy of the next token given the previous `order` tokens, in nats."""
    contexts = {}
    seq = tokens.tolist()
    for t in range(order, len(seq)):
        key = tuple(seq[t - order:t])
        contexts.setdefault(key, []).append(seq[t])
    total = len(seq) - order
    entropy = 0.0
    for nexts in contexts.values():
        counts = torch.bincount(torch.tensor(nexts)).double()
        p = counts[counts > 0] / len(nexts)
        entropy -= len(nexts) / total * float((p * p.log()).sum())
    return entropy


@pytest.mark.parametrize(("vocab_size", "order", "branching"), [(16, 1, 2), (8, 2, 3), (5, 1, 5), (4, 3, 1)])
def test_markov_tokens_entropy_rate_is_log_branching(vocab_size, order, branching):
    tokens = markov_tokens(40_000, vocab_size=vocab_size, order=order, branching=branching, seed=1)
    assert tokens.shape == (40_000,) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < vocab_size
    # every context has exactly `branching` successors, each about equally likely: the empirical
    # conditional entropy is log(branching) minus a small plug-in bias
    assert _conditional_entropy(tokens, order) == pytest.approx(math.log(branching), abs=0.02)
    successors = {}
    seq = tokens.tolist()
    for t in range(order, len(seq)):
        successors.setdefault(tuple(seq[t - order:t]), set()).add(seq[t])
    assert max(len(v) for v in successors.values()) == branching


def test_markov_tokens_deterministic_seed_dependent_and_global_rng_untouched():
    torch.manual_seed(5)
    before = torch.rand(2)
    torch.manual_seed(5)
    a = markov_tokens(500, seed=3)
    assert torch.equal(a, markov_tokens(500, seed=3))
    assert not torch.equal(a, markov_tokens(500, seed=4))
    assert torch.equal(torch.rand(2), before)
    assert torch.equal(markov_tokens(1, order=3, seed=3), markov_tokens(1, order=3, seed=3))
    assert len(markov_tokens(2, order=3)) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n_tokens": 0}, ValueError, "n_tokens"),
        ({"n_tokens": 10.0}, TypeError, "n_tokens"),
        ({"n_tokens": 10, "vocab_size": 0}, ValueError, "vocab_size"),
        ({"n_tokens": 10, "order": 0}, ValueError, "order"),
        ({"n_tokens": 10, "branching": 0}, ValueError, "branching"),
        ({"n_tokens": 10, "vocab_size": 3, "branching": 4}, ValueError, "branching"),
        ({"n_tokens": 10, "vocab_size": 100, "order": 4}, ValueError, "vocab_size"),
        ({"n_tokens": 10, "seed": -1}, ValueError, "seed"),
        ({"n_tokens": 10, "order": True}, TypeError, "order"),
    ],
)
def test_markov_tokens_bad_inputs(kwargs, error, name):
    with pytest.raises(error, match=name):
        markov_tokens(**kwargs)


def test_token_batches_are_shifted_windows_reproducible_per_index():
    tokens = markov_tokens(300, seed=0)
    draw = token_batches(tokens, batch_size=5, context=7, seed=2)
    x, y = draw(0)
    assert x.shape == y.shape == (5, 7) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x, y, strict=True):
        # find the window: y is x shifted by one position in the stream
        starts = [s for s in range(len(tokens) - 7) if torch.equal(tokens[s:s + 7], row_x)
                  and torch.equal(tokens[s + 1:s + 8], row_y)]
        assert starts
    assert torch.equal(draw(3)[0], token_batches(tokens, batch_size=5, context=7, seed=2)(3)[0])
    assert not torch.equal(draw(0)[0], draw(1)[0])
    assert not torch.equal(draw(0)[0], token_batches(tokens, batch_size=5, context=7, seed=3)(0)[0])
    # the shortest stream: one window, starting at 0
    x, y = token_batches(tokens[:8], batch_size=2, context=7)(0)
    assert torch.equal(x[0], tokens[:7]) and torch.equal(y[1], tokens[1:8])


@pytest.mark.parametrize(
    ("tokens", "kwargs", "error", "name"),
    [
        ([1, 2, 3], {"batch_size": 1, "context": 1}, TypeError, "tokens"),
        (torch.zeros(5), {"batch_size": 1, "context": 1}, TypeError, "tokens"),
        (torch.zeros(2, 5, dtype=torch.long), {"batch_size": 1, "context": 1}, ValueError, "tokens"),
        (torch.zeros(5, dtype=torch.long), {"batch_size": 0, "context": 1}, ValueError, "batch_size"),
        (torch.zeros(5, dtype=torch.long), {"batch_size": 1, "context": 0}, ValueError, "context"),
        (torch.zeros(5, dtype=torch.long), {"batch_size": 1, "context": 5}, ValueError, "context"),
        (torch.zeros(5, dtype=torch.long), {"batch_size": 1, "context": 2, "seed": -1}, ValueError, "seed"),
    ],
)
def test_token_batches_bad_inputs(tokens, kwargs, error, name):
    with pytest.raises(error, match=name):
        token_batches(tokens, **kwargs)


def test_token_batches_refuses_a_bad_index():
    draw = token_batches(torch.zeros(5, dtype=torch.long), batch_size=1, context=2)
    with pytest.raises(ValueError, match="i"):
        draw(-1)
    with pytest.raises(TypeError, match="i"):
        draw(1.5)


# ---------------------------------------------------------------------------------------------
# load_text, CharCodec
# ---------------------------------------------------------------------------------------------

SHAKESPEARE_SHA256 = "f4873901480a3d057b1ffba50d56ea3cfb5a5bd67bb0ca1bfc451324e80a3cf7"


def test_load_text_shakespeare_is_the_file_the_readme_describes():
    text = load_text("shakespeare")
    assert text == load_text()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert len(text) == 199_995 and text.isascii() and len(set(text)) == 62
    assert text.startswith("First Citizen:\nBefore we proceed any further") and text.endswith("degree?\n\n")
    readme = (Path(gradlab.data.__file__).parent / "corpus" / "README.md").read_text(encoding="utf-8")
    assert SHAKESPEARE_SHA256 in readme and "public domain" in readme and "199,995" in readme


def test_corpus_is_package_data():
    """An installed (non-editable) package must carry the text: pyproject names it."""
    pyproject = (Path(gradlab.__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"gradlab.corpus" = ["*.txt", "README.md"]' in pyproject
    assert set(CORPORA) == {"shakespeare"}


@pytest.mark.parametrize(("name", "error"), [("hamlet", ValueError), (3, ValueError)])
def test_load_text_refuses_unknown_names(name, error):
    with pytest.raises(error, match="name"):
        load_text(name)


def test_char_codec_round_trip_and_vocabulary():
    codec = CharCodec("hello, world")
    assert codec.vocab == tuple(sorted(set("hello, world"))) and codec.vocab_size == 9
    ids = codec.encode("world hello")
    assert ids.dtype == torch.long and ids.shape == (11,)
    assert ids.tolist() == [codec.vocab.index(c) for c in "world hello"]
    assert codec.decode(ids) == "world hello" and codec.decode(ids.tolist()) == "world hello"
    assert codec.encode("").shape == (0,) and codec.decode([]) == ""
    assert repr(codec) == "CharCodec(vocab_size=9)"
    text = load_text("shakespeare")
    full = CharCodec(text)
    assert full.vocab_size == 62 and full.decode(full.encode(text[:5000])) == text[:5000]


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: CharCodec(""), ValueError, "text"),
    (lambda: CharCodec(["a"]), TypeError, "text"),
    (lambda: CharCodec("abc").encode("abz"), ValueError, "'z'"),
    (lambda: CharCodec("abc").encode(b"ab"), TypeError, "text"),
    (lambda: CharCodec("abc").decode([0, 3]), ValueError, r"\[0, 3\)"),
    (lambda: CharCodec("abc").decode([-1]), ValueError, "ids"),
    (lambda: CharCodec("abc").decode(torch.tensor([0.0])), TypeError, "ids"),
    (lambda: CharCodec("abc").decode(torch.zeros(1, 2, dtype=torch.long)), ValueError, "ids"),
    (lambda: CharCodec("abc").decode("ab"), TypeError, "ids"),
    (lambda: CharCodec("abc").decode([0.5]), TypeError, "ids"),
])
def test_char_codec_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("first", ["gradlab", "gradlab.models", "gradlab.data", "gradlab.claims",
                                   "gradlab.models.zoo", "gradlab.doctor"])
def test_teacher_regression_works_whatever_module_is_imported_first(first):
    # models/__init__ imports the zoo, which imports data, which needs models' mlp: imported
    # from a half-initialized package, `mlp` once resolved to the submodule (found by the site
    # build, where gradlab.claims was imported first).
    code = f"import {first}; import gradlab; gradlab.data.teacher_regression(8, 4, kind='mlp')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
