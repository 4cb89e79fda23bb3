"""Checkers for the exercises: they run the reader's function on random cases and say what
is wrong, comparing with a reference (autograd or a gradlab function)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch


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

    The result's message names the first failing case, the expected and the returned value,
    or the exception the candidate raised.
    """
    if not callable(candidate):
        raise TypeError(f"the function to check must be callable, got {type(candidate).__name__}")
    n = 0
    for n, case in enumerate(cases, start=1):
        expected = torch.as_tensor(reference(*case), dtype=torch.float64)
        try:
            got = candidate(*case)
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"{name}: case {n} raised {type(err).__name__}: {err}")
        try:
            got = torch.as_tensor(got, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return CheckResult(
                False, n, f"{name}: case {n} returned {type(got).__name__}, expected a number "
                "or tensor"
            )
        if got.shape != expected.shape:
            return CheckResult(
                False, n, f"{name}: case {n} returned shape {tuple(got.shape)}, expected "
                f"{tuple(expected.shape)}"
            )
        if not torch.allclose(got, expected, rtol=rtol, atol=atol):
            worst = (got - expected).abs().max().item()
            return CheckResult(
                False,
                n,
                f"{name}: case {n} is wrong (largest error {worst:.3g}).\n"
                f"expected: {_short(expected)}\nreturned: {_short(got)}",
            )
    return CheckResult(True, n, f"{name}: all {n} random cases match.")


def _short(t: torch.Tensor) -> str:
    return str(t.flatten()[:6].tolist()) + (" ..." if t.numel() > 6 else "")


# ---------------------------------------------------------------------------------------------
# Chapter 1: the chain rule through a scalar network
# ---------------------------------------------------------------------------------------------


def _scalar_chain_cases(n_cases: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_cases):
        depth = int(torch.randint(1, 12, (1,), generator=g))
        weights = (torch.randn(depth, generator=g, dtype=torch.float64) * 1.5).tolist()
        x = float(torch.randn((), generator=g, dtype=torch.float64))
        yield weights, x


def _scalar_chain_reference(weights: list[float], x: float) -> float:
    h = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = h
    for a in weights:
        out = torch.tanh(a * out)
    (grad,) = torch.autograd.grad(out, h)
    return float(grad)


def check_scalar_chain_gradient(fn: Callable, n_cases: int = 50, seed: int = 0) -> CheckResult:
    """Check ``fn(weights, x)`` returns ``d h_L / d h_0`` for ``h_l = tanh(a_l h_{l-1})``,
    ``h_0 = x``, against autograd, on random depths, weights and inputs."""
    return check_function(
        fn, _scalar_chain_reference, _scalar_chain_cases(n_cases, seed),
        name="scalar chain gradient", rtol=1e-6, atol=1e-10,
    )


# ---------------------------------------------------------------------------------------------
# Chapter 2: the Jacobian of one layer
# ---------------------------------------------------------------------------------------------

_LAYER_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")


def _layer_cases(n_cases: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        n_in, n_out = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
        w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
        b = torch.randn(n_out, generator=g, dtype=torch.float64)
        x = torch.randn(n_in, generator=g, dtype=torch.float64)
        yield w, b, x, _LAYER_ACTIVATIONS[i % len(_LAYER_ACTIVATIONS)]


def _layer_reference(w, b, x, activation):
    from .activations import apply

    return torch.autograd.functional.jacobian(lambda v: apply(activation, w @ v + b), x)


def check_layer_jacobian(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(W, b, x, activation)`` returns the Jacobian of ``phi(W x + b)`` with respect
    to ``x`` (shape ``out x in``) for ``activation`` in linear/relu/tanh/sigmoid, against
    ``torch.autograd.functional.jacobian``."""
    return check_function(
        fn, _layer_reference, _layer_cases(n_cases, seed), name="layer Jacobian", rtol=1e-6,
        atol=1e-9,
    )


# ---------------------------------------------------------------------------------------------
# Chapter "Gradient clipping": global-norm clipping from scratch
# ---------------------------------------------------------------------------------------------


def _clip_cases(n_cases: int, seed: int):
    """Random parameter lists: shapes, scales, a gradient that is None, a zero gradient."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        n = int(torch.randint(1, 5, (1,), generator=g))
        params = []
        for k in range(n):
            ndim = int(torch.randint(0, 3, (1,), generator=g))  # 0-dim tensors included
            shape = tuple(torch.randint(1, 5, (ndim,), generator=g).tolist())
            p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
            scale = 10.0 ** float(torch.randint(-2, 3, (1,), generator=g))
            if i % 5 == 4 and k == 0:
                p.grad = None
            elif i % 7 == 6:
                p.grad = torch.zeros(shape, dtype=torch.float64)
            else:
                p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * scale
            params.append(p)
        max_norm = float(10.0 ** torch.empty(1).uniform_(-1, 1, generator=g))
        yield params, max_norm


def check_clip_grad_norm(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(parameters, max_norm)``: it must rescale every ``p.grad`` in place to
    ``g * min(1, max_norm / (N + 1e-6))``, with ``N`` the 2-norm of all gradients together
    (parameters whose ``.grad`` is None skipped), and return ``N``; compared with
    ``torch.nn.utils.clip_grad_norm_`` on random lists of parameters."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n = 0
    for n, (params, max_norm) in enumerate(_clip_cases(n_cases, seed), start=1):
        copies = []
        for p in params:
            q = torch.nn.Parameter(p.detach().clone())
            q.grad = None if p.grad is None else p.grad.clone()
            copies.append(q)
        expected = torch.nn.utils.clip_grad_norm_(copies, max_norm)
        shapes = [tuple(p.shape) for p in params]
        try:
            got = fn(params, max_norm)
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"clip_grad_norm: case {n} (shapes {shapes}) raised "
                               f"{type(err).__name__}: {err}")
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError):
            return CheckResult(False, n, f"clip_grad_norm: case {n} returned {type(got).__name__}; "
                               "return the total norm before clipping, a number")
        if abs(got - float(expected)) > 1e-6 * (1 + float(expected)):
            return CheckResult(False, n, f"clip_grad_norm: case {n} (shapes {shapes}) returned "
                               f"norm {got:.6g}, expected {float(expected):.6g} (the norm before "
                               "clipping, of all gradients together)")
        for k, (p, q) in enumerate(zip(params, copies, strict=True)):
            if q.grad is None:
                if p.grad is not None:
                    return CheckResult(False, n, f"clip_grad_norm: case {n}: parameter {k} had no "
                                       "gradient and should still have none")
                continue
            if p.grad is None or not torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-10):
                return CheckResult(False, n, f"clip_grad_norm: case {n} (max_norm {max_norm:.3g}, "
                                   f"shapes {shapes}): the gradient of parameter {k} is wrong.\n"
                                   f"expected: {_short(q.grad)}\nfound:    "
                                   f"{_short(p.grad) if p.grad is not None else None}")
    return CheckResult(True, n, f"clip_grad_norm: all {n} random cases match torch.")


# ---------------------------------------------------------------------------------------------
# Chapter "Learning rate, schedules and warm-up": the stability threshold and Hessian products
# ---------------------------------------------------------------------------------------------


def _spd_cases(n_cases: int, seed: int):
    """Random symmetric positive semi-definite matrices with spectra spanning four decades."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        n = int(torch.randint(1, 9, (1,), generator=g))
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        eigenvalues = 10.0 ** torch.empty(n, dtype=torch.float64).uniform_(-2, 2, generator=g)
        if i % 4 == 3 and n > 1:  # singular: a flat direction must not matter
            eigenvalues[0] = 0.0
        a = q @ torch.diag(eigenvalues) @ q.T
        yield ((a + a.T) / 2,)


def check_max_stable_lr(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(A)`` returns ``2 / λ_max(A)``, the largest learning rate for which gradient
    descent on ``f(x) = ½ xᵀAx`` does not diverge, for random symmetric positive semi-definite
    ``A`` (float64, sizes 1 to 8), to relative accuracy 1e-4 (power iteration is fine).

    A wrong answer is compared with the usual slips (``1/λ_max``, ``2/λ_min``, ``2/trace``,
    ``2/max|A_ij|``) and the message names the one it matches."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n = 0
    for n, (a,) in enumerate(_spd_cases(n_cases, seed), start=1):
        eigenvalues = torch.linalg.eigvalsh(a)
        expected = 2.0 / float(eigenvalues[-1])
        try:
            got = fn(a.clone())
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"max stable lr: case {n} ({a.shape[0]}x{a.shape[0]}) "
                               f"raised {type(err).__name__}: {err}")
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError):
            return CheckResult(False, n, f"max stable lr: case {n} returned {type(got).__name__}; "
                               "return one number, the learning rate")
        if abs(got - expected) <= 1e-4 * expected:
            continue
        positive = eigenvalues[eigenvalues > 1e-12]
        slips = {
            "1/λ_max (the threshold has a factor 2: 1 - ηλ may reach -1)": 1.0 / float(eigenvalues[-1]),
            "2/λ_min (the smallest nonzero eigenvalue; the largest one limits the step)":
                2.0 / float(positive[0]),
            "2/trace(A) (the sum of all eigenvalues, not the largest)": 2.0 / float(a.trace()),
            "2/max|A_ij| (a matrix entry, not an eigenvalue)": 2.0 / float(a.abs().max()),
        }
        hint = next((f"\nIt equals {k}." for k, v in slips.items() if abs(got - v) <= 1e-4 * abs(v)), "")
        return CheckResult(False, n, f"max stable lr: case {n} ({a.shape[0]}x{a.shape[0]}, "
                           f"λ_max = {float(eigenvalues[-1]):.4g}) returned {got:.6g}, expected "
                           f"2/λ_max = {expected:.6g}.{hint}")
    return CheckResult(True, n, f"max stable lr: all {n} random matrices give 2/λ_max.")


def _hvp_functions(g: torch.Generator, n: int):
    """Smooth scalar test functions of x in R^n, with random coefficients."""
    w = torch.randn(3, n, generator=g, dtype=torch.float64)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return [
        ("½ xᵀAx + bᵀx", lambda x: 0.5 * x @ (a @ x) + b @ x),
        ("sum tanh(Wx)", lambda x: torch.tanh(w @ x).sum()),
        ("logsumexp(Wx)", lambda x: torch.logsumexp(w @ x, 0)),
        ("½‖tanh(Wx)‖² + (bᵀx)³/6", lambda x: 0.5 * (torch.tanh(w @ x) ** 2).sum() + (b @ x) ** 3 / 6),
    ]


def check_hvp(fn: Callable, n_cases: int = 24, seed: int = 0) -> CheckResult:
    """Check ``fn(f, x, v)`` returns the Hessian-vector product ``∇²f(x) v`` of a scalar
    function ``f`` of a 1-D tensor ``x`` (float64; ``x`` does not require grad), against
    ``torch.autograd.functional.hvp``, on random quadratics, tanh and log-sum-exp functions."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    g = torch.Generator().manual_seed(seed)
    k = 0
    while k < n_cases:
        n_dim = int(torch.randint(1, 7, (1,), generator=g))
        for label, f in _hvp_functions(g, n_dim):
            if k == n_cases:
                break
            k += 1
            x = torch.randn(n_dim, generator=g, dtype=torch.float64)
            v = torch.randn(n_dim, generator=g, dtype=torch.float64)
            _, expected = torch.autograd.functional.hvp(f, x, v)
            try:
                got = fn(f, x.clone(), v.clone())
            except Exception as err:  # the reader's bug, reported rather than raised
                hint = ""
                if "does not require grad" in str(err):
                    hint = ("\nHint: differentiate with respect to a copy that requires grad, "
                            "x = x.detach().requires_grad_(), and keep the first gradient's graph "
                            "with torch.autograd.grad(..., create_graph=True).")
                return CheckResult(False, k, f"hvp: case {k} (f = {label}, n = {n_dim}) raised "
                                   f"{type(err).__name__}: {err}{hint}")
            try:
                got = torch.as_tensor(got, dtype=torch.float64).detach()
            except (TypeError, ValueError, RuntimeError):
                return CheckResult(False, k, f"hvp: case {k} returned {type(got).__name__}, "
                                   "expected a tensor shaped like x")
            if got.shape != expected.shape:
                return CheckResult(False, k, f"hvp: case {k} (f = {label}) returned shape "
                                   f"{tuple(got.shape)}, expected {tuple(expected.shape)} (like x)")
            if torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
                continue
            xg = x.clone().requires_grad_()
            (grad,) = torch.autograd.grad(f(xg), xg)
            hint = ""
            if torch.allclose(got, grad, rtol=1e-6, atol=1e-9):
                hint = "\nIt equals the gradient ∇f(x): differentiate ∇f(x)·v once more."
            elif torch.allclose(got, grad * v, rtol=1e-6, atol=1e-9):
                hint = "\nIt equals ∇f(x) * v entrywise: the Hessian product needs a second derivative."
            return CheckResult(False, k, f"hvp: case {k} (f = {label}, n = {n_dim}) is wrong.\n"
                               f"expected: {_short(expected)}\nreturned: {_short(got)}{hint}")
    return CheckResult(True, k, f"hvp: all {k} random cases match torch.autograd.functional.hvp.")


# ---------------------------------------------------------------------------------------------
# Chapter 4: backpropagation through time
# ---------------------------------------------------------------------------------------------


def _tanh_rnn_case(g: torch.Generator):
    """A random tanh recurrence ``h_k = tanh(W h_{k-1} + c_k)``: returns W, the drives c_k and
    the states ``h_0, ..., h_T`` as rows."""
    n = int(torch.randint(1, 6, (1,), generator=g))
    steps = int(torch.randint(1, 9, (1,), generator=g))
    scale = 0.5 + 1.5 * float(torch.rand((), generator=g))  # spectral radius about 0.5 to 2
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * scale / n**0.5
    drives = 0.5 * torch.randn(steps, n, generator=g, dtype=torch.float64)
    hs = [0.5 * torch.randn(n, generator=g, dtype=torch.float64)]
    for c in drives:
        hs.append(torch.tanh(W @ hs[-1] + c))
    return W, drives, torch.stack(hs)


def _bptt_cases(n_cases: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n_cases):
        W, drives, hs = _tanh_rnn_case(g)
        steps = drives.shape[0]
        t = int(torch.randint(0, steps + 1, (1,), generator=g))

        def run(h, W=W, drives=drives, t=t):
            for c in drives[t:]:
                h = torch.tanh(W @ h + c)
            return h

        expected = torch.autograd.functional.jacobian(run, hs[t].clone())
        cases.append((W, hs, t, expected))
    return cases


def _bptt_hint(fn: Callable, W: torch.Tensor, hs: torch.Tensor, t: int, expected: torch.Tensor) -> str:
    """Name a common mistake if the candidate's answer matches one."""
    try:
        got = torch.as_tensor(fn(W.clone(), hs.clone(), t), dtype=torch.float64)
    except Exception:  # already reported by check_function
        return ""
    if got.shape != expected.shape:
        return ""
    T = hs.shape[0] - 1
    n = W.shape[0]

    def product(slope_rows, left_to_right):
        out = torch.eye(n, dtype=torch.float64)
        for k in slope_rows:
            factor = (1.0 - hs[k] ** 2)[:, None] * W
            out = out @ factor if left_to_right else factor @ out
        return out

    variants = {
        "your answer is the transpose of d h_T / d h_t (rows should index h_T, columns h_t)":
            expected.T,
        "the factors are multiplied in the wrong order: the factor of step T must stand on the "
        "left, d h_T/d h_t = D_T W D_{T-1} W ... D_{t+1} W":
            product(range(t + 1, T + 1), left_to_right=True),
        "the slopes are off by one step: the factor of step k uses phi'(a_k) = 1 - h_k**2, "
        "the state it produces, not h_{k-1}":
            product(range(t, T), left_to_right=False),
        "the slopes multiply the columns: diag(phi'(a_k)) W scales the rows of W "
        "(slope[:, None] * W), not its columns":
            _column_variant(W, hs, t),
    }
    for hint, value in variants.items():
        if torch.allclose(got, value, rtol=1e-6, atol=1e-9) and not torch.allclose(
            value, expected, rtol=1e-6, atol=1e-9
        ):
            return "\nHint: " + hint + "."
    return ""


def _column_variant(W: torch.Tensor, hs: torch.Tensor, t: int) -> torch.Tensor:
    out = torch.eye(W.shape[0], dtype=torch.float64)
    for k in range(t + 1, hs.shape[0]):
        out = (W * (1.0 - hs[k] ** 2)[None, :]) @ out
    return out


def check_bptt_jacobian(fn: Callable, n_cases: int = 40, seed: int = 0) -> CheckResult:
    """Check ``fn(W, hs, t)`` returns ``d h_T / d h_t`` (an ``n x n`` tensor) for the tanh
    recurrence ``h_k = tanh(W h_{k-1} + U x_k + b)``, given ``W`` (``n x n``), the states
    ``hs`` (rows ``h_0, ..., h_T``) and ``0 <= t <= T``.

    The reference is autograd on the recurrence that produced ``hs``; random sizes, lengths,
    lags and scales of ``W``. A failure names the case, and a common mistake if it matches one.
    """
    n_cases = _check_count(n_cases)
    cases = _bptt_cases(n_cases, seed)
    expected = {id(hs): value for _, hs, _, value in cases}
    result = check_function(
        fn, lambda W, hs, t: expected[id(hs)], [(W, hs, t) for W, hs, t, _ in cases],
        name="BPTT Jacobian", rtol=1e-6, atol=1e-9,
    )
    if not result.passed:
        W, hs, t, value = cases[result.cases - 1]
        result.message += _bptt_hint(fn, W, hs, t, value)
    return result


def _check_count(n_cases: object) -> int:
    from ._validate import check_int

    return check_int("n_cases", n_cases, minimum=1)


# ---------------------------------------------------------------------------------------------
# Chapter 3: signal propagation at initialization
# ---------------------------------------------------------------------------------------------


def _np_erf(x: np.ndarray) -> np.ndarray:
    return torch.erf(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _np_logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# Activations the reader's chi_1 is tried on, as (phi, phi') NumPy pairs; several are not in
# gradlab.theory, so a solution cannot just call gradlab.theory.chi1.
CHI1_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "erf": (_np_erf, lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-(x**2))),
    "sin": (np.sin, np.cos),
    "softplus": (lambda x: np.logaddexp(0.0, x), _np_logistic),
    "swish": (
        lambda x: x * _np_logistic(x),
        lambda x: _np_logistic(x) + x * _np_logistic(x) * (1.0 - _np_logistic(x)),
    ),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
}


