"""Chapter-level measurement of "Dropout" on more networks than the chapter runs: on the book's
exploding network, dropout enlarges the first gradient and brings the divergence forward."""

import warnings

import numpy as np
import pytest
import torch

import gradlab as gl

MSE = torch.nn.functional.mse_loss


def _run(net_seed, p, mask_seed, data):
    torch.manual_seed(mask_seed)
    model = gl.models.exploding_mlp(seed=net_seed, dropout=p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fit warns when it stops on a NaN
        return gl.fit(model, MSE, data, torch.optim.SGD(model.parameters(), lr=1e-4), steps=30)


@pytest.mark.parametrize("net_seed", [1, 2, 3])
def test_dropout_enlarges_the_first_gradient_and_brings_the_divergence_forward(net_seed):
    """The chapter's verdict (network seed 0) on three other exploding networks, 4 mask seeds
    each: every p > 0 gives a larger first gradient than p = 0 in every run and the median grows
    with p; from p = 0.2 every run stops at a non-finite value no later than without dropout,
    and from p = 0.3 strictly earlier wherever the run without dropout lasts past step 1.
    (Measured: without dropout these networks stop at steps 2, 3 and 1.)"""
    data = gl.data.teacher_regression(128, 16, kind="sine", seed=0)
    plain = _run(net_seed, 0.0, 0, data)
    assert plain.stopped_at is not None
    medians = []
    for p in (0.1, 0.2, 0.3, 0.5):
        runs = [_run(net_seed, p, s, data) for s in range(4)]
        first = [h.grad_norm[0] for h in runs]
        assert min(first) > plain.grad_norm[0]
        medians.append(np.median(first))
        if p >= 0.2:
            assert all(h.stopped_at is not None and h.stopped_at <= plain.stopped_at for h in runs)
        if p >= 0.3 and plain.stopped_at > 1:
            assert all(h.stopped_at < plain.stopped_at for h in runs)
    assert all(a < b for a, b in zip(medians, medians[1:], strict=False))
