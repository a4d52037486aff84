"""Collectives on 2 and 4 gloo ranks, and their identity behaviour in a single process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepercluster import distributed
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed


# A gradient stored transposed, as the heads' sub-heads are.
_BASE = torch.arange(24.0).view(2, 4, 3).transpose(1, 2)


def _reduce_grads(rank: int) -> dict[str, object]:
    # One parameter stored transposed (e.g. channels_last weights), one plain, one without
    # a gradient on odd ranks.
    stored_t = torch.nn.Parameter(torch.zeros(2, 4, 3).transpose(1, 2))
    plain = torch.nn.Parameter(torch.zeros(5))
    absent = torch.nn.Parameter(torch.zeros(2, 2))
    stored_t.grad = _BASE * (rank + 1)
    plain.grad = torch.full((5,), float(rank))
    if rank % 2 == 0:
        absent.grad = torch.ones(2, 2)
    distributed.all_reduce_grads([stored_t, plain, absent])
    assert stored_t.grad is not None and plain.grad is not None and absent.grad is not None
    return {
        "stored_t": stored_t.grad.tolist(),
        "plain": plain.grad.tolist(),
        "absent": absent.grad.tolist(),
    }


def _collectives(rank: int, world: int) -> dict[str, object]:
    local = torch.full((rank + 1, 2), float(rank))  # ranks hold different numbers of rows
    return {
        "grads": _reduce_grads(rank),
        "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0])).item(),
        "sum_np": distributed.all_reduce_sum_np(np.array([rank, 1], dtype=np.int64)).tolist(),
        "gather": distributed.all_gather_cat(local).tolist(),
        "gather_np": distributed.all_gather_cat_np(np.array([rank])).tolist(),
        "object": distributed.broadcast_object({"rank": rank}),
        "all_ok": distributed.all_ranks_ok(True),
        "one_bad": distributed.all_ranks_ok(rank != world - 1),
        "rank": distributed.rank(),
        "world": distributed.world_size(),
    }


@pytest.mark.parametrize("world", [2, 4])
def test_collectives_across_ranks(world: int) -> None:
    results = run_ranks(_collectives, world)
    expected_gather = [[float(r), float(r)] for r in range(world) for _ in range(r + 1)]
    for rank, res in enumerate(results):
        assert res["sum"] == world * (world + 1) / 2
        assert res["sum_np"] == [world * (world - 1) // 2, world]
        assert res["gather"] == expected_gather  # rank order, uneven sizes
        assert res["gather_np"] == list(range(world))
        assert res["object"] == {"rank": 0}
        assert res["all_ok"] is True and res["one_bad"] is False
        assert (res["rank"], res["world"]) == (rank, world)
        # all_reduce_grads sums, whatever the parameter's memory layout.
        grads = res["grads"]
        assert isinstance(grads, dict)
        assert grads["stored_t"] == (_BASE * (world * (world + 1) // 2)).tolist()
        assert grads["plain"] == [float(world * (world - 1) // 2)] * 5
        assert grads["absent"] == [[float((world + 1) // 2)] * 2] * 2


def test_single_process_collectives_are_the_identity() -> None:
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.all_gather_cat(t) is t
    assert distributed.broadcast_object("x") == "x"
    assert distributed.rank() == 0 and distributed.world_size() == 1
    env = distributed.init_from_env("cpu")
    assert env.world_size == 1 and env.backend is None and env.is_main