def _chi1_cases(n_cases: int, seed: int):
    """Random (name, phi, dphi, sigma_w, sigma_b) with a fixed point that iteration from q = 1
    reaches quickly (contraction <= 0.8), so a plain loop of a few hundred steps converges."""
    from .theory import _q_star_callable, gaussian_expectation

    g = torch.Generator().manual_seed(seed)
    names = list(CHI1_ACTIVATIONS)
    made = 0
    while made < n_cases:
        name = names[made % len(names)]
        phi, dphi = CHI1_ACTIVATIONS[name]
        sigma_w, sigma_b = (float(v) for v in torch.rand(2, generator=g, dtype=torch.float64))
        sigma_w, sigma_b = 0.5 + 2.0 * sigma_w, 0.05 + 0.95 * sigma_b
        try:
            q = _q_star_callable(phi, sigma_w, sigma_b, 1.0, name)
        except ValueError:
            continue
        h = 1e-4 * q
        slope = sigma_w**2 * (
            gaussian_expectation(lambda x, f=phi: f(x) ** 2, q + h)
            - gaussian_expectation(lambda x, f=phi: f(x) ** 2, q - h)
        ) / (2.0 * h)
        if q > 50.0 or slope > 0.8:
            continue
        made += 1
        yield name, phi, dphi, sigma_w, sigma_b, q


