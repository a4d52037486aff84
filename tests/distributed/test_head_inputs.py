"""The statistics the centroid head start reads, summed over ranks that each hold a shard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deepercluster.cluster import Blocks
from deepercluster.engine.head_start import head_inputs
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

M, N_SUB, N, D = 2, 3, 50, 6


def _data() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(N, D)).astype(np.float32))
    return x, rng.integers(0, M, N), rng.integers(0, N_SUB, N)


def _shard(rank: int, world: int) -> list[torch.Tensor]:
    x, sup, sub = _data()
    rows = np.array_split(np.arange(N), world)[rank]  # uneven shards, in rank order
    got = head_inputs(Blocks(x[rows], block_rows=4), sup[rows], sub[rows], m=M, n_sub=N_SUB)
    return list(dataclasses.astuple(got))


def test_sharded_statistics_equal_one_process() -> None:
    x, sup, sub = _data()
    whole = dataclasses.astuple(head_inputs(Blocks(x), sup, sub, m=M, n_sub=N_SUB))
    for got in run_ranks(_shard, 3):
        for a, b in zip(got, whole, strict=True):
            torch.testing.assert_close(a, b)
