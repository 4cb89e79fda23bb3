"""gradlab.distributed: in one process against gradlab.clip and torch, and on 2 gloo processes
against one process doing the same work, against torch's FSDP2 and FSDP1 clipping, and for the
NaN agreement the distributed chapter shows."""

import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from gradlab import clip
from gradlab import distributed as gd

NORMS = (1.0, 2.0, 3.0, math.inf)
MAX_NORM = 0.5  # below the toy problem's gradient norm (about 2), so every clip is active
LR = 0.1
HANG_TIMEOUT = 2.0


def _with_grads(grads):
    out = []
    for g in grads:
        t = torch.zeros_like(g, requires_grad=True)
        t.grad = g.clone()
        out.append(t)
    return out


def _random_grads(g, dtype=torch.float32):
    shapes = [(int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g)))
              for _ in range(int(torch.randint(1, 5, (1,), generator=g)))]
    scale = float(10 ** (torch.rand(1, generator=g) * 4 - 2))
    return [scale * torch.randn(s, generator=g, dtype=dtype) for s in shapes]


@pytest.fixture(scope="module")
def full():
    """The toy problem's full-batch gradient, computed in this process."""
    model, x, y = gd.toy_problem()
    F.mse_loss(model(x), y).backward()
    return model, gd.flat_grad(model)


@pytest.fixture(scope="module")
def ranks():
    """Every 2-process experiment, in one launch (starting processes is the slow part)."""
    jobs = {
        "ddp": (gd.ddp_gradients, {"micro_batches": 4}),
        "place": (gd.clip_placement, {"max_norm": MAX_NORM, "lr": LR}),
        "shard": (gd.sharded_clipping, {"max_norm": MAX_NORM}),
        "fsdp": (gd.fsdp_clipping, {"max_norm": MAX_NORM}),
        "flag": (gd.nan_stop, {"use_flag": True, "timeout": HANG_TIMEOUT}),
        "no_flag": (gd.nan_stop, {"use_flag": False, "timeout": HANG_TIMEOUT}),
        "agree": (gd.nonfinite_agreement, {}),
        "one": (gd.world_of_one, {"max_norm": MAX_NORM}),
    }
    return gd.launch(gd.run_jobs, world_size=2, timeout=120.0, jobs=jobs)


def _unshard(per_rank):
    """Concatenate each tensor's rank shards along dim 0 and flatten everything."""
    return torch.cat([torch.cat(parts).flatten() for parts in zip(*per_rank, strict=True)])


# --------------------------------------------------------------------------------- one process


@pytest.mark.parametrize("p", NORMS)
def test_one_process_equals_gradlab_and_torch_clipping(p):
    g = torch.Generator().manual_seed(int(p) if math.isfinite(p) else 7)
    for _ in range(20):
        grads = _random_grads(g)
        ours, theirs, torchs = _with_grads(grads), _with_grads(grads), _with_grads(grads)
        ours.append(torch.zeros(3, requires_grad=True))  # no .grad: skipped, as torch does
        max_norm = float(torch.rand(1, generator=g)) * 2
        n_ours = gd.clip_grad_norm_(ours, max_norm, norm_type=p)
        n_gl = clip.clip_grad_norm_(theirs, max_norm, norm_type=p)
        n_torch = torch.nn.utils.clip_grad_norm_(torchs, max_norm, norm_type=p)
        assert n_ours.dtype == torch.float64
        assert float(n_ours) == pytest.approx(float(n_gl), rel=1e-6)
        assert float(n_ours) == pytest.approx(float(n_torch), rel=1e-6)
        for a, b in zip(ours, theirs, strict=False):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
        assert ours[-1].grad is None


def test_total_norm_is_the_norm_of_the_concatenation():
    g = torch.Generator().manual_seed(1)
    for p in (0.5, 1.0, 1.5, 2.0, 3.0, 7.0, math.inf):
        tensors = _random_grads(g, torch.float64)
        flat = torch.cat([t.flatten() for t in tensors])
        assert float(gd.total_norm(tensors, p)) == pytest.approx(
            float(torch.linalg.vector_norm(flat, p)), rel=1e-12)
    assert float(gd.total_norm([], 2.0)) == 0.0
    assert float(gd.total_norm([torch.zeros(3), torch.zeros(0)], 2.0)) == 0.0


