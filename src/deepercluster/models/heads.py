"""The two-level classification heads of DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278).

A super-class head predicts y = (rotation, super-cluster) among S classes; S sub-class heads,
one per super-class, predict the sub-cluster among n_sub = k / m. A sample only evaluates the
sub-head of its own super-class target, so a step costs O(D * (S + n_sub)) per sample instead
of the O(D * S * n_sub) of a flat head over the Cartesian product: that is the point of the
hierarchy (section 3 of docs/ALGORITHM.md).

ReLU lives here, and only here: the backbone returns pre-activation features (VGG's fc7, which
is also what the clustering sees) and every public method of the heads rectifies them first,
as the reference trainer does with ``relu(model(inp))`` before both prediction layers. Callers
(the loss, evaluation code) therefore pass raw backbone features and never apply ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepercluster.models.grouped import GradBuffer, grouped_cross_entropy, grouped_linear

__all__ = ["HierarchicalHeads"]

_INIT_STD = 0.01  # reference init of every linear layer: N(0, 0.01), bias 0
# Base seeds are drawn below 2**63 - 1: an int64 range, so base + g stays a valid seed.
_MAX_SEED = 2**63 - 1


class HierarchicalHeads(nn.Module):
    """Super-class head and one sub-class head per super-class, on ReLU(features).

    The sub-heads are stored as one weight (S_own, n_sub, D) and one bias (S_own, n_sub), so
    grouping a batch by super-class is indexing, and the whole set checkpoints and
    re-initialises as two tensors. The weight's memory order is (S_own, D, n_sub) (a
    transposed view): at ~16 rows per sub-head MKL runs the step's products ~20% faster that
    way (``models/products.py``); its gradient and momentum follow that layout. By default
    every process owns all S sub-heads (S_own = S). In the paper's grouped layout (section 6
    of docs/ALGORITHM.md) a process trains one super-class only, so it builds ``owned=[g]``
    and holds one (1, n_sub, D) slice: that is what makes k = 320 000 fit in memory. Targets
    are always global super-class ids in [0, S); slot i of ``sub_weight``/``sub_bias`` holds
    sub-head ``owned[i]``. The super-class head always has all S outputs.

    Args:
        feature_dim: D, the backbone's feature size.
        n_super: S, the number of super-classes (4m with rotation, m without).
        n_sub: sub-clusters per super-cluster, k / m (1 for RotNet: the sub term is then 0).
        owned: super-classes whose sub-heads this module holds, distinct, in [0, S), in slot
            order; None for all of them (0, 1, ..., S - 1).

    Reference: DeeperCluster (arXiv 1905.01278), ``main.py`` ``build_prediction_layer``.
    """

    def __init__(
        self, feature_dim: int, n_super: int, n_sub: int, *, owned: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("n_super", n_super), ("n_sub", n_sub)):
            if value < 1:
                raise ValueError(f"HierarchicalHeads needs {name} >= 1, got {value}")
        self.feature_dim = feature_dim
        self.n_super = n_super
        self.n_sub = n_sub
        self.owned: tuple[int, ...] = _check_owned(owned, n_super)
        # The slot table lives on the host: the grouped path reads it with the per-class counts
        # it already has there, so routing costs no device sync.
        self._slots: tuple[int, ...] = _slot_table(self.owned, n_super)
        self.super_head = nn.Linear(feature_dim, n_super)
        # Logically (S_own, n_sub, D), stored as (S_own, D, n_sub): see the class docstring.
        self.sub_weight = nn.Parameter(
            torch.empty(len(self.owned), feature_dim, n_sub).transpose(1, 2)
        )
        self.sub_bias = nn.Parameter(torch.empty(len(self.owned), n_sub))
        # Storage for sub_weight's gradient, lent again every step (see sub_cross_entropy).
        self._grad_buffer = GradBuffer()
        self.reset_parameters()

    def extra_repr(self) -> str:
        text = f"feature_dim={self.feature_dim}, n_super={self.n_super}, n_sub={self.n_sub}"
        if len(self.owned) < self.n_super:
            text += f", owned={self.owned}"
        return text

    @torch.no_grad()
    def reset_parameters(
        self, generator: torch.Generator | None = None, *, super_head: bool = True
    ) -> None:
        """Re-initialise the heads: weights N(0, 0.01), biases 0.

        Call after every re-clustering, because cluster ids change meaning. The draws, in
        order: one 63-bit base seed from ``generator``; sub-head g from its own CPU generator
        seeded ``base + g``; then the super head from ``generator``. Sub-head g therefore gets
        the same values whichever subset of sub-heads a process owns, so a run's result does
        not depend on the process layout. Every draw is made on the generator's device (CPU
        for the sub-heads) and copied, so a seeded CPU generator gives the same heads on CPU
        and GPU, and on every rank without a broadcast.

        Args:
            generator: source of randomness; None uses the global RNG (the CPU one for the
                base seed).
            super_head: also reset the super-class head. The reference keeps it when m == 1,
                because the super-classes are then the 4 rotations, whose meaning is stable.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        base = int(torch.randint(_MAX_SEED, (1,), generator=generator, device=device).item())
        nn.init.zeros_(self.sub_bias)
        for slot, g in enumerate(self.owned):
            sub_gen = torch.Generator().manual_seed(base + g)
            sample = torch.empty((self.n_sub, self.feature_dim), dtype=self.sub_weight.dtype)
            self.sub_weight[slot].copy_(nn.init.normal_(sample, 0.0, _INIT_STD, generator=sub_gen))
        if not super_head:
            return
        nn.init.zeros_(self.super_head.bias)
        p = self.super_head.weight
        if generator is None or generator.device == p.device:
            nn.init.normal_(p, 0.0, _INIT_STD, generator=generator)
        else:
            sample = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
            p.copy_(nn.init.normal_(sample, 0.0, _INIT_STD, generator=generator))

    def sub_head(self, g: int) -> tuple[Tensor, Tensor]:
        """The parameters of owned sub-head g, e.g. to assemble a full checkpoint.

        Args:
            g: global super-class id, in ``owned``.

        Returns:
            weight (n_sub, D) and bias (n_sub,): detached views, so they share storage with
            the parameters (writing into them writes the heads).

        Raises:
            ValueError: g is not owned.
        """
        slot = self._slot(g)
        return self.sub_weight.detach()[slot], self.sub_bias.detach()[slot]

    @torch.no_grad()
    def load_sub_head(self, g: int, weight: Tensor, bias: Tensor) -> None:
        """Copy values into owned sub-head g (any device or floating dtype; converted).

        Args:
            g: global super-class id, in ``owned``.
            weight: (n_sub, D).
            bias: (n_sub,).

        Raises:
            ValueError: g is not owned, or a shape does not match.
        """
        slot = self._slot(g)
        if weight.shape != (self.n_sub, self.feature_dim) or bias.shape != (self.n_sub,):
            raise ValueError(
                f"sub-head {g} needs weight ({self.n_sub}, {self.feature_dim}) and bias "
                f"({self.n_sub},), got {tuple(weight.shape)} and {tuple(bias.shape)}; "
                "load a checkpoint written with the same feature_dim and cluster.k / m"
            )
        self.sub_weight[slot].copy_(weight)
        self.sub_bias[slot].copy_(bias)

    def forward(self, features: Tensor, super_targets: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads' logits, rectifying the features once.

        Args:
            features: (B, D) backbone output, pre-activation.
            super_targets: (B,) int64 global super-class of each sample, in [0, S), selecting
                its sub-head (which must be owned).

        Returns:
            super logits (B, S) and sub logits (B, n_sub).
        """
        x = F.relu(features)
        return self._super(x), self._sub(x, super_targets)

    def super_logits(self, features: Tensor) -> Tensor:
        """Super-class logits, (B, D) pre-activation features -> (B, S)."""
        return self._super(F.relu(features))

    def sub_logits(self, features: Tensor, super_targets: Tensor) -> Tensor:
        """Sub-class logits; row i uses only the sub-head of super-class ``super_targets[i]``.

        Args:
            features: (B, D) backbone output, pre-activation.
            super_targets: (B,) int64 global super-class ids in [0, S), all owned.

        Returns:
            (B, n_sub) logits.

        Raises:
            ValueError: bad shapes or dtype, a target >= S, or a target whose sub-head is not
                owned by this module.
        """
        return self._sub(F.relu(features), super_targets)

    def _slot(self, g: int) -> int:
        slot = self._slots[g] if 0 <= g < self.n_super else -1
        if slot < 0:
            raise ValueError(
                f"sub-head of super-class {g} is not owned by these heads (owned={self.owned}, "
                f"n_super={self.n_super}); ask the process that owns it"
            )
        return slot

    def _super(self, x: Tensor) -> Tensor:
        logits: Tensor = self.super_head(x)
        return logits

    def sub_cross_entropy(
        self, features: Tensor, super_targets: Tensor, sub_targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Each sample's cross-entropy under its super-class's sub-head: the training path.

        Equal to ``F.cross_entropy(self.sub_logits(features, super_targets), sub_targets,
        reduction="none")`` but fused (``models/grouped.py``): the (B, n_sub) logits never
        reach autograd, and the sub-heads' weight gradient is written into storage reused
        from step to step (no page faults for a fresh (S_own, n_sub, D) tensor every step on
        the CPU).

        Args:
            features: (B, D) backbone output, pre-activation.
            super_targets: (B,) int64 global super-class ids in [0, S), all owned.
            sub_targets: (B,) int64 sub-cluster of each sample, in [0, n_sub).

        Returns:
            losses: (B,) per-sample cross-entropy, in batch order, differentiable.
            correct: (B,) bool, whether the sub-head's argmax is the target.

        Raises:
            ValueError: as :meth:`sub_logits`, or mis-shaped ``sub_targets``.
        """
        x = F.relu(features)
        groups, order = self._route(x, super_targets)
        if sub_targets.shape != super_targets.shape or sub_targets.dtype != torch.int64:
            raise ValueError(
                f"sub_targets must be int64 of shape {tuple(super_targets.shape)}, got "
                f"{sub_targets.dtype} {tuple(sub_targets.shape)}; pass one sub-cluster per sample"
            )
        if not groups:
            return x.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=x.device)
        if order is not None:
            x, sub_targets = x.index_select(0, order), sub_targets.index_select(0, order)
            super_targets = super_targets.index_select(0, order)
        losses, correct = grouped_cross_entropy(
            x,
            self.sub_weight,
            self.sub_bias,
            sub_targets,
            groups,
            self._grad_buffer,
        )
        if order is None:
            return losses, correct
        inverse = _inverse(order)
        return losses.index_select(0, inverse), correct.index_select(0, inverse)

    def _apply(self, fn: Any, recurse: bool = True) -> HierarchicalHeads:
        # .to(), .double(), .cuda() replace the parameters: the reused gradient storage must
        # follow, so it is dropped and made again at the next backward pass.
        self._grad_buffer.clear()
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call,no-any-return]

    def _sub(self, x: Tensor, super_targets: Tensor) -> Tensor:
        groups, order = self._route(x, super_targets)
        if not groups:  # empty batch (e.g. the tail of a sharded epoch)
            return x.new_zeros((0, self.n_sub))
        if order is None:
            return grouped_linear(x, self.sub_weight, self.sub_bias, groups)
        logits = grouped_linear(x.index_select(0, order), self.sub_weight, self.sub_bias, groups)
        return logits.index_select(0, _inverse(order))

    def _route(
        self, x: Tensor, super_targets: Tensor
    ) -> tuple[list[tuple[int, int]], Tensor | None]:
        """Group the rows by sub-head: ``(slot, rows)`` per present super-class, in id order,
        and the (B,) permutation that sorts the rows that way (None when already grouped)."""
        if x.dim() != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must be (B, {self.feature_dim}), got {tuple(x.shape)}; "
                "build the heads with the backbone's feature_dim"
            )
        if super_targets.shape != x.shape[:1] or super_targets.dtype != torch.int64:
            raise ValueError(
                f"super_targets must be int64 of shape ({x.shape[0]},), got "
                f"{super_targets.dtype} {tuple(super_targets.shape)}; pass one class id per sample"
            )
        # note: a CPU-GPU sync point. The group sizes set the matmul shapes, so they must be on
        # the host; one small (S,) transfer per step.
        counts = torch.bincount(super_targets, minlength=self.n_super).tolist()
        if len(counts) > self.n_super:
            raise ValueError(
                f"super_targets contains class {len(counts) - 1} but the heads have "
                f"n_super={self.n_super}; build the heads with the config's number of super-classes"
            )
        present = [s for s, c in enumerate(counts) if c > 0]
        unowned = [s for s in present if self._slots[s] < 0]
        if unowned:
            raise ValueError(
                f"super_targets contains super-class(es) {unowned} whose sub-heads these heads "
                f"do not own (owned={self.owned}); route each sample to a process that owns "
                "its super-class"
            )
        groups = [(self._slots[s], counts[s]) for s in present]
        if len(present) <= 1:
            # Whole batch in one super-class: the distributed layout, where a rank owns one.
            return groups, None
        # Sorting by global id groups the rows by sub-head; the slot only picks the parameters.
        return groups, torch.argsort(super_targets, stable=True)


def _inverse(order: Tensor) -> Tensor:
    """The permutation undoing ``order``: ``sorted_rows.index_select(0, _inverse(order))``
    puts row j back at ``order[j]``."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


def _check_owned(owned: Sequence[int] | None, n_super: int) -> tuple[int, ...]:
    if owned is None:
        return tuple(range(n_super))
    result = tuple(int(g) for g in owned)
    if not result or len(set(result)) != len(result) or not all(0 <= g < n_super for g in result):
        raise ValueError(
            f"owned must list distinct super-classes in [0, {n_super}), at least one, got "
            f"{list(owned)}; pass None to own every sub-head"
        )
    return result


def _slot_table(owned: tuple[int, ...], n_super: int) -> tuple[int, ...]:
    """(S,) slot of each super-class's sub-head in the stacked parameters, -1 where not owned."""
    slots = [-1] * n_super
    for slot, g in enumerate(owned):
        slots[g] = slot
    return tuple(slots)
