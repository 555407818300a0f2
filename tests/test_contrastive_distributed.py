"""contrastive_loss(gather_across_ranks=True) in 2 and 3 gloo processes on CPU against one process holding
the concatenated batch, by the issue's convention: the mean of the rank losses is the global loss, and each
rank's embeddings receive W × the single-process gradient of its rows (so that DDP's averaging makes a W-rank
step equal the one-process step). The comparison is shown to fail for a gather whose gradient is off by W."""

import copy
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import bembed_ext
import bembed_ext.ops.contrastive_loss as contrastive_module
from rank_processes import exit_rank_process, free_port

CONFIGS = [(3, 0, True), (3, 0, False), (2, 2, True), (2, 2, False)]  # (B per rank, hard negatives m, bidirectional)
DIM = 5


def _entry(rank, world_size, port, checks, results_dir):
    """Runs every check on this rank and records its failure message (or "ok") in results_dir."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for check in checks:
            try:
                check(rank, world_size)
                outcome = "ok"
            except AssertionError as error:
                outcome = f"rank {rank}: {error}"
            with open(os.path.join(results_dir, f"{check.__name__}.{rank}"), "w") as f:
                f.write(outcome)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_rank_process()


def _run_checks(world_size, checks, results_dir):
    """One set of processes runs all checks (process start-up dominates on small machines)."""
    mp.spawn(_entry, args=(world_size, free_port(), checks, str(results_dir)), nprocs=world_size, join=True)
    return {check.__name__: [open(os.path.join(results_dir, f"{check.__name__}.{r}")).read()
                             for r in range(world_size)] for check in checks}


def _assert_passed(results, check):
    failures = [outcome for outcome in results[check.__name__] if outcome != "ok"]
    assert not failures, "\n".join(failures)


def _rank_batches(world_size, B, m, dim, seed):
    """Every rank's (queries, documents), drawn identically on all ranks."""
    g = torch.Generator().manual_seed(seed)
    q = [F.normalize(torch.randn(B, dim, generator=g, dtype=torch.float64), dim=-1) for _ in range(world_size)]
    d = [F.normalize(torch.randn(B * (1 + m), dim, generator=g, dtype=torch.float64), dim=-1)
         for _ in range(world_size)]
    return q, d


def _concatenated(queries, documents, B):
    """The one-process batch: all queries; all positives, then all hard negatives (rank order)."""
    return torch.cat(queries), torch.cat([d[:B] for d in documents] + [d[B:] for d in documents])


def _own_rows(grad_docs, rank, world_size, B, m):
    """Rank `rank`'s document rows (its positives, then its hard negatives) of a one-process gradient."""
    negatives = world_size * B + rank * B * m
    return torch.cat([grad_docs[rank * B:(rank + 1) * B], grad_docs[negatives:negatives + B * m]])


def _max_deviation(rank, world_size, impl):
    """Largest deviation from the convention over CONFIGS, relative to the gradient scale."""
    worst = 0.0
    for seed, (B, m, bidirectional) in enumerate(CONFIGS):
        queries, documents = _rank_batches(world_size, B, m, DIM, seed)
        Q, D = (t.requires_grad_() for t in _concatenated(queries, documents, B))
        kw = dict(temperature=0.1, bidirectional=bidirectional, impl=impl)
        whole = bembed_ext.contrastive_loss(Q, D, **kw)
        grad_Q, grad_D = torch.autograd.grad(whole, (Q, D))

        q, d = queries[rank].requires_grad_(), documents[rank].requires_grad_()
        mine = bembed_ext.contrastive_loss(q, d, gather_across_ranks=True, **kw)
        grad_q, grad_d = torch.autograd.grad(mine, (q, d))
        mean = mine.detach().clone()
        dist.all_reduce(mean)
        mean /= world_size

        scale = max(grad_Q.abs().max().item(), grad_D.abs().max().item()) * world_size
        worst = max(worst, (mean - whole).abs().item() / whole.abs().item(),
                    (grad_q - world_size * grad_Q[rank * B:(rank + 1) * B]).abs().max().item() / scale,
                    (grad_d - world_size * _own_rows(grad_D, rank, world_size, B, m)).abs().max().item() / scale)
    return worst


def _check_matches_single_process(rank, world_size):
    for impl in ("kernel", "reference"):
        deviation = _max_deviation(rank, world_size, impl)
        assert deviation < 1e-12, f"rank {rank}, {impl}: relative deviation {deviation:.3e}"




# ----------------------------------------------------------------------------------------------------
# The classic bugs, injected: the check must catch them
# ----------------------------------------------------------------------------------------------------

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # named so since 2.13


