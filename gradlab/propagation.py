"""Signals and gradients through a random network at initialization, measured: the quantities
that the mean-field theory (:mod:`gradlab.theory.mean_field`, :mod:`gradlab.theory.correlation`,
:mod:`gradlab.theory.dropout`) predicts, read off real networks built by :func:`gradlab.mlp` (the
chapters "Signal propagation at initialization" and "Dropout"), and those that
:mod:`gradlab.theory.normalization` predicts for networks with BatchNorm or LayerNorm and for
:class:`gradlab.models.Transformer` (the chapter "Normalization"). The chapters and the tests call
the same functions. For residual stacks (:func:`gradlab.models.resmlp`, the chapter "Residual
connections"): the stream's and the gradient's squared norms block by block (:func:`stack_norms`),
their gains over several seeds (:func:`residual_gains`), which :func:`gradlab.theory.residual_growth`
predicts, and the output's change by one SGD step (:func:`first_step_change`), which
:func:`gradlab.theory.fixup_update_size` predicts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ._validate import check_choice, check_int, check_real, check_tensor
from .models.mlp import MLP, mlp
from .models.residual import resmlp
from .models.transformer import Transformer, lm_loss
from .theory.mean_field import q_star
from .utils import seeded


def preactivations(net: MLP, x: torch.Tensor, grad_output: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The output ``z_l = W_l h_{l-1} + b_l`` of every linear layer of ``net`` for the batch ``x``,
    input to output (``l = 1, ..., L``; the last is the read-out, ``net(x)`` itself).

    With ``grad_output`` (a tensor shaped like ``net(x)``), also back-propagates
    ``L = sum(net(x) * grad_output)``, so that ``z_l.grad = dL/dz_l``: the gradient at every
    pre-activation, with ``dL/dz_L = grad_output`` at the read-out. Without it, runs under
    ``torch.no_grad()``.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a gradlab MLP (gradlab.mlp), got {type(net).__name__}")
    x = check_tensor("x", x)
    outputs: list[torch.Tensor] = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    hooks = [linear.register_forward_hook(keep) for linear in net.linears]
    try:
        if grad_output is None:
            with torch.no_grad():
                net(x)
        else:
            grad_output = check_tensor("grad_output", grad_output)
            y = net(x)
            if grad_output.shape != y.shape:
                raise ValueError(f"grad_output must have the shape of net(x), {tuple(y.shape)}, "
                                 f"got {tuple(grad_output.shape)}")
            y.backward(grad_output)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


class ExampleNorms(NamedTuple):
    """Per-example squared norms at every linear layer ``l = 1, ..., L`` of an :func:`~gradlab.mlp`
    (input to output), for the loss ``L = sum_b <net(x)_b, v_b>``; arrays of shape (batch, L).

    Attributes:
        inputs: ``||a_{l-1}[b]||²``, the input of linear layer ``l`` (``a_0 = x``; after a
            dropout module, the dropped and rescaled activations that the layer really received).
        deltas: ``||dL/dz_l[b]||²``, the gradient at the layer's output ``z_l = W_l a_{l-1} + b_l``.
    """

    inputs: np.ndarray
    deltas: np.ndarray

    @property
    def weight_grads(self) -> np.ndarray:
        """``||dL_b/dW_l||_F²``: example ``b``'s gradient of ``W_l`` is the outer product
        ``dL/dz_l[b] a_{l-1}[b]^T``, whose squared Frobenius norm is ``deltas * inputs``."""
        return self.inputs * self.deltas


def per_example_norms(net: MLP, x: torch.Tensor, grad_output: torch.Tensor) -> ExampleNorms:
    """One forward and one backward pass of ``net`` on the batch ``x`` with the output gradient
    ``grad_output`` (``dL/dnet(x)``, shaped like ``net(x)``), and every example's squared norms
    at every linear layer (:class:`ExampleNorms`).

    The loss ``L = sum_b <net(x)_b, grad_output_b>`` is a sum over examples, so row ``b`` of
    ``dL/dz_l`` is example ``b``'s own gradient; in training mode each example also has its own
    dropout masks. (A BatchNorm layer in training mode couples the examples of the batch: the
    rows are then the rows of the batch's gradient, not separate per-example gradients.) The net
    runs in the mode it is in (``net.train()`` or ``net.eval()``), with PyTorch's global random
    stream for the masks.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a gradlab MLP (gradlab.mlp), got {type(net).__name__}")
    x = check_tensor("x", x, ndim=2)
    grad_output = check_tensor("grad_output", grad_output)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def keep(module, args, out):
        inputs.append(args[0].detach())
        out.retain_grad()
        outputs.append(out)

    hooks = [linear.register_forward_hook(keep) for linear in net.linears]
    try:
        y = net(x)
        if grad_output.shape != y.shape:
            raise ValueError(f"grad_output must have the shape of net(x), {tuple(y.shape)}, "
                             f"got {tuple(grad_output.shape)}")
        y.backward(grad_output)
    finally:
        for hook in hooks:
            hook.remove()

    def squares(tensors):  # float64: a 16-layer exploding network spans many decades
        return torch.stack([t.double().pow(2).sum(dim=1) for t in tensors], dim=1).numpy()

    return ExampleNorms(squares(inputs), squares([z.grad for z in outputs]))


def _input_std(activation: str, sigma_w: float, sigma_b: float) -> float:
    """The input entries' standard deviation that puts the first layer at ``q_1 = q``, ``q = q*``
    (or ``sigma_w² + sigma_b²`` where no fixed point exists): ``sigma_w² E[x_j²] + sigma_b² = q``."""
    try:
        q = q_star(activation, sigma_w, sigma_b)
    except ValueError as err:
        if "no fixed point" not in str(err):
            raise  # a bad activation name, not a missing fixed point
        q = sigma_w**2 + sigma_b**2
    return math.sqrt(max(q - sigma_b**2, 0.0)) / sigma_w


def _random_mlp(seed: int, activation: str, sigma_w: float, sigma_b: float, depth: int, width: int) -> MLP:
    with seeded(seed):
        return mlp(depth, width, activation=activation, init="gaussian", gain=sigma_w, bias_std=sigma_b)


def _check_setting(sigma_w, sigma_b, depth, width, seeds) -> tuple:
    return (check_real("sigma_w", sigma_w, minimum=0.0, strict=True),
            check_real("sigma_b", sigma_b, minimum=0.0),
            check_int("depth", depth, minimum=1), check_int("width", width, minimum=1),
            check_int("seeds", seeds, minimum=1))


def gradient_growth(
    activation: str,
    sigma_w: float,
    sigma_b: float,
    *,
    depth: int = 30,
    width: int = 256,
    batch: int = 64,
    seeds: int = 2,
) -> np.ndarray:
    """``||dL/dz_l||² / ||dL/dz_L||²`` for ``l = 1, ..., L`` (input to output), one row per seed.

    Network ``i`` (``i = 0, ..., seeds - 1``) is ``gradlab.mlp(depth, width, activation=...,
    init="gaussian", gain=sigma_w, bias_std=sigma_b)`` built under ``gradlab.utils.seeded(i)``.
    Its batch of ``batch`` inputs has i.i.d. N(0, (q - sigma_b²) / sigma_w²) entries, so that the
    first layer's length is already ``q_1 = sigma_w² E[x_j²] + sigma_b² = q``, with ``q = q*``
    (:func:`~gradlab.theory.q_star`), or ``q = sigma_w² + sigma_b²`` (unit-variance inputs) where
    no fixed point exists. The read-out sends back ``dL/dz_L = v ~ N(0, I)``. Inputs and ``v``
    come from ``torch.Generator().manual_seed(i)``. Mean-field theory predicts
    ``chi_1^(L - l)`` for every row (:func:`~gradlab.theory.chi1`).

    Returns:
        a ``(seeds, depth)`` float64 array; column ``depth - 1`` is 1.
    """
    sigma_w, sigma_b, depth, width, seeds = _check_setting(sigma_w, sigma_b, depth, width, seeds)
    batch = check_int("batch", batch, minimum=1)
    input_std = _input_std(activation, sigma_w, sigma_b)
    rows = []
    for seed in range(seeds):
        net = _random_mlp(seed, activation, sigma_w, sigma_b, depth, width)
        g = torch.Generator().manual_seed(seed)
        x = input_std * torch.randn(batch, width, generator=g)
        v = torch.randn(batch, width, generator=g)
        zs = preactivations(net, x, grad_output=v)
        squared = np.array([float(z.grad.double().pow(2).sum()) for z in zs])
        rows.append(squared / squared[-1])
    return np.stack(rows)


def layer_correlations(net: MLP, x_a: torch.Tensor, x_b: torch.Tensor) -> np.ndarray:
    """The correlation ``c_l = <z_l(a), z_l(b)> / (||z_l(a)|| ||z_l(b)||)`` of the
    pre-activations of paired inputs, at every linear layer of ``net`` (input to output).

    ``x_a`` and ``x_b`` are batches of the same shape; row ``k`` of each forms pair ``k``. With
    ``q_ab = <z(a), z(b)> / n`` this is Poole et al. (2016)'s ``c = q_ab / sqrt(q_aa q_bb)``,
    which :func:`gradlab.theory.correlation.correlation_map` predicts layer by layer.

    Returns:
        a ``(pairs, depth)`` float64 array.
    """
    x_a = check_tensor("x_a", x_a, ndim=2)
    x_b = check_tensor("x_b", x_b, ndim=2)
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and "
                         f"{tuple(x_b.shape)}")
    zs = preactivations(net, torch.cat([x_a, x_b]))
    pairs = x_a.shape[0]
    columns = [torch.nn.functional.cosine_similarity(z[:pairs].double(), z[pairs:].double(), dim=1)
               for z in zs]
    return torch.stack(columns, dim=1).numpy()