def _chi1_hint(got: float, phi, dphi, sigma_w: float, sigma_b: float, q: float) -> str:
    """Name the usual mistake when the reader's value matches it."""
    from .theory import _q_star_callable, gaussian_expectation

    def e(f, at):
        return gaussian_expectation(f, at)

    def close(a: float) -> bool:
        return math.isclose(got, a, rel_tol=1e-4, abs_tol=1e-10)

    chi = sigma_w**2 * e(lambda x: dphi(x) ** 2, q)
    if close(sigma_w**2 * e(lambda x: dphi(x) ** 2, 1.0)):
        return "It matches chi_1 at q = 1: iterate the length map to its fixed point q* first."
    if close(e(lambda x: dphi(x) ** 2, q)):
        return "It is E[phi'(sqrt(q*) z)²] without the factor sigma_w²."
    if close(sigma_w**2 * e(dphi, q)):
        return "It uses E[phi'] where chi_1 needs E[phi'²]."
    if close(math.sqrt(chi)):
        return "It is sqrt(chi_1), the factor on the gradient's norm; chi_1 is the squared one."
    try:
        q_nobias = _q_star_callable(phi, sigma_w, 0.0, 1.0, "")
        if close(sigma_w**2 * e(lambda x: dphi(x) ** 2, q_nobias)):
            return "Its fixed point leaves out sigma_b² in the length map."
    except ValueError:
        pass
    return f"The fixed point here is q* = {q:.6g}; compare yours."


