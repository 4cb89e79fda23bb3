"""The measured claims of book/initialization.md that rest on the chapter's own set-up."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradlab as gl


def test_tanh_gain_five_thirds_is_chaotic_as_chi1_predicts():
    """calculate_gain("tanh") = 5/3 with zero biases: on four networks of 30 layers and width
    256 (kaiming_normal_), the fitted per-layer factor of ||dL/dz_l||² over layers 6 to 29 is
    chi_1 = 1.2098 to 1% and within three standard errors, and the mean square of z_l stays
    within 5% of q*."""
    gain = nn.init.calculate_gain("tanh")
    chi, q_star = gl.theory.chi1("tanh", gain, 0.0), gl.theory.q_star("tanh", gain, 0.0)
    factors, qs = [], []
    for seed in range(4):
        with gl.utils.seeded(seed):
            layers = []
            for _ in range(30):
                linear = nn.Linear(256, 256)
                nn.init.kaiming_normal_(linear.weight, nonlinearity="tanh")
                nn.init.zeros_(linear.bias)
                layers += [linear, nn.Tanh()]
            net, x = nn.Sequential(*layers[:-1]), torch.randn(64, 256)
        with gl.GradientMonitor(net) as monitor:
            out = net(x)
            out.backward(torch.randn_like(out))
        grad_sq = monitor.output_grad_norms[0] ** 2
        factors.append(math.exp(-np.polyfit(np.arange(6, 30), np.log(grad_sq[5:29]), 1)[0]))
        qs.append(float(np.mean(monitor.output_stds[0][5:] ** 2)))
    mean, se = float(np.mean(factors)), float(np.std(factors, ddof=1) / 2)
    assert chi > 1.2
    assert mean == pytest.approx(chi, rel=0.01)
    assert abs(mean - chi) < 3 * se + 1e-3
    assert np.mean(qs) == pytest.approx(q_star, rel=0.05)