@pytest.mark.parametrize("value, p", [(1e30, 2.0), (1e-30, 2.0), (3e37, 3.0), (1e-20, 3.0)])
def test_no_overflow_or_underflow_where_float32_sums_fail(value, p):
    grads = [torch.full((4,), value)]
    exact = 4 ** (1 / p) * value
    assert float(gd.total_norm(grads, p)) == pytest.approx(exact, rel=1e-6)
    # torch sums |g|^p in float32: inf or 0 here. gradlab.clip rescues the overflow (a float64
    # recomputation), not the underflow, which only leaves a gradient unclipped.
    assert float(torch.nn.utils.get_total_norm(grads, p)) in (math.inf, 0.0)
    if value > 1:
        assert float(clip.total_norm(grads, p)) == pytest.approx(exact, rel=1e-6)
    params = _with_grads(grads)
    gd.clip_grad_norm_(params, 1.0, norm_type=p)
    assert float(torch.linalg.vector_norm(params[0].grad.double(), p)) == pytest.approx(
        min(1.0, exact), rel=1e-5)


def test_torch_zeroes_gradients_on_overflow_gradlab_does_not():
    theirs, ours = _with_grads([torch.full((4,), 1e30)]), _with_grads([torch.full((4,), 1e30)])
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.all(theirs[0].grad == 0)  # the float32 norm overflowed: coefficient 0
    gd.clip_grad_norm_(ours, 1.0)
    assert float(ours[0].grad.norm()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("bad, expected", [(math.nan, math.nan), (math.inf, math.inf)])
@pytest.mark.parametrize("p", (2.0, math.inf))
def test_nonfinite_norm_leaves_gradients_and_warns_or_raises(bad, expected, p):
    grad = torch.tensor([1.0, bad, -2.0])
    params = _with_grads([grad, torch.ones(2)])
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        norm = gd.clip_grad_norm_(params, 0.1, norm_type=p)
    assert (math.isnan(float(norm)) if math.isnan(expected) else float(norm) == expected)
    torch.testing.assert_close(params[0].grad, grad, equal_nan=True)
    torch.testing.assert_close(params[1].grad, torch.ones(2))
    with pytest.raises(RuntimeError, match="skip this step"):
        gd.clip_grad_norm_(params, 0.1, norm_type=p, error_if_nonfinite=True)
    torch.testing.assert_close(params[0].grad, grad, equal_nan=True)


def test_single_process_helpers():
    assert gd.group_size() == 1
    assert gd.all_finite(torch.tensor([1.0, 2.0])) is True
    assert gd.all_finite(torch.tensor([1.0, math.nan])) is False
    assert gd.all_finite(torch.tensor(math.inf)) is False
    assert gd.all_finite(True) is True and gd.all_finite(False) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a list (not a generator) with no gradients is silent
        assert float(gd.clip_grad_norm_([torch.zeros(2, requires_grad=True)], 1.0)) == 0.0


def test_shard_splits_rows_like_torch_chunk():
    t = torch.arange(14.0).reshape(7, 2)
    parts = [gd.shard(t, r, 2) for r in range(2)]
    assert [tuple(s.shape) for s in parts] == [(4, 2), (3, 2)]
    torch.testing.assert_close(torch.cat(parts), t)
    assert gd.shard(torch.ones(1, 3), 1, 2).shape == (0, 3)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_norm": -1.0}, ValueError, "max_norm"),
    ({"max_norm": "1"}, TypeError, "max_norm"),
    ({"max_norm": math.nan}, ValueError, "max_norm"),
    ({"max_norm": 1.0, "norm_type": 0.0}, ValueError, "norm_type"),
    ({"max_norm": 1.0, "norm_type": -2.0}, ValueError, "norm_type"),
    ({"max_norm": 1.0, "norm_type": "two"}, ValueError, "norm_type"),
    ({"max_norm": 1.0, "norm_type": None}, TypeError, "norm_type"),
    ({"max_norm": 1.0, "group": "world"}, TypeError, "group"),
    ({"max_norm": 1.0, "error_if_nonfinite": 1}, TypeError, "error_if_nonfinite"),
])
def test_clip_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        gd.clip_grad_norm_(_with_grads([torch.ones(3)]), **kwargs)


