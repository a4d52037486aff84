"""How the processes of a run share the training: replicated heads or the paper's groups.

Replicated (any number of processes): every rank holds all heads and trains on its slice of
every global batch; gradients are summed over all ranks, so the result equals one process with
the whole batch.

Grouped (DeeperCluster, ALGORITHM.md section 6; processes a multiple of S): training group g
trains super-class g = (rotation, super-cluster) only and holds only sub-head g. The body and
the super-class head are reduced over all ranks, sub-head g only inside group g. Checkpoints
stay in the replicated (full) shapes, so a run can resume on any layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepercluster import distributed
from deepercluster.distributed import DistEnv, ProcessGroup
from deepercluster.engine.group_plan import GroupPlan, plan_groups
from deepercluster.log import get_logger
from deepercluster.models import HierarchicalHeads

log = get_logger("layout")


@dataclass(frozen=True)
class TrainingLayout:
    """This rank's place in the plan.

    Attributes:
        plan: the layout of the whole job.
        rank: this process's global rank.
        group: this rank's training group (grouped layout), else None.
        clustering_groups: the level-2 group of each super-cluster (grouped layout, m > 1).
    """

    plan: GroupPlan
    rank: int
    group: ProcessGroup | None = None
    clustering_groups: tuple[ProcessGroup | None, ...] = ()

    @property
    def super_class(self) -> int | None:
        """The super-class this rank trains (grouped), or None (all of them)."""
        return self.plan.super_class_of(self.rank) if self.plan.grouped else None

    @property
    def share(self) -> tuple[int, int]:
        """(index, count) of this rank among the processes sharing its sampling plan."""
        size = self.plan.group_size
        return self.rank % size, size

    def owned(self) -> list[int] | None:
        g = self.super_class
        return None if g is None else [g]


def build_layout(
    env: DistEnv, *, layout: str, n_super: int, n_sub: int, dim: int, n_super_clusters: int = 1
) -> TrainingLayout:
    """Plan the layout, create the process groups (a collective), and log the choice."""
    plan = plan_groups(
        env.world_size,
        n_super,
        layout=layout,
        head_bytes=n_super * n_sub * dim * 4,
        n_super_clusters=n_super_clusters,
    )
    training, clustering = distributed.make_groups(plan.training_groups(), plan.clustering_groups())
    group = training[plan.super_class_of(env.rank)] if plan.grouped else None
    if env.world_size > 1:
        log.info(
            "layout: %s (%s)%s",
            plan.layout,
            plan.reason,
            f"; level 2 of k-means in {len(clustering)} clustering groups" if clustering else "",
        )
    return TrainingLayout(plan, env.rank, group, tuple(clustering))


def sync_gradients(
    layout: TrainingLayout,
    shared: list[nn.Parameter],
    sub: list[nn.Parameter],
    n_local: int,
    n_step: int,
) -> None:
    """Sum gradients over the ranks that share each parameter.

    Each rank's loss was divided by the step's global image count ``n_step``. Body and
    super-class head: summed over all ranks. Sub-head g (grouped): summed inside group g,
    then rescaled to the mean over the group's images, as the reference averages it there.
    """
    if layout.plan.world_size == 1:
        return
    if not layout.plan.grouped:
        distributed.all_reduce_grads([*shared, *sub])
        return
    distributed.all_reduce_grads(shared)
    n_group = int(distributed.all_reduce_sum(torch.tensor([n_local]), layout.group))
    distributed.all_reduce_grads(sub, layout.group)
    for p in sub:
        if p.grad is not None:
            p.grad.mul_(n_step / max(n_group, 1))


def full_heads_state(
    heads: HierarchicalHeads, optimizer: torch.optim.Optimizer, layout: TrainingLayout
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Heads and optimizer state in the replicated shapes, on rank 0 (None elsewhere).

    In the grouped layout, the first rank of each group sends its sub-head (weights and
    momentum) to rank 0 as tensors, one after the other, and rank 0 writes them into the
    (S, k/m, D) CPU tensors: at the paper's k = 320,000 this is ~21 GB with momentum, so it
    never goes through a pickle or a whole-head GPU buffer. Every rank must call this.
    """
    if not layout.plan.grouped:
        return (heads.state_dict(), optimizer.state_dict()) if layout.rank == 0 else None
    g = layout.super_class
    assert g is not None
    owners = [ranks[0] for ranks in layout.plan.training_groups()]
    m_weight, m_bias = _momenta(heads, optimizer)
    # Momentum is missing before the first step; keep the state consistent over all groups.
    flags = distributed.all_gather_object(m_weight is not None and m_bias is not None)
    have_momentum = all(flags[owner] for owner in owners)
    mine = list(heads.sub_head(g))
    if have_momentum:
        assert m_weight is not None and m_bias is not None
        mine += [m_weight, m_bias]
    if layout.rank != 0:
        if layout.rank in owners:
            for tensor in mine:
                distributed.send_tensor(tensor, dst=0)
        return None
    heads_state = heads.state_dict()
    optim_state = optimizer.state_dict()
    s, n_sub, dim = heads.n_super, heads.n_sub, heads.feature_dim
    full = [torch.zeros(s, n_sub, dim), torch.zeros(s, n_sub)]
    if have_momentum:
        full += [torch.zeros(s, n_sub, dim), torch.zeros(s, n_sub)]
    for cls, owner in enumerate(owners):
        for i, target in enumerate(full):
            if owner == 0:
                target[cls] = mine[i]
            else:
                distributed.recv_tensor(target[cls], src=owner)
    heads_state["sub_weight"], heads_state["sub_bias"] = full[0], full[1]
    i_w, i_b = _param_index(optimizer, heads.sub_weight), _param_index(optimizer, heads.sub_bias)
    for index, j in ((i_w, 2), (i_b, 3)):
        if have_momentum:
            optim_state["state"][index] = {"momentum_buffer": full[j]}
        else:
            optim_state["state"].pop(index, None)
    return heads_state, optim_state


