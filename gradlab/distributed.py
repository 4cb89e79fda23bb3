"""Gradient clipping and NaN checks across processes, and the distributed chapter's experiments.

In data-parallel training every process (a *rank*) runs the same model on its own slice of the
batch, and the ranks meet in *collectives* such as an all-reduce. Two things are easy to get
wrong there:

- with sharded parameters (ZeRO, FSDP) a rank holds only a shard of the gradient, so the norm
  that clipping needs is a global one: :func:`clip_grad_norm_` all-reduces it;
- a decision to skip or stop a step must be taken by every rank together, or one rank waits at
  the next collective for a rank that has left: :func:`all_finite` all-reduces it.

:func:`launch` starts ``world_size`` gloo processes on 127.0.0.1 and returns what each one
returns, bounded in time. The functions after it are the chapter's experiments. They live in the
package because a function defined in a notebook cannot be sent to a new process: the process
imports it by name.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing as mp
import pickle
import queue
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import clip as _clip
from ._validate import check_int, check_real
from .models.mlp import mlp

Parameters = _clip.Parameters


# ---------------------------------------------------------------------------------------------
# Collectives-aware norm, clipping and NaN agreement
# ---------------------------------------------------------------------------------------------


def _check_group(group: object) -> None:
    if group is None:
        return
    if not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise TypeError(
            f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}"
        )


def _tensor_list(name: str, value: object) -> list[torch.Tensor]:
    """``value`` as a list of tensors (one tensor becomes a list of one)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tensor or an iterable of tensors, got {type(value).__name__}")
    value = list(value)
    for k, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(t).__name__}")
    return value