class _MeanReduceGather(torch.autograd.Function):
    """All-gather whose backward averages instead of summing: gradients W× too small."""

    @staticmethod
    def forward(ctx, x):
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        bembed_ext.distributed._all_gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad_out):
        world_size = dist.get_world_size()
        grad = grad_out.new_empty((grad_out.shape[0] // world_size, *grad_out.shape[1:]))
        _reduce_scatter(grad, grad_out.contiguous())
        return grad / world_size


def _local_slice_gather(x):
    """The other classic: gathered copies carry no gradient, only the local rows do."""
    rows = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, x.contiguous())
    rows[dist.get_rank()] = x
    return torch.cat(rows)


def _check_bad_gathers_are_caught(rank, world_size):
    for bad in (_MeanReduceGather.apply, _local_slice_gather):
        contrastive_module.all_gather_rows = bad
        deviation = _max_deviation(rank, world_size, "kernel")
        assert deviation > 0.1, f"{bad}: a wrong gather gradient went unnoticed (deviation {deviation:.3e})"
    # Sanity of the injection: the mean-reduce variant is off by exactly the factor W.
    contrastive_module.all_gather_rows = _MeanReduceGather.apply
    queries, documents = _rank_batches(world_size, 3, 1, DIM, 0)
    q, d = queries[rank].requires_grad_(), documents[rank].requires_grad_()
    wrong = torch.autograd.grad(bembed_ext.contrastive_loss(q, d, gather_across_ranks=True), (q, d))
    contrastive_module.all_gather_rows = bembed_ext.distributed.all_gather_rows
    right = torch.autograd.grad(bembed_ext.contrastive_loss(q, d, gather_across_ranks=True), (q, d))
    for w, r in zip(wrong, right):
        torch.testing.assert_close(w * world_size, r)




# ----------------------------------------------------------------------------------------------------
# A DDP training step of a tiny encoder equals the one-process step
# ----------------------------------------------------------------------------------------------------

def _train_step(model, raw_queries, raw_documents, **loss_kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    embed = lambda x: F.normalize(model(x), dim=-1)  # noqa: E731
    loss = bembed_ext.contrastive_loss(embed(raw_queries), embed(raw_documents), temperature=0.1, **loss_kwargs)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _ddp_parameters(rank, world_size, gather):
    """Parameters after one DDP step (world_size ranks) and after the one-process step on the whole batch."""
    B, m, raw_dim = 4, 1, 7
    torch.manual_seed(0)
    encoder = torch.nn.Linear(raw_dim, DIM, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    raw_q = [torch.randn(B, raw_dim, generator=g, dtype=torch.float64) for _ in range(world_size)]
    raw_d = [torch.randn(B * (1 + m), raw_dim, generator=g, dtype=torch.float64) for _ in range(world_size)]

    single = copy.deepcopy(encoder)
    _train_step(single, *_concatenated(raw_q, raw_d, B))

    contrastive_module.all_gather_rows = gather
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(encoder))
    _train_step(ddp, raw_q[rank], raw_d[rank], gather_across_ranks=True)
    contrastive_module.all_gather_rows = bembed_ext.distributed.all_gather_rows
    changed = max((p - p0).abs().max().item() for p, p0 in zip(single.parameters(), encoder.parameters()))
    differ = max((p - q).abs().max().item() for p, q in zip(ddp.module.parameters(), single.parameters()))
    return changed, differ


def _check_ddp_step(rank, world_size):
    changed, differ = _ddp_parameters(rank, world_size, bembed_ext.distributed.all_gather_rows)
    assert changed > 1e-3, "the step must move the parameters for the comparison to mean anything"
    assert differ < 1e-12 * max(1.0, changed), f"DDP step differs from the one-process step by {differ:.3e}"
    _, wrong = _ddp_parameters(rank, world_size, _MeanReduceGather.apply)
    assert wrong > 0.1 * changed, f"a W-scaled gather gradient went unnoticed by the DDP check ({wrong:.3e})"


def _check_gather_warns_nothing(rank, world_size):
    """torch 2.13 renamed its differentiable gather and warns on the old name: every training step's loss would
    print a FutureWarning (once per process) that is not the user's to act on."""
    from bembed_ext.distributed import all_gather_rows

    x = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        all_gather_rows(x).mul(2).sum().backward()
    assert not caught, [str(w.message) for w in caught]


def _check_gather_takes_a_strided_gradient(rank, world_size):
    """`gathered.sum()` sends back an expanded gradient (stride 0), which torch 2.11's reduce-scatter backward
    refused ("Expected input.is_contiguous()"), eager and compiled: each rank's rows get one 1 per rank. The
    gathered tensor stays an ordinary one, which may be modified in place (an identity autograd.Function's view
    may not)."""
    from bembed_ext.distributed import all_gather_rows

    def doubled_sum(x):
        gathered = all_gather_rows(x)
        gathered.mul_(2)
        return gathered.sum()

    cases = [(lambda x: all_gather_rows(x).sum(), 1), (torch.compile(lambda x: all_gather_rows(x).sum(),
                                                                      fullgraph=True, backend="aot_eager"), 1),
             (doubled_sum, 2)]
    for fn, factor in cases:
        x = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
        fn(x).backward()
        assert torch.equal(x.grad, torch.full_like(x, factor * world_size)), x.grad


def _check_uneven_shapes_are_refused(rank, world_size):
    """A batch one row shorter, or in another dtype, on the last rank: every rank gets the ValueError (gloo
    aborted the process)."""
    q, d = _rank_batches(world_size, 3, 1, DIM, seed=5)
    queries = q[rank][:2] if rank == world_size - 1 else q[rank]
    documents = d[rank][:4] if rank == world_size - 1 else d[rank]
    try:
        bembed_ext.contrastive_loss(queries, documents, gather_across_ranks=True)
    except ValueError as error:
        assert "'queries' must have the same shape on every rank" in str(error) and "(2, 5)" in str(error), error
    else:
        raise AssertionError("uneven shapes across ranks were not refused")
    # the same shapes in another dtype on the last rank: as many rows, other byte counts (gloo aborted)
    if rank == world_size - 1:
        q[rank], d[rank] = q[rank].float(), d[rank].float()
    try:
        bembed_ext.contrastive_loss(q[rank], d[rank], gather_across_ranks=True)
    except ValueError as error:
        assert "'queries' must have the same dtype on every rank" in str(error), error
        assert "rank 1 has torch.float32, rank 0 torch.float64" in str(error), error
    else:
        raise AssertionError("different dtypes across ranks were not refused")


def _check_compiled_gather_matches_eager(rank, world_size):
    """torch.compile(fullgraph=True) traces the gather and its layout check (runtime asserts in the graph, where
    eager reads the gathered layouts on the host): the same loss and gradients as eager, and uneven shapes refused."""
    q, d = _rank_batches(world_size, 3, 1, DIM, seed=11)
    loss_fn = lambda a, b: bembed_ext.contrastive_loss(a, b, gather_across_ranks=True)  # noqa: E731
    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True), loss_fn):
        queries, documents = q[rank].clone().requires_grad_(), d[rank].clone().requires_grad_()
        loss = fn(queries, documents)
        loss.backward()
        results.append((loss.detach(), queries.grad, documents.grad))
    for name, compiled, eager in zip(("loss", "grad queries", "grad documents"), *results):
        torch.testing.assert_close(compiled, eager, msg=name)
    # a row fewer on the last rank: the graph's layout asserts stop every rank before the gathers (a RuntimeError)
    rows = 2 if rank == world_size - 1 else 3
    try:
        torch.compile(loss_fn, fullgraph=True)(q[rank][:rows], d[rank][:2 * rows])
    except RuntimeError:
        pass
    else:
        raise AssertionError("a compiled gather of uneven shapes was not refused")


