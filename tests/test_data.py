"""Tests for gradlab.data."""

import pytest
import torch

from gradlab.data import (
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_MIN_LEN,
    TEMPORAL_ORDER_SYMBOLS,
    adding_problem,
    temporal_order,
)

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


@pytest.mark.parametrize("make", [adding_problem, temporal_order])
def test_deterministic_and_seed_dependent(make):
    a = make(20, 30, seed=7)
    b = make(20, 30, seed=7)
    c = make(20, 30, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_adding_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    adding_problem(10, 20, seed=0)
    temporal_order(10, 20, seed=0)
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
