"""The activation registry: each entry agrees with PyTorch's module and autograd."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradlab import activations
from gradlab.activations import ACTIVATIONS

GRID = torch.cat([torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64),
                  torch.tensor([0.0, -1e-12, 1e-12], dtype=torch.float64)])


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fn_equals_the_module(name):
    act = ACTIVATIONS[name]
    module = act.module()
    assert isinstance(module, nn.Module)
    torch.testing.assert_close(act.fn(GRID), module(GRID), rtol=0, atol=1e-15)
    np.testing.assert_allclose(act.np_fn(GRID.numpy()), module(GRID).numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_derivative_equals_autograd(name):
    act = ACTIVATIONS[name]
    z = GRID.clone().requires_grad_()
    (grad,) = torch.autograd.grad(act.module()(z).sum(), z)
    torch.testing.assert_close(act.derivative(GRID), grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(act.np_derivative(GRID.numpy()), grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_max_slope_is_the_supremum_of_the_derivative(name):
    act = ACTIVATIONS[name]
    fine = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64)
    measured = float(act.derivative(fine).abs().max())
    # SELU's supremum lam*alpha is approached from z < 0 and not attained: the grid's value
    # is within its spacing (1e-4) of it.
    assert measured <= act.max_slope * (1 + 1e-12)
    assert measured == pytest.approx(act.max_slope, rel=2e-4 if name == "selu" else 1e-9)


def test_known_slopes():
    assert ACTIVATIONS["sigmoid"].max_slope == 0.25
    assert ACTIVATIONS["gelu"].max_slope == pytest.approx(1.1289, abs=1e-4)  # at z = sqrt(2)
    assert ACTIVATIONS["silu"].max_slope == pytest.approx(1.0998, abs=1e-4)
    assert ACTIVATIONS["selu"].max_slope == pytest.approx(1.0507009873554805 * 1.6732632423543772)


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.homogeneous is not None])
def test_homogeneous_constants_by_sampling(name):
    act = ACTIVATIONS[name]
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for q in (0.3, 4.0):
        x = math.sqrt(q) * z
        # E[phi(sqrt(q) z)^2] = c q; standard error of a mean of 2e6 samples is ~1e-3 relative
        assert float((act.fn(x) ** 2).mean()) == pytest.approx(act.homogeneous * q, rel=5e-3)
        assert float((act.derivative(x) ** 2).mean()) == pytest.approx(act.homogeneous, rel=5e-3)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_kinks_are_where_the_derivative_jumps_or_bends(name):
    act = ACTIVATIONS[name]
    h = 1e-6
    for k in act.kinks:
        left, right = act.np_derivative(np.array([k - h])), act.np_derivative(np.array([k + h]))
        ll, rr = act.np_derivative(np.array([k - 2 * h])), act.np_derivative(np.array([k + 2 * h]))
        # a jump of phi', or of phi'' (one-sided second differences disagree)
        jump = abs(right - left)[0] > 1e-3
        bend = abs((rr - right) / h - (left - ll) / h)[0] > 1e-3
        assert jump or bend, (name, k)


def test_get_apply_derivative_and_bad_input():
    assert activations.get("tanh") is ACTIVATIONS["tanh"]
    z = torch.randn(5)
    torch.testing.assert_close(activations.apply("tanh", z), torch.tanh(z))
    torch.testing.assert_close(activations.derivative("relu", z), (z > 0).float())
    with pytest.raises(ValueError, match="activation"):
        activations.get("softplus")
    with pytest.raises(TypeError, match="z"):
        activations.apply("relu", [1.0])