def test_other_bad_input():
    with pytest.raises(TypeError, match="parameters"):
        gd.clip_grad_norm_(3.0, 1.0)
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        gd.clip_grad_norm_([torch.ones(1), "w"], 1.0)
    with pytest.raises(TypeError, match="value"):
        gd.all_finite(1.0)
    with pytest.raises(TypeError, match="group"):
        gd.all_finite(True, group=0)
    with pytest.raises(ValueError, match="norm_type"):
        gd.total_norm([torch.ones(2)], 0.0)
    with pytest.raises(TypeError, match=r"tensors\[0\]"):
        gd.total_norm([1.0])
    with pytest.raises(TypeError, match="tensors"):
        gd.total_norm(2.0)
    with pytest.raises(TypeError, match="group"):
        gd.total_norm([torch.ones(2)], group="world")
    assert float(gd.total_norm(torch.ones(4))) == 2.0  # one tensor is a list of one


def _defined_here(rank, world_size):
    return rank


def test_launch_bad_input():
    def local(rank, world_size):
        return rank

    with pytest.raises(TypeError, match="fn"):
        gd.launch(3)
    with pytest.raises(ValueError, match="top level"):
        gd.launch(local)
    with pytest.raises(ValueError, match="top level"):
        gd.launch(lambda rank, world_size: rank)
    with pytest.raises(ValueError, match="world_size"):
        gd.launch(_defined_here, world_size=0)
    with pytest.raises(ValueError, match="timeout"):
        gd.launch(_defined_here, timeout=0)
    with pytest.raises(ValueError, match="collective_timeout"):
        gd.launch(_defined_here, collective_timeout=-1.0)


def test_launch_reports_a_failing_rank():
    jobs = {"bad": (gd.sharded_clipping, {"max_norm": -1.0})}
    with pytest.raises(RuntimeError, match="rank 0 failed(.|\n)*max_norm must be >= 0"):
        gd.launch(gd.run_jobs, world_size=1, timeout=60.0, jobs=jobs)


def test_launch_forks_from_a_preloading_fork_server_where_there_is_one():
    """Ranks fork from a server that imported PRELOAD (the server ignores a module that fails to
    import, so each must import here); a platform without one spawns."""
    import importlib
    import multiprocessing as mp

    for module in gd.PRELOAD:
        importlib.import_module(module)
    expected = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    assert gd._context().get_start_method() == expected


def test_launch_stops_a_hang_at_its_timeout():
    # Rank 1 stops at step 3; rank 0 waits in backward() for up to a minute: the launcher
    # must give up after its own timeout and kill both processes.
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 4 s"):
        gd.launch(gd.run_jobs, world_size=2, timeout=4.0,
                  jobs={"hang": (gd.nan_stop, {"use_flag": False, "timeout": 60.0})})
    assert time.monotonic() - start < 20.0


def test_clip_placement_theorem_in_one_process():
    """The chapter's exercises: clipping before the average can reverse the step, no clip is
    active when every rank's norm is below the threshold, and unequal slices need their losses
    scaled by R b_r / B for DDP's plain average to give the large-batch gradient."""
    gs = [torch.tensor([10.0, 0.0]), torch.tensor([-2.0, 0.0]), torch.tensor([-2.0, 0.0])]

    def clipped(v, c):
        t = _with_grads([v])
        clip.clip_grad_norm_(t, c)
        return t[0].grad

    after = clipped(sum(gs) / 3, 1.0)
    before = sum(clipped(g, 1.0) for g in gs) / 3
    assert float(after[0]) > 0.99 and float(before[0]) < -0.33
    big = 100.0  # above every norm: both placements give the plain average
    torch.testing.assert_close(sum(clipped(g, big) for g in gs) / 3, clipped(sum(gs) / 3, big))

    model, x, y = gd.toy_problem()

    def grad_of(loss):
        model.zero_grad()
        loss.backward()
        return gd.flat_grad(model)

    slices = [(x[:32], y[:32]), (x[32:40], y[32:40])]
    target = grad_of(F.mse_loss(model(x[:40]), y[:40]))
    equal = sum(grad_of(F.mse_loss(model(a), b)) for a, b in slices) / 2
    scaled = sum(grad_of(2 * len(a) / 40 * F.mse_loss(model(a), b)) for a, b in slices) / 2
    assert float((equal - target).norm() / target.norm()) > 0.1
    assert float((scaled - target).norm() / target.norm()) < 1e-6


# ----------------------------------------------------------------------------- two processes


