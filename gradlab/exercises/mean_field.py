"""Checker for "Signal propagation": chi_1 of an arbitrary activation, against quadrature."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .. import activations
from ..theory import _chi1_callable, _q_star_callable, gaussian_expectation
from .harness import Case, CheckResult, Slips, describe, run


def _np_erf(x: np.ndarray) -> np.ndarray:
    return torch.erf(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _np_logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _from_registry(name: str) -> tuple[Callable, Callable]:
    entry = activations.get(name)
    return entry.np_fn, entry.np_derivative


CHI1_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": _from_registry("tanh"),
    "erf": (_np_erf, lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-(x**2))),
    "sin": (np.sin, np.cos),
    "softplus": (lambda x: np.logaddexp(0.0, x), _np_logistic),
    "swish": _from_registry("silu"),  # the chapter's name for SiLU, z * sigmoid(z)
    "relu": _from_registry("relu"),
}
"""The (phi, phi') NumPy pairs the reader's chi_1 is tried on, cycled through in this order.
erf, sin and softplus are in no table of gradlab, so a solution cannot just call
:func:`gradlab.theory.chi1`; tanh, SiLU and ReLU come from :mod:`gradlab.activations`."""


def _chi1_case(g: torch.Generator, i: int) -> Case | None:
    """A random ``(sigma_w, sigma_b)`` whose fixed point iteration from q = 1 reaches quickly
    (contraction <= 0.8), so a plain loop of a few hundred steps converges; else None."""
    name = list(CHI1_ACTIVATIONS)[i % len(CHI1_ACTIVATIONS)]
    phi, dphi = CHI1_ACTIVATIONS[name]
    sigma_w, sigma_b = (float(v) for v in torch.rand(2, generator=g, dtype=torch.float64))
    sigma_w, sigma_b = 0.5 + 2.0 * sigma_w, 0.05 + 0.95 * sigma_b
    try:
        q = _q_star_callable(phi, sigma_w, sigma_b, 1.0, name)
    except ValueError:
        return None
    h = 1e-4 * q
    def second_moment(at: float) -> float:
        return gaussian_expectation(lambda x: phi(x) ** 2, at)

    slope = sigma_w**2 * (second_moment(q + h) - second_moment(q - h)) / (2.0 * h)
    if q > 50.0 or slope > 0.8:
        return None
    expected = _chi1_callable(phi, dphi, sigma_w, sigma_b)
    return Case((phi, dphi, sigma_w, sigma_b), expected,
                describe(name, sigma_w=sigma_w, sigma_b=sigma_b, **{"q*": q}), {"q": q})


def _mean_slope_squared(case: Case, q: float) -> float:
    """``sigma_w² E[phi'(sqrt(q) z)²]``."""
    dphi, sigma_w = case.args[1], case.args[2]
    return sigma_w**2 * gaussian_expectation(lambda x: dphi(x) ** 2, q)


def _without_bias(case: Case) -> float | None:
    phi, _, sigma_w, _ = case.args
    try:
        return _mean_slope_squared(case, _q_star_callable(phi, sigma_w, 0.0, 1.0, ""))
    except ValueError:  # no fixed point without the bias: this slip cannot happen here
        return None


CHI1_SLIPS: Slips = {
    "chi_1 at q = 1: iterate the length map to its fixed point q* first":
        lambda c: _mean_slope_squared(c, 1.0),
    "E[phi'(sqrt(q*) z)²] without the factor sigma_w²": lambda c: c.expected / c.args[2] ** 2,
    "E[phi'] where chi_1 needs E[phi'²]":
        lambda c: c.args[2] ** 2 * gaussian_expectation(c.args[1], c.data["q"]),
    "sqrt(chi_1), the factor on the gradient's norm; chi_1 is its square": lambda c: math.sqrt(c.expected),
    "a fixed point of the length map without sigma_b²": _without_bias,
}


def check_chi1(fn: Callable, n_cases: int = 18, seed: int = 0) -> CheckResult:
    """Check ``fn(phi, dphi, sigma_w, sigma_b)`` returns ``chi_1 = sigma_w² E[phi'(sqrt(q*) z)²]``.

    ``phi`` and ``phi'`` are elementwise NumPy functions, ``q*`` the fixed point of the length
    map ``q -> sigma_w² E[phi(sqrt(q) z)²] + sigma_b²`` reached from ``q = 1``. The cases cycle
    through :data:`CHI1_ACTIVATIONS` with random ``sigma_w`` in [0.5, 2.5] and ``sigma_b`` in
    [0.05, 1]; the reference is :func:`gradlab.theory.gaussian_expectation` quadrature (relative
    tolerance 1e-6). A wrong answer is compared with :data:`CHI1_SLIPS` (to 1e-4, since the
    reader's fixed point may be looser than the reference's).
    """
    return run("chi1", fn, _chi1_case, n_cases, seed, rtol=1e-6, atol=1e-12, slips=CHI1_SLIPS,
               slip_rtol=1e-4)
