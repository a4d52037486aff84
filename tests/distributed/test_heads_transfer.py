"""Checkpoint traffic under distribution: sub-heads move as tensors, one slice per group.

Rank 0 assembles the full (S, k/m, D) heads from the groups' first ranks and, on resume,
each rank receives only its own super-class's slice; big checkpoint arrays are broadcast as
chunked tensors, bool included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from deepercluster import distributed
from deepercluster.engine.layout import build_layout, full_heads_state, load_heads_state
from deepercluster.models import HierarchicalHeads
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

S, N_SUB, DIM = 4, 6, 5


def _reference() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return (
        torch.randn(S, N_SUB, DIM, generator=g),
        torch.randn(S, N_SUB, generator=g),
        torch.randn(S, N_SUB, DIM, generator=g),
        torch.randn(S, N_SUB, generator=g),
    )


def _heads_and_optimizer(owned: list[int] | None) -> tuple[HierarchicalHeads, Any]:
    heads = HierarchicalHeads(DIM, S, N_SUB, owned=owned)
    heads.reset_parameters(torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1, momentum=0.9)
    return heads, optimizer


def _round_trip(rank: int, world: int, layout_name: str) -> dict[str, Any]:
    env = distributed.init_from_env("cpu")
    layout = build_layout(env, layout=layout_name, n_super=S, n_sub=N_SUB, dim=DIM)
    weight, bias, m_weight, m_bias = _reference()
    # Resume: only rank 0 holds the file's full-shape states.
    saved = None
    if rank == 0:
        full, full_opt = _heads_and_optimizer(None)
        with torch.no_grad():
            full.sub_weight.copy_(weight)
            full.sub_bias.copy_(bias)
            full.super_head.weight.fill_(0.5)  # differs from every rank's own init
        heads_state = full.state_dict()
        opt_state = full_opt.state_dict()
        names = [n for n, _ in full.named_parameters()]
        opt_state["state"] = {
            names.index("sub_weight"): {"momentum_buffer": m_weight.clone()},
            names.index("sub_bias"): {"momentum_buffer": m_bias.clone()},
        }
        saved = (heads_state, opt_state)
    heads, optimizer = _heads_and_optimizer(layout.owned())
    load_heads_state(heads, optimizer, saved, layout)
    loaded = {
        "sub_weight": heads.sub_weight.detach().clone(),
        "momentum": optimizer.state[heads.sub_weight]["momentum_buffer"].clone(),
        "super": heads.super_head.weight.detach().clone(),
    }
    # Checkpoint again: rank 0 must rebuild exactly the full states it started from.
    back = full_heads_state(heads, optimizer, layout)
    tree = distributed.broadcast_tree(
        {
            "labels": np.arange(300_000, dtype=np.int64) * (rank == 0),
            "valid": np.arange(300_000) % 3 == 0 if rank == 0 else None,
            "model": {"w": torch.full((600, 600), float(rank == 0))},
            "small": rank,
        },
        min_bytes=1000,
    )
    return {
        "owned": layout.owned(),
        "loaded": loaded,
        "back": None if back is None else (back[0]["sub_weight"], back[1]["state"]),
        "tree_ok": bool(
            tree["small"] == 0
            and np.array_equal(tree["labels"], np.arange(300_000))
            and np.array_equal(tree["valid"], np.arange(300_000) % 3 == 0)
            and torch.equal(tree["model"]["w"], torch.ones(600, 600))
        ),
    }


@pytest.mark.parametrize("layout_name", ["grouped", "replicated"])
def test_heads_resume_and_checkpoint_on_four_ranks(layout_name: str) -> None:
    results = run_ranks(_round_trip, 4, layout_name)
    weight, _, m_weight, m_bias = _reference()
    for rank, res in enumerate(results):
        assert res["tree_ok"], f"rank {rank} received a wrong broadcast_tree"
        if layout_name == "grouped":
            assert res["owned"] == [rank]  # 4 ranks, 4 super-classes: one rank per group
            torch.testing.assert_close(res["loaded"]["sub_weight"], weight[rank : rank + 1])
            torch.testing.assert_close(res["loaded"]["momentum"], m_weight[rank : rank + 1])
        else:
            torch.testing.assert_close(res["loaded"]["sub_weight"], weight)
            torch.testing.assert_close(res["loaded"]["momentum"], m_weight)
        assert bool((res["loaded"]["super"] == 0.5).all())
        assert (res["back"] is None) == (rank != 0)
    sub_weight, opt_state = results[0]["back"]
    torch.testing.assert_close(sub_weight, weight)
    buffers = sorted((v["momentum_buffer"] for v in opt_state.values()), key=lambda t: t.dim())
    torch.testing.assert_close(buffers[0], m_bias)
    torch.testing.assert_close(buffers[1], m_weight)