def pair_correlations(
    activation: str,
    sigma_w: float,
    sigma_b: float,
    *,
    depth: int = 20,
    width: int = 256,
    pairs: int = 8,
    seeds: int = 32,
) -> np.ndarray:
    """How the correlation of two independent inputs evolves with depth: for each of ``seeds``
    networks, the mean over ``pairs`` input pairs of :func:`layer_correlations`.

    Networks and inputs are drawn as in :func:`gradient_growth` (network ``i`` under
    ``seeded(i)``, inputs from ``torch.Generator().manual_seed(i)``, ``q_1 = q*``). Independent
    inputs start the first layer at ``c_1 ~ sigma_b² / q*``; mean-field theory predicts the
    later layers by iterating :func:`gradlab.theory.correlation_map`, towards
    :func:`gradlab.theory.c_star`. The rows are independent (one network each), so their
    spread gives the standard error of the mean; the pairs of one network share its weights.

    Returns:
        a ``(seeds, depth)`` float64 array.
    """
    sigma_w, sigma_b, depth, width, seeds = _check_setting(sigma_w, sigma_b, depth, width, seeds)
    pairs = check_int("pairs", pairs, minimum=1)
    input_std = _input_std(activation, sigma_w, sigma_b)
    rows = []
    for seed in range(seeds):
        net = _random_mlp(seed, activation, sigma_w, sigma_b, depth, width)
        g = torch.Generator().manual_seed(seed)
        x_a = input_std * torch.randn(pairs, width, generator=g)
        x_b = input_std * torch.randn(pairs, width, generator=g)
        rows.append(layer_correlations(net, x_a, x_b).mean(axis=0))
    return np.stack(rows)