def group_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks in ``group`` (the default group for ``None``); 1 when no process group
    is initialized, so that the functions below run unchanged in a single process."""
    _check_group(group)
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> torch.Tensor:
    if group_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _reduce_device(tensors: list[torch.Tensor], group: dist.ProcessGroup | None) -> torch.device:
    """Where the small reduction tensors live: with the gradients, or on the GPU for NCCL
    (which reduces GPU tensors only) when this rank holds no gradient."""
    if tensors:
        return tensors[0].device
    if group_size(group) > 1 and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def total_norm(
    tensors: torch.Tensor | Iterable[torch.Tensor],
    norm_type: float = 2.0,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """The p-norm of the tensors of *all* ranks seen as one vector, returned on every rank.

    Rank ``r`` holds the shard ``g^(r)`` of ``g``. With ``M = ||g||_inf = max_r ||g^(r)||_inf``
    (one MAX all-reduce) and, for finite ``p``, ``S = sum_r sum_i (|g^(r)_i| / M)^p`` (one SUM
    all-reduce)::

        ||g||_p = M * S^(1/p),        ||g||_inf = M.

    Dividing by ``M`` keeps every term in [0, 1], so the sum can neither overflow nor underflow
    (in float32, ``sum_i |g_i|^2`` is inf for entries of 1e20 and 0 for entries of 1e-25); it is
    accumulated in float64. A NaN on any rank gives NaN on every rank: it travels as a flag of
    its own, because a MAX all-reduce of the values can drop it. An inf gives inf. Returns a
    float64 scalar (float32 on MPS, which has no float64); an empty list counts as zeros.
    Every rank of ``group`` must call it.
    """
    tensors = _tensor_list("tensors", tensors)
    norm_type = _clip._norm_type(norm_type)
    _check_group(group)
    device = _reduce_device(tensors, group)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    local = torch.zeros(2, dtype=dtype, device=device)  # [max_i |g_i|, 1 if a NaN is present]
    if tensors:
        maxes = torch.stack([t.detach().abs().amax().to(device, dtype) for t in tensors if t.numel()]
                            or [local[0]])
        nan = torch.isnan(maxes)
        local[0] = torch.where(nan, 0.0, maxes).max()
        local[1] = nan.any().to(dtype)
    _all_reduce(local, dist.ReduceOp.MAX, group)
    m, has_nan = local[0], bool(local[1])
    # Every rank holds the same m and has_nan, so every rank takes the same branch and the
    # second all-reduce below is entered by all ranks or by none.
    if has_nan:
        return torch.tensor(math.nan, dtype=dtype, device=device)
    if math.isinf(norm_type) or not torch.isfinite(m) or m == 0:
        return m
    s = torch.zeros(1, dtype=dtype, device=device)
    for t in tensors:
        if t.numel():
            s += torch.linalg.vector_norm(t.detach().to(device, dtype) / m, norm_type) ** norm_type
    _all_reduce(s, dist.ReduceOp.SUM, group)
    return m * s[0] ** (1.0 / norm_type)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    norm_type: float = 2.0,
    group: dist.ProcessGroup | None = None,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Clip this rank's shard of the gradients with the norm of *all* ranks' gradients.

    With ``N = total_norm(local gradients, p, group)``, the same on every rank, each local
    gradient becomes ``g * min(1, max_norm / (N + 1e-6))``: what ``torch.nn.utils.clip_grad_norm_``
    does to all the gradients in one process. Returns ``N`` (float64). In a world of one (no
    process group, or a group of one rank) this is :func:`gradlab.clip.clip_grad_norm_` up to
    rounding, without its float32 overflow. Every rank of ``group`` must call it.

    A non-finite ``N`` is the same on every rank. Then the gradients are left as they are and a
    ``RuntimeWarning`` says so (torch multiplies them by the non-finite coefficient, and an
    infinite norm zeroes every finite entry), or ``RuntimeError`` is raised if
    ``error_if_nonfinite``. The returned ``N`` lets every rank skip the step together.
    """
    max_norm = check_real("max_norm", max_norm, minimum=0.0, allow_inf=True)
    norm_type = _clip._norm_type(norm_type)
    _check_group(group)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite must be a bool, got {type(error_if_nonfinite).__name__}")
    grads = _clip._grads(parameters)
    norm = total_norm(grads, norm_type, group)
    if not torch.isfinite(norm):
        message = (f"the global gradient norm of order {norm_type} is {norm.item()}, so it cannot "
                   "be clipped")
        if error_if_nonfinite:
            raise RuntimeError(message + "; skip this step on every rank.")
        warnings.warn(message + ": the gradients are left unchanged; skip this step on every "
                      "rank.", RuntimeWarning, stacklevel=3)
        return norm
    coef = torch.clamp(max_norm / (norm + _clip._EPS), max=1.0)
    for same_kind in _clip._groups(grads):
        torch._foreach_mul_(same_kind, coef.to(same_kind[0].device, same_kind[0].dtype))
    return norm


def all_finite(value: torch.Tensor | bool, group: dist.ProcessGroup | None = None) -> bool:
    """Whether ``value`` is finite on *every* rank, the same answer on every rank.

    ``value`` is a tensor (finite when all its entries are) or a bool computed by the caller.
    Each rank contributes the flag ``f_r = 1`` if its value is not finite, else 0, and a MAX
    all-reduce returns ``max_r f_r`` to all: the result is ``max_r f_r == 0``. The flag is
    reduced, not the value, because a MAX all-reduce of values can drop a NaN. Every rank of
    ``group`` must call it; a rank that decides alone to stop leaves the others waiting.
    """
    _check_group(group)
    if isinstance(value, torch.Tensor):
        ok, device = bool(torch.isfinite(value).all()), value.device
    elif isinstance(value, bool):
        ok, device = value, _reduce_device([], group)
    else:
        raise TypeError(f"value must be a torch.Tensor or a bool, got {type(value).__name__}")
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return bool(_all_reduce(flag, dist.ReduceOp.MAX, group)[0] == 0)


