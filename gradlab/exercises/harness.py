"""The one harness every checker uses.

A checker is data: a function ``make_case(g, i)`` that draws case ``i`` from the generator ``g``
(the reader's arguments, the reference answer, a label naming its parameters and shapes), the
tolerances, and a table of known slips. :func:`run` does the rest, the same way for every
checker: it validates ``fn``, ``n_cases`` and ``seed``, draws the cases, calls the reader's
function on fresh copies of the arguments, reports an exception instead of raising it, compares
the answer with the reference (type, shape, then values within ``rtol``/``atol``), and on the
first wrong case names it, shows both values to 4 significant digits, and names every known slip
whose answer it matches.

A slip table maps the mistake, in words, to a function of the :class:`Case` that returns the
answer the mistake gives (``None`` where it does not apply)::

    SLIPS = {"the transpose: rows index the outputs": lambda c: c.expected.T}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validate import check_int

# A rejected draw (``make_case`` returning None) is retried; this many failures in a row mean
# the case generator is broken, not unlucky.
_MAX_DRAWS = 1000


@dataclass
class CheckResult:
    """Outcome of a checker: ``passed``, how many ``cases`` ran, and a human ``message``."""

    passed: bool
    cases: int
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def assert_passed(self) -> CheckResult:
        """Return ``self`` if the check passed, else raise ``AssertionError`` with the message.

        The book's solution cells end with this, so a solution that stops passing its checker
        fails the build instead of printing a quiet cross.
        """
        if not self.passed:
            raise AssertionError(self.message)
        return self

    def __str__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        return ("✅ " if self.passed else "❌ ") + self.message


@dataclass(frozen=True)
class Case:
    """One random case; the reader's function is called as ``fn(*args)``.

    ``expected`` is the reference answer: a number, a tensor, ``None``, or a dict of named parts
    (``{"the returned norm": 3.2, "the gradient of parameter 0": tensor}``) compared in order.
    ``label`` names the case's parameters and shapes in a failure message (see :func:`describe`);
    ``data`` holds what the slip functions need besides ``args`` and ``expected``.
    """

    args: tuple
    expected: Any
    label: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


Slips = Mapping[str, Callable[[Case], Any]]
"""Known mistakes: the mistake in words -> the answer it gives on a case (``None``: not here).

For a dict answer a slip gives only the parts it changes. A slip is named when the reader's
answer matches it and it differs from the right answer."""


class WrongForm(Exception):
    """Raised by an ``observe`` function when an answer cannot be compared; the message is shown."""


def fmt(x: float) -> str:
    """A number to 4 significant digits, as every message prints numbers."""
    return f"{float(x):.4g}"


def describe(*words: str, **values: Any) -> str:
    """A case label: ``describe("tanh", sigma_w=1.23456, W=w)`` -> ``'tanh, sigma_w=1.235, W of
    shape (3, 3)'``. Tensors of one or more dimensions show their shape, numbers 4 digits."""
    parts = list(words)
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            parts.append(f"{name} of shape {tuple(value.shape)}")
        else:
            parts.append(f"{name}={_show(value)}")
    return ", ".join(parts)


