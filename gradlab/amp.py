"""Mixed precision: what a 16-bit cast loses, and dynamic loss scaling (``LossScaler``, a short,
readable ``torch.amp.GradScaler``).

float16 rounds gradient entries below ``2**-25`` to 0 and turns those of ``65520`` or more into
inf. Backpropagation is linear in the gradient of the output, so multiplying the loss by a scale
``S`` multiplies every gradient (and every intermediate gradient of the backward pass) by ``S``,
which lifts small entries out of the underflow range; dividing by ``S`` before the optimizer
step undoes it. Too large an ``S`` overflows instead. Dynamic loss scaling (Micikevicius et al.
2018) finds a good ``S`` by trial: a step whose gradient holds an inf or NaN is skipped and
``S`` is multiplied by ``backoff_factor``; after ``growth_interval`` finite steps in a row ``S``
is multiplied by ``growth_factor``.

:class:`LossScaler` follows ``torch.amp.GradScaler`` (torch 2.x) call for call: the same
defaults, the same float32 scale and float64 reciprocal, the same order of checks, the same
errors for calls in the wrong order. The tests compare the two step by step. What it adds: the
skipped steps are recorded (``skipped``), and ``max_consecutive_skips`` can turn an endless run
of skips into an error. What it leaves out: torch hands the scale to optimizers that unscale
inside a fused kernel (``_step_supports_amp_scaling``); here every optimizer gets gradients that
were unscaled beforehand, which gives the same update up to rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._validate import check_int, check_real, check_tensor


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (inf beyond its range), as a Python float."""
    return torch.tensor(x, dtype=torch.float32).item()


# -- what a cast to a narrow format loses ---------------------------------------------------------


def _check_float_dtype(dtype: object) -> torch.finfo:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return torch.finfo(dtype)


def cast_thresholds(dtype: torch.dtype) -> tuple[float, float]:
    """The magnitudes ``(flush, overflow)`` at which rounding to ``dtype`` loses a number.

    With round-to-nearest-even, ``|x| <= flush`` rounds to 0 and ``|x| >= overflow`` to inf:
    ``flush`` is half the smallest subnormal, ``tiny * eps / 2``, and ``overflow`` is the
    largest finite number plus half the spacing of numbers next to it,
    ``max + max * eps / (2 (2 - eps))`` (so ``(2**-25, 65520)`` for float16).
    """
    fi = _check_float_dtype(dtype)
    top_spacing = fi.max * fi.eps / (2 - fi.eps)  # max = (2 - eps) 2^emax, spacing eps 2^emax
    return fi.smallest_normal * fi.eps / 2, fi.max + top_spacing / 2


