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


@pytest.mark.parametrize("first", ["gradlab", "gradlab.claims", "gradlab.models.zoo", "gradlab.data",
                                   "gradlab.distributed"])
def test_mlp_teacher_works_whatever_is_imported_first(first):
    """gradlab.models imports the zoo, the zoo gl.data, and gl.data the mlp builder: imported
    while gradlab.models is half initialized, ``from .models import mlp`` bound the submodule
    gradlab.models.mlp instead of the function, and teacher_regression(kind="mlp") raised
    "'module' object is not callable" after a plain ``import gradlab``."""
    import subprocess
    import sys

    code = (f"import {first}\nimport types\nimport gradlab as gl\n"
            "assert not isinstance(gl.data.mlp, types.ModuleType)\n"
            "assert not isinstance(gl.distributed.mlp, types.ModuleType)\n"
            "x, y = gl.data.teacher_regression(8, 4, kind='mlp')\nassert y.shape == (8, 1)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