def test_ddp_allreduce_averages_to_the_large_batch_gradient(ranks, full):
    _, g = full
    local = [r["ddp"]["local"] for r in ranks]
    for r in ranks:
        torch.testing.assert_close(r["ddp"]["averaged"], g, rtol=0, atol=1e-6)
    torch.testing.assert_close((local[0] + local[1]) / 2, g, rtol=0, atol=1e-6)
    assert float((local[0] - g).norm()) > 0.1 * float(g.norm())  # each rank alone is off


def test_no_sync_accumulation_equals_the_large_batch(ranks, full):
    _, g = full
    for r in ranks:
        torch.testing.assert_close(r["ddp"]["accumulated_no_sync"], g, rtol=0, atol=1e-6)
        torch.testing.assert_close(r["ddp"]["accumulated_sync"], g, rtol=0, atol=1e-6)
        assert r["ddp"]["accumulated_no_sync_calls"] == 1  # one bucket, all-reduced once
        assert r["ddp"]["accumulated_sync_calls"] == 4


def test_clipping_after_the_allreduce_is_large_batch_clipping(ranks, full):
    _, g = full
    expected = -LR * g * min(1.0, MAX_NORM / (float(g.norm()) + 1e-6))
    after = [r["place"]["after"] for r in ranks]
    before = [r["place"]["before"] for r in ranks]
    for a in after:
        assert a["norm_seen"] == pytest.approx(float(g.norm()), rel=1e-6)
        torch.testing.assert_close(a["update"], expected, rtol=0, atol=1e-7)
    local_norms = [float(r["ddp"]["local"].norm()) for r in ranks]
    assert [b["norm_seen"] for b in before] == pytest.approx(local_norms, rel=1e-6)
    # both placements keep the replicas equal, but the update before the all-reduce differs
    assert torch.equal(before[0]["update"], before[1]["update"])
    rel = float((before[0]["update"] - expected).norm() / expected.norm())
    assert rel > 0.02
    # every rank's own gradient is above the threshold, so each is clipped to norm MAX_NORM; the
    # step is shorter because the two clipped gradients are not parallel: the average of two
    # vectors of norm c at angle theta has norm c * sqrt((1 + cos theta) / 2)
    assert min(local_norms) > float(g.norm()) > MAX_NORM
    assert float(before[0]["update"].norm()) < float(expected.norm())
    loc = [r["ddp"]["local"] for r in ranks]
    cos = float(loc[0] @ loc[1] / (loc[0].norm() * loc[1].norm()))
    assert cos < 0.9
    assert float(before[0]["update"].norm()) == pytest.approx(
        LR * MAX_NORM * math.sqrt((1 + cos) / 2), rel=1e-5)
    local_clipped = [r["ddp"]["local"] * min(1.0, MAX_NORM / (n + 1e-6))
                     for r, n in zip(ranks, local_norms, strict=True)]
    torch.testing.assert_close(before[0]["update"], -LR * sum(local_clipped) / 2, rtol=0, atol=1e-7)


@pytest.mark.parametrize("p", NORMS)
def test_sharded_clipping_equals_one_process_clipping(ranks, full, p):
    model, _ = full
    grads = [q.grad for q in model.parameters()]
    reference = _with_grads(grads)
    norm = clip.clip_grad_norm_(reference, MAX_NORM, norm_type=p)
    expected = torch.cat([t.grad.flatten() for t in reference])
    for r in ranks:
        assert r["shard"][p]["norm"] == pytest.approx(float(norm), rel=1e-6)
    got = _unshard([r["shard"][p]["clipped"] for r in ranks])
    assert float((got - expected).norm() / expected.norm()) < 1e-6


def test_clipping_shards_with_their_own_norms_is_wrong(ranks, full):
    model, g = full
    reference = _with_grads([q.grad for q in model.parameters()])
    clip.clip_grad_norm_(reference, MAX_NORM)
    expected = torch.cat([t.grad.flatten() for t in reference])
    got = _unshard([r["shard"]["local_norm"]["clipped"] for r in ranks])
    local = [r["shard"]["local_norm"]["norm"] for r in ranks]
    assert math.hypot(*local) == pytest.approx(float(g.norm()), rel=1e-6)  # the shards' norms
    assert float((got - expected).norm() / expected.norm()) > 0.1
    # both shards are above the threshold, so each is brought to it: norm sqrt(2) c, not c
    assert min(local) > MAX_NORM
    assert float(got.norm()) == pytest.approx(math.sqrt(2) * MAX_NORM, rel=1e-5)


