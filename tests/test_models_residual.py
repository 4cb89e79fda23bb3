"""Tests for gradlab.models.residual: ResidualBlock (branch scale, ReZero gate, no skip), FixupBlock
and resmlp, against hand-written forward passes, their initialization, and bad input."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradlab.models import FixupBlock, ResidualBlock, ResMLP, resmlp
from gradlab.utils import seeded


def test_residual_block_forward_is_x_plus_scaled_branch():
    with seeded(0):
        block = ResidualBlock(8, residual_scale=0.3)
    x = torch.randn(5, 8)
    w1, w2 = block.linear1.weight, block.linear2.weight
    branch = F.linear(torch.relu(F.linear(x, w1)), w2)
    torch.testing.assert_close(block(x), x + 0.3 * branch)
    torch.testing.assert_close(block.branch(x), branch)
    plain = ResidualBlock(8, residual_scale=0.3, residual=False)
    torch.testing.assert_close(plain(x), 0.3 * plain.branch(x))
    assert "residual=True, residual_scale=0.3" in repr(block)


def test_residual_block_initialization_scales():
    """He for the first layer, LeCun for the second: std sqrt(2/n) and sqrt(1/n), within 3%."""
    with seeded(1):
        block = ResidualBlock(512)
    assert abs(block.linear1.weight.std().item() / math.sqrt(2 / 512) - 1) < 0.03
    assert abs(block.linear2.weight.std().item() / math.sqrt(1 / 512) - 1) < 0.03
    assert block.linear1.bias is None and block.linear2.bias is None
    assert block.gate is None


def test_rezero_block_is_identity_and_only_the_gate_gets_a_gradient():
    with seeded(0):
        block = ResidualBlock(8, residual_scale="rezero")
    x = torch.randn(4, 8, requires_grad=True)
    out = block(x)
    torch.testing.assert_close(out, x)
    out.pow(2).sum().backward()
    assert float(block.gate.grad.abs()) > 0
    assert float(block.linear1.weight.grad.abs().max()) == 0
    assert float(block.linear2.weight.grad.abs().max()) == 0
    with torch.no_grad():
        block.gate.fill_(0.5)
    torch.testing.assert_close(block(x), x + 0.5 * block.branch(x))
    assert "residual_scale=rezero" in repr(block)


@pytest.mark.parametrize("kwargs, error", [
    ({"width": 0}, ValueError), ({"width": 2.0}, TypeError),
    ({"width": 4, "residual_scale": "fixup"}, ValueError),
    ({"width": 4, "residual_scale": True}, TypeError),
    ({"width": 4, "residual_scale": float("nan")}, ValueError),
    ({"width": 4, "residual": 1}, TypeError),
    ({"width": 4, "residual_scale": "rezero", "residual": False}, ValueError),
])
def test_residual_block_bad_input(kwargs, error):
    with pytest.raises(error):
        ResidualBlock(**kwargs)


def test_fixup_block_initialization_and_forward():
    L = 16
    with seeded(0):
        block = FixupBlock(256, L)
    assert block.linear2.weight.abs().max().item() == 0
    assert abs(block.linear1.weight.std().item() / (math.sqrt(2 / 256) / math.sqrt(L)) - 1) < 0.03
    assert block.multiplier.item() == 1
    assert all(b.item() == 0 for b in (block.bias1, block.bias2, block.bias3))
    x = torch.randn(3, 256)
    torch.testing.assert_close(block(x), x)
    with torch.no_grad():
        block.linear2.weight.normal_()
        for p, value in ((block.bias1, 0.1), (block.bias2, -0.2), (block.bias3, 0.3),
                         (block.multiplier, 0.7)):
            p.fill_(value)
    h = torch.relu(F.linear(x + 0.1, block.linear1.weight) - 0.2)
    torch.testing.assert_close(block(x), x + 0.7 * F.linear(h + 0.3, block.linear2.weight))
    with seeded(0):
        unscaled = FixupBlock(256, L, branch_scale=1.0)
    assert abs(unscaled.linear1.weight.std().item() / math.sqrt(2 / 256) - 1) < 0.03


@pytest.mark.parametrize("args, kwargs, error", [
    ((4, 0), {}, ValueError), ((0, 4), {}, ValueError), ((4, 2.0), {}, TypeError),
    ((4, 4), {"branch_scale": -1.0}, ValueError), ((4, 4), {"branch_scale": "1"}, TypeError),
])
def test_fixup_block_bad_input(args, kwargs, error):
    with pytest.raises(error):
        FixupBlock(*args, **kwargs)


def test_resmlp_structure():
    with seeded(0):
        model = resmlp(5, 8, in_features=3, out_features=2)
    assert isinstance(model, ResMLP) and len(model.blocks) == 5
    assert all(isinstance(b, ResidualBlock) and b.residual_scale == 1.0 for b in model.blocks)
    x = torch.randn(4, 3)
    torch.testing.assert_close(model(x), model.readout(model.blocks(model.stem(x))))
    assert model(x).shape == (4, 2)
    assert isinstance(resmlp(2, 8).stem, nn.Identity)
    scaled = resmlp(25, 8, residual_scale="sqrt_depth")
    assert all(b.residual_scale == pytest.approx(0.2) for b in scaled.blocks)
    rezero = resmlp(4, 8, residual_scale="rezero")
    x = torch.randn(2, 8)
    torch.testing.assert_close(rezero.blocks(x), x)
    assert sum(1 for name, _ in rezero.named_parameters() if name.endswith("gate")) == 4
    fixup = resmlp(9, 8, residual_scale="fixup")
    assert all(isinstance(b, FixupBlock) and b.branch_scale == pytest.approx(1 / 3) for b in fixup.blocks)
    assert fixup.readout.weight.abs().max().item() == 0
    torch.testing.assert_close(fixup.blocks(x), x)
    plain = resmlp(3, 8, residual_scale=0.5, residual=False)
    assert not any(b.residual for b in plain.blocks)


@pytest.mark.parametrize("kwargs, error", [
    ({"blocks": 0, "width": 4}, ValueError), ({"blocks": 2, "width": 0}, ValueError),
    ({"blocks": 2, "width": 4, "in_features": 0}, ValueError),
    ({"blocks": 2, "width": 4, "out_features": 0}, ValueError),
    ({"blocks": 2, "width": 4, "residual_scale": "sqrt"}, ValueError),
    ({"blocks": 2, "width": 4, "residual_scale": None}, TypeError),
    ({"blocks": 2, "width": 4, "residual": "yes"}, TypeError),
    ({"blocks": 2, "width": 4, "residual_scale": "fixup", "residual": False}, ValueError),
    ({"blocks": 2, "width": 4, "residual_scale": "sqrt_depth", "residual": False}, ValueError),
])
def test_resmlp_bad_input(kwargs, error):
    with pytest.raises(error, match="blocks|width|in_features|out_features|residual"):
        resmlp(**kwargs)
