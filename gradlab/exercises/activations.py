"""Checker for "Activations": Klambauer et al.'s moment map of an arbitrary activation, against
the quadrature of :func:`gradlab.theory.moment_map`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import activations
from ..theory import _moment_map_callable
from .harness import Case, CheckResult, Slips, WrongForm, describe, run

ArrayFn = Callable[[np.ndarray], np.ndarray]
MEAN = "mu_new"
VAR = "nu_new"


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
"""The functions (with their kinks) the reader's moment map is tried on, cycled in this order.
softplus, sin and the logistic function are not activations of the registry."""

# A reader who integrates x -> phi(mu omega + x) without splitting at SELU's or ELU's kink (moved
# to -mu omega) is off by up to 7e-4 relative (measured on 400 random cases); every slip below is
# off by far more.
RTOL, ATOL = 2e-3, 2e-4


def _moment_map_case(g: torch.Generator, i: int) -> Case:
    """Case ``i``: the ``i``-th function of :data:`MOMENT_MAP_ACTIVATIONS` at a random ``mu`` in
    [-1, 1], ``nu`` in [0.2, 3], ``omega`` in [-1, 1] and ``tau`` in [0.5, 1.5]."""
    name = list(MOMENT_MAP_ACTIVATIONS)[i % len(MOMENT_MAP_ACTIVATIONS)]
    phi, kinks = MOMENT_MAP_ACTIVATIONS[name]
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    mu, nu, omega, tau = 2.0 * u[0] - 1.0, 0.2 + 2.8 * u[1], 2.0 * u[2] - 1.0, 0.5 + u[3]
    mean, var = _moment_map_callable(phi, mu, nu, omega, tau, kinks)
    return Case((phi, mu, nu, omega, tau), {MEAN: mean, VAR: var},
                describe(name, mu=mu, nu=nu, omega=omega, tau=tau), {"kinks": kinks})


def _observe(returned: Any, called: tuple, case: Case) -> dict[str, Any]:
    if not (isinstance(returned, tuple | list) and len(returned) == 2):
        raise WrongForm(f"returned {type(returned).__name__}; return the pair (mu_new, nu_new)")
    return {MEAN: returned[0], VAR: returned[1]}


def _moments(c: Case, shift: float, q: float) -> dict[str, float]:
    """The answer for ``z ~ N(shift, q)`` instead of ``N(mu omega, nu tau)``."""
    mean, var = _moment_map_callable(c.args[0], shift, 1.0, 1.0, q, c.data["kinks"])
    return {MEAN: mean, VAR: var}


def _shift(c: Case) -> float:
    return c.args[1] * c.args[3]


def _spread(c: Case) -> float:
    return c.args[2] * c.args[4]


MOMENT_MAP_SLIPS: Slips = {
    "the second moment E[phi(z)²] returned as nu_new: the variance subtracts mu_new²":
        lambda c: {VAR: c.expected[VAR] + c.expected[MEAN] ** 2},
    "nu tau used as the standard deviation of z: it is the variance (pass q = nu tau)":
        lambda c: _moments(c, _shift(c), _spread(c) ** 2),
    "mu used as the mean of z: it is mu omega": lambda c: _moments(c, c.args[1], _spread(c)),
    "nu used as the variance of z: it is nu tau": lambda c: _moments(c, _shift(c), c.args[2]),
    "the pair returned in the wrong order: (mu_new, nu_new)":
        lambda c: {MEAN: c.expected[VAR], VAR: c.expected[MEAN]},
    "the standard deviation returned as nu_new: nu_new is the variance":
        lambda c: {VAR: math.sqrt(c.expected[VAR])},
}


def check_moment_map(fn: Callable, n_cases: int = 24, seed: int = 0) -> CheckResult:
    """Check ``fn(phi, mu, nu, omega, tau) -> (mu_new, nu_new)``: the mean and the variance of
    ``phi(z)`` for ``z ~ N(mu omega, nu tau)`` (Klambauer et al. 2017).

    ``phi`` is an elementwise NumPy function. The cases cycle through
    :data:`MOMENT_MAP_ACTIVATIONS` at random ``(mu, nu, omega, tau)``; the reference is the
    quadrature of :func:`gradlab.theory.moment_map`, compared to a relative 2e-3 (absolute 2e-4),
    which accepts a quadrature that does not split at a kink. A wrong answer is compared with
    :data:`MOMENT_MAP_SLIPS`.
    """
    return run("moment_map", fn, _moment_map_case, n_cases, seed, rtol=RTOL, atol=ATOL,
               slips=MOMENT_MAP_SLIPS, observe=_observe, reference="gradlab.theory.moment_map")


__all__ = ["MOMENT_MAP_ACTIVATIONS", "MOMENT_MAP_SLIPS", "check_moment_map"]