# ----------------------------------------------------------------------------------------------------
# The tests: one set of 2 processes and one of 3
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    checks = [_check_matches_single_process, _check_bad_gathers_are_caught, _check_ddp_step,
              _check_uneven_shapes_are_refused, _check_compiled_gather_matches_eager, _check_gather_warns_nothing,
              _check_gather_takes_a_strided_gradient]
    return _run_checks(2, checks, tmp_path_factory.mktemp("two_ranks"))


def test_two_ranks_match_one_process_with_concatenated_batch(two_ranks):
    _assert_passed(two_ranks, _check_matches_single_process)


def test_three_ranks_match_one_process_with_concatenated_batch(tmp_path):
    _assert_passed(_run_checks(3, [_check_matches_single_process], tmp_path), _check_matches_single_process)


def test_check_catches_world_size_scaled_gradient(two_ranks):
    _assert_passed(two_ranks, _check_bad_gathers_are_caught)


def test_ddp_step_equals_one_process_step(two_ranks):
    _assert_passed(two_ranks, _check_ddp_step)


def test_uneven_shapes_across_ranks_are_refused(two_ranks):
    _assert_passed(two_ranks, _check_uneven_shapes_are_refused)


def test_compiled_gather_matches_eager(two_ranks):
    _assert_passed(two_ranks, _check_compiled_gather_matches_eager)


def test_gather_warns_nothing(two_ranks):
    _assert_passed(two_ranks, _check_gather_warns_nothing)


def test_gather_takes_a_strided_gradient(two_ranks):
    _assert_passed(two_ranks, _check_gather_takes_a_strided_gradient)