def check_chi1(fn: Callable, n_cases: int = 18, seed: int = 0) -> CheckResult:
    """Check ``fn(phi, dphi, sigma_w, sigma_b)`` returns ``chi_1 = sigma_w² E[phi'(sqrt(q*) z)²]``.

    ``phi`` and ``phi'`` are elementwise NumPy functions, ``q*`` the fixed point of the length
    map ``q -> sigma_w² E[phi(sqrt(q) z)²] + sigma_b²`` reached from ``q = 1``. The cases cycle
    through tanh, erf, sin, softplus, swish and relu with random ``sigma_w`` in [0.5, 2.5] and
    ``sigma_b`` in [0.05, 1]; the reference is :func:`gradlab.theory.gaussian_expectation`
    quadrature (relative tolerance 1e-6). A wrong answer comes with the likely mistake.
    """
    from ._validate import check_int
    from .theory import _chi1_callable

    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n_cases = check_int("n_cases", n_cases, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    for n, (name, phi, dphi, sigma_w, sigma_b, q) in enumerate(_chi1_cases(n_cases, seed), start=1):
        case = f"case {n} ({name}, sigma_w={sigma_w:.4f}, sigma_b={sigma_b:.4f})"
        expected = _chi1_callable(phi, dphi, sigma_w, sigma_b)
        try:
            got = fn(phi, dphi, sigma_w, sigma_b)
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"chi1: {case} raised {type(err).__name__}: {err}")
        try:
            got = float(got)
        except (TypeError, ValueError):
            return CheckResult(
                False, n, f"chi1: {case} returned {type(got).__name__}, expected a number"
            )
        if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
            hint = _chi1_hint(got, phi, dphi, sigma_w, sigma_b, q)
            return CheckResult(
                False, n, f"chi1: {case} returned {got:.8g}, expected {expected:.8g}. {hint}"
            )
    return CheckResult(True, n_cases, f"chi1: all {n_cases} random cases match.")


