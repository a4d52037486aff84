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


def _batch(n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.5
    return x.to(dtype), torch.randint(0, 5, (n,), generator=gen)


def _train(
    model: nn.Module, x: Tensor, y: Tensor, *, scale: float, reduce: Callable[[Tensor], Tensor]
) -> dict[str, Any]:
    """``STEPS`` SGD steps on loss = scale * sum of cross-entropies; what each step produced."""
    outputs, grads = [], []
    for _ in range(STEPS):
        model.zero_grad()
        out = model(x)
        (F.cross_entropy(out, y, reduction="sum") * scale).backward()
        step = {n: reduce(p.grad) for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= 0.1 * step[n]
        outputs.append(out.detach())
        grads.append(step)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return {"outputs": outputs, "grads": grads, "buffers": buffers}


def _ranks_train(rank: int, world: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    lo = sum(sizes[:rank])
    rows = slice(lo, lo + sizes[rank])
    results: dict[str, Any] = {}
    for name, (dtype, channels_last, _) in CASES.items():
        model = convert_sync_batchnorm(_net(dtype))
        assert sum(isinstance(m, SyncBatchNorm2d) for m in model.modules()) == 2
        x, y = _batch(sum(sizes), dtype)
        x = x[rows].to(memory_format=torch.channels_last) if channels_last else x[rows]
        # Each rank's loss is its rows' share of the global mean times world, so that DDP's
        # average of the rank gradients is the gradient of the global mean even for uneven sizes.
        results[name] = _train(
            model,
            x,
            y[rows],
            scale=world / sum(sizes),
            reduce=lambda g: distributed.all_reduce_sum(g) / world,
        )
    return results


def _check(sizes: tuple[int, ...]) -> None:
    ranks = run_ranks(_ranks_train, len(sizes), sizes)
    bounds = torch.tensor((0, *sizes)).cumsum(0).tolist()
    for name, (dtype, _, tol) in CASES.items():
        x, y = _batch(sum(sizes), dtype)
        want = _train(_net(dtype), x, y, scale=1 / sum(sizes), reduce=lambda g: g)
        for rank, got in enumerate(r[name] for r in ranks):
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


def test_two_ranks_equal_halves_match_one_process() -> None:
    _check((4, 4))


def test_four_ranks_uneven_sizes_are_weighted_by_count() -> None:
    _check((3, 5, 2, 6))
