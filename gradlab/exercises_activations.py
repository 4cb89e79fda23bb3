"""Checker for the chapter "Activations": Klambauer et al.'s moment map of an arbitrary
activation, against the quadrature of :func:`gradlab.theory.moment_map`.

A case is drawn by :func:`_moment_map_case`; the known slips are the data :data:`MOMENT_MAP_SLIPS`
(the mistake in words -> the answer it gives), named in the message when the reader's answer
matches one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import activations
from ._validate import check_int
from .exercises import CheckResult
from .theory import _moment_map_callable

ArrayFn = Callable[[np.ndarray], np.ndarray]


def _np_softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _np_logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _from_registry(name: str) -> tuple[ArrayFn, tuple[float, ...]]:
    entry = activations.get(name)
    return entry.np_fn, entry.kinks


MOMENT_MAP_ACTIVATIONS: dict[str, tuple[ArrayFn, tuple[float, ...]]] = {
    "selu": _from_registry("selu"),
    "tanh": _from_registry("tanh"),
    "elu": _from_registry("elu"),
    "softplus": (_np_softplus, ()),
    "sin": (np.sin, ()),
    "logistic": (_np_logistic, ()),
}
"""The functions (with their kinks) the reader's moment map is tried on, cycled in this order."""

# A reader who integrates x -> phi(mu omega + x) without splitting at SELU's or ELU's kink (now
# at -mu omega) is off by up to 7e-4 relative (measured on 400 random cases); every slip below
# is off by far more.
RTOL, ATOL = 2e-3, 2e-4


def _moments(case: dict, *, shift: float, q: float) -> tuple[float, float]:
    """Mean and variance of phi(shift + sqrt(q) z0), z0 ~ N(0, 1)."""
    return _moment_map_callable(case["phi"], shift, 1.0, 1.0, q, case["kinks"])


def _second_moment(case: dict) -> tuple[float, float]:
    mean, var = case["expected"]
    return mean, var + mean**2


MOMENT_MAP_SLIPS: dict[str, Callable[[dict], tuple[float, float]]] = {
    "the second moment E[phi(z)²] returned as nu_new: the variance subtracts mu_new²": _second_moment,
    "nu tau used as the standard deviation of z: it is the variance (pass q = nu tau)":
        lambda c: _moments(c, shift=c["mu"] * c["omega"], q=(c["nu"] * c["tau"]) ** 2),
    "mu used as the mean of z: it is mu omega": lambda c: _moments(c, shift=c["mu"], q=c["nu"] * c["tau"]),
    "nu used as the variance of z: it is nu tau":
        lambda c: _moments(c, shift=c["mu"] * c["omega"], q=c["nu"]),
    "the pair returned in the wrong order: (mu_new, nu_new)": lambda c: c["expected"][::-1],
    "the standard deviation returned as nu_new: nu_new is the variance":
        lambda c: (c["expected"][0], math.sqrt(c["expected"][1])),
}


def _moment_map_case(g: torch.Generator, i: int) -> dict:
    """Case ``i``: the ``i``-th function of :data:`MOMENT_MAP_ACTIVATIONS` at a random
    ``mu`` in [-1, 1], ``nu`` in [0.2, 3], ``omega`` in [-1, 1] and ``tau`` in [0.5, 1.5]."""
    name = list(MOMENT_MAP_ACTIVATIONS)[i % len(MOMENT_MAP_ACTIVATIONS)]
    phi, kinks = MOMENT_MAP_ACTIVATIONS[name]
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    mu, nu, omega, tau = 2.0 * u[0] - 1.0, 0.2 + 2.8 * u[1], 2.0 * u[2] - 1.0, 0.5 + u[3]
    case = {"name": name, "phi": phi, "kinks": kinks, "mu": mu, "nu": nu, "omega": omega, "tau": tau}
    case["expected"] = _moment_map_callable(phi, mu, nu, omega, tau, kinks)
    return case


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(abs(x - y) <= ATOL + RTOL * abs(y) for x, y in zip(a, b, strict=True))


def check_moment_map(fn: Callable, n_cases: int = 24, seed: int = 0) -> CheckResult:
    """Check ``fn(phi, mu, nu, omega, tau)`` returns ``(mu_new, nu_new)``: the mean and the
    variance of ``phi(z)`` for ``z ~ N(mu omega, nu tau)`` (Klambauer et al. 2017).

    ``phi`` is an elementwise NumPy function. The cases cycle through
    :data:`MOMENT_MAP_ACTIVATIONS` at random ``(mu, nu, omega, tau)``; the reference is the
    quadrature of :func:`gradlab.theory.moment_map`, compared to a relative 2e-3 (absolute 2e-4).
    A wrong answer is compared with the known slips of :data:`MOMENT_MAP_SLIPS`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (the function to check), got {type(fn).__name__}")
    n_cases = check_int("n_cases", n_cases, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    for n in range(1, n_cases + 1):
        case = _moment_map_case(g, n - 1)
        where = (f"moment map: case {n} ({case['name']}, mu={case['mu']:.4g}, nu={case['nu']:.4g}, "
                 f"omega={case['omega']:.4g}, tau={case['tau']:.4g})")
        try:
            got = fn(case["phi"], case["mu"], case["nu"], case["omega"], case["tau"])
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"{where} raised {type(err).__name__}: {err}")
        try:
            got = tuple(float(v) for v in got)
        except (TypeError, ValueError):
            return CheckResult(False, n, f"{where} returned {type(got).__name__}, expected a pair "
                               "of numbers (mu_new, nu_new)")
        if len(got) != 2:
            return CheckResult(False, n, f"{where} returned {len(got)} values, expected 2 "
                               "(mu_new, nu_new)")
        expected = case["expected"]
        if not _close(got, expected):
            named = [slip for slip, answer in MOMENT_MAP_SLIPS.items()
                     if not _close(answer(case), expected) and _close(got, answer(case))]
            hint = f"\nThis looks like a known slip: {named[0]}." if named else ""
            return CheckResult(False, n, f"{where} is wrong.\nexpected (mu_new, nu_new) = "
                               f"({expected[0]:.4g}, {expected[1]:.4g})\nreturned "
                               f"({got[0]:.4g}, {got[1]:.4g}){hint}")
    return CheckResult(True, n_cases, f"moment map: all {n_cases} random cases match "
                       "gradlab.theory.moment_map.")


__all__ = ["MOMENT_MAP_ACTIVATIONS", "MOMENT_MAP_SLIPS", "check_moment_map"]
