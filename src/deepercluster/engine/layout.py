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
from deepercluster.distributed import DistEnv, GroupPlan, ProcessGroup
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
    plan = distributed.plan_groups(
        env.world_size,
        n_super,
        layout=layout,
        head_bytes=n_super * n_sub * dim * 4,
        n_super_clusters=n_super_clusters,
    )
    training, clustering = distributed.make_groups(plan)
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

    In the grouped layout, each group's first rank sends its sub-head (weights and momentum)
    to rank 0, which assembles the (S, k/m, D) tensors. Every rank must call this.
    """
    heads_state = heads.state_dict()
    optim_state = optimizer.state_dict()
    if not layout.plan.grouped:
        return (heads_state, optim_state) if layout.rank == 0 else None
    g = layout.super_class
    assert g is not None
    mine = None
    if layout.share[0] == 0:
        weight, bias = heads.sub_head(g)
        mine = (g, weight.detach().cpu(), bias.detach().cpu(), *_momenta(heads, optimizer))
    parts = distributed.gather_object(mine)
    if parts is None:
        return None
    s, n_sub, dim = heads.n_super, heads.n_sub, heads.feature_dim
    full = {
        "weight": torch.zeros(s, n_sub, dim),
        "bias": torch.zeros(s, n_sub),
        "m_weight": torch.zeros(s, n_sub, dim),
        "m_bias": torch.zeros(s, n_sub),
    }
    have_momentum = True
    for part in parts:
        if part is None:
            continue
        cls, weight, bias, m_weight, m_bias = part
        full["weight"][cls], full["bias"][cls] = weight, bias
        if m_weight is None or m_bias is None:
            have_momentum = False
        else:
            full["m_weight"][cls], full["m_bias"][cls] = m_weight, m_bias
    heads_state["sub_weight"], heads_state["sub_bias"] = full["weight"], full["bias"]
    i_w, i_b = _param_index(optimizer, heads.sub_weight), _param_index(optimizer, heads.sub_bias)
    for index, key in ((i_w, "m_weight"), (i_b, "m_bias")):
        if have_momentum:
            optim_state["state"][index] = {"momentum_buffer": full[key]}
        else:
            optim_state["state"].pop(index, None)
    return heads_state, optim_state


def load_heads_state(
    heads: HierarchicalHeads,
    optimizer: torch.optim.Optimizer,
    heads_state: dict[str, Any],
    optim_state: dict[str, Any],
    layout: TrainingLayout,
) -> None:
    """Load replicated-shape states, keeping only this rank's sub-head when grouped."""
    g = layout.super_class
    if g is not None:
        heads_state = dict(heads_state)
        heads_state["sub_weight"] = heads_state["sub_weight"][g : g + 1]
        heads_state["sub_bias"] = heads_state["sub_bias"][g : g + 1]
        optim_state = {**optim_state, "state": dict(optim_state["state"])}
        for p in (heads.sub_weight, heads.sub_bias):
            index = _param_index(optimizer, p)
            entry = optim_state["state"].get(index)
            if entry is not None and "momentum_buffer" in entry:
                optim_state["state"][index] = {
                    "momentum_buffer": entry["momentum_buffer"][g : g + 1]
                }
    heads.load_state_dict(heads_state)
    optimizer.load_state_dict(optim_state)


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
