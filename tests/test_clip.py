"""Tests for gradlab.clip, against torch.nn.utils where torch has the same function."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import clip

NORM_TYPES = [1.0, 2.0, 3.5, math.inf]


def _params(shapes, seed, *, scale=1.0, none_every=0, dtype=torch.float32, zero=False):
    """Parameters with random gradients; every ``none_every``-th one has ``grad=None``."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for k, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        if not (none_every and k % none_every == none_every - 1):
            grad = torch.randn(shape, generator=g, dtype=dtype) * scale
            p.grad = torch.zeros_like(grad) if zero else grad
        params.append(p)
    return params


def _copy(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def _grads_equal(a, b):
    for p, q in zip(a, b, strict=True):
        if p.grad is None or q.grad is None:
            assert p.grad is None and q.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, equal_nan=True)


shapes_strategy = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes_strategy,
    seed=st.integers(0, 2**16),
    norm_type=st.sampled_from(NORM_TYPES),
    max_norm=st.sampled_from([0.0, 0.01, 0.5, 1.0, 5.0, 1e6]),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    none_every=st.sampled_from([0, 2, 3]),
)
def test_clip_grad_norm_matches_torch(shapes, seed, norm_type, max_norm, scale, none_every):
    ours = _params(shapes, seed, scale=scale, none_every=none_every)
    theirs = _copy(ours)
    got = clip.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    _grads_equal(ours, theirs)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**16),
       clip_value=st.sampled_from([0.0, 0.1, 1.0, 3.0, math.inf]), none_every=st.sampled_from([0, 2]))
def test_clip_grad_value_matches_torch(shapes, seed, clip_value, none_every):
    ours = _params(shapes, seed, scale=2.0, none_every=none_every)
    theirs = _copy(ours)
    assert clip.clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    _grads_equal(ours, theirs)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_single_tensor_zero_dim_and_zero_gradients(norm_type):
    for params in (_params([(3, 4)], 1)[0], _params([()], 2), _params([(2,), (3, 3)], 3, zero=True)):
        theirs = _copy([params] if isinstance(params, torch.Tensor) else params)
        got = clip.clip_grad_norm_(params, 0.3, norm_type)
        expected = torch.nn.utils.clip_grad_norm_(theirs if len(theirs) > 1 else theirs[0], 0.3, norm_type)
        torch.testing.assert_close(got, expected)
        _grads_equal([params] if isinstance(params, torch.Tensor) else params, theirs)


def test_mixed_dtypes_and_float64_return():
    ours = _params([(3,), (2, 2)], 0, dtype=torch.float64) + _params([(4,)], 1)
    theirs = _copy(ours)
    got = clip.clip_grad_norm_(ours, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected)
    _grads_equal(ours, theirs)