def _show(value: Any) -> str:
    """A value in a label: a tensor by its shape (0-dim: its value), numbers to 4 digits."""
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)}" if value.ndim else fmt(value.item())
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, str | int) or (isinstance(value, list | tuple) and all(map(_is_shape, value))):
        return str(value)  # also a shape, or a list of shapes
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        inner = ", ".join(fmt(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return getattr(value, "__name__", type(value).__name__)


def _is_shape(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value))


def _short(t: torch.Tensor) -> str:
    """At most six entries, 4 significant digits; a 0-dim tensor prints as a number."""
    if t.ndim == 0:
        return fmt(t.item())
    flat = t.flatten()
    shown = "[" + ", ".join(fmt(v) for v in flat[:6].tolist()) + "]"
    return shown + (f" ... ({flat.numel()} entries)" if flat.numel() > 6 else "")


def _check_callable(name: str, fn: object) -> Callable:
    """Return ``fn`` if it is callable; a ``TypeError`` names the argument otherwise."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable (the function to check), got {type(fn).__name__}")
    return fn


def run(
    name: str,
    fn: Callable,
    make_case: Callable[[torch.Generator, int], Case | None],
    n_cases: int,
    seed: int,
    *,
    rtol: float,
    atol: float,
    part_atol: Mapping[str, float] | None = None,
    slips: Slips | None = None,
    slip_rtol: float | None = None,
    observe: Callable[[Any, tuple, Case], Any] | None = None,
    error_hints: Mapping[str, str] | None = None,
    reference: str = "",
) -> CheckResult:
    """Run ``fn`` on ``n_cases`` cases drawn by ``make_case(g, i)`` from a generator seeded
    with ``seed``, and compare each answer with the case's ``expected``.

    ``make_case`` returns ``None`` to reject a draw (it is called again with the same ``i``).
    ``observe(returned, called_args, case)`` turns what ``fn`` returned or did (to the fresh
    arguments it was called with) into the answer; by default the answer is the returned value.
    ``part_atol`` overrides ``atol`` for named parts of a dict answer; slips are matched with
    ``slip_rtol`` (default ``rtol``); ``error_hints`` maps text in the reader's exception to
    advice. ``reference`` completes the success message ("... match torch.optim.Adam.").
    """
    _check_callable("fn", fn)
    n_cases = check_int("n_cases", n_cases, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    return _run_cases(
        name, fn, _draw(make_case, n_cases, seed), rtol=rtol, atol=atol, part_atol=part_atol or {},
        slips=slips or {}, slip_rtol=rtol if slip_rtol is None else slip_rtol, observe=observe,
        error_hints=error_hints or {}, reference=reference,
    )


def _draw(make_case: Callable[[torch.Generator, int], Case | None], n_cases: int,
          seed: int) -> Iterator[Case]:
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        for _ in range(_MAX_DRAWS):
            case = make_case(g, i)
            if case is not None:
                break
        else:
            raise RuntimeError(f"{_MAX_DRAWS} draws of case {i} were all rejected")
        yield case


def check_function(
    candidate: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    *,
    name: str,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> CheckResult:
    """Call ``candidate(*case)`` and ``reference(*case)`` on every case and compare.

    The result's message names the first failing case (its arguments' values or shapes), the
    expected and the returned value, or the exception the candidate raised. ``cases`` must hold
    at least one case: a check of nothing would pass without meaning anything.
    """
    _check_callable("candidate", candidate)
    _check_callable("reference", reference)
    made = (Case(tuple(args), reference(*args), describe(*map(_show, args))) for args in cases)
    return _run_cases(name, candidate, made, rtol=rtol, atol=atol, part_atol={}, slips={},
                      slip_rtol=rtol, observe=None, error_hints={}, reference="")


def _run_cases(name, fn, cases, *, rtol, atol, part_atol, slips, slip_rtol, observe, error_hints,
               reference) -> CheckResult:
    n = 0
    for n, case in enumerate(cases, start=1):
        where = f"{name}: case {n}" + (f" ({case.label})" if case.label else "")
        args = _fresh(case.args)  # the reader may modify its arguments; the case stays intact
        try:
            returned = fn(*args)
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"{where} raised {type(err).__name__}: {err}"
                               f"{_error_hint(err, error_hints)}")
        try:
            answer = observe(returned, args, case) if observe else returned
        except WrongForm as err:
            return CheckResult(False, n, f"{where}: {err}")
        problem = _problem(answer, case.expected, rtol, atol, part_atol)
        if problem is not None:
            hint = _slip_hint(answer, case, slips, slip_rtol, atol, part_atol)
            return CheckResult(False, n, f"{where}{problem}{hint}")
    if n == 0:
        raise ValueError("cases must hold at least one case")
    against = f" {reference}" if reference else ""
    return CheckResult(True, n, f"{name}: all {n} random cases match{against}.")


def _fresh(x: Any) -> Any:
    """A copy of the tensors, parameters (with their ``.grad``) and modules in ``x``."""
    if isinstance(x, torch.Tensor):
        y = x.detach().clone()
        if isinstance(x, nn.Parameter):
            y = nn.Parameter(y, requires_grad=x.requires_grad)
        elif x.requires_grad:
            y.requires_grad_()
        if x.is_leaf and x.grad is not None:
            y.grad = x.grad.detach().clone()
        return y
    if isinstance(x, nn.Module):
        return copy.deepcopy(x)
    if isinstance(x, list | tuple):
        return type(x)(_fresh(v) for v in x)
    if isinstance(x, dict):
        return {k: _fresh(v) for k, v in x.items()}
    return x


def _error_hint(err: Exception, hints: Mapping[str, str]) -> str:
    text = f"{type(err).__name__}: {err}"
    return next((f"\nHint: {hint}" for key, hint in hints.items() if key in text), "")


def as_float64(value: Any) -> torch.Tensor:
    """``value`` (a number, tensor, array or list) as a detached float64 tensor.

    Raises ``TypeError``/``ValueError``/``RuntimeError`` when it is none of those."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError("complex tensor")
        return value.detach().to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def _convert(got: Any, expected: torch.Tensor) -> torch.Tensor | None:
    try:
        t = as_float64(got)
    except (TypeError, ValueError, RuntimeError):
        return None
    if expected.ndim == 0 and t.numel() == 1:  # a one-entry tensor is accepted as a number
        t = t.reshape(())
    return t