@pytest.mark.parametrize("p", NORMS)
def test_sharded_clipping_matches_torch_fsdp2_and_fsdp1(ranks, full, p):
    _, g = full
    for r in ranks:
        res = r["fsdp"][p]
        assert res["gradlab"] == pytest.approx(res["fsdp2"], rel=1e-6)
        assert res["gradlab"] == pytest.approx(res["fsdp1"], rel=1e-6)
        assert res["clipped_diff"] < 1e-7
    shapes = [tuple(q.shape) for q in full[0].parameters()]
    assert [r["fsdp"]["fsdp2_local_shapes"] for r in ranks] == [
        [tuple(gd.shard(torch.empty(s), k, 2).shape) for s in shapes] for k in range(2)]
    n = sum(math.prod(s) for s in shapes)  # FSDP1: one flat vector, half on each rank
    assert [r["fsdp"]["fsdp1_local_shapes"] for r in ranks] == [[(n // 2,)], [(n - n // 2,)]]
    expected_placement = "(Partial(max),)" if math.isinf(p) else "(Replicate(),)"
    assert [r["fsdp"][p]["fsdp2_norm_is"] for r in ranks] == [f"DTensor {expected_placement}"] * 2
    # FSDP2's shards are the rows of the large-batch gradient, averaged over the ranks
    torch.testing.assert_close(_unshard([r["fsdp"]["shards"] for r in ranks]), g, rtol=0, atol=1e-6)


def test_nan_on_one_rank_without_the_flag_leaves_the_other_waiting(ranks):
    stopped, waiting = ranks[1]["no_flag"], ranks[0]["no_flag"]
    assert stopped["stopped_at"] == 3 and stopped["reason"] == "non-finite loss"
    assert waiting["stopped_at"] == 3 and waiting["reason"].startswith("collective failed")
    assert "Timed out" in waiting["reason"]
    assert 0.9 * HANG_TIMEOUT < waiting["waited"] < HANG_TIMEOUT + 3.0
    assert len(waiting["step_ends"]) == len(stopped["step_ends"]) == 3


def test_nan_on_one_rank_with_the_flag_stops_both_at_once(ranks):
    runs = [r["flag"] for r in ranks]
    for run in runs:
        assert run["stopped_at"] == 3 and run["reason"] == "non-finite loss"
        assert run["waited"] == 0.0 and len(run["step_ends"]) == 3
    assert torch.equal(runs[0]["weights"], runs[1]["weights"])  # the replicas stay equal
    assert abs(runs[0]["end"] - runs[1]["end"]) < 1.0


def test_every_rank_sees_the_nan(ranks, full):
    for r in ranks:
        a = r["agree"]
        # a plain MAX all-reduce with gloo keeps a NaN on rank 0 and drops one on rank 1
        assert math.isnan(a["max_nan_on"][0]) and a["max_nan_on"][1] == 1.0
        assert all(math.isnan(v) for v in a["sum_nan_on"])
        assert a["all_finite"] is False
        assert all(math.isnan(v) for v in a["norms"].values())
        assert len(a["warned"]) == 2 and a["unchanged"]
        assert a["raised"] is not None and "skip this step" in a["raised"]
        assert a["ddp_grad_finite"] is False  # DDP's average carries rank 1's NaN to rank 0
        # torch's own clipping of FSDP2 (gloo): the 2-norm sees the NaN, the inf-norm only on rank 0
        assert all(math.isnan(v) for v in a["fsdp2_nan_on"][2.0])
        assert math.isnan(a["fsdp2_nan_on"][math.inf][0])
        assert math.isfinite(a["fsdp2_nan_on"][math.inf][1])
    # the finite inf-norm is rank 0's own maximum: all of rank 1's shard was dropped, not only its NaN
    model, _ = full
    shards = [[gd.shard(p.grad, k, 2).clone() for p in model.parameters()] for k in range(2)]
    shards[1][0][0, 0] = 0.0
    maxes = [max(float(t.abs().max()) for t in s) for s in shards]
    assert ranks[0]["agree"]["fsdp2_nan_on"][math.inf][1] == pytest.approx(maxes[0], rel=1e-6)
    assert maxes[1] > maxes[0]


def test_group_of_one_equals_gradlab_clip(ranks):
    assert ranks[1]["one"] is None
    for p in NORMS:
        res = ranks[0]["one"][p]
        assert res["group_of_one"] == pytest.approx(res["gradlab_clip"], rel=1e-6)
        assert res["clipped_diff"] < 1e-7