def normalized_gradient_growth(
    activation: str,
    norm: str,
    batch: int,
    *,
    depth: int = 20,
    width: int = 256,
    seeds: int = 5,
    mode: str = "train",
    calibrate: int = 0,
) -> np.ndarray:
    """The per-layer factor ``||dL/dz_{l-1}||² / ||dL/dz_l||²`` of networks with a norm after every
    hidden linear layer, ``x_l = phi(Norm(z_l))``, ``z_l = W_l x_{l-1}``: one value per network,
    the mean of the factor over the hidden layers ``l = 3, ..., L - 1`` (the pair ``z_1, z_2`` is
    left out because ``z_1`` is fed by the raw input, not by a normalized layer).

    Network ``i`` is ``gradlab.mlp(depth, width, activation=..., init="he", norm=norm)`` built
    under ``gradlab.utils.seeded(i)`` (its weight scale does not matter with a norm); the batch
    of ``batch`` standard Gaussian inputs and the read-out gradient ``v ~ N(0, I)`` come from
    ``torch.Generator().manual_seed(1000 + i)``. With ``calibrate > 0``, ``calibrate`` further
    batches from the same generator first go through the network in training mode, with every
    BatchNorm's ``momentum=None``, so its running statistics are their plain average; ``mode``
    then chooses training (batch statistics) or evaluation (running statistics) for the measured
    pass. :func:`gradlab.theory.bn_gradient_growth` and :func:`gradlab.theory.norm_gradient_growth`
    predict it in training mode.

    Returns:
        a ``(seeds,)`` float64 array.
    """
    norm = check_choice("norm", norm, ["batch", "layer"])
    batch = check_int("batch", batch, minimum=2 if norm == "batch" else 1)
    depth = check_int("depth", depth, minimum=4)
    width = check_int("width", width, minimum=1)
    seeds = check_int("seeds", seeds, minimum=1)
    mode = check_choice("mode", mode, ["train", "eval"])
    calibrate = check_int("calibrate", calibrate, minimum=0)
    factors = []
    for seed in range(seeds):
        with seeded(seed):
            net = mlp(depth, width, activation=activation, init="he", norm=norm)
        g = torch.Generator().manual_seed(1000 + seed)
        if calibrate:
            for module in net.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.momentum = None  # the running statistics: a plain average
            with torch.no_grad():
                for _ in range(calibrate):
                    net(torch.randn(batch, width, generator=g))
        net.train(mode == "train")
        x = torch.randn(batch, width, generator=g)
        v = torch.randn(batch, net[-1].linear.out_features, generator=g)
        zs = preactivations(net, x, grad_output=v)[:-1]  # the hidden layers' z_1 .. z_{L-1}
        squared = np.array([float(z.grad.double().pow(2).sum()) for z in zs])
        factors.append(np.mean((squared[:-1] / squared[1:])[1:]))
    return np.array(factors)