# ---------------------------------------------------------------------------------------------
# Starting gloo processes from a notebook or a test, bounded in time
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PRELOAD = (
    "gradlab.distributed",
    "torch.nn.parallel",
    "torch.distributed.algorithms.ddp_comm_hooks.default_hooks",
    "torch.distributed.device_mesh",
    "torch.distributed.fsdp",
)
"""Modules the fork server of :func:`launch` imports once, so that a new rank does not: torch,
gradlab and what the chapter's experiments import (DDP, FSDP)."""


def _context() -> Any:
    """The ``multiprocessing`` context of :func:`launch`.

    Where the platform has a fork server (Linux, macOS), a process that has imported
    :data:`PRELOAD` once, when the first launch starts it, and forks every new rank from itself:
    a rank then starts in milliseconds instead of importing torch again (seconds each). A fork
    server forks no threads and no state of the caller, which plain ``fork`` would. Elsewhere,
    spawn: a fresh interpreter per rank. The fork server lives as long as this process.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # read when the server starts; later calls: no effect
    return ctx


def _rank_main(rank: int, size: int, port: int, fn: Callable, kwargs: dict, results: Any,
               collective_timeout: float) -> None:
    """What each rank's process runs: join the group, call ``fn``, send back its result."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=size,
                                timeout=datetime.timedelta(seconds=collective_timeout))
        try:
            out = fn(rank, size, **kwargs)
        finally:
            dist.destroy_process_group()
        # Plain pickle copies tensors by value; a Queue would pass them through shared memory,
        # which needs this process to stay alive until the parent reads them.
        results.put((rank, pickle.dumps(out), None))
    except BaseException:
        results.put((rank, None, traceback.format_exc()))


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    *,
    timeout: float = 60.0,
    collective_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(rank, world_size, **kwargs)`` in ``world_size`` new processes that form a gloo
    process group on 127.0.0.1, and return ``[result of rank 0, result of rank 1, ...]``.

    This is what ``torchrun`` does on a cluster, started from Python. The processes are forked
    from a fork server that has imported torch and gradlab (spawned where there is no fork
    server; see :func:`_context`), and each imports ``fn`` by name, so ``fn`` must be defined at
    the top level of an importable module (not in a notebook), and ``kwargs`` and the results
    must be picklable. The fork server starts at the first launch (its imports, a few seconds,
    count against that launch's ``timeout``) with this process's environment and ``sys.path``
    at that moment, which is what every later rank sees. Each process uses one thread.
    If the processes are not all done after ``timeout`` seconds they are killed and
    ``TimeoutError`` is raised; an exception in a process is raised here as ``RuntimeError``
    with its traceback. Each collective of the default group gives up after
    ``collective_timeout`` seconds (default ``timeout``).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    qualname = getattr(fn, "__qualname__", "")
    if getattr(fn, "__module__", None) == "__main__" or "<" in qualname:  # <locals>, <lambda>
        raise ValueError(f"fn must be defined at the top level of an importable module, got "
                         f"{fn.__module__}.{fn.__qualname__}: a new process cannot import it")
    world_size = check_int("world_size", world_size, minimum=1)
    timeout = check_real("timeout", timeout, minimum=0.0, strict=True)
    collective_timeout = timeout if collective_timeout is None else check_real(
        "collective_timeout", collective_timeout, minimum=0.0, strict=True)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    ctx = _context()
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, daemon=True,
                         args=(r, world_size, port, fn, kwargs, results, collective_timeout))
             for r in range(world_size)]
    deadline = time.monotonic() + timeout
    out: dict[int, Any] = {}
    done = False
    try:
        for p in procs:
            p.start()
        while len(out) < world_size:
            try:
                rank, payload, error = results.get(timeout=0.1)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode is not None]
                if dead:
                    time.sleep(0.5)  # a message may still be in the pipe
                    if results.empty():
                        raise RuntimeError(f"rank {dead[0]} exited with code "
                                           f"{procs[dead[0]].exitcode} without a result") from None
                if time.monotonic() > deadline:
                    missing = [r for r in range(world_size) if r not in out]
                    raise TimeoutError(f"ranks {missing} did not finish within {timeout:g} s; "
                                       "all processes were stopped") from None
                continue
            if error is not None:
                raise RuntimeError(f"rank {rank} failed:\n{error}")
            out[rank] = pickle.loads(payload)
        done = True
    finally:
        for p in procs:
            if p.pid is None:  # not started: starting an earlier one failed
                continue
            # After a failure the other ranks may wait in a collective for the failed one:
            # stop them now rather than after their collective timeout.
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())) if done else 0.0)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(world_size)]


