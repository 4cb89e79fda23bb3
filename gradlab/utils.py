"""Reproducibility, the book's thread policy, device choice, and showing the package's real
source in a chapter."""

from __future__ import annotations

import inspect
import os
import random
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ._validate import check_choice, check_int
from .plot import use_style

BOOK_THREADS = 1
"""PyTorch threads for the book's chapters; see :func:`setup_chapter` for why one."""

THREADS_ENV = "GRADLAB_THREADS"
"""Environment variable that overrides :data:`BOOK_THREADS` (e.g. on a quiet many-core machine)."""


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


def book_threads() -> int:
    """The thread count chapters run with: ``$GRADLAB_THREADS`` if set, else :data:`BOOK_THREADS`."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return BOOK_THREADS
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    return check_int(THREADS_ENV, threads, minimum=1)


def setup_chapter(seed: int = 0, *, threads: int | None = None) -> None:
    """The first call of every chapter: seed everything, apply the plot style, set the threads.

    It calls :func:`seed_everything` with ``seed``, :func:`gradlab.plot.use_style`, and
    ``torch.set_num_threads(threads)`` with ``threads``
    defaulting to :func:`book_threads` (one, unless ``$GRADLAB_THREADS`` says otherwise).

    Why one thread: the book's models are small (widths 8 to 512, batches up to a few hundred),
    so an operation splits into pieces too small to pay for a second thread, and a thread that
    the OS deschedules stalls the other at every synchronization point. On the 2-core machine
    the book is tested on, shared with other jobs, two threads made four chapter-like workloads
    3.7 to 29 times slower (medians of 5 runs, load averages 5 to 12); on the quietest machine
    measured (load average 2.2) they gained at most a factor 2, on runs under half a second.
    ``bench/threads.py`` measures it; CONTRIBUTING.md ("Thread policy") has the table.

    It returns nothing, so that a chapter's first cell prints nothing; call
    :func:`seed_everything` for a seeded ``torch.Generator``.
    """
    threads = book_threads() if threads is None else check_int("threads", threads, minimum=1)
    seed_everything(seed)
    use_style()
    torch.set_num_threads(threads)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with PyTorch's global CPU generator seeded with ``seed``, then restore it.

    ``with seeded(3): model = gl.mlp(...)`` builds the same model on every call (the layers
    draw their weights from the global generator) without changing what the caller's later
    draws will be. Only the CPU generator is forked and seeded; CUDA generators are not touched
    (gradlab builds its models on the CPU).
    """
    seed = check_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


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