def residual_stream(model: Transformer, idx: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean squared norms, divided by ``d_model``, in ``model``'s residual stream for the tokens
    ``idx``, averaged over the sequences and positions (no gradient is computed):

    - ``"stream"``: ``E||x_l||² / d`` for ``l = 0`` (the embeddings) to ``n_layer`` (after each block);
    - ``"attention"``, ``"ffn"``: ``E||F(.)||² / d`` of each block's attention and feed-forward
      outputs (what each sub-layer adds to a Pre-LN stream);
    - ``"attention_first"``: the attention output at the first position alone.

    :func:`gradlab.theory.pre_ln_stream_bounds` bounds ``"stream"`` for a Pre-LN model at
    initialization, where each ``"ffn"`` entry is ``E[phi(z)²]`` in expectation and each
    ``"attention_first"`` entry 1.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a gradlab.models.Transformer, got {type(model).__name__}")
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for k, block in enumerate(model.blocks):
        for name, module in (("attention", block.attn), ("ffn", block.ffn), ("stream", block)):
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, key=(name, k): seen.__setitem__(key, out.detach())))
    try:
        with torch.no_grad():
            x0 = model.embed(idx)
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()

    def msq(t: torch.Tensor) -> float:
        return float(t.double().pow(2).sum(-1).mean()) / model.d_model

    blocks = range(model.n_layer)
    return {
        "stream": np.array([msq(x0)] + [msq(seen["stream", k]) for k in blocks]),
        "attention": np.array([msq(seen["attention", k]) for k in blocks]),
        "attention_first": np.array([msq(seen["attention", k][:, 0]) for k in blocks]),
        "ffn": np.array([msq(seen["ffn", k]) for k in blocks]),
    }