def run_jobs(rank: int, world_size: int, jobs: dict[str, tuple[Callable, dict]]) -> dict[str, Any]:
    """Run ``fn(rank, world_size, **kwargs)`` for each ``name: (fn, kwargs)`` of ``jobs`` in turn,
    in the same processes (starting the processes is the slow part); return ``{name: result}``."""
    return {name: fn(rank, world_size, **kwargs) for name, (fn, kwargs) in jobs.items()}


# ---------------------------------------------------------------------------------------------
# The chapter's experiments: each takes (rank, world_size, ...) and returns plain data
# ---------------------------------------------------------------------------------------------


def toy_problem(seed: int = 0, n: int = 64, n_in: int = 6, width: int = 16, n_out: int = 2):
    """A small tanh network (3 layers) and a regression batch of ``n`` examples, identical on
    every rank that calls it with the same ``seed``; rank ``r`` trains on ``local_batch``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = (torch.sin(2 * x @ torch.randn(n_in, n_out, generator=g))
         + 0.1 * torch.randn(n, n_out, generator=g))
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        model = mlp(3, width, in_features=n_in, out_features=n_out, activation="tanh")
    return model, x, y


def local_batch(x: torch.Tensor, y: torch.Tensor, rank: int, size: int):
    """Rank ``rank``'s slice of the batch: the ``rank``-th of ``size`` equal chunks."""
    return x.chunk(size)[rank], y.chunk(size)[rank]


