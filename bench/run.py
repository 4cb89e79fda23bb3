"""Benchmark: each chapter's execution time, the warm site rebuild, the test suite's time,
gradlab's overheads, and ``gl.doctor``'s run time.

Run with ``make bench``. Prints a table; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _interleaved(fn_a, fn_b, *, rounds: int = 7, inner: int = 20) -> tuple[float, float]:
    """Median seconds per call of ``fn_a`` and ``fn_b``, measured in alternation so that load
    on the machine hits both the same way."""
    a_times, b_times = [], []
    for fn in (fn_a, fn_b):  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for fn, times in ((fn_a, a_times), (fn_b, b_times)):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - start) / inner)
    return statistics.median(a_times), statistics.median(b_times)


def monitor_overhead(depth: int = 20, width: int = 256, batch: int = 128, *,
                     with_optimizer: bool = True, optimizer: str = "sgd",
                     rounds: int = 15, block: int = 10) -> tuple[float, float]:
    """(seconds per plain training step, median ratio of monitored to plain time).

    One intra-op thread. Blocks of ``block`` steps with and without a GradientMonitor alternate
    (attached for a whole block, as in real use); each pair of blocks gives a ratio, and the
    median of ``rounds`` ratios is returned, so that load from other processes hits both halves
    of a pair alike. Time is the thread's CPU time, which does not count time spent waiting for
    a core. ``with_optimizer`` also records update ratios; ``optimizer`` is ``"sgd"`` (the
    update read from the gradient) or ``"adam"`` (the weights copied before each step).
    """
    import gradlab as gl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gl.seed_everything(0)
        model = gl.mlp(depth, width)
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x, y = torch.randn(batch, width), torch.randn(batch, width)

        def step() -> None:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

        monitor = gl.GradientMonitor(model, opt if with_optimizer else None)

        def plain_block() -> None:
            for _ in range(block):
                step()

        def monitored_block() -> None:
            with monitor:
                for _ in range(block):
                    step()
            monitor.reset()  # keep memory flat over many rounds

        plain, ratios = [], []
        for fn in (plain_block, monitored_block) * 2:  # warm-up
            fn()
        for _ in range(rounds):
            times = []
            for fn in (plain_block, monitored_block):
                start = time.thread_time()
                fn()
                times.append(time.thread_time() - start)
            plain.append(times[0] / block)
            ratios.append(times[1] / times[0])
        return statistics.median(plain), statistics.median(ratios)
    finally:
        torch.set_num_threads(threads)


def clip_overhead(n_tensors: int = 200, total: int = 10_000_000) -> tuple[float, float] | None:
    """(seconds for torch's clip_grad_norm_, ratio gradlab/torch) on ~10M values."""
    try:
        from gradlab import clip
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 100, (n_tensors,), generator=gen).double()
    sizes = (sizes / sizes.sum() * total).long().clamp(min=1)
    params = [torch.nn.Parameter(torch.zeros(int(s))) for s in sizes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    ours, theirs = _interleaved(
        lambda: clip.clip_grad_norm_(params, 1.0),
        lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        rounds=7, inner=5,
    )
    return theirs, ours / theirs


def doctor_times(rounds: int = 5) -> list[tuple[str, float, float]]:
    """(model, median seconds of ``gl.doctor(..., steps=3)``, ratio to 3 plain training steps).

    One intra-op thread. The bench MLP is the monitor's (20 x 256, batch 128, Adam); the
    transformer is the book's ``gl.models.Transformer`` with its defaults (4 Pre-LN blocks of
    width 64, context 64), vocabulary 65, batch 16, Adam. The doctor deep-copies the model and
    optimizer and runs 3 monitored, hooked passes; the plain steps are the same passes without
    the doctor.
    """
    import gradlab as gl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gl.seed_everything(0)
        mlp = gl.mlp(20, 256)
        transformer = gl.models.Transformer(65)
        tokens = torch.randint(0, 65, (16, 65))
        cases = [
            ("bench MLP (20 x 256, batch 128)", mlp, torch.nn.functional.mse_loss,
             (torch.randn(128, 256), torch.randn(128, 256))),
            ("gl.models.Transformer (4 x 64, batch 16 x 64)", transformer, gl.models.lm_loss,
             (tokens[:, :-1], tokens[:, 1:])),
        ]
        results = []
        for name, model, loss_fn, (x, y) in cases:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)

            def plain(model=model, opt=opt, loss_fn=loss_fn, x=x, y=y) -> None:
                for _ in range(3):
                    opt.zero_grad()
                    loss_fn(model(x), y).backward()
                    opt.step()

            def diagnose(model=model, opt=opt, loss_fn=loss_fn, x=x, y=y) -> None:
                gl.doctor(model, loss_fn, (x, y), optimizer=opt, steps=3)

            ours, theirs = _interleaved(diagnose, plain, rounds=rounds, inner=1)
            results.append((name, ours, ours / theirs))
        return results
    finally:
        torch.set_num_threads(threads)


def chapter_times() -> list[tuple[str, float]]:
    """Execute every chapter once, in a fresh kernel, and time it."""
    import jupytext
    import nbclient

    times = []
    for path in sorted((ROOT / "book").glob("*.md")):
        head = path.read_text(encoding="utf-8")[:600]
        if "kernelspec:" not in head:
            continue
        nb = jupytext.read(path)
        start = time.perf_counter()
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
        times.append((path.stem, time.perf_counter() - start))
    return times


def site_build_times() -> tuple[float, float]:
    """(seconds of a ``make book`` build that brings the site up to date, seconds of a second
    build right after it, with nothing changed: the warm rebuild).

    The first build executes whatever chapters are not in the cache; the second must execute
    none and rewrite no page.
    """
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--path-output", "."]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-suite", action="store_true", help="do not time the test suite")
    args = parser.parse_args()

    for what, options in (("gradients and outputs", dict(with_optimizer=False)),
                          ("+ update ratios, SGD", dict(optimizer="sgd")),
                          ("+ update ratios, Adam (weights copied)", dict(optimizer="adam"))):
        plain, ratio = monitor_overhead(**options)
        target = "" if "Adam" in what else "   target <= 1.10x"
        print(f"GradientMonitor overhead (20 x 256 MLP, batch 128, one thread), {what}: "
              f"{ratio:.3f}x (plain step {plain * 1e3:.1f} ms){target}")
    clip = clip_overhead()
    if clip is not None:
        print(f"gradlab.clip.clip_grad_norm_ / torch (200 tensors, 10M values): {clip[1]:.3f}x "
              f"(torch {clip[0] * 1e3:.1f} ms)   target <= 1.5x")
    for name, seconds, ratio in doctor_times():
        print(f"gl.doctor(steps=3) on the {name}, one thread: {seconds:.3f} s "
              f"({ratio:.2f}x three plain training steps)")
    first, warm = site_build_times()
    print(f"\nsite build: {first:.1f} s to bring it up to date, then a warm rebuild (nothing changed) "
          f"{warm:.1f} s   target <= 10 s")
    print("\nchapter execution times (target <= 30 s each):")
    for name, seconds in chapter_times():
        print(f"  {name:<28} {seconds:6.1f} s")
    if not args.skip_suite:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                       cwd=ROOT, check=False)
        print(f"\nwhole test suite (pytest): {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
