"""Chapter-level measurements of "Backpropagation as a product of Jacobians": the spectrum of a
product of random matrices, against the identities and limits the chapter quotes."""

import math

import numpy as np
import torch

N, FACTORS = 200, 10


def _product(factors):
    product = torch.eye(N, dtype=torch.float64)
    for w in factors:
        product = w @ product
    return product


def _gaussian(gen):
    return torch.randn(N, N, generator=gen, dtype=torch.float64) / math.sqrt(N)


def test_product_of_gaussian_factors_keeps_the_mean_square_and_spreads_the_spectrum():
    """Ten independent N(0, 1/N) factors of size 200: the mean squared singular value of the
    product is 1 (E tr(P^T P) / N = 1 exactly), within 4 standard errors over 8 products; the
    largest singular value is far below the product of the factors' norms (about 2^10) and near
    the Fuss-Catalan edge sqrt(11^11 / 10^10) = 5.34 (within 15%: at N = 200 the mean is about
    4.9 and approaches the edge slowly); more than half of the singular values are below 0.1."""
    gen = torch.Generator().manual_seed(0)
    mean_square, largest, below, ratio_to_bound = [], [], [], []
    for _ in range(8):
        factors = [_gaussian(gen) for _ in range(FACTORS)]
        s = torch.linalg.svdvals(_product(factors))
        mean_square.append(float(s.pow(2).mean()))
        largest.append(float(s[0]))
        below.append(float((s < 0.1).double().mean()))
        norms = [float(torch.linalg.matrix_norm(w, ord=2)) for w in factors]
        ratio_to_bound.append(largest[-1] / math.prod(norms))
    se = np.std(mean_square, ddof=1) / math.sqrt(len(mean_square))
    assert abs(np.mean(mean_square) - 1) < 4 * se, (np.mean(mean_square), se)
    edge = math.sqrt(11**11 / 10**10)
    assert abs(np.mean(largest) / edge - 1) < 0.15, np.mean(largest)
    assert max(ratio_to_bound) < 0.01
    assert min(below) > 0.5


def test_product_of_orthogonal_factors_keeps_every_singular_value_at_one():
    gen = torch.Generator().manual_seed(1)
    factors = [torch.linalg.qr(_gaussian(gen))[0] for _ in range(FACTORS)]
    s = torch.linalg.svdvals(_product(factors))
    assert float((s - 1).abs().max()) < 1e-12


def test_singular_values_of_factors_bound_those_of_the_product():
    gen = torch.Generator().manual_seed(2)
    a, b = _gaussian(gen), _gaussian(gen)
    sa, sb, sab = (torch.linalg.svdvals(m) for m in (a, b, a @ b))
    assert float(sab[0]) <= float(sa[0] * sb[0]) * (1 + 1e-12)
    assert float(sab[-1]) >= float(sa[-1] * sb[-1]) * (1 - 1e-9)


def test_largest_singular_value_of_the_product_approaches_the_edge_from_below():
    """The chapter's gap between the largest singular value at N = 200 (about 4.9) and the
    Fuss-Catalan edge sqrt(11^11 / 10^10) = 5.34 is a finite-size effect: over 20 products of ten
    factors the mean is lower at N = 25 (about 3.7) than at N = 100 (about 4.6), both means more
    than 3 standard errors apart and below the edge."""
    gen = torch.Generator().manual_seed(4)
    edge = math.sqrt(11**11 / 10**10)
    stats = {}
    for n in (25, 100):
        values = []
        for _ in range(20):
            product = torch.eye(n, dtype=torch.float64)
            for _ in range(FACTORS):
                product = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n) @ product
            values.append(float(torch.linalg.matrix_norm(product, ord=2)))
        stats[n] = (np.mean(values), np.std(values, ddof=1) / math.sqrt(len(values)))
    (small, small_se), (large, large_se) = stats[25], stats[100]
    assert large - small > 3 * math.hypot(small_se, large_se), stats
    assert large < edge, stats


def test_average_case_predicts_the_linear_networks_layer1_gradient():
    """The chapter's comparison "How tight is it?": 30-layer, width-256 linear networks (Gaussian,
    gain 1, no bias), a batch of 64 inputs and read-out gradients; the gradient norm at layer 1
    relative to the read-out, divided by the product of ||W_k||_F / sqrt(n) over the 29 layers
    above it, averages 1 within 4 standard errors over 8 networks (float64 as in the chapter;
    measured: 0.997 ± 0.012)."""
    import gradlab as gl

    depth, width, batch = 30, 256, 64
    ratios = []
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the chapter: the same draws
    try:
        for seed in range(8):
            with gl.utils.seeded(seed):
                net = gl.mlp(depth, width, activation="linear", init="gaussian", gain=1.0)
                x, v = torch.randn(batch, width), torch.randn(batch, width)
            with gl.GradientMonitor(net) as monitor:
                net(x).backward(v)
            grad = monitor.output_grad_norms[0]
            average = math.prod(gl.theory.average_growth_factor(w) for w in net.weights[1:])
            ratios.append(grad[0] / grad[-1] / average)
    finally:
        torch.set_default_dtype(dtype)
    se = np.std(ratios, ddof=1) / math.sqrt(len(ratios))
    assert abs(np.mean(ratios) - 1) < 4 * se and se < 0.05, (np.mean(ratios), se)