# ---------------------------------------------------------------------------------------------
# Chapter "Optimizer choice": one Adam update from scratch
# ---------------------------------------------------------------------------------------------


def _adam_cases(n_cases: int, seed: int):
    """Random shapes and hyper-parameters; gradients from 1e-10 (where ε matters) to 1e6."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        ndim = int(torch.randint(1, 3, (1,), generator=g))
        shape = tuple(torch.randint(1, 6, (ndim,), generator=g).tolist())
        lr = float(10.0 ** torch.empty(1).uniform_(-4, -1, generator=g))
        beta1 = float(torch.empty(1).uniform_(0.5, 0.95, generator=g))
        beta2 = float(torch.empty(1).uniform_(0.9, 0.9999, generator=g))
        eps = float(10.0 ** torch.empty(1).uniform_(-8, -2, generator=g))
        steps = int(torch.randint(1, 7, (1,), generator=g))
        # Every third case has gradients far below sqrt(eps), so eps decides the step.
        low, high = (-10.0, -6.0) if i % 3 == 2 else (-3.0, 6.0)
        scale = 10.0 ** torch.empty(steps, dtype=torch.float64).uniform_(low, high, generator=g)
        grads = [torch.randn(shape, generator=g, dtype=torch.float64) * s for s in scale]
        theta = torch.randn(shape, generator=g, dtype=torch.float64)
        yield theta, grads, lr, beta1, beta2, eps


def _adam_variants(theta, grad, m, v, t, lr, beta1, beta2, eps) -> dict[str, torch.Tensor]:
    """The new ``theta`` under the usual slips, to name the one a wrong answer matches."""
    m1 = beta1 * m + (1 - beta1) * grad
    v1 = beta2 * v + (1 - beta2) * grad**2
    mh, vh = m1 / (1 - beta1**t), v1 / (1 - beta2**t)
    return {
        "Adam without bias correction (divide m by 1 - beta1**t and v by 1 - beta2**t)":
            theta - lr * m1 / (v1.sqrt() + eps),
        "eps inside the square root (Adam divides by sqrt(v_hat) + eps)":
            theta - lr * mh / (vh + eps).sqrt(),
        "a step along +gradient (the update must be subtracted)": theta + lr * mh / (vh.sqrt() + eps),
        "bias correction with t + 1 (t is already the number of this step, 1 at the first)":
            theta - lr * (m1 / (1 - beta1 ** (t + 1))) / ((v1 / (1 - beta2 ** (t + 1))).sqrt() + eps),
        "the raw gradient in place of m_hat (the numerator is the first moment)":
            theta - lr * grad / (vh.sqrt() + eps),
    }


def check_adam_step(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(theta, grad, m, v, t, lr, beta1, beta2, eps) -> (theta, m, v)``, one Adam
    update (Kingma & Ba 2015) with ``t`` the number of the step (1 at the first):

        m ← β1 m + (1-β1) g,   v ← β2 v + (1-β2) g²,
        θ ← θ - lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps),

    against ``torch.optim.Adam`` run on a copy of ``theta`` (float64), for random shapes,
    hyper-parameters and sequences of 1 to 6 gradients from 1e-10 to 1e6. At every step the
    reader's function gets torch's current state, so one slip is reported where it happens; the
    message names the quantity that is wrong and, where it matches one, the usual slip."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    n = 0
    for n, (theta0, grads, lr, beta1, beta2, eps) in enumerate(_adam_cases(n_cases, seed), start=1):
        p = torch.nn.Parameter(theta0.clone())
        opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
        m = torch.zeros_like(theta0)
        v = torch.zeros_like(theta0)
        where = (f"adam step: case {n} (shape {tuple(theta0.shape)}, lr={lr:.3g}, "
                 f"betas=({beta1:.3f}, {beta2:.4f}), eps={eps:.2g})")
        for t, grad in enumerate(grads, start=1):
            theta = p.detach().clone()
            args = (theta.clone(), grad.clone(), m.clone(), v.clone(), t, lr, beta1, beta2, eps)
            try:
                got = fn(*args)
            except Exception as err:  # the reader's bug, reported rather than raised
                return CheckResult(False, n, f"{where}, step t={t} raised {type(err).__name__}: {err}")
            p.grad = grad.clone()
            opt.step()
            expected = (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
            if not (isinstance(got, tuple | list) and len(got) == 3):
                return CheckResult(False, n, f"{where}: returned {type(got).__name__}; return the "
                                   "three new tensors (theta, m, v)")
            try:
                got = [torch.as_tensor(x, dtype=torch.float64) for x in got]
            except (TypeError, ValueError, RuntimeError):
                return CheckResult(False, n, f"{where}: (theta, m, v) must be tensors")
            for name, a, b in zip(("m", "v"), got[1:], expected[1:], strict=True):
                if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-6, atol=0.0):
                    hint = {"m": "m = beta1*m + (1-beta1)*grad, before any bias correction",
                            "v": "v = beta2*v + (1-beta2)*grad**2, before any bias correction"}[name]
                    return CheckResult(False, n, f"{where}, step t={t}: the returned {name} is "
                                       f"wrong; it should be {hint}.\nexpected: {_short(b)}\n"
                                       f"returned: {_short(a)}")
            step_got, step_expected = got[0] - theta, expected[0] - theta
            if got[0].shape != theta.shape or not torch.allclose(step_got, step_expected,
                                                                 rtol=1e-6, atol=1e-14):
                hint = ""
                for slip, value in _adam_variants(*args).items():
                    if torch.allclose(got[0] - theta, value - theta, rtol=1e-6, atol=1e-14):
                        hint = f"\nIt matches {slip}."
                        break
                return CheckResult(False, n, f"{where}, step t={t}: theta moved by the wrong "
                                   f"amount.\nexpected step: {_short(step_expected)}\nreturned step: "
                                   f"{_short(step_got) if got[0].shape == theta.shape else got[0].shape}"
                                   f"{hint}")
            m, v = expected[1].clone(), expected[2].clone()
    return CheckResult(True, n, f"adam step: all {n} random cases match torch.optim.Adam.")


# ---------------------------------------------------------------------------------------------
# Chapter "Gradient accumulation": the accumulated gradient of micro-batches
# ---------------------------------------------------------------------------------------------


def _accumulation_cases(n_cases: int, seed: int):
    """Small float64 models, a mean-reduced loss, and k micro-batches of b examples each."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        n_in, n_out = (int(x) for x in torch.randint(1, 5, (2,), generator=g))
        k = int(torch.randint(2, 6, (1,), generator=g))
        b = int(torch.randint(1, 5, (1,), generator=g))
        hidden = int(torch.randint(2, 6, (1,), generator=g))
        width_out = n_out if i % 2 == 0 else max(n_out, 2)
        # nn.Linear draws from the global RNG: fork it so the reader's random state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(),
                                  nn.Linear(hidden, width_out)).double()
        if i % 2 == 0:
            loss_fn = nn.MSELoss()
            batches = [(torch.randn(b, n_in, generator=g, dtype=torch.float64),
                        torch.randn(b, n_out, generator=g, dtype=torch.float64)) for _ in range(k)]
        else:
            loss_fn = nn.CrossEntropyLoss()
            classes = width_out
            batches = [(torch.randn(b, n_in, generator=g, dtype=torch.float64),
                        torch.randint(0, classes, (b,), generator=g)) for _ in range(k)]
        yield model, loss_fn, batches


