"""SyncBatchNorm2d on gloo ranks equals nn.BatchNorm2d on the whole batch in one process.

A small conv net trains for two SGD steps on N ranks, each holding its own rows of one fixed
batch, and in a single process on all the rows. Outputs, gradients (summed over ranks and
divided by N, as DDP does) and running statistics must agree. The second step normalises with a
running mean that has moved, so it checks the shifted variance formula with a non-zero shift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepercluster import distributed
from deepercluster.models import SyncBatchNorm2d, convert_sync_batchnorm
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

STEPS = 2
UNEVEN = (3, 5, 2, 6)  # rows per rank; the global statistics must weight ranks by count
HALVES = (4, 4)
CASES = {  # name -> (dtype, channels_last, rtol/atol)
    "float64": (torch.float64, False, 1e-10),
    "float32-channels-last": (torch.float32, True, 1e-5),
}


def _net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6, momentum=None),  # cumulative average: counts batches, not just rows
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    ).to(dtype)


def _batch(n: int, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.5
    return x.to(dtype), torch.randint(0, 5, (n,), generator=gen)


def _train(
    model: nn.Module, x: Tensor, y: Tensor, *, scale: float, reduce: Callable[[Tensor], Tensor]
) -> dict[str, Any]:
    """``STEPS`` SGD steps on loss = scale * sum of cross-entropies; what each step produced."""
    outputs, grads = [], []
    params = dict(model.named_parameters())
    for _ in range(STEPS):
        model.zero_grad()
        out = model(x)
        (F.cross_entropy(out, y, reduction="sum") * scale).backward()
        # One collective for all gradients: on shared cores every collective is a rendezvous.
        flat = reduce(
            torch.cat([p.grad.reshape(-1) for p in params.values() if p.grad is not None])
        )
        step = dict(zip(params, flat.split([p.numel() for p in params.values()]), strict=True))
        with torch.no_grad():
            for n, p in params.items():
                p -= 0.1 * step[n].view_as(p)
        outputs.append(out.detach())
        grads.append(step)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return {"outputs": outputs, "grads": grads, "buffers": buffers}


def _shard(
    rank: int, sizes: tuple[int, ...], group: distributed.ProcessGroup | None, seed: int
) -> dict[str, Any]:
    """Every case trained on this rank's rows, batch norm pooled over ``group``."""
    world = len(sizes)
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    results: dict[str, Any] = {}
    for name, (dtype, channels_last, _) in CASES.items():
        model = convert_sync_batchnorm(_net(dtype), group)
        assert sum(isinstance(m, SyncBatchNorm2d) for m in model.modules()) == 2
        x, y = _batch(sum(sizes), dtype, seed)
        x = x[rows].to(memory_format=torch.channels_last) if channels_last else x[rows]
        # Each rank's loss is its rows' share of the global mean times world, so that DDP's
        # average of the rank gradients is the gradient of the global mean even for uneven sizes.
        results[name] = _train(
            model,
            x,
            y[rows],
            scale=world / sum(sizes),
            reduce=lambda g: distributed.all_reduce_sum(g, group) / world,
        )
    return results


def _four_ranks(rank: int, world: int) -> dict[str, Any]:
    # Spawning dominates the cost (seconds per process), so one 4-rank job runs both setups:
    # all ranks with uneven batches, then two pairs {0, 1}, {2, 3}, each splitting its own
    # batch (seeds 2 and 3) in halves: a statistic leaking from one pair to the other shows.
    pairs = [distributed.new_group([0, 1]), distributed.new_group([2, 3])]
    return {
        "all": _shard(rank, UNEVEN, None, seed=1),
        "pair": _shard(rank % 2, HALVES, pairs[rank // 2], seed=2 + rank // 2),
    }


@pytest.fixture(scope="module")
def four_ranks() -> list[dict[str, Any]]:
    return run_ranks(_four_ranks, len(UNEVEN))


def _check(shards: list[dict[str, Any]], sizes: tuple[int, ...], seed: int) -> None:
    """Rank r's results equal the single-process run's rows of rank r, gradients, buffers."""
    bounds = torch.tensor((0, *sizes)).cumsum(0).tolist()
    for name, (dtype, _, tol) in CASES.items():
        x, y = _batch(sum(sizes), dtype, seed)
        want = _train(_net(dtype), x, y, scale=1 / sum(sizes), reduce=lambda g: g)
        for rank, got in enumerate(s[name] for s in shards):
            for step in range(STEPS):
                rows = want["outputs"][step][bounds[rank] : bounds[rank + 1]]
                torch.testing.assert_close(got["outputs"][step], rows, rtol=tol, atol=tol)
                torch.testing.assert_close(
                    got["grads"][step], want["grads"][step], rtol=tol, atol=tol
                )
            assert list(got["buffers"]) == list(want["buffers"])
            for key, buf in want["buffers"].items():
                torch.testing.assert_close(got["buffers"][key], buf, rtol=tol, atol=tol)
                if key.endswith("num_batches_tracked"):
                    assert int(got["buffers"][key]) == STEPS


def test_two_ranks_equal_halves_match_one_process(four_ranks: list[dict[str, Any]]) -> None:
    # Each pair is a 2-rank job of its own: its statistics must not leak into the other pair.
    _check([r["pair"] for r in four_ranks[:2]], HALVES, seed=2)
    _check([r["pair"] for r in four_ranks[2:]], HALVES, seed=3)


def test_four_ranks_uneven_sizes_are_weighted_by_count(four_ranks: list[dict[str, Any]]) -> None:
    _check([r["all"] for r in four_ranks], UNEVEN, seed=1)