def ffn_weight_gradients(model: Transformer, idx: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """``||dL/dW_2||`` (Frobenius) of every block's second feed-forward weight, input to output,
    for the next-token loss :func:`gradlab.models.lm_loss` on ``(idx, targets)``: the gradient
    Xiong et al. (2020, Theorem 1) bound at initialization. Leaves the gradients in ``.grad``
    (any earlier ones are cleared first)."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a gradlab.models.Transformer, got {type(model).__name__}")
    model.zero_grad(set_to_none=True)
    lm_loss(model(idx), targets).backward()
    return np.array([float(block.ffn.fc2.weight.grad.norm()) for block in model.blocks])


class StackNorms(NamedTuple):
    """Squared Frobenius norms over the batch at the input of a stack of blocks and after each
    block, ``l = 0, ..., L`` (float64 arrays of length ``L + 1``).

    Attributes:
        stream: ``||x_l||²``, with ``x_0`` the input.
        grads: ``||dℓ/dx_l||²`` for ``ℓ = sum(x_L * grad_output)``, so ``grads[-1] = ||grad_output||²``.
    """

    stream: np.ndarray
    grads: np.ndarray


def _as_blocks(blocks: object) -> list[nn.Module]:
    if isinstance(blocks, nn.Module):
        blocks = list(blocks.children()) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else [blocks]
    if not isinstance(blocks, Sequence) or not blocks or not all(isinstance(b, nn.Module) for b in blocks):
        raise TypeError("blocks must be an nn.Sequential, an nn.ModuleList or a non-empty list of modules")
    return list(blocks)


def stack_norms(blocks: nn.Module | Sequence[nn.Module], x: torch.Tensor,
                grad_output: torch.Tensor) -> StackNorms:
    """Run ``x`` through ``blocks`` (e.g. ``gl.models.resmlp(...).blocks``) one after the other,
    back-propagate ``ℓ = sum(x_L * grad_output)``, and return the squared norms of the stream
    and of its gradient after every block (:class:`StackNorms`). Computed in the blocks' dtype
    (an overflow shows as ``inf``, then ``nan`` in the gradients); the norms are summed in float64.
    """
    stack = _as_blocks(blocks)
    x = check_tensor("x", x)
    grad_output = check_tensor("grad_output", grad_output)
    xs = [x.detach().clone().requires_grad_()]
    for block in stack:
        xs.append(block(xs[-1]))
        xs[-1].retain_grad()
    if grad_output.shape != xs[-1].shape:
        raise ValueError(f"grad_output must have the shape of the stack's output, {tuple(xs[-1].shape)}, "
                         f"got {tuple(grad_output.shape)}")
    xs[-1].backward(grad_output.to(xs[-1].dtype))

    def sq(t: torch.Tensor) -> float:
        return float(t.detach().double().pow(2).sum())

    return StackNorms(np.array([sq(t) for t in xs]), np.array([sq(t.grad) for t in xs]))


class StackGains(NamedTuple):
    """Squared gains through a residual stack, one entry per seed (float64 arrays).

    Attributes:
        gradient: ``||dℓ/dx_0||² / ||dℓ/dx_L||²``, the squared gradient's growth toward the input.
        stream: ``||x_L||² / ||x_0||²``, the squared stream's growth toward the output.
    """

    gradient: np.ndarray
    stream: np.ndarray


def residual_gains(
    residual_scale: float | str,
    depth: int,
    *,
    width: int = 64,
    batch: int = 16,
    seeds: int = 5,
    residual: bool = True,
    dtype: torch.dtype = torch.float64,
) -> StackGains:
    """The squared gains of the stream and of the gradient through the ``depth`` blocks of
    ``gl.models.resmlp(depth, width, residual_scale=..., residual=...)`` at initialization, for
    seeds ``0, ..., seeds - 1`` (:class:`StackGains`): the model's weights from
    ``gradlab.utils.seeded(seed)``, a Gaussian batch ``x`` and output gradient ``v`` of shape
    ``(batch, width)`` from ``torch.Generator().manual_seed(10_000 + seed)``. For ``x + s F(x)`` blocks,
    :func:`gradlab.theory.residual_growth` ``(s, 1, depth)`` predicts both means. Computed in
    ``dtype`` (float64 by default: ``2^1000`` fits, float32 overflows near ``2^128``).
    """
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    seeds = check_int("seeds", seeds, minimum=1)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    gradient, stream = [], []
    for seed in range(seeds):
        with seeded(seed):
            model = resmlp(depth, width, residual_scale=residual_scale, residual=residual).to(dtype)
        g = torch.Generator().manual_seed(10_000 + seed)  # not the weights' stream
        x = torch.randn(batch, width, generator=g, dtype=dtype)
        v = torch.randn(batch, width, generator=g, dtype=dtype)
        norms = stack_norms(model.blocks, x, v)
        gradient.append(norms.grads[0] / norms.grads[-1])
        stream.append(norms.stream[-1] / norms.stream[0])
    return StackGains(np.array(gradient), np.array(stream))


def first_step_change(blocks: nn.Module | Sequence[nn.Module], x: torch.Tensor,
                      grad_output: torch.Tensor, lr: float) -> torch.Tensor:
    """``x_L' - x_L`` (float64): how one SGD step of learning rate ``lr`` on every parameter of
    ``blocks``, for the loss ``ℓ = sum(x_L * grad_output)``, moves the stack's output ``x_L`` on
    the input ``x``. The step is taken on a copy; ``blocks`` is left unchanged.
    :func:`gradlab.theory.fixup_update_size` predicts its norm for Fixup blocks (divided by
    ``||grad_output||``), :func:`gradlab.theory.rezero_update_size` the mean of
    ``-<change, grad_output> / ||grad_output||²`` for ReZero blocks.
    """
    stack = [copy.deepcopy(b) for b in _as_blocks(blocks)]
    x = check_tensor("x", x)
    grad_output = check_tensor("grad_output", grad_output)
    lr = check_real("lr", lr, minimum=0.0)
    params = [p for block in stack for p in block.parameters()]
    if not params:
        raise ValueError("blocks have no parameters to take a step with")

    def run(inp: torch.Tensor) -> torch.Tensor:
        for block in stack:
            inp = block(inp)
        return inp

    before = run(x)
    if grad_output.shape != before.shape:
        raise ValueError(f"grad_output must have the shape of the stack's output, {tuple(before.shape)}, "
                         f"got {tuple(grad_output.shape)}")
    grads = torch.autograd.grad(before, params, grad_output.to(before.dtype), allow_unused=True)
    with torch.no_grad():
        for p, grad in zip(params, grads, strict=True):
            if grad is not None:
                p -= lr * grad
        after = run(x)
    return (after - before.detach()).double()


__all__ = ["ExampleNorms", "StackGains", "StackNorms", "ffn_weight_gradients", "first_step_change",
           "residual_gains", "stack_norms", "gradient_growth", "layer_correlations",
           "normalized_gradient_growth", "pair_correlations", "per_example_norms", "preactivations",
           "residual_stream"]