def shard(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s rows of ``t`` as FSDP2's ``fully_shard`` splits them: ``torch.chunk``
    along dim 0, so the last ranks get fewer rows, or none."""
    chunks = t.chunk(size)
    return chunks[rank] if rank < len(chunks) else t[:0]


def flat_grad(model: nn.Module) -> torch.Tensor:
    """All of ``model``'s gradients in one vector (a copy)."""
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def _with_grads(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stand-alone tensors holding copies of ``grads`` in ``.grad``, for the clipping functions."""
    out = []
    for g in grads:
        t = torch.zeros_like(g)
        t.grad = g.clone()
        out.append(t)
    return out


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|``, 0 for empty tensors (a rank may hold no rows of a tensor)."""
    return float((a - b).abs().max()) if a.numel() else 0.0


def _counting_allreduce_hook(state, bucket):  # no annotations: DDP checks them, as objects
    """DDP's default communication (average by all-reduce), counting its calls."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state["calls"] += 1
    return allreduce_hook(None, bucket)


def ddp_gradients(rank: int, world_size: int, micro_batches: int = 4, seed: int = 0) -> dict:
    """DDP on this rank's slice of ``toy_problem``'s batch. Returns the rank's own gradient
    (``local``, computed under ``no_sync``), the gradient DDP leaves after its all-reduce
    (``averaged``), and the gradient of ``micro_batches`` accumulated micro-batches with all but
    the last under ``no_sync`` (``accumulated_no_sync``) or each one all-reduced
    (``accumulated_sync``), with the all-reduce calls each way took."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, x, y = toy_problem(seed)
    ddp = DDP(model)
    calls = {"calls": 0}
    ddp.register_comm_hook(calls, _counting_allreduce_hook)
    xr, yr = local_batch(x, y, rank, world_size)
    out = {}
    with ddp.no_sync():  # no all-reduce: .grad keeps this rank's gradient
        F.mse_loss(ddp(xr), yr).backward()
    out["local"] = flat_grad(model)
    model.zero_grad()
    F.mse_loss(ddp(xr), yr).backward()
    out["averaged"] = flat_grad(model)
    k = micro_batches
    for sync in (False, True):
        model.zero_grad()
        calls["calls"] = 0
        for j, (xm, ym) in enumerate(zip(xr.chunk(k), yr.chunk(k), strict=True)):
            if sync or j == k - 1:
                (F.mse_loss(ddp(xm), ym) / k).backward()
            else:
                with ddp.no_sync():
                    (F.mse_loss(ddp(xm), ym) / k).backward()
        name = "accumulated_sync" if sync else "accumulated_no_sync"
        out[name], out[name + "_calls"] = flat_grad(model), calls["calls"]
    return out


def clip_placement(rank: int, world_size: int, max_norm: float, lr: float = 0.1,
                   seed: int = 0) -> dict:
    """One SGD step on ``toy_problem`` with the gradient clipped to ``max_norm`` at two places:
    after DDP's all-reduce (``after``), or on this rank's gradient before an all-reduce that
    averages the clipped gradients (``before``). Returns each step's weight update and the
    norms the clip saw."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for place in ("after", "before"):
        model, x, y = toy_problem(seed)
        ddp = DDP(model)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        xr, yr = local_batch(x, y, rank, world_size)
        w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
        if place == "after":
            F.mse_loss(ddp(xr), yr).backward()  # DDP averages the gradients here
            norm = _clip.clip_grad_norm_(model.parameters(), max_norm)
        else:
            with ddp.no_sync():
                F.mse_loss(ddp(xr), yr).backward()
            norm = _clip.clip_grad_norm_(model.parameters(), max_norm)
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world_size
        opt.step()
        w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
        out[place] = {"update": w1 - w0, "norm_seen": float(norm)}
    return out


def sharded_clipping(rank: int, world_size: int, max_norm: float,
                     norm_types: tuple[float, ...] = (1.0, 2.0, 3.0, math.inf), seed: int = 0) -> dict:
    """Clip a sharded gradient: every rank computes ``toy_problem``'s full-batch gradient, keeps
    its ``shard`` of each tensor, and clips it with :func:`clip_grad_norm_` (the global norm).
    For comparison, ``local_norm`` clips each shard with the 2-norm of that shard alone, which
    is what ``torch.nn.utils.clip_grad_norm_`` does when given only the local tensors. Returns,
    per norm type, the norm and the clipped shards."""
    model, x, y = toy_problem(seed)
    F.mse_loss(model(x), y).backward()
    shards = [shard(p.grad, rank, world_size) for p in model.parameters()]
    out: dict[Any, Any] = {}
    for p in norm_types:
        mine = _with_grads(shards)
        norm = clip_grad_norm_(mine, max_norm, norm_type=p)
        out[p] = {"norm": float(norm), "clipped": [t.grad for t in mine]}
    mine = _with_grads(shards)
    norm = torch.nn.utils.clip_grad_norm_(mine, max_norm)
    out["local_norm"] = {"norm": float(norm), "clipped": [t.grad for t in mine]}
    return out


def fsdp_clipping(rank: int, world_size: int, max_norm: float,
                  norm_types: tuple[float, ...] = (1.0, 2.0, 3.0, math.inf), seed: int = 0) -> dict:
    """PyTorch's own sharded clipping next to :func:`clip_grad_norm_`, on ``toy_problem``.

    FSDP2: ``fully_shard`` on a CPU mesh, one backward on this rank's slice (FSDP averages the
    gradients over ranks and keeps this rank's rows), then ``torch.nn.utils.clip_grad_norm_`` on
    the DTensor parameters. FSDP1: ``FullyShardedDataParallel`` and its ``clip_grad_norm_``.
    Returns the FSDP2 gradient shards before clipping, the shapes of the local parameters of
    each, what FSDP2's norm is, and, per norm type, the norms of FSDP2, FSDP1 and gradlab, and
    the largest difference between FSDP2's and gradlab's clipped shards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    model, x, y = toy_problem(seed)
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    xr, yr = local_batch(x, y, rank, world_size)
    F.mse_loss(model(xr), yr).backward()
    params = list(model.parameters())
    shards = [p.grad.to_local().clone() for p in params]
    out: dict[Any, Any] = {"shards": shards, "fsdp2_local_shapes": [tuple(g.shape) for g in shards]}
    for p in norm_types:
        for prm, g in zip(params, shards, strict=True):
            prm.grad.to_local().copy_(g)  # restore the unclipped gradient
        dtensor_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=p)
        placements = f"{type(dtensor_norm).__name__} {dtensor_norm.placements}"
        fsdp2_norm = dtensor_norm.full_tensor()
        mine = _with_grads(shards)
        ours = clip_grad_norm_(mine, max_norm, norm_type=p)
        diff = max(_max_abs_diff(prm.grad.to_local(), t.grad) for prm, t in zip(params, mine, strict=True))
        out[p] = {"fsdp2": float(fsdp2_norm), "gradlab": float(ours), "clipped_diff": diff,
                  "fsdp2_norm_is": placements}
    model1, _, _ = toy_problem(seed)
    fsdp1 = FullyShardedDataParallel(model1, device_id=torch.device("cpu"))
    out["fsdp1_local_shapes"] = [tuple(prm.shape) for prm in fsdp1.parameters()]
    for p in norm_types:
        fsdp1.zero_grad()
        F.mse_loss(fsdp1(xr), yr).backward()
        out[p]["fsdp1"] = float(fsdp1.clip_grad_norm_(max_norm, norm_type=p))
    return out


def nan_stop(rank: int, world_size: int, use_flag: bool, nan_rank: int = 1, nan_step: int = 3,
             steps: int = 6, timeout: float = 2.0, seed: int = 0) -> dict:
    """DDP training in which rank ``nan_rank``'s batch holds a NaN at step ``nan_step``.

    Each rank checks its loss before ``backward()`` and stops on a non-finite one: on its own
    (``use_flag=False``) or through :func:`all_finite` (``use_flag=True``). Collectives of this
    run give up after ``timeout`` seconds, so a rank left waiting raises instead of hanging.
    Returns where and why the rank stopped, the end time of each step and of the wait (wall
    clock, seconds), and the final weights.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    group = dist.new_group(timeout=datetime.timedelta(seconds=timeout))
    model, x, y = toy_problem(seed)
    ddp = DDP(model, process_group=group)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xr, yr = local_batch(x, y, rank, world_size)
    dist.barrier(group)
    out = {"start": time.time(), "step_ends": [], "stopped_at": None, "reason": None,
           "waited": 0.0}
    for step in range(steps):
        xb = xr.clone()
        if rank == nan_rank and step == nan_step:
            xb[0, 0] = math.nan
        loss = F.mse_loss(ddp(xb), yr)
        ok = all_finite(loss, group) if use_flag else bool(torch.isfinite(loss))
        if not ok:
            out["stopped_at"], out["reason"] = step, "non-finite loss"
            break
        opt.zero_grad()
        start = time.perf_counter()
        try:
            loss.backward()  # DDP's all-reduce waits here for every rank of the group
        except RuntimeError as err:
            out["stopped_at"], out["waited"] = step, time.perf_counter() - start
            out["reason"] = "collective failed: " + str(err).strip().splitlines()[-1][:160]
            break
        opt.step()
        out["step_ends"].append(time.time())
    out["end"] = time.time()
    out["weights"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    # Meet on the default group before leaving: a rank that stopped stays alive (and connected)
    # until the waiting rank has timed out, so what it sees is a timeout, not a closed socket.
    dist.barrier()
    return out


def _fsdp2_norm_with_nan(rank: int, world_size: int, nan_rank: int, norm_type: float,
                         seed: int) -> float:
    """The norm ``torch.nn.utils.clip_grad_norm_`` returns for an FSDP2 model of
    ``toy_problem`` whose first gradient entry on rank ``nan_rank`` is NaN."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, x, y = toy_problem(seed)
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    xr, yr = local_batch(x, y, rank, world_size)
    F.mse_loss(model(xr), yr).backward()
    if rank == nan_rank:
        next(model.parameters()).grad.to_local()[0, 0] = math.nan
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=norm_type)
                 .full_tensor())


