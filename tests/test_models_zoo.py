"""The doctor's zoo: fresh, seeded patients whose optimizers step their own models; the float16
overflow layer found by a float32 pass."""

from __future__ import annotations

import pytest
import torch

import gradlab as gl
from gradlab.models import zoo


@pytest.mark.parametrize("build", [zoo.broken, zoo.healthy])
def test_patients_are_seeded_and_leave_the_callers_stream(build):
    state = torch.get_rng_state()
    first, second = build(0), build(0)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        if a.optimizer is not None:
            own = {id(p) for p in a.model.parameters()}
            assert all(id(p) in own for g in a.optimizer.param_groups for p in g["params"])
        assert (a.expected is None) == (build is zoo.healthy)
        assert a.chapter


def test_float16_overflow_layer_is_the_first_linear_output_above_65504():
    model = gl.models.exploding_mlp()
    x = 1000 * gl.data.teacher_regression(64, 16)[0]
    name = zoo.float16_overflow_layer(model, x)
    k = int(name.split(".")[0])
    h, peaks = x, []
    with torch.no_grad():
        for block in model:
            peaks.append(float(block.linear(h).abs().max()))
            h = block(h)
    assert peaks[k] > zoo.FLOAT16_MAX >= max(peaks[:k])
    with pytest.raises(ValueError, match="no layer"):
        zoo.float16_overflow_layer(model, x / 1000)
    with pytest.raises(TypeError, match="model must be a gradlab.models.MLP"):
        zoo.float16_overflow_layer(torch.nn.Linear(16, 1), x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        zoo.float16_overflow_layer(model, x.numpy())


def test_sqrt_module_is_torch_sqrt():
    x = torch.rand(5)
    assert torch.equal(zoo.Sqrt()(x), torch.sqrt(x))
