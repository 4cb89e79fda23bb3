"""Reproducibility, device choice, and showing the package's real source in a chapter."""

from __future__ import annotations

import inspect
import os
import random
import textwrap

import numpy as np
import torch

from ._validate import check_choice, check_int


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and every CUDA device) with ``seed``.

    Returns a ``torch.Generator`` seeded the same way, for code that wants its own stream.
    Chapters call this first so the numbers quoted in the prose are the numbers printed.
    """
    seed = check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str = "auto") -> torch.device:
    """Pick the device to run on: CUDA when present (``prefer="auto"``), else the CPU.

    ``prefer="cpu"`` forces the CPU; ``prefer="cuda"`` raises if no GPU is visible, so a
    chapter that needs one fails with a clear message instead of silently running elsewhere.
    """
    prefer = check_choice("prefer", prefer, ["auto", "cpu", "cuda"])
    if prefer == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise ValueError("prefer='cuda' but torch.cuda.is_available() is False")
    return torch.device("cpu")


def source_of(obj: object) -> str:
    """Return the source code of a function, class or module, dedented."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)
            or inspect.ismodule(obj)):
        raise TypeError(
            f"obj must be a function, method, class or module, got {type(obj).__name__}"
        )
    return textwrap.dedent(inspect.getsource(obj))


def show_source(obj: object):
    """Display ``obj``'s real source in a notebook, as a highlighted Python block.

    Chapters call this instead of pasting package code, so the book cannot drift from the
    tested implementation. Outside IPython it returns the source string.
    """
    source = source_of(obj)
    try:
        from IPython.display import Markdown
    except ImportError:  # plain Python: the caller can print it
        return source
    return Markdown(f"```python\n{source}```")