def _kind(expected: torch.Tensor) -> str:
    return "a number" if expected.ndim == 0 else f"a tensor of shape {tuple(expected.shape)}"


def _problem(answer: Any, expected: Any, rtol: float, atol: float,
             part_atol: Mapping[str, float]) -> str | None:
    """What is wrong with ``answer``, phrased to follow the case's name; None when it is right."""
    if isinstance(expected, Mapping):
        for part, value in expected.items():
            got = answer.get(part) if isinstance(answer, Mapping) else None
            problem = _leaf_problem(got, value, rtol, part_atol.get(part, atol), part)
            if problem is not None:
                return problem
        return None
    return _leaf_problem(answer, expected, rtol, atol, None)


def _leaf_problem(got: Any, expected: Any, rtol: float, atol: float, part: str | None) -> str | None:
    def said(what: str) -> str:  # "case 2 returned str" or "case 2: the returned m is str"
        return f" returned {what}" if part is None else f": {part} is {what}"

    if expected is None:
        return None if got is None else said(f"{type(got).__name__}, expected None")
    want = as_float64(expected)
    have = _convert(got, want)
    if have is None:
        return said(f"{type(got).__name__}, expected {_kind(want)}")
    if have.shape != want.shape:
        shapes = f"shape {tuple(have.shape)}, expected {tuple(want.shape)}"
        return f" returned {shapes}" if part is None else f": {part} has {shapes}"
    if torch.allclose(have, want, rtol=rtol, atol=atol):
        return None
    error = (have - want).abs().max().item()
    subject = "" if part is None else f": {part}"
    return (f"{subject} is wrong (largest error {fmt(error)}).\nexpected: {_short(want)}\n"
            f"returned: {_short(have)}")


def _close(got: Any, value: Any, rtol: float, atol: float) -> bool:
    if value is None or got is None:
        return value is None and got is None
    want = as_float64(value)
    have = _convert(got, want)
    return have is not None and have.shape == want.shape and torch.allclose(have, want, rtol=rtol, atol=atol)


def _matches(answer: Any, value: Any, rtol: float, atol: float, part_atol: Mapping[str, float]) -> bool:
    if isinstance(value, Mapping):
        if not isinstance(answer, Mapping):
            return False
        return all(_close(answer.get(k), v, rtol, part_atol.get(k, atol)) for k, v in value.items())
    return _close(answer, value, rtol, atol)


def _slip_hint(answer: Any, case: Case, slips: Slips, rtol: float, atol: float,
               part_atol: Mapping[str, float]) -> str:
    """Name every known slip whose answer the reader's answer matches."""
    named = []
    for slip, wrong in slips.items():
        value = wrong(case)
        if value is None or _matches(case.expected, value, rtol, atol, part_atol):
            continue  # not applicable here, or indistinguishable from the right answer
        if _matches(answer, value, rtol, atol, part_atol):
            named.append(slip)
    if not named:
        return ""
    if len(named) == 1:
        return f"\nKnown slip: {named[0]}."
    return "\nKnown slips that give this answer here: " + "; or ".join(named) + "."


__all__ = ["Case", "CheckResult", "Slips", "WrongForm", "as_float64", "check_function", "describe",
           "fmt", "run"]