def lost_in_cast(values: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> tuple[float, float]:
    """Fractions ``(underflow, overflow)`` of the nonzero entries of ``scale * values`` that a
    cast to ``dtype`` turns into 0 and into inf, from :func:`cast_thresholds`:
    ``#{|s v_i| <= flush} / #{v_i != 0}`` and ``#{|s v_i| >= overflow} / #{v_i != 0}``.

    Computed in float64. For float32 ``values`` and a power-of-2 ``scale`` (the product is then
    exact) it predicts the cast ``(scale * values).to(dtype)`` exactly. An all-zero tensor gives
    ``(0, 0)``.
    """
    values = check_tensor("values", values)
    scale = check_real("scale", scale, minimum=0.0, strict=True)
    flush, overflow = cast_thresholds(dtype)
    a = values.detach().double().abs().flatten()
    a = a[a != 0] * scale
    if a.numel() == 0:
        return 0.0, 0.0
    return float((a <= flush).double().mean()), float((a >= overflow).double().mean())


def expected_rounding_error(values: torch.Tensor, dtype: torch.dtype) -> float:
    """Predicted relative error ``||fl(v) - v|| / ||v||`` of rounding ``values`` to ``dtype``.

    Each entry moves by at most half the spacing ``ulp(v_i) = eps * 2^max(e_i, e_min)`` of the
    numbers around it (``e_i = floor(log2 |v_i|)``, ``2^e_min`` the smallest normal). If the
    discarded bits are uniformly distributed the error is uniform on ``[-ulp/2, ulp/2]``, of
    variance ``ulp^2 / 12``, so ``E ||fl(v) - v||^2 = sum_i ulp(v_i)^2 / 12``; the function
    returns ``sqrt(sum_i ulp(v_i)^2 / 12) / ||v||``. Raises if an entry would overflow.
    """
    values = check_tensor("values", values)
    fi = _check_float_dtype(dtype)
    a = values.detach().double().abs().flatten()
    if not bool(a.isfinite().all()) or bool((a >= cast_thresholds(dtype)[1]).any()):
        raise ValueError(f"values must be finite and below the overflow threshold of {dtype}")
    norm = float(a.norm())
    if norm == 0:
        return 0.0
    a = a[a != 0]
    exponent = torch.floor(torch.log2(a)).clamp(min=math.log2(fi.smallest_normal))
    ulp = torch.exp2(exponent) * fi.eps
    return math.sqrt(float((ulp**2).sum()) / 12) / norm


class LossScaler:
    """Dynamic loss scaler with the interface and defaults of ``torch.amp.GradScaler``.

    One iteration::

        scaler.scale(loss).backward()   # gradients of S * loss: S * g
        scaler.unscale_(optimizer)      # optional: g, to clip or inspect (found inf/NaN noted)
        scaler.step(optimizer)          # unscale if not done yet; optimizer.step() only if finite
        scaler.update()                 # S *= backoff_factor after an inf/NaN, else maybe grow

    The update rule, with ``n`` the number of finite steps in a row before this one::

        inf/NaN found:                    S <- S * backoff_factor,  n <- 0
        finite, n + 1 == growth_interval: S <- S * growth_factor,   n <- 0  (unless S overflows)
        finite otherwise:                                           n <- n + 1

    ``S`` is kept in float32, like torch's, and each new value is rounded to float32.

    Args:
        init_scale: the first scale ``S``, > 0.
        growth_factor: multiplies ``S`` after ``growth_interval`` finite steps in a row, > 1.
        backoff_factor: multiplies ``S`` after a step with an inf/NaN gradient, in (0, 1).
        growth_interval: finite steps in a row before ``S`` grows, >= 1.
        enabled: ``False`` makes every method a pass-through (``step`` calls
            ``optimizer.step()``), as in torch.
        max_consecutive_skips: ``None`` (torch's behaviour: skip for ever) or a number of
            iterations in a row with inf/NaN gradients after which :meth:`update` raises
            ``FloatingPointError``.

    Attributes:
        skipped: indices of the iterations (counted by :meth:`update` calls, from 0) whose
            optimizer step was skipped because of an inf/NaN gradient.
        iterations: number of :meth:`update` calls so far.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
        max_consecutive_skips: int | None = None,
    ) -> None:
        init_scale = check_real("init_scale", init_scale, minimum=0.0, strict=True)
        self.growth_factor = check_real("growth_factor", growth_factor, minimum=1.0, strict=True)
        self.backoff_factor = check_real("backoff_factor", backoff_factor, minimum=0.0, strict=True)
        if self.backoff_factor >= 1.0:
            raise ValueError(f"backoff_factor must be < 1, got {self.backoff_factor}")
        self.growth_interval = check_int("growth_interval", growth_interval, minimum=1)
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} ({enabled!r})")
        if max_consecutive_skips is not None:
            max_consecutive_skips = check_int("max_consecutive_skips", max_consecutive_skips, minimum=1)
        self.enabled = enabled
        self.max_consecutive_skips = max_consecutive_skips
        self._init_scale = init_scale
        # Like torch, the scale comes into being at the first scale() call; a missing one is a bug
        # in the training loop that unscale_/step/update report.
        self._scale: float | None = None
        self._growth_tracker = 0  # finite steps in a row since the last growth or backoff
        self._found_inf: dict[int, bool] = {}  # per optimizer (by id), once unscaled this iteration
        self._stepped: set[int] = set()  # optimizers stepped (or skipped) this iteration
        self.skipped: list[int] = []
        self.iterations = 0
        self._skips_in_a_row = 0

    # -- the four calls of an iteration ---------------------------------------------------------

    def scale(self, outputs: torch.Tensor | list | tuple) -> torch.Tensor | list | tuple:
        """Return ``outputs * S`` (a tensor, or a list/tuple of them, nested or not)."""
        if not self.enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:
                self._scale = _float32(self._init_scale)
            # A float32 0-dim tensor, as torch uses: a float16 loss stays float16.
            return outputs * torch.tensor(self._scale, dtype=torch.float32, device=outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"outputs must be a tensor or a list/tuple of tensors, got {type(outputs).__name__}")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by ``S`` in place, noting inf/NaN.

        Call it at most once per optimizer and iteration, after the last ``backward()``; clip
        after it, so that the threshold applies to the true gradient.
        """
        if not self.enabled:
            return
        key = self._check_ready(optimizer, "unscale_")
        if key in self._stepped:
            raise RuntimeError("unscale_() is being called after step().")
        if key in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last "
                               "update().")
        # Like torch: the reciprocal in float64, rounded to float32 (exact for powers of 2; inf
        # for a scale that has backed off to 0).
        inv_scale = torch.tensor(self._scale, dtype=torch.float64).reciprocal().float()
        found_inf = False
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p.grad.dtype == torch.float16:
                        # Unscaling in float16 would underflow the small entries the scale saved;
                        # the parameters (and their gradients) must be float32.
                        raise ValueError("Attempting to unscale FP16 gradients.")
                    grad = p.grad._values() if p.grad.is_sparse else p.grad
                    # Checked before dividing, as torch does.
                    found_inf = found_inf or not bool(grad.isfinite().all())
                    grad.mul_(inv_scale.to(grad.device))
        self._found_inf[key] = found_inf

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """Unscale (unless :meth:`unscale_` was called this iteration), then call
        ``optimizer.step(*args, **kwargs)`` only if no gradient held an inf/NaN.

        Returns what ``optimizer.step`` returned, or ``None`` for a skipped step.
        """
        if not self.enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        key = self._check_ready(optimizer, "step")
        if key in self._stepped:
            raise RuntimeError("step() has already been called since the last update().")
        if key not in self._found_inf:
            self.unscale_(optimizer)
        result = None if self._found_inf[key] else optimizer.step(*args, **kwargs)
        self._stepped.add(key)
        return result

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Back off or grow ``S`` by the rule in the class docstring, or set it to ``new_scale``.

        Call once per iteration, after :meth:`step` for every optimizer. An iteration in which
        any optimizer found an inf/NaN is appended to :attr:`skipped`.
        """
        if not self.enabled:
            return
        if self._scale is None:
            raise RuntimeError("Attempted update but the scale is None. This may indicate your script "
                               "did not use scaler.scale(loss or outputs) earlier in the iteration.")
        if new_scale is not None:
            self._scale = _float32(self._check_new_scale(new_scale))
        elif not self._found_inf:
            raise RuntimeError("No inf checks were recorded prior to update(): call step(optimizer) "
                               "(or unscale_(optimizer)) first.")
        elif any(self._found_inf.values()):
            self._scale = _float32(self._scale * self.backoff_factor)
            self._growth_tracker = 0
        elif self._growth_tracker + 1 == self.growth_interval:
            grown = _float32(self._scale * self.growth_factor)
            if grown != float("inf"):  # never grow past float32's range
                self._scale = grown
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1

        skipped = any(self._found_inf.values())
        if skipped:
            self.skipped.append(self.iterations)
        self._skips_in_a_row = self._skips_in_a_row + 1 if skipped else 0
        self.iterations += 1
        self._found_inf, self._stepped = {}, set()
        if self.max_consecutive_skips is not None and self._skips_in_a_row >= self.max_consecutive_skips:
            raise FloatingPointError(
                f"{self._skips_in_a_row} iterations in a row had inf/NaN gradients (iterations "
                f"{self.iterations - self._skips_in_a_row} to {self.iterations - 1}); the scale has "
                f"backed off to {self._scale:.3g}. A gradient that is non-finite at every scale is "
                "not a float16 range problem: look for a true explosion."
            )

    # -- state ----------------------------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale ``S`` (``init_scale`` before the first :meth:`scale`; 1.0 if disabled)."""
        if not self.enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state, with the keys of ``GradScaler.state_dict()`` (empty if disabled)."""
        if not self.enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` or from ``GradScaler.state_dict()``."""
        if not self.enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if not state_dict:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        # The constructor's checks, on the loaded values.
        loaded = LossScaler(state_dict["scale"], state_dict["growth_factor"], state_dict["backoff_factor"],
                            state_dict["growth_interval"])
        self._init_scale = loaded._init_scale
        self.growth_factor, self.backoff_factor = loaded.growth_factor, loaded.backoff_factor
        self.growth_interval = loaded.growth_interval
        self._growth_tracker = check_int("_growth_tracker", state_dict["_growth_tracker"], minimum=0)
        if self._scale is not None:
            self._scale = _float32(self._init_scale)

    def __repr__(self) -> str:
        last = f", last at {self.skipped[-1]}" if self.skipped else ""
        return (f"LossScaler(scale={self.get_scale():g}, growth_tracker={self._growth_tracker}, "
                f"skipped {len(self.skipped)} of {self.iterations} iterations{last})")

    # -- checks ---------------------------------------------------------------------------------

    def _check_ready(self, optimizer: object, call: str) -> int:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self._scale is None:
            raise RuntimeError(f"Attempted {call} but the scale is None. This may indicate your script "
                               "did not use scaler.scale(loss or outputs) earlier in the iteration.")
        return id(optimizer)

    @staticmethod
    def _check_new_scale(new_scale: object) -> float:
        if isinstance(new_scale, torch.Tensor):
            if new_scale.numel() != 1 or new_scale.requires_grad:
                raise ValueError("new_scale must be a float or a 1-element tensor with requires_grad=False, "
                                 f"got shape {tuple(new_scale.shape)} with requires_grad="
                                 f"{new_scale.requires_grad}")
            new_scale = new_scale.item()
        return check_real("new_scale", new_scale, minimum=0.0, strict=True)


__all__ = ["LossScaler", "cast_thresholds", "expected_rounding_error", "lost_in_cast"]
