"""Tests for gradlab._validate."""

import math

import numpy as np
import pytest
import torch

from gradlab._validate import check_choice, check_int, check_probability, check_real, check_tensor

# -- check_int ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 7, -3, 10**20, np.int64(5), np.int8(-2)])
def test_check_int_accepts_integers(value):
    out = check_int("n", value)
    assert out == value
    assert type(out) is int


def test_check_int_minimum_is_inclusive():
    assert check_int("depth", 1, minimum=1) == 1
    with pytest.raises(ValueError, match=r"^depth must be >= 1, got 0$"):
        check_int("depth", 0, minimum=1)
    with pytest.raises(ValueError, match="width must be >= 1, got -1"):
        check_int("width", -1, minimum=1)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, [1], torch.tensor(3)])
def test_check_int_rejects_non_integers(value):
    with pytest.raises(TypeError, match=r"^depth must be an int, got "):
        check_int("depth", value)


def test_check_int_message_shows_type_and_value():
    with pytest.raises(TypeError, match=r"depth must be an int, got bool \(True\)"):
        check_int("depth", True)
    with pytest.raises(TypeError, match=r"got float \(2\.0\)"):
        check_int("depth", 2.0)


# -- check_real --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, -2.5, 1e300, np.float32(0.5), np.float64(3.0), np.int64(4)])
def test_check_real_accepts_real_numbers(value):
    out = check_real("x", value)
    assert out == pytest.approx(float(value))
    assert type(out) is float


@pytest.mark.parametrize("value", [True, "1.0", None, 1 + 2j, torch.tensor(1.0), [1.0]])
def test_check_real_rejects_non_reals(value):
    with pytest.raises(TypeError, match=r"^gain must be a real number"):
        check_real("gain", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.nan])
def test_check_real_rejects_non_finite_by_default(value):
    with pytest.raises(ValueError, match=r"^gain must be finite"):
        check_real("gain", value)


def test_check_real_allow_inf():
    assert check_real("t", math.inf, allow_inf=True) == math.inf
    assert check_real("t", -math.inf, allow_inf=True) == -math.inf
    with pytest.raises(ValueError, match="t must be finite"):
        check_real("t", math.nan, allow_inf=True)  # NaN is never allowed
    with pytest.raises(ValueError, match="t must be >= 0"):
        check_real("t", -math.inf, minimum=0.0, allow_inf=True)


def test_check_real_minimum_inclusive_and_strict():
    assert check_real("gain", 0.0, minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"^gain must be >= 0.0, got -1.0$"):
        check_real("gain", -1, minimum=0.0)
    assert check_real("lr", 1e-12, minimum=0.0, strict=True) == 1e-12
    with pytest.raises(ValueError, match=r"^lr must be > 0.0, got 0.0$"):
        check_real("lr", 0, minimum=0.0, strict=True)
    with pytest.raises(ValueError, match="lr must be > 0.0"):
        check_real("lr", -3.0, minimum=0.0, strict=True)


# -- check_choice ------------------------------------------------------------------------------


def test_check_choice_accepts_allowed_values():
    assert check_choice("init", "he", ("gaussian", "he")) == "he"
    assert check_choice("activation", "relu", {"relu": 1, "tanh": 2}) == "relu"  # dict keys
    assert check_choice("mode", "a", (c for c in "abc")) == "a"  # any iterable


@pytest.mark.parametrize("value", ["HE", "", "foo", None, 3, ["he"]])
def test_check_choice_rejects_other_values_and_lists_the_allowed(value):
    with pytest.raises(ValueError, match=r"^init must be one of \['gaussian', 'he'\], got ") as info:
        check_choice("init", value, ["gaussian", "he"])
    assert repr(value) in str(info.value)


# -- check_tensor ------------------------------------------------------------------------------


def test_check_tensor_accepts_tensors_and_returns_the_same_object():
    t = torch.zeros(2, 3)
    assert check_tensor("x", t) is t
    assert check_tensor("x", t, ndim=2) is t
    assert check_tensor("x", torch.tensor(1.0), ndim=0).ndim == 0


@pytest.mark.parametrize("value", [np.zeros((2, 3)), [[1.0, 2.0]], 1.0, None])
def test_check_tensor_rejects_non_tensors(value):
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got "):
        check_tensor("x", value)


def test_check_tensor_rejects_wrong_ndim_and_shows_the_shape():
    with pytest.raises(ValueError, match=r"^matrix must have 2 dimensions, got shape \(3,\)$"):
        check_tensor("matrix", torch.zeros(3), ndim=2)
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3\)"):
        check_tensor("matrix", torch.zeros(1, 2, 3), ndim=2)


# -- check_probability -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 0.999, np.float32(0.25)])
def test_check_probability_accepts_the_half_open_interval(value):
    out = check_probability("p", value)
    assert out == pytest.approx(float(value)) and type(out) is float


def test_check_probability_excludes_one_unless_allowed():
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\), got 1.0$"):
        check_probability("p", 1.0)
    assert check_probability("p", 1, allow_one=True) == 1.0
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\], got 1.5$"):
        check_probability("p", 1.5, allow_one=True)


@pytest.mark.parametrize(("value", "error"), [(-0.1, ValueError), (2.0, ValueError),
                                              (float("nan"), ValueError), (float("inf"), ValueError),
                                              ("0.5", TypeError), (True, TypeError), (None, TypeError)])
def test_check_probability_rejects_the_rest_naming_the_argument(value, error):
    with pytest.raises(error, match="^dropout must"):
        check_probability("dropout", value)
