"""Tests for gradlab.utils."""

import inspect
import os
import random

import matplotlib
import numpy as np
import pytest
import torch

import gradlab
from gradlab import plot
from gradlab.models import mlp
from gradlab.monitor import GradientMonitor
from gradlab.utils import (
    BOOK_THREADS,
    THREADS_ENV,
    book_threads,
    get_device,
    seed_everything,
    seeded,
    setup_chapter,
    show_source,
    source_of,
)


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


# -- seeded ------------------------------------------------------------------------------------


def test_seeded_gives_the_same_draws_and_restores_the_caller_stream():
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    with seeded(3):
        a = torch.randn(5)
        m1 = mlp(2, 6)
    assert torch.equal(torch.rand(4), expected)  # as if the block had not run
    with seeded(3):
        b = torch.randn(5)
        m2 = mlp(2, 6)
    torch.manual_seed(3)
    assert torch.equal(a, b) and torch.equal(a, torch.randn(5))  # same as torch.manual_seed(3)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))


def test_seeded_restores_the_stream_after_an_exception():
    torch.manual_seed(12)
    expected = torch.rand(3)
    torch.manual_seed(12)
    with pytest.raises(RuntimeError, match="inside"):
        with seeded(0):
            torch.rand(100)
            raise RuntimeError("inside")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (1.5, TypeError), (None, TypeError)])
def test_seeded_rejects_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        with seeded(seed):
            pass


# -- setup_chapter and the thread policy -------------------------------------------------------


@pytest.fixture
def _restore_threads_and_style():
    threads = torch.get_num_threads()
    with matplotlib.rc_context():
        yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("_restore_threads_and_style")
def test_setup_chapter_seeds_styles_and_sets_threads(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    matplotlib.rcParams["axes.grid"] = False
    assert setup_chapter(5) is None  # a chapter's first cell prints nothing
    first = _draw()
    assert torch.get_num_threads() == BOOK_THREADS == 1
    assert all(matplotlib.rcParams[k] == v for k, v in plot.STYLE.items() if not isinstance(v, tuple))
    seed_everything(5)
    assert _draw() == first  # the same seeding as seed_everything
    setup_chapter(0, threads=2)
    assert torch.get_num_threads() == 2
    assert gradlab.setup_chapter is setup_chapter


@pytest.mark.usefixtures("_restore_threads_and_style")
def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    assert book_threads() == 2
    setup_chapter(0)
    assert torch.get_num_threads() == 2
    setup_chapter(0, threads=1)  # an explicit argument wins
    assert torch.get_num_threads() == 1
    monkeypatch.delenv(THREADS_ENV)
    assert book_threads() == BOOK_THREADS


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_thread_count_in_the_environment(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(ValueError, match=THREADS_ENV):
        book_threads()


@pytest.mark.parametrize(("threads", "error"), [(0, ValueError), (1.0, TypeError), ("1", TypeError)])
def test_setup_chapter_rejects_bad_threads(threads, error):
    with pytest.raises(error, match="threads"):
        setup_chapter(0, threads=threads)


# -- get_device --------------------------------------------------------------------------------


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
