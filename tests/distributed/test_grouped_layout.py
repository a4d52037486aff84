"""The paper's grouped layout: group g trains super-class g and owns sub-head g only."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from deepercluster import distributed
from deepercluster.engine.layout import build_layout, sync_gradients
from deepercluster.engine.train import Targets, train_one_epoch
from deepercluster.losses import hierarchical_loss
from deepercluster.models import HierarchicalHeads, convert_sync_batchnorm, small_convnet
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

S, N_SUB, PER_RANK, RES = 4, 5, 4, 16


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(S * PER_RANK, 3, RES, RES, generator=g)
    subs = torch.randint(0, N_SUB, (S * PER_RANK,), generator=g)
    return images, subs


def _build(owned: list[int] | None) -> tuple[torch.nn.Module, HierarchicalHeads]:
    torch.manual_seed(0)
    model = small_convnet(sobel=False, resolution=RES, feature_dim=16)
    heads = HierarchicalHeads(16, S, N_SUB, owned=owned)
    heads.reset_parameters(torch.Generator().manual_seed(3))
    return model, heads


def _grouped_step(rank: int, world: int) -> dict[str, Any]:
    env = distributed.init_from_env("cpu")
    layout = build_layout(env, layout="grouped", n_super=S, n_sub=N_SUB, dim=16)
    model, heads = _build(layout.owned())
    model = convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD([*model.parameters(), *heads.parameters()], lr=0.1)
    images, subs = _data()
    rows = torch.arange(rank * PER_RANK, (rank + 1) * PER_RANK)
    # this rank's batch: all of super-class g = rank (rotation r = g, one super-cluster)
    batch = (images[rows], rows, torch.full((PER_RANK,), rank), [""] * PER_RANK)
    targets = Targets(torch.zeros(S * PER_RANK, dtype=torch.int64), subs, 1, True)
    sync = functools.partial(
        sync_gradients,
        layout,
        [*model.parameters(), *heads.super_head.parameters()],
        [heads.sub_weight, heads.sub_bias],
    )
    train_one_epoch(
        model, heads, [batch], optimizer, targets=targets, lrs=np.array([0.1]),
        device=torch.device("cpu"), image_shape=(3, RES, RES), sync=sync, progress=False,
    )  # fmt: skip
    weight, bias = heads.sub_head(rank)
    return {
        "owned": layout.owned(),
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "super": {k: v.clone() for k, v in heads.super_head.state_dict().items()},
        "sub": (weight.detach().clone(), bias.detach().clone()),
    }


def test_grouped_step_matches_the_reference_update() -> None:
    results = run_ranks(_grouped_step, S)
    # Reference in one process: all heads, the union batch; the body and super head follow the
    # mean loss over all images, sub-head g the mean over its group's images (x S here).
    torch.set_num_threads(1)
    model, heads = _build(None)
    optimizer = torch.optim.SGD([*model.parameters(), *heads.parameters()], lr=0.1)
    images, subs = _data()
    supers = torch.arange(S).repeat_interleave(PER_RANK)
    out = hierarchical_loss(heads, model(images), supers, subs)
    optimizer.zero_grad()
    out.loss.backward()
    for p in (heads.sub_weight, heads.sub_bias):
        assert p.grad is not None
        p.grad.mul_(S)
    optimizer.step()
    for rank, res in enumerate(results):
        assert res["owned"] == [rank]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(res["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        for key, value in heads.super_head.state_dict().items():
            torch.testing.assert_close(res["super"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        weight, bias = heads.sub_head(rank)
        torch.testing.assert_close(res["sub"][0], weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res["sub"][1], bias.detach(), rtol=1e-4, atol=1e-5)
