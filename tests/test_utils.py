"""Tests for gradlab.utils."""

import inspect
import os
import random

import numpy as np
import pytest
import torch

import gradlab
from gradlab.models import mlp
from gradlab.monitor import GradientMonitor
from gradlab.utils import get_device, seed_everything, show_source, source_of


@pytest.fixture(autouse=True)
def _restore_hashseed(monkeypatch):
    # seed_everything sets PYTHONHASHSEED; monkeypatch puts the original value back afterwards
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)


def _draw():
    return random.random(), np.random.rand(3).tolist(), torch.randn(3).tolist()


def test_seed_everything_makes_every_generator_reproducible():
    seed_everything(123)
    first = _draw()
    seed_everything(123)
    assert _draw() == first
    seed_everything(124)
    assert _draw() != first
    assert os.environ["PYTHONHASHSEED"] == "124"


def test_seed_everything_returns_a_seeded_generator():
    g = seed_everything(7)
    assert isinstance(g, torch.Generator)
    assert g.initial_seed() == 7
    a = torch.randn(4, generator=g)
    b = torch.randn(4, generator=seed_everything(7))
    assert torch.equal(a, b)


def test_seed_everything_seeds_model_initialization():
    seed_everything(0)
    w1 = mlp(2, 8).weights[0].detach().clone()
    seed_everything(0)
    w2 = mlp(2, 8).weights[0].detach()
    assert torch.equal(w1, w2)


def test_seed_everything_accepts_seeds_beyond_32_bits():
    seed_everything(2**40 + 5)
    first = np.random.rand()
    seed_everything(2**40 + 5)
    assert np.random.rand() == first


@pytest.mark.parametrize("seed", [-1, -100])
def test_seed_everything_rejects_negative_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_seed_everything_rejects_non_int_seeds(seed):
    with pytest.raises(TypeError, match="seed"):
        seed_everything(seed)


def test_get_device_cpu():
    assert get_device("cpu") == torch.device("cpu")


def test_get_device_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")
    assert get_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda"):
        get_device("cuda")


def test_get_device_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device("auto") == torch.device("cuda")
    assert get_device("cuda") == torch.device("cuda")
    assert get_device("cpu") == torch.device("cpu")


def test_get_device_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device("auto").type == expected


@pytest.mark.parametrize("prefer", ["gpu", "CUDA", "", None, 0])
def test_get_device_rejects_unknown_choices(prefer):
    with pytest.raises(ValueError, match="prefer"):
        get_device(prefer)


def test_source_of_returns_the_real_source():
    source = source_of(mlp)
    assert "def mlp(" in source
    assert source == inspect.getsource(mlp)
    assert "check_int(\"depth\"" in source


def test_source_of_dedents_methods_and_accepts_classes_and_modules():
    method = source_of(GradientMonitor.attach)
    assert method.startswith("def attach(self)")
    assert source_of(GradientMonitor).startswith("class GradientMonitor")
    assert "def seed_everything" in source_of(gradlab.utils)
    bound = source_of(GradientMonitor(mlp(1, 2)).attach)
    assert bound == method


def test_show_source_returns_a_python_markdown_block():
    from IPython.display import Markdown

    shown = show_source(mlp)
    assert isinstance(shown, Markdown)
    assert shown.data.startswith("```python\n")
    assert shown.data.endswith("\n```")
    assert shown.data[len("```python\n"):-len("```")] == source_of(mlp)
    assert "def mlp(" in shown.data


def test_show_source_is_exported_at_top_level():
    assert gradlab.show_source is show_source
    assert gradlab.seed_everything is seed_everything
    assert gradlab.get_device is get_device


@pytest.mark.parametrize("obj", [3, "def f(): pass", None, [mlp]])
def test_source_of_rejects_non_code(obj):
    with pytest.raises(TypeError, match="obj"):
        source_of(obj)
    with pytest.raises(TypeError, match="obj"):
        show_source(obj)
