"""One PyTorch thread against two on four chapter-like workloads (the book's thread policy).

Run it by hand, on the machine in question: ``.venv/bin/python bench/threads.py [label]``.
It prints, per workload, the median and slowest of five runs with each thread count, and the
load average at the end. CONTRIBUTING.md ("Thread policy") has the numbers behind the policy.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import gradlab as gl


def small_fit() -> None:
    """learning_rate / accumulation: 300 full-batch steps of a 3 x 32 tanh MLP on 128 points."""
    x, y = gl.data.teacher_regression(128, 5, kind="sine")
    with gl.utils.seeded(0):
        net = gl.mlp(3, 32, in_features=5, out_features=1, activation="tanh")
    gl.fit(net, torch.nn.functional.mse_loss, (x, y), torch.optim.SGD(net.parameters(), lr=0.1),
           steps=300, progress=False)


def exploding_fit() -> None:
    """clipping: 200 norm-clipped steps of the book's exploding network on 128 points."""
    x, y = gl.data.teacher_regression(128, 16, kind="mlp", seed=1)
    net = gl.models.exploding_mlp()
    gl.fit(net, torch.nn.functional.mse_loss, (x, y), torch.optim.SGD(net.parameters(), lr=1e-3),
           steps=200, clip=1.0, progress=False)


def wide() -> None:
    """signal_propagation: forward and backward through 30 layers of width 512, batch 256, x5."""
    with gl.utils.seeded(0):
        net = gl.mlp(30, 512, activation="tanh", init="gaussian", gain=1.2)
    x = torch.randn(256, 512)
    for _ in range(5):
        net.zero_grad()
        net(x).pow(2).mean().backward()


def cliff_grid() -> None:
    """rnn_cliff: h_T and its gradient on a 401 x 401 grid of (w, b), 50 steps."""
    ws = torch.linspace(0.0, 4.0, 401, dtype=torch.float64)
    w, b = torch.meshgrid(ws, ws - 2.0, indexing="xy")
    w.requires_grad_(True)
    b.requires_grad_(True)
    torch.autograd.grad(gl.models.single_unit_last_state(w, b).sum(), [w, b])


WORKLOADS = {"small_fit": small_fit, "exploding_fit": exploding_fit, "wide": wide,
             "cliff_grid": cliff_grid}


def main(label: str = "", repeats: int = 5) -> None:
    runs: dict[tuple[str, int], list[float]] = {(k, t): [] for k in WORKLOADS for t in (1, 2)}
    for _ in range(repeats):  # interleaved, so both thread counts see the same load
        for name, work in WORKLOADS.items():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                start = time.perf_counter()
                work()
                runs[name, threads].append(time.perf_counter() - start)
    for name in WORKLOADS:
        one, two = (statistics.median(runs[name, t]) for t in (1, 2))
        print(f"[{label}] {name:14s} median 1 thread {one:.3f} s, 2 threads {two:.3f} s "
              f"(x{two / one:.2f}); slowest {max(runs[name, 1]):.3f} / {max(runs[name, 2]):.3f} s")
    print(f"[{label}] load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