def load_heads_state(
    heads: HierarchicalHeads,
    optimizer: torch.optim.Optimizer,
    saved: tuple[dict[str, Any], dict[str, Any]] | None,
    layout: TrainingLayout,
) -> None:
    """Load a checkpoint's replicated-shape (heads, optimizer) states on every rank.

    Only rank 0 needs ``saved`` (others pass None; every rank must call this). The small parts
    (super-class head, body momentum) are broadcast; the sub-heads move as tensors: broadcast
    whole when replicated, and when grouped each rank receives only its own super-class's
    slice from rank 0, so no rank ever holds more than its share.
    """
    i_w, i_b = _param_index(optimizer, heads.sub_weight), _param_index(optimizer, heads.sub_bias)
    big: list[torch.Tensor | None] = [None, None, None, None]
    small = None
    if saved is not None:
        heads_state, optim_state = saved
        moms = [optim_state["state"].get(i, {}).get("momentum_buffer") for i in (i_w, i_b)]
        big = [heads_state["sub_weight"], heads_state["sub_bias"], *moms]
        small = (
            {k: v for k, v in heads_state.items() if k not in ("sub_weight", "sub_bias")},
            {
                **optim_state,
                "state": {i: v for i, v in optim_state["state"].items() if i not in (i_w, i_b)},
            },
            big[2] is not None and big[3] is not None,
        )
    small = distributed.broadcast_object(small)
    assert small is not None
    heads_small, optim_small, have_momentum = small
    n_parts = 4 if have_momentum else 2
    local = [heads.sub_weight, heads.sub_bias] * 2  # the shapes this rank holds
    g = layout.super_class
    mine: list[torch.Tensor] = []
    for i in range(n_parts):
        if layout.rank == 0:
            tensor = big[i]
            assert tensor is not None
            # Collectives move contiguous tensors (a checkpoint keeps the heads' layout).
            if g is None:
                mine.append(tensor.contiguous())
            else:
                mine.append(tensor[g : g + 1].clone(memory_format=torch.contiguous_format))
        else:
            mine.append(torch.empty(local[i].shape, dtype=local[i].dtype))
    if g is None:
        for tensor in mine:
            distributed.broadcast_tensor(tensor)
    elif layout.rank == 0:
        for dst in range(1, layout.plan.world_size):
            cls = layout.plan.super_class_of(dst)
            for i in range(n_parts):
                part = big[i]
                assert part is not None
                distributed.send_tensor(part[cls : cls + 1], dst=dst)
    else:
        for tensor in mine:
            distributed.recv_tensor(tensor, src=0)
    heads.load_state_dict({**heads_small, "sub_weight": mine[0], "sub_bias": mine[1]})
    state = dict(optim_small["state"])
    if have_momentum:
        # Momenta in their parameters' layout, as SGD made them (the sub-heads are stored
        # (S, D, n_sub)).
        moms = [torch.empty_like(p).copy_(m) for p, m in zip(local[:2], mine[2:], strict=True)]
        state[i_w], state[i_b] = {"momentum_buffer": moms[0]}, {"momentum_buffer": moms[1]}
    # Parameter order, as a state_dict has it (a later checkpoint then lists them the same way).
    optimizer.load_state_dict({**optim_small, "state": dict(sorted(state.items()))})


def _momenta(
    heads: HierarchicalHeads, optimizer: torch.optim.Optimizer
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    out = []
    for p in (heads.sub_weight, heads.sub_bias):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        out.append(None if buf is None else buf.detach().cpu()[0])
    return out[0], out[1]


def _param_index(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> int:
    """Index of ``param`` in the optimizer's state_dict (its position over all groups)."""
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(flat) if p is param)
