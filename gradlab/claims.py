"""Popular claims about exploding gradients, each tested by one small experiment ("Popular claims,
tested").

Every ``claim_*`` function runs its experiment and returns a :class:`Verdict`: ``"true"``,
``"false"``, or ``"conditional"`` (true only under the stated condition), decided by the explicit
rule in its docstring from the numbers it measured (kept in ``Verdict.evidence``). The chapter
calls them and tabulates the verdicts; the tests call them again, so no verdict can change
without a test failing.

"Explodes" means what :func:`gradlab.doctor` warns about: the norms ``||dL/d(output)||`` of the
linear layers, in execution order, grow toward the input by ``G >= EXPLODES`` on a least-squares
line through their logarithms (:func:`layer_growth`, :func:`gradlab.doctor.gradient_growth`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import clip as _clip
from ._validate import check_int, check_probability, check_real, check_tensor
from .data import teacher_regression
from .distributed import flat_grad, launch
from .doctor import GROWTH_WARNING, gradient_growth
from .models.mlp import exploding_mlp, mlp
from .monitor import GradientMonitor
from .utils import seeded

VERDICTS = ("true", "false", "conditional")
"""The three possible verdicts."""

EXPLODES = GROWTH_WARNING
"""Growth of the layer gradients toward the input from which a network counts as exploding: the
doctor's warning threshold (30)."""

SAME = 1e-5
"""Relative difference below which two gradients count as the same (float32 rounding)."""

HUGE = 1e10
"""A gradient norm above this counts as exploded in :func:`claim_always_nan`."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim's experiment.

    Attributes:
        number: the claim's number in the chapter (1 to 13).
        claim: the claim, in a few words.
        verdict: ``"true"``, ``"false"`` or ``"conditional"``.
        condition: for ``"conditional"``, when the claim holds; otherwise ``""``.
        evidence: the measured numbers the rule read (name -> float), read-only.
        chapter: the book chapter (a file name in ``book/``) with the full treatment.
    """

    number: int
    claim: str
    verdict: str
    condition: str
    evidence: Mapping[str, float] = field(default_factory=dict, hash=False)
    chapter: str = ""

    def __post_init__(self) -> None:
        # read-only, so that a verdict's evidence cannot be edited after the rule has read it
        object.__setattr__(self, "evidence", MappingProxyType(dict(self.evidence)))
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {list(VERDICTS)}, got {self.verdict!r}")
        if (self.verdict == "conditional") != bool(self.condition):
            raise ValueError("a conditional verdict needs a condition, and only it")