def test_empty_inputs_behave_like_torch():
    assert torch.equal(clip.clip_grad_norm_([], 1.0), torch.nn.utils.clip_grad_norm_([], 1.0))
    no_grads = _params([(2,), (3,)], 0, none_every=1)
    assert torch.equal(clip.clip_grad_norm_(no_grads, 1.0), torch.tensor(0.0))
    with pytest.warns(UserWarning, match="empty generator"):
        clip.clip_grad_norm_((p for p in []), 1.0)
    clip.clip_grad_value_([], 1.0)
    assert clip.clip_grad_norm_per_layer_([], 1.0).shape == (0,)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_nonfinite_gradients_like_torch(bad, norm_type):
    ours = _params([(3, 3), (4,)], 5)
    ours[0].grad[1, 2] = bad
    theirs = _copy(ours)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip.clip_grad_norm_(_copy(ours), 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(_copy(ours), 1.0, norm_type, error_if_nonfinite=True)
    with pytest.warns(RuntimeWarning, match="non-finite"):  # torch says nothing
        got = clip.clip_grad_norm_(ours, 1.0, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.testing.assert_close(got, expected, equal_nan=True)
    _grads_equal(ours, theirs)


# -- norms that overflow although every entry is finite ----------------------------------------


def _huge(dtype=torch.float32, big=2e20, seed=0):
    """Two parameters whose gradients are finite but whose squares overflow ``dtype``."""
    params = _params([(3, 4), (5,)], seed, dtype=dtype)
    params[0].grad[0, 0] = big
    params[1].grad[2] = -big / 2
    return params


def _flat64(params):
    return torch.cat([p.grad.to(torch.float64).flatten() for p in params])


@pytest.mark.parametrize("dtype, big", [(torch.float32, 2e20), (torch.float64, 1e200)])
@pytest.mark.parametrize("norm_type", [2.0, 3.5])
def test_total_norm_does_not_overflow_for_finite_entries(dtype, big, norm_type):
    params = _huge(dtype, big)
    grads = [p.grad for p in params]
    # The exact norm, from entries scaled down before the powers are taken.
    flat = _flat64(params)
    expected = float(flat.abs().max() * torch.linalg.vector_norm(flat / flat.abs().max(), norm_type))
    assert math.isinf(float(torch.nn.utils.get_total_norm(grads, norm_type)))  # torch overflows
    got = clip.total_norm(grads, norm_type)
    assert got.dtype == dtype and float(got) == pytest.approx(expected, rel=1e-6)


def test_clip_grad_norm_scales_an_overflowing_gradient_instead_of_zeroing_it():
    ours = _huge()
    theirs = _copy(ours)
    before = _flat64(ours)
    norm = clip.clip_grad_norm_(ours, 1.0)
    assert float(norm) == pytest.approx(float(before.norm()), rel=1e-6)
    after = _flat64(ours)
    assert float(after.norm()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(after, before / before.norm(), rtol=1e-5, atol=1e-30)
    # The documented difference: torch computes N = inf and multiplies every gradient by 0.
    assert math.isinf(float(torch.nn.utils.clip_grad_norm_(theirs, 1.0)))
    assert not _flat64(theirs).any()


def test_norm_beyond_float32_range_comes_back_in_float64_and_still_clips():
    ours = _params([(4,)], 0)
    ours[0].grad[:] = torch.tensor([3e38, -3e38, 2e38, 1.0])
    before = _flat64(ours)
    norm = clip.clip_grad_norm_(ours, 2.0)
    assert norm.dtype == torch.float64 and float(norm) == pytest.approx(float(before.norm()), rel=1e-6)
    torch.testing.assert_close(_flat64(ours), 2.0 * before / before.norm(), rtol=1e-5, atol=0)
    assert ours[0].grad[-1] != 0  # 1 / 4.7e38 · 2 = 4e-39 is subnormal in float32, not lost


def test_normalized_step_on_an_overflowing_norm_has_length_alpha():
    params = _huge()
    before = _flat64(params)
    norm = clip.normalized_step_(params, 0.5)
    assert float(norm) == pytest.approx(float(before.norm()), rel=1e-6)
    torch.testing.assert_close(_flat64(params), 0.5 * before / before.norm(), rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_normalized_step_refuses_a_nonfinite_gradient_and_leaves_it_alone(bad):
    params = _params([(3, 3), (4,)], 2)
    params[1].grad[0] = bad
    before = [p.grad.clone() for p in params]
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        clip.normalized_step_(params, 1.0)
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, b, equal_nan=True, rtol=0, atol=0)


def test_per_layer_and_adaptive_clipping_of_an_overflowing_gradient():
    params = _huge()
    before = [p.grad.to(torch.float64) for p in params]
    norms = clip.clip_grad_norm_per_layer_(params, 1.0)
    torch.testing.assert_close(norms.double(), torch.stack([b.norm() for b in before]), rtol=1e-6, atol=0)
    for p in params:
        assert float(p.grad.double().norm()) == pytest.approx(1.0, rel=1e-5)
    params = _huge()
    clip.adaptive_clip_grad_(params, clipping=0.1)
    row = params[0].grad[0].double()  # the unit holding the 2e20 entry is clipped, not zeroed
    w_row = max(float(params[0].detach()[0].norm()), 1e-3)
    assert float(row.norm()) == pytest.approx(0.1 * w_row, rel=1e-5) and row[0] > 0


def test_per_layer_and_adaptive_clipping_warn_on_nonfinite_entries():
    for call in (lambda ps: clip.clip_grad_norm_per_layer_(ps, 1.0),
                 lambda ps: clip.adaptive_clip_grad_(ps, clipping=0.1)):
        params = _params([(3, 3)], 1)
        params[0].grad[1, 1] = math.inf
        with pytest.warns(RuntimeWarning, match="NaN or Inf"):
            call(params)


def test_negative_thresholds_are_refused_where_torch_reverses_the_gradient():
    """The documented difference: torch accepts a negative max_norm and clip_value."""
    theirs = _params([(3,)], 0)
    before = theirs[0].grad.clone()
    torch.nn.utils.clip_grad_norm_(theirs, -1.0)
    cosine = torch.nn.functional.cosine_similarity(before, theirs[0].grad, dim=0)
    assert float(cosine) == pytest.approx(-1.0)  # an ascent direction
    torch.nn.utils.clip_grad_value_(theirs, -0.5)
    assert torch.equal(theirs[0].grad, torch.full((3,), -0.5))  # every entry set to -0.5
    ours = _params([(3,)], 0)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip.clip_grad_norm_(ours, -1.0)
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip.clip_grad_value_(ours, -0.5)
    assert torch.equal(ours[0].grad, before)


def test_norm_clipping_keeps_direction_and_caps_the_norm():
    params = _params([(10, 10), (10,)], 0, scale=10.0)
    before = torch.cat([p.grad.flatten() for p in params])
    norm = clip.clip_grad_norm_(params, 1.0)
    after = torch.cat([p.grad.flatten() for p in params])
    assert float(norm) == pytest.approx(float(before.norm()))
    assert float(after.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(torch.nn.functional.cosine_similarity(before, after, dim=0)) == pytest.approx(1.0, abs=1e-6)


def test_per_layer_clipping():
    params = _params([(4, 4), (4,), (2, 3)], 0, scale=3.0, none_every=0)
    params[1].grad.mul_(1e-3)  # this one is below the threshold
    before = [p.grad.clone() for p in params]
    norms = clip.clip_grad_norm_per_layer_(params, 1.0)
    torch.testing.assert_close(norms, torch.stack([b.norm() for b in before]))
    for p, b in zip(params, before, strict=True):
        expected = b * min(1.0, 1.0 / (float(b.norm()) + 1e-6))
        torch.testing.assert_close(p.grad, expected)
    assert float(params[0].grad.norm()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(params[1].grad, before[1])


def test_per_layer_skips_none_grads():
    params = _params([(3,), (3,), (3,)], 0, none_every=2)
    assert clip.clip_grad_norm_per_layer_(params, 0.1).shape == (2,)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 2.0])
def test_normalized_step_has_length_alpha(alpha):
    for scale in (1e-4, 1.0, 1e3):
        params = _params([(5, 5), (5,)], 7, scale=scale)
        before = torch.cat([p.grad.flatten() for p in params])
        norm = clip.normalized_step_(params, alpha)
        after = torch.cat([p.grad.flatten() for p in params])
        assert float(norm) == pytest.approx(float(before.norm()), rel=1e-6)
        torch.testing.assert_close(after, alpha * before / before.norm())


def test_normalized_step_leaves_zero_gradient_zero():
    params = _params([(3,)], 0, zero=True)
    assert float(clip.normalized_step_(params, 1.0)) == 0.0
    assert torch.equal(params[0].grad, torch.zeros(3))


def _agc_reference(params, clipping, eps):
    """The rule row by row, with Python loops: the definition, not the vectorized code."""
    out = []
    for p in params:
        if p.grad is None:
            out.append(None)
            continue
        w, g = p.detach(), p.grad.clone()
        rows = [(w, g)] if w.ndim <= 1 else [(w[i], g[i]) for i in range(w.shape[0])]
        new_rows = []
        for wi, gi in rows:
            w_norm = max(float(wi.norm()), eps)
            g_norm = float(gi.norm())
            if g_norm / w_norm > clipping:
                gi = gi * (clipping * w_norm / g_norm)
            new_rows.append(gi)
        out.append(new_rows[0] if w.ndim <= 1 else torch.stack(new_rows))
    return out


@settings(max_examples=50, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**16),
       clipping=st.sampled_from([0.0, 0.01, 0.1, 1.0, 10.0]), eps=st.sampled_from([1e-3, 0.5]),
       scale=st.sampled_from([1e-3, 0.1, 10.0]), none_every=st.sampled_from([0, 3]))
def test_adaptive_clipping_matches_row_loop(shapes, seed, clipping, eps, scale, none_every):
    params = _params(shapes, seed, scale=scale, none_every=none_every)
    expected = _agc_reference(params, clipping, eps)
    assert clip.adaptive_clip_grad_(params, clipping, eps) is None
    for p, e in zip(params, expected, strict=True):
        if e is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_adaptive_clipping_on_conv_kernel_and_zero_weights():
    w = torch.nn.Parameter(torch.zeros(3, 2, 2, 2))  # zero weights: eps sets the threshold
    w.grad = torch.ones(3, 2, 2, 2)
    clip.adaptive_clip_grad_(w, clipping=0.1, eps=1e-3)
    row_norms = w.grad.flatten(1).norm(dim=1)
    torch.testing.assert_close(row_norms, torch.full((3,), 1e-4))


def test_unitwise_norm_shapes():
    assert clip.unitwise_norm(torch.ones(4, 3)).shape == (4, 1)
    assert clip.unitwise_norm(torch.ones(4, 3, 2, 2)).shape == (4, 1, 1, 1)
    assert clip.unitwise_norm(torch.ones(5)).shape == ()
    assert float(clip.unitwise_norm(torch.full((), -2.0))) == 2.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ps: clip.clip_grad_norm_(ps, -1.0), ValueError, "max_norm"),
        (lambda ps: clip.clip_grad_norm_(ps, math.nan), ValueError, "max_norm"),
        (lambda ps: clip.clip_grad_norm_(ps, 1.0, norm_type=0), ValueError, "norm_type"),
        (lambda ps: clip.clip_grad_norm_(ps, 1.0, norm_type=-2.0), ValueError, "norm_type"),
        (lambda ps: clip.clip_grad_norm_(ps, 1.0, norm_type="two"), ValueError, "norm_type"),
        (lambda ps: clip.clip_grad_norm_(ps, "1"), TypeError, "max_norm"),
        (lambda ps: clip.clip_grad_value_(ps, -0.1), ValueError, "clip_value"),
        (lambda ps: clip.clip_grad_norm_per_layer_(ps, -1.0), ValueError, "max_norm"),
        (lambda ps: clip.normalized_step_(ps, -1.0), ValueError, "alpha"),
        (lambda ps: clip.adaptive_clip_grad_(ps, clipping=-0.01), ValueError, "clipping"),
        (lambda ps: clip.adaptive_clip_grad_(ps, eps=0.0), ValueError, "eps"),
        (lambda ps: clip.clip_grad_norm_(3.0, 1.0), TypeError, "parameters"),
        (lambda ps: clip.clip_grad_norm_([ps[0], "w"], 1.0), TypeError, r"parameters\[1\]"),
        (lambda ps: clip.clip_grad_value_([[1.0]], 1.0), TypeError, r"parameters\[0\]"),
    ],
)
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call(_params([(2, 2)], 0))


def test_string_inf_norm_type_like_torch():
    ours = _params([(3, 3)], 0)
    theirs = _copy(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = clip.clip_grad_norm_(ours, 0.1, "inf")
    torch.testing.assert_close(got, torch.nn.utils.clip_grad_norm_(theirs, 0.1, "inf"))
    _grads_equal(ours, theirs)