def nonfinite_agreement(rank: int, world_size: int, nan_rank: int = 1, seed: int = 0) -> dict:
    """What each rank sees when rank ``nan_rank`` holds a NaN: a plain MAX all-reduce of a value
    that is NaN on rank ``r`` (for each ``r``), a SUM all-reduce, :func:`all_finite`, the global
    norms of a gradient sharded as in :func:`sharded_clipping` with a NaN in that rank's shard,
    whether :func:`clip_grad_norm_` left the shards unchanged, the norm that torch's own
    clipping returns for FSDP2 with a NaN on rank ``r`` (for each ``r``), and whether DDP's
    all-reduce brings a NaN gradient from that rank to every rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict[str, Any] = {"max_nan_on": [], "sum_nan_on": []}
    for r in range(world_size):
        for op, key in ((dist.ReduceOp.MAX, "max_nan_on"), (dist.ReduceOp.SUM, "sum_nan_on")):
            t = torch.tensor([math.nan if rank == r else 1.0])
            dist.all_reduce(t, op=op)
            out[key].append(float(t))
    out["all_finite"] = all_finite(torch.tensor(math.nan if rank == nan_rank else 1.0))
    model, x, y = toy_problem(seed)
    F.mse_loss(model(x), y).backward()
    shards = [shard(p.grad, rank, world_size).clone() for p in model.parameters()]
    if rank == nan_rank:
        shards[0][0, 0] = math.nan
    mine = _with_grads(shards)
    out["norms"] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in (2.0, math.inf):
            out["norms"][p] = float(clip_grad_norm_(mine, 1e-3, norm_type=p))
    out["warned"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    out["unchanged"] = all(torch.allclose(t.grad, s, rtol=0.0, atol=0.0, equal_nan=True)
                           for t, s in zip(mine, shards, strict=True))
    try:
        clip_grad_norm_(mine, 1e-3, error_if_nonfinite=True)
        out["raised"] = None
    except RuntimeError as err:
        out["raised"] = str(err)
    out["fsdp2_nan_on"] = {p: [_fsdp2_norm_with_nan(rank, world_size, r, p, seed)
                               for r in range(world_size)] for p in (2.0, math.inf)}
    ddp = DDP(toy_problem(seed)[0])
    xr, yr = local_batch(x, y, rank, world_size)
    if rank == nan_rank:
        xr = xr.clone()
        xr[0, 0] = math.nan
    F.mse_loss(ddp(xr), yr).backward()
    out["ddp_grad_finite"] = bool(torch.isfinite(flat_grad(ddp.module)).all())
    return out


def world_of_one(rank: int, world_size: int, max_norm: float, seed: int = 0) -> dict | None:
    """:func:`clip_grad_norm_` with a process group of one rank (rank 0 only) next to
    :func:`gradlab.clip.clip_grad_norm_`: the norms and the clipped gradients of ``toy_problem``
    for norm types 1, 2, 3 and inf. Other ranks return ``None``."""
    one = dist.new_group([0])  # every rank must take part in creating a group
    if rank != 0:
        return None
    model, x, y = toy_problem(seed)
    F.mse_loss(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    out = {}
    for p in (1.0, 2.0, 3.0, math.inf):
        a, b = _with_grads(grads), _with_grads(grads)
        na = clip_grad_norm_(a, max_norm, norm_type=p, group=one)
        nb = _clip.clip_grad_norm_(b, max_norm, norm_type=p)
        out[p] = {"group_of_one": float(na), "gradlab_clip": float(nb),
                  "clipped_diff": max(_max_abs_diff(s.grad, t.grad) for s, t in zip(a, b, strict=True))}
    return out