def _data(n: int, in_features: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return teacher_regression(n, in_features, kind="sine", seed=seed)


def layer_growth(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable = F.mse_loss) -> float:
    """``G``: how much ``||dL/d(output)||`` of the linear layers grows from the last to the first
    (execution order), on a least-squares line through their logarithms
    (:func:`gradlab.doctor.gradient_growth`), for one forward and backward pass of
    ``loss_fn(model(x), y)``. The model's gradients are cleared afterwards."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("x", x)
    check_tensor("y", y)
    with GradientMonitor(model) as mon:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    growth = gradient_growth(mon.output_grad_norms[-1])
    if growth is None:
        raise ValueError("model needs at least 3 linear layers with a finite gradient to fit a growth")
    return growth[0]


def _growth_stats(build: Callable[[int], nn.Module], x, y, seeds: int) -> tuple[float, float]:
    """``(exp(m), exp(se))``: the geometric mean of :func:`layer_growth` over the networks
    ``build(seed)``, seeds ``0 .. seeds-1``, and the standard error of ``m``, the mean of
    ``log G``, as a factor (NaN for one seed)."""
    logs = np.array([math.log(layer_growth(build(s), x, y)) for s in range(seeds)])
    se = float(logs.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else math.nan
    return float(np.exp(logs.mean())), math.exp(se)


def _mean_log_growth(build: Callable[[int], nn.Module], x, y, seeds: int) -> float:
    """The geometric mean of :func:`layer_growth` over networks ``build(seed)``, seeds 0..seeds-1."""
    return _growth_stats(build, x, y, seeds)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- 1 to 4: architecture and regularization ---------------------------------------------------


def claim_batch_norm(depth: int = 30, width: int = 64, batch_size: int = 6, seeds: int = 3) -> Verdict:
    """Claim 1, batch normalization prevents gradient explosion.

    Experiment: ReLU networks of ``depth`` layers of ``width`` (He init times 1.4, the exploding
    network's gain) with and without BatchNorm after every hidden linear layer, on 64 examples,
    and a *linear* network of width ``2 * width`` with BatchNorm on ``batch_size`` examples, all
    in training mode; ``G`` averaged (geometrically) over ``seeds`` networks. Predictions for
    wide layers: BatchNorm with ReLU multiplies ``E||g||²`` by ``pi / (pi - 1)`` per layer when
    the batch is large
    (:func:`gradlab.theory.norm_gradient_growth`), with a linear activation by
    ``(B - 2) / (B - 3)`` at batch size ``B`` (:func:`gradlab.theory.bn_gradient_growth`), so
    ``G`` is predicted as that factor to the power ``(depth - 1) / 2``.

    Rule: ``"false"`` if BatchNorm does not lower ``G`` of the gain-1.4 ReLU network;
    ``"conditional"`` if it lowers it but a BN network still explodes (``G >= EXPLODES``);
    ``"true"`` otherwise.
    """
    from .theory.normalization import bn_gradient_growth, norm_gradient_growth

    depth = check_int("depth", depth, minimum=3)
    width = check_int("width", width, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=4)
    seeds = check_int("seeds", seeds, minimum=1)
    x, y = _data(64)

    def net(activation: str, norm: str | None, gain: float, width: int) -> Callable[[int], nn.Module]:
        def build(seed: int) -> nn.Module:
            with seeded(seed):
                return mlp(depth, width, in_features=16, out_features=1, activation=activation,
                           init="he" if activation == "relu" else "gaussian", gain=gain, norm=norm)
        return build

    plain, plain_se = _growth_stats(net("relu", None, 1.4, width), x, y, seeds)
    with_bn, with_bn_se = _growth_stats(net("relu", "batch", 1.4, width), x, y, seeds)
    linear = net("linear", "batch", 1.0, 2 * width)  # twice as wide: closer to the wide limit
    linear_bn, linear_bn_se = _growth_stats(linear, x[:batch_size], y[:batch_size], seeds)
    evidence = {"relu_plain": plain, "relu_plain_se": plain_se, "relu_plain_predicted": 1.4 ** (depth - 1),
                "relu_bn": with_bn, "relu_bn_se": with_bn_se,
                "relu_bn_predicted": norm_gradient_growth("relu") ** ((depth - 1) / 2),
                "linear_bn": linear_bn, "linear_bn_se": linear_bn_se,
                "linear_bn_predicted": bn_gradient_growth(batch_size) ** ((depth - 1) / 2)}
    if with_bn >= plain:
        verdict, condition = "false", ""
    elif max(with_bn, linear_bn) >= EXPLODES:
        verdict = "conditional"
        condition = ("against the growth that comes from the weights' scale; its own backward "
                     "pass grows the gradient layer by layer, more at small batches, so a deep "
                     "network still explodes")
    else:
        verdict, condition = "true", ""
    return Verdict(1, "batch normalization prevents explosion", verdict, condition, evidence,
                   "normalization")


def claim_relu(depth: int = 16, width: int = 64, seeds: int = 3) -> Verdict:
    """Claim 2, ReLU ("sparse activations") prevents explosion.

    Experiment: the book's ReLU network (:func:`gradlab.models.exploding_mlp`) at He's critical
    initialization (gain 1) and at gain 1.4; ``G`` on 64 examples, averaged over ``seeds``
    networks. Mean field predicts ``G ≈ gain^(depth - 1)``.

    Rule: ``"conditional"`` if gain 1 does not explode and gain 1.4 does; ``"true"`` if neither
    explodes; ``"false"`` if gain 1 explodes.
    """
    depth = check_int("depth", depth, minimum=3)
    width = check_int("width", width, minimum=1)
    seeds = check_int("seeds", seeds, minimum=1)
    x, y = _data(64)
    stats = {gain: _growth_stats(
        lambda s, gain=gain: exploding_mlp(depth=depth, width=width, gain=gain, seed=s), x, y, seeds)
        for gain in (1.0, 1.4)}
    growth = {gain: g for gain, (g, _) in stats.items()}
    evidence = {"gain_1": growth[1.0], "gain_1_se": stats[1.0][1], "gain_1.4": growth[1.4],
                "gain_1.4_se": stats[1.4][1], "gain_1.4_predicted": 1.4 ** (depth - 1)}
    if growth[1.0] >= EXPLODES:
        verdict, condition = "false", ""
    elif growth[1.4] >= EXPLODES:
        verdict, condition = "conditional", "only at the critical initialization (He's, gain 1)"
    else:
        verdict, condition = "true", ""
    return Verdict(2, "ReLU prevents explosion", verdict, condition, evidence, "activations")


def _output_free_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean(out * y)``: a loss whose gradient at the output, ``y / n``, does not depend on the
    output (unlike the mean squared error's ``2 (out - y) / n``)."""
    return (out * y).mean()


def claim_dropout(p: float = 0.2, seeds: int = 20) -> Verdict:
    """Claim 3, dropout prevents explosion.

    Experiment: ``exploding_mlp`` with and without ``nn.Dropout(p)`` after every hidden layer, in
    training mode, same weights; ``G`` on 64 examples, averaged (geometrically) over ``seeds``
    networks (and masks), and the ratio ``G_with / G_without`` with the standard error of its
    logarithm over the networks (``ratio_se``, a factor). Each mask multiplies ``E||g||²`` by
    ``1 / (1 - p)`` (:func:`gradlab.theory.dropout_gradient_factor`), so the ratio is predicted
    as ``(1 - p)^(-15/2)`` in wide layers: dropout predicts more growth, not less. The same
    ratio with the loss ``mean(out * y)`` (``ratio_output_free``), whose gradient at the output
    does not depend on the output: the mean squared error weights each example by its own
    output, which is larger for an example whose masks kept more units, and so are the
    gradients it sends back; this correlation, a finite-width effect, is what makes the
    measured ratio exceed the prediction at width 32.

    Rule: ``"false"`` if the network with dropout still explodes; ``"true"`` otherwise.
    """
    p = check_probability("p", p)
    seeds = check_int("seeds", seeds, minimum=2)
    x, y = _data(64)
    evidence: dict[str, float] = {"p": p, "ratio_predicted": (1 - p) ** -(15 / 2)}
    for suffix, loss_fn in (("", F.mse_loss), ("_output_free", _output_free_loss)):
        logs = {}
        for name, drop in (("without", 0.0), ("with_dropout", p)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the masks
                logs[name] = np.array([
                    math.log(layer_growth(exploding_mlp(seed=s, dropout=drop), x, y, loss_fn))
                    for s in range(seeds)])
        diff = logs["with_dropout"] - logs["without"]
        if not suffix:
            evidence["without"] = float(np.exp(logs["without"].mean()))
            evidence["with_dropout"] = float(np.exp(logs["with_dropout"].mean()))
        evidence[f"ratio{suffix}"] = float(np.exp(diff.mean()))
        evidence[f"ratio{suffix}_se"] = math.exp(float(diff.std(ddof=1)) / math.sqrt(seeds))
    verdict = "false" if evidence["with_dropout"] >= EXPLODES else "true"
    return Verdict(3, "dropout prevents explosion", verdict, "", evidence, "dropout")


def claim_weight_decay(weight_decay: float = 0.01, lr: float = 1e-3, steps: int = 10) -> Verdict:
    """Claim 4, L2 regularization (weight decay) prevents explosion.

    Experiment: ``exploding_mlp`` trained by SGD (``lr``) for up to ``steps`` full-batch steps
    on 64 examples, with and without ``weight_decay``; the step at which each run met a NaN/Inf
    (``-1``: none), and the first step's gradient norm. Decay shrinks the weights by
    ``1 - lr · weight_decay`` per step: nothing before the first step, and by ``k`` steps at most
    that factor to the power ``k`` (``weight_shrink``, over the steps the run with decay took).

    Rule: ``"true"`` if the run without decay diverges and the run with decay does not;
    ``"false"`` otherwise (also when neither diverges: then nothing was prevented).
    """
    weight_decay = check_real("weight_decay", weight_decay, minimum=0.0)
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    steps = check_int("steps", steps, minimum=1)
    import warnings

    from .train import fit

    x, y = _data(64)
    evidence = {}
    for name, wd in (("without", 0.0), ("with", weight_decay)):
        model = exploding_mlp(seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the stop is the measurement
            history = fit(model, F.mse_loss, (x, y),
                          torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd), steps=steps,
                          progress=False)
        evidence[f"nonfinite_step_{name}"] = float(history.stopped_at if history.diverged else -1)
        evidence[f"first_grad_norm_{name}"] = float(history.grad_norm[0])
        applied = history.stopped_at if history.diverged else steps  # the steps taken
    evidence["weight_shrink"] = (1 - lr * weight_decay) ** applied  # over the steps the decayed run took
    prevents = evidence["nonfinite_step_without"] >= 0 and evidence["nonfinite_step_with"] < 0
    return Verdict(4, "weight decay prevents explosion", "true" if prevents else "false", "", evidence,
                   "weight_decay")


# -- 5 to 9: the training loop -------------------------------------------------------------------


def claim_lower_lr(lr_high: float = 0.5, lr_low: float = 0.05, steps: int = 100,
                   deep_lrs: tuple[float, float] = (1e-4, 1e-6), deep_steps: int = 30) -> Verdict:
    """Claim 5, lowering the learning rate fixes explosion.

    Experiment, three kinds of blow-up. (a) A step-size instability: a healthy network (4 ReLU
    layers of width 32, He init) trained by SGD for ``steps`` full-batch steps on 128 examples
    at ``lr_high`` and at ``lr_low``; the last finite loss over the first (``inf`` for a run
    that met a NaN/Inf). (b) The depth product: ``exploding_mlp`` trained by SGD for
    ``deep_steps`` full-batch steps on 64 examples at each rate of ``deep_lrs`` (high, low),
    watched by a :class:`gradlab.GradientMonitor`; the step at which each run met a NaN/Inf
    (``-1``: none), and for the run at the low rate its last loss over its first and ``G`` of
    its first and of its last step's gradient (training itself changes the weights, and so
    ``G``). (c) An overflow before any step: the first loss of ``exploding_mlp`` at depth 32
    and gain 5, whose forward pass overflows float32; no learning rate acts before the first
    step.

    Rule: ``"false"`` unless the lower rates fix (a) (loss up 10 times, or a NaN/Inf, at
    ``lr_high``; down at ``lr_low``) and (b) (a NaN/Inf at the high rate, none at the low one);
    then ``"conditional"`` if the first loss of (c) is not finite, ``"true"`` otherwise.
    """
    lr_high = check_real("lr_high", lr_high, minimum=0.0, strict=True)
    lr_low = check_real("lr_low", lr_low, minimum=0.0, strict=True)
    if lr_low >= lr_high:
        raise ValueError(f"lr_low must be below lr_high, got {lr_low} >= {lr_high}")
    steps = check_int("steps", steps, minimum=1)
    if not isinstance(deep_lrs, tuple) or len(deep_lrs) != 2:
        raise TypeError(f"deep_lrs must be a tuple (high, low) of two rates, got {deep_lrs!r}")
    deep_high, deep_low = (check_real("deep_lrs", r, minimum=0.0, strict=True) for r in deep_lrs)
    if deep_low >= deep_high:
        raise ValueError(f"deep_lrs must be (high, low), got {deep_lrs}")
    deep_steps = check_int("deep_steps", deep_steps, minimum=1)
    import warnings

    from .train import fit

    x, y = _data(128)
    loss_ratio = {}
    for lr in (lr_high, lr_low):
        with seeded(0):
            model = mlp(4, 32, in_features=16, out_features=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the stop is the measurement
            history = fit(model, F.mse_loss, (x, y), torch.optim.SGD(model.parameters(), lr=lr), steps=steps,
                          progress=False)
        finite = history.loss[np.isfinite(history.loss)]
        loss_ratio[lr] = math.inf if history.diverged else float(finite[-1] / finite[0])
    evidence = {"loss_ratio_high": loss_ratio[lr_high], "loss_ratio_low": loss_ratio[lr_low]}
    for name, lr in (("high", deep_high), ("low", deep_low)):
        deep = exploding_mlp(seed=0)
        mon = GradientMonitor(deep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the stop is the measurement
            history = fit(deep, F.mse_loss, (x[:64], y[:64]), torch.optim.SGD(deep.parameters(), lr=lr),
                          steps=deep_steps, monitor=mon, progress=False)
        evidence[f"deep_nonfinite_step_{name}"] = float(history.stopped_at if history.diverged else -1)
        if name == "low" and not history.diverged:
            evidence["deep_growth_first"] = gradient_growth(mon.output_grad_norms[0])[0]
            evidence["deep_growth_last"] = gradient_growth(mon.output_grad_norms[-1])[0]
            evidence["deep_loss_ratio_low"] = float(history.loss[-1] / history.loss[0])
    with torch.no_grad():
        evidence["overflow_first_loss"] = float(F.mse_loss(exploding_mlp(depth=32, gain=5.0)(x[:64]), y[:64]))
    fixes_step = loss_ratio[lr_high] >= 10 and loss_ratio[lr_low] < 1
    fixes_deep = evidence["deep_nonfinite_step_high"] >= 0 and evidence["deep_nonfinite_step_low"] < 0
    if not (fixes_step and fixes_deep):
        verdict, condition = "false", ""
    elif not math.isfinite(evidence["overflow_first_loss"]):
        verdict = "conditional"
        condition = ("when the steps cause the blow-up, if the rate goes low enough; not when the "
                     "first forward pass already overflows")
    else:
        verdict, condition = "true", ""
    return Verdict(5, "a lower learning rate fixes explosion", verdict, condition, evidence,
                   "learning_rate")


def claim_accumulation(micro_batches: int = 4, n: int = 64) -> Verdict:
    """Claim 6, gradient accumulation prevents explosion.

    Experiment: the gradient of ``exploding_mlp`` on ``n`` examples at once, and accumulated over
    ``micro_batches`` equal micro-batches (each loss divided by their number); their relative
    difference ``||g_acc - g|| / ||g||`` and ``G`` of each.

    Rule: ``"false"`` if the two gradients are the same (relative difference below ``SAME``) and
    the network explodes; ``"true"`` otherwise.
    """
    micro_batches = check_int("micro_batches", micro_batches, minimum=1)
    n = check_int("n", n, minimum=1)
    if n % micro_batches:
        raise ValueError(f"n must be a multiple of micro_batches, got n={n}, micro_batches={micro_batches}")
    x, y = _data(n)
    model = exploding_mlp(seed=0)
    F.mse_loss(model(x), y).backward()
    full = flat_grad(model)
    model.zero_grad(set_to_none=True)
    for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
        (F.mse_loss(model(xm), ym) / micro_batches).backward()
    accumulated = flat_grad(model)
    model.zero_grad(set_to_none=True)
    growth = layer_growth(model, x, y)
    evidence = {"relative_difference": _rel(accumulated, full), "growth": growth,
                "grad_norm": float(full.norm())}
    same = evidence["relative_difference"] < SAME
    verdict = "false" if same and growth >= EXPLODES else "true"
    return Verdict(6, "gradient accumulation prevents explosion", verdict, "", evidence, "accumulation")


def _model_grads(scale: float) -> list[torch.Tensor]:
    """Parameters of a fresh 4-layer ReLU network holding its gradient on 64 examples times
    ``scale`` in ``.grad``."""
    x, y = _data(64)
    with seeded(0):
        model = mlp(4, 32, in_features=16, out_features=1)
    (scale * F.mse_loss(model(x), y)).backward()
    return list(model.parameters())


def _grads_after(op: Callable[[list[torch.Tensor]], object], scale: float) -> torch.Tensor:
    params = _model_grads(scale)
    op(params)
    return torch.cat([p.grad.flatten() for p in params])


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def claim_normalized_step(alpha: float = 1.0) -> Verdict:
    """Claim 7, the update ``g <- alpha g / ||g||`` is gradient clipping.

    Experiment: the gradient of a 4-layer ReLU network, scaled so that ``||g|| = alpha / 10``
    (small) and ``10 alpha`` (large), passed through :func:`gradlab.clip.normalized_step_` and
    :func:`gradlab.clip.clip_grad_norm_` with threshold ``alpha``; the norm of each result
    divided by ``||g||``.

    Rule: ``"false"`` if on the small gradient the normalized step changes the norm (ratio off
    1 by more than 1e-3) while clipping does not (the two agree only above the threshold);
    ``"true"`` otherwise.
    """
    alpha = check_real("alpha", alpha, minimum=0.0, strict=True)
    base = float(torch.cat([p.grad.flatten() for p in _model_grads(1.0)]).norm())
    ratios = {}
    for name, target in (("small", alpha / 10), ("large", 10 * alpha)):
        scale = target / base
        before = float(torch.cat([p.grad.flatten() for p in _model_grads(scale)]).norm())
        for op_name, op in (("normalized", lambda ps: _clip.normalized_step_(ps, alpha)),
                            ("clipped", lambda ps: _clip.clip_grad_norm_(ps, alpha))):
            ratios[f"{op_name}_{name}"] = float(_grads_after(op, scale).norm()) / before
    evidence = ratios | {"alpha": alpha}
    differ = abs(ratios["normalized_small"] - 1) > 1e-3 and abs(ratios["clipped_small"] - 1) <= 1e-3
    return Verdict(7, "g <- alpha g/||g|| is clipping", "false" if differ else "true", "", evidence,
                   "clipping")


def claim_value_vs_norm(clip_value: float = 0.01, max_norm: float = 1.0, scale: float = 100.0) -> Verdict:
    """Claim 8, clipping by value and clipping by norm do the same thing.

    Experiment: the gradient of a 4-layer ReLU network times ``scale`` (an exploding step),
    clipped by :func:`gradlab.clip.clip_grad_value_` at ``clip_value`` and by
    :func:`gradlab.clip.clip_grad_norm_` at ``max_norm``; the angle of each to the original
    gradient, and between the two, in degrees.

    Rule: ``"false"`` if the value-clipped gradient points more than 10 degrees away from the
    norm-clipped one; ``"true"`` otherwise.
    """
    clip_value = check_real("clip_value", clip_value, minimum=0.0, strict=True)
    max_norm = check_real("max_norm", max_norm, minimum=0.0, strict=True)
    scale = check_real("scale", scale, minimum=0.0, strict=True)
    original = _grads_after(lambda ps: None, scale)
    by_value = _grads_after(lambda ps: _clip.clip_grad_value_(ps, clip_value), scale)
    by_norm = _grads_after(lambda ps: _clip.clip_grad_norm_(ps, max_norm), scale)
    evidence = {"angle_value_to_original": _angle(by_value, original),
                "angle_norm_to_original": _angle(by_norm, original),
                "angle_between": _angle(by_value, by_norm),
                "fraction_clipped": float((original.abs() > clip_value).float().mean()),
                "norm_value_clipped": float(by_value.norm()), "norm_norm_clipped": float(by_norm.norm())}
    verdict = "false" if evidence["angle_between"] > 10 else "true"
    return Verdict(8, "clipping by value equals clipping by norm", verdict, "", evidence, "clipping")


def claim_adam(lr: float = 0.03, steps: int = 30, seeds: int = 2, default_lr: float = 1e-3) -> Verdict:
    """Claim 9, Adam cannot explode (its step is normalized).

    Experiment: ``exploding_mlp`` trained by Adam at ``lr`` for ``steps`` full-batch steps on 64
    examples, ``seeds`` networks; for each, the largest loss of the run over the first loss (a
    NaN/Inf counts as infinite). Adam bounds each coordinate's step by about ``lr``, but a step
    of that size in every weight of a deep network can still multiply the output. Two controls,
    the largest such growth over the same seeds: the same networks at PyTorch's default rate
    ``default_lr`` (``default_lr_growth``), and He's networks (gain 1, no exploding gradient) at
    ``lr`` (``gain_1_growth``), which tell whether the blow-up comes from the rate or from the
    initialization.

    Rule: ``"false"`` if some run's loss at ``lr`` grew 10 times or more; ``"true"`` otherwise.
    """
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    steps = check_int("steps", steps, minimum=1)
    seeds = check_int("seeds", seeds, minimum=1)
    default_lr = check_real("default_lr", default_lr, minimum=0.0, strict=True)
    import warnings

    from .train import fit

    x, y = _data(64)

    def growths(rate: float, gain: float) -> list[float]:
        out = []
        for seed in range(seeds):
            model = exploding_mlp(seed=seed, gain=gain)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the stop is the measurement
                history = fit(model, F.mse_loss, (x, y), torch.optim.Adam(model.parameters(), lr=rate),
                              steps=steps, progress=False)
            loss = history.loss
            out.append(math.inf if history.diverged else float(np.max(loss) / loss[0]))
        return out

    growth = growths(lr, 1.4)
    evidence = {f"loss_growth_seed_{s}": g for s, g in enumerate(growth)}
    evidence["default_lr_growth"] = max(growths(default_lr, 1.4))
    evidence["gain_1_growth"] = max(growths(lr, 1.0))
    verdict = "false" if max(growth) >= 10 else "true"
    return Verdict(9, "Adam cannot explode", verdict, "", evidence, "optimizers")


# -- 10 to 13: size, depth, hardware, symptoms ------------------------------------------------------


def claim_many_parameters(seeds: int = 3) -> Verdict:
    """Claim 10, explosion comes from having many parameters.

    Experiment: two ReLU networks with the same initialization (He times 1.4): a wide shallow one
    (3 layers of width 512) and a narrow deep one (``exploding_mlp``: 16 layers of width 32);
    their parameter counts and ``G`` on 64 examples, averaged over ``seeds`` networks.

    Rule: ``"false"`` if the network with more parameters does not explode and the one with
    fewer does; ``"true"`` otherwise.
    """
    seeds = check_int("seeds", seeds, minimum=1)
    x, y = _data(64)

    def wide(seed: int) -> nn.Module:
        with seeded(seed):
            return mlp(3, 512, in_features=16, out_features=1, gain=1.4)

    nets = {"wide": wide, "deep": lambda s: exploding_mlp(seed=s)}
    evidence = {}
    for name, build in nets.items():
        evidence[f"{name}_parameters"] = float(sum(p.numel() for p in build(0).parameters()))
        evidence[f"{name}_growth"] = _mean_log_growth(build, x, y, seeds)
    big, small = sorted(nets, key=lambda k: -evidence[f"{k}_parameters"])
    refuted = evidence[f"{big}_growth"] < EXPLODES <= evidence[f"{small}_growth"]
    return Verdict(10, "explosion comes from many parameters", "false" if refuted else "true", "",
                   evidence, "signal_propagation")


def claim_deeper(depths: tuple[int, ...] = (8, 24, 48), width: int = 64, seeds: int = 3) -> Verdict:
    """Claim 11, a deeper network always explodes.

    Experiment: ``exploding_mlp`` of width ``width`` at each depth of ``depths``, at He's
    critical initialization (gain 1) and at gain 1.4; ``G`` on 64 examples, averaged over
    ``seeds`` networks.

    Rule: ``"true"`` if some depth explodes at gain 1 too; ``"conditional"`` if none does at
    gain 1 while the deepest does at gain 1.4; ``"false"`` if none explodes at either gain.
    """
    if not isinstance(depths, tuple) or not depths:
        raise TypeError(f"depths must be a non-empty tuple of ints, got {depths!r}")
    depths = tuple(check_int("depths", d, minimum=3) for d in depths)
    width = check_int("width", width, minimum=1)
    seeds = check_int("seeds", seeds, minimum=1)
    x, y = _data(64)
    evidence = {}
    for gain in (1.0, 1.4):
        for d in depths:
            evidence[f"gain_{gain:g}_depth_{d}"] = _mean_log_growth(
                lambda s, d=d, gain=gain: exploding_mlp(depth=d, width=width, gain=gain, seed=s), x, y, seeds)
    deepest = max(depths)
    critical = [evidence[f"gain_1_depth_{d}"] for d in depths]
    if max(critical) >= EXPLODES:
        verdict, condition = "true", ""
    elif evidence[f"gain_1.4_depth_{deepest}"] >= EXPLODES:
        verdict = "conditional"
        condition = "only away from criticality: at He's gain 1, depth does not explode"
    else:
        verdict, condition = "false", ""
    return Verdict(11, "a deeper network always explodes", verdict, condition, evidence,
                   "signal_propagation")


def ddp_exploding_gradient(rank: int, world_size: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    """One rank's part of :func:`claim_multi_gpu`: DDP over ``exploding_mlp(seed=seed)`` on this
    rank's share of ``n`` examples; returns the gradient DDP leaves after its all-reduce (flat)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = _data(n)
    model = exploding_mlp(seed=seed)
    ddp = DDP(model)
    F.mse_loss(ddp(x.chunk(world_size)[rank]), y.chunk(world_size)[rank]).backward()
    return flat_grad(model)


def claim_multi_gpu(world_size: int = 2, n: int = 64, timeout: float = 60.0) -> Verdict:
    """Claim 12, multi-GPU (data-parallel) training avoids explosion.

    Experiment: ``world_size`` gloo processes on this machine (as GPUs would be, one per rank)
    run DDP over ``exploding_mlp`` on equal shares of ``n`` examples
    (:func:`ddp_exploding_gradient`, started by :func:`gradlab.distributed.launch`); their
    all-reduced gradient against the gradient of one process on all ``n``.

    Rule: ``"false"`` if every rank's gradient is the one-process gradient (relative difference
    below ``SAME``) and the network explodes; ``"true"`` otherwise.
    """

    world_size = check_int("world_size", world_size, minimum=1)
    n = check_int("n", n, minimum=1)
    if n % world_size:
        raise ValueError(f"n must be a multiple of world_size, got n={n}, world_size={world_size}")
    timeout = check_real("timeout", timeout, minimum=0.0, strict=True)
    per_rank = launch(ddp_exploding_gradient, world_size, timeout=timeout, n=n)
    x, y = _data(n)
    model = exploding_mlp(seed=0)
    F.mse_loss(model(x), y).backward()
    single = flat_grad(model)
    growth = layer_growth(model, x, y)
    evidence = {"relative_difference": max(_rel(g, single) for g in per_rank), "growth": growth,
                "grad_norm": float(single.norm()), "world_size": float(world_size)}
    same = evidence["relative_difference"] < SAME
    verdict = "false" if same and growth >= EXPLODES else "true"
    return Verdict(12, "multi-GPU training avoids explosion", verdict, "", evidence, "distributed")


def claim_always_nan(gain: float = 5.0, lr: float = 1e-3, steps: int = 5) -> Verdict:
    """Claim 13, an exploding gradient always shows up as NaN.

    Experiment: ``exploding_mlp`` with gain ``gain`` (so ``G`` about ``gain^15``) trained by SGD at
    ``lr`` for up to ``steps`` steps on 64 examples (:func:`gradlab.fit` stops at the first
    NaN/Inf); the first step's loss and gradient norm (computed without overflow, as
    :func:`gradlab.clip.total_norm` does), the step at which a NaN/Inf appeared, the first
    gradient's largest entry and its 2-norm computed in float32 by ``torch.linalg.vector_norm``
    (as ``torch.nn.utils.clip_grad_norm_`` does), which overflows to ``inf`` once the *square*
    of the norm exceeds float32's largest number, about ``3.4e38``, although every entry is
    finite.

    Rule: ``"false"`` if the first step's loss is finite and its gradient finite with a norm
    above ``HUGE``; ``"true"`` otherwise.
    """
    gain = check_real("gain", gain, minimum=0.0, strict=True)
    lr = check_real("lr", lr, minimum=0.0, strict=True)
    steps = check_int("steps", steps, minimum=1)
    import warnings

    from .train import fit

    x, y = _data(64)
    model = exploding_mlp(seed=0, gain=gain)
    F.mse_loss(model(x), y).backward()  # the first gradient, as the first step of fit sees it
    first = flat_grad(model)
    float32_norm = float(torch.linalg.vector_norm(first))  # what torch's clip_grad_norm_ computes
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the stop is the measurement
        history = fit(model, F.mse_loss, (x, y), torch.optim.SGD(model.parameters(), lr=lr), steps=steps,
                      progress=False)
    evidence = {"first_loss": float(history.loss[0]), "first_grad_norm": float(history.grad_norm[0]),
                "nonfinite_step": float(history.stopped_at if history.diverged else -1),
                "first_grad_max_entry": float(first.abs().max()), "first_grad_norm_float32": float32_norm}
    finite_huge = math.isfinite(evidence["first_loss"]) and HUGE < evidence["first_grad_norm"] < math.inf
    return Verdict(13, "an exploding gradient always shows up as NaN", "false" if finite_huge else "true",
                   "", evidence, "what_explodes")


CLAIMS: tuple[Callable[[], Verdict], ...] = (
    claim_batch_norm, claim_relu, claim_dropout, claim_weight_decay, claim_lower_lr, claim_accumulation,
    claim_normalized_step, claim_value_vs_norm, claim_adam, claim_many_parameters, claim_deeper,
    claim_multi_gpu, claim_always_nan,
)
"""The claims' experiments, in the chapter's order; ``CLAIMS[i]()`` returns verdict ``i + 1``."""


__all__ = [
    "CLAIMS", "EXPLODES", "HUGE", "SAME", "VERDICTS", "Verdict", "claim_accumulation", "claim_adam",
    "claim_always_nan", "claim_batch_norm", "claim_deeper", "claim_dropout", "claim_lower_lr",
    "claim_many_parameters", "claim_multi_gpu", "claim_normalized_step", "claim_relu",
    "claim_value_vs_norm", "claim_weight_decay", "ddp_exploding_gradient", "layer_growth",
]
