"""Chapter-level measurements of "The cliff" (book/rnn_cliff.md): where Pascanu et al.'s sigmoid
unit jumps, and the two gradient-descent runs on the one-unit tanh network, plain and clipped."""

import math

import numpy as np
import torch

import gradlab as gl

H0, STEPS, TARGET, LR = 0.5, 50, -0.5, 0.1


def _sigmoid_unit_output(w, b, x0=0.5):
    """sigma(x_50) of x_t = w sigma(x_{t-1}) + b, through h_t = tanh(x_t / 2) as the chapter does."""
    h_last = gl.models.single_unit_last_state(w / 4, w / 4 + b / 2, h0=math.tanh(x0 / 2), steps=STEPS)
    return (1 + h_last) / 2


def test_sigmoid_unit_jumps_where_its_initial_state_is_a_fixed_point():
    """At w = 5 the output sigma(x_50) of Pascanu et al.'s unit (x_0 = 0.5) jumps at the bias where
    x_0 is a fixed point, b = x_0 - w sigma(x_0) = -2.6123; the grid search finds it within 1e-4
    (measured: 3e-5, the offset of a finite T = 50)."""
    lo, hi = -4.0, -1.0
    for _ in range(8):
        grid = torch.linspace(lo, hi, 65, dtype=torch.float64)
        out = _sigmoid_unit_output(5.0, grid)
        k = int((out < 0.5 * (out[0] + out[-1])).sum())
        lo, hi = float(grid[k - 1]), float(grid[k])
    formula = 0.5 - 5.0 / (1 + math.exp(-0.5))
    assert abs(formula + 2.6123) < 1e-4
    assert abs(0.5 * (lo + hi) - formula) < 1e-4, (0.5 * (lo + hi), formula)


def _descend(max_norm=None, n_steps=40):
    model = gl.models.SingleUnitRNN(2.0, 0.25, h0=H0, steps=STEPS)
    path, norms = [(model.w.item(), model.b.item())], []

    def record(step):
        path.append((step.model.w.item(), step.model.b.item()))
        norms.append(step.grad_norm)

    data = (torch.tensor([H0], dtype=torch.float64), torch.tensor([TARGET], dtype=torch.float64))
    gl.fit(model, torch.nn.functional.mse_loss, data, torch.optim.SGD(model.parameters(), lr=LR),
           steps=n_steps, clip=max_norm, callback=record)
    return np.array(path), np.array(norms)


def _wall_gradient(w):
    """|grad L| on the line b = cliff_bias(w): there h_T = h_0."""
    return 2 * abs(H0 - TARGET) * gl.theory.cliff_gradient_norm(w, H0, STEPS)


def test_plain_run_crosses_the_wall_harmlessly_and_is_thrown_near_its_end():
    """The chapter's plain run from (w, b) = (2, 0.25), lr 0.1: it crosses the line b = cliff_bias(w)
    between steps 12 and 13 with gradient norms below 2 on both sides; its largest gradient is at
    step 19, at w between 4/3 and 1.5 (near the line's end), less than 1e-3 below the line, where
    the norm (measured 1.07e3) is within a factor 2 of the on-wall formula at that w (8.3e2) and
    over 1e5 times smaller than on the wall at w = 2 (2.1e9); that step is over 100 times longer
    than any before it. The clipped run (c = 1) never steps farther than lr * c."""
    path, norms = _descend()
    offset = path[:, 1] - np.array([gl.theory.cliff_bias(w, H0) for w in path[:, 0]])
    cross = int(np.flatnonzero(np.sign(offset[1:]) != np.sign(offset[:-1]))[0])
    assert cross == 12 and offset[cross] > 0 > offset[cross + 1]
    assert norms[cross] < 2 and norms[cross + 1] < 2, norms[cross:cross + 2]
    jump = int(np.argmax(norms))
    assert jump == 19
    w_jump = path[jump, 0]
    assert 4 / 3 < w_jump < 1.5 and -1e-3 < offset[jump] < 0, (w_jump, offset[jump])
    assert 0.5 < norms[jump] / _wall_gradient(w_jump) < 2, (norms[jump], _wall_gradient(w_jump))
    assert _wall_gradient(2.0) > 1e5 * norms[jump]
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert lengths[jump] > 100 * lengths[:jump].max()
    clipped_path, _ = _descend(max_norm=1.0)
    assert np.linalg.norm(np.diff(clipped_path, axis=0), axis=1).max() <= LR * 1.0 * (1 + 1e-6)