def _flat_grad(model) -> torch.Tensor | None:
    grads = [p.grad for p in model.parameters()]
    if any(gr is None for gr in grads):
        return None
    return torch.cat([gr.flatten() for gr in grads])


def _batch_grad(model, loss_fn, batches) -> torch.Tensor:
    """Gradient of the mean loss over the concatenation of ``batches`` (one backward)."""
    model.zero_grad(set_to_none=True)
    x = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    loss_fn(model(x), y).backward()
    return _flat_grad(model)


def check_accumulated_gradient(fn: Callable, n_cases: int = 30, seed: int = 0) -> CheckResult:
    """Check ``fn(model, loss_fn, micro_batches)``: called with no gradients in ``model``
    (every ``.grad`` None), it must leave in the parameters' ``.grad`` the gradient of the mean
    loss over all the micro-batches together, as one large batch would give, using one backward
    pass per micro-batch. Random small models (MSE and cross-entropy, both averaging over the
    batch), 2 to 5 micro-batches of equal size; compared with a single backward pass on the
    concatenated batch. The message names the usual slips: no division by the number of
    micro-batches, zeroing the gradients inside the loop, dividing twice."""
    if not callable(fn):
        raise TypeError(f"the function to check must be callable, got {type(fn).__name__}")
    import copy

    n = 0
    for n, (model, loss_fn, batches) in enumerate(_accumulation_cases(n_cases, seed), start=1):
        k, b = len(batches), len(batches[0][0])
        reference = copy.deepcopy(model)
        expected = _batch_grad(reference, loss_fn, batches)
        last = _batch_grad(reference, loss_fn, batches[-1:])
        where = (f"accumulated gradient: case {n} ({type(loss_fn).__name__}, k={k} micro-batches "
                 f"of b={b})")
        model.zero_grad(set_to_none=True)
        try:
            fn(model, loss_fn, [(x.clone(), y.clone()) for x, y in batches])
        except Exception as err:  # the reader's bug, reported rather than raised
            return CheckResult(False, n, f"{where} raised {type(err).__name__}: {err}")
        got = _flat_grad(model)
        if got is None:
            return CheckResult(False, n, f"{where}: some parameters have no .grad afterwards; "
                               "call .backward() on each micro-batch's loss and leave the "
                               "result in .grad")
        if torch.allclose(got, expected, rtol=1e-7, atol=1e-10):
            continue
        slips = {
            f"{k} times the right gradient: divide each micro-batch's loss by k={k} before "
            "backward (the loss already averages over its b examples)": k * expected,
            f"1/{k} of the right gradient: the loss was divided by k twice, or by k*b": expected / k,
            "the last micro-batch's gradient only: .grad was zeroed inside the loop (zero it once, "
            "before the first micro-batch)": last,
            "the last micro-batch's gradient divided by k: .grad was zeroed inside the loop": last / k,
            f"1/b of the right gradient: the loss was divided by the number of examples b={b}, "
            "but loss_fn already averages over them": expected / b,
        }
        hint = next((f"\nIt is {s}." for s, val in slips.items()
                     if torch.allclose(got, val, rtol=1e-7, atol=1e-10)), "")
        return CheckResult(False, n, f"{where}: the gradient is wrong (largest error "
                           f"{(got - expected).abs().max().item():.3g}).\nexpected: "
                           f"{_short(expected)}\nfound:    {_short(got)}{hint}")
    return CheckResult(True, n, f"accumulated gradient: all {n} random cases match the "
                       "full-batch gradient.")
