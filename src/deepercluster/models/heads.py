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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HierarchicalHeads"]

_INIT_STD = 0.01  # reference init of every linear layer: N(0, 0.01), bias 0
# Base seeds are drawn below 2**63 - 1: an int64 range, so base + g stays a valid seed.
_MAX_SEED = 2**63 - 1


class HierarchicalHeads(nn.Module):
    """Super-class head and one sub-class head per super-class, on ReLU(features).

    The sub-heads are stored as one weight (S_own, n_sub, D) and one bias (S_own, n_sub), so
    the whole set checkpoints and re-initialises as two tensors. By default every process
    owns all S sub-heads (S_own = S). In the paper's grouped layout (section 6
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
        # The slot table lives on the host, beside the per-class counts that routing brings
        # there: looking a slot up costs no device sync.
        slots = [-1] * n_super  # slot of each super-class's sub-head, -1 where not owned
        for slot, g in enumerate(self.owned):
            slots[g] = slot
        self._slots: tuple[int, ...] = tuple(slots)
        self.super_head = nn.Linear(feature_dim, n_super)
        self.sub_weight = nn.Parameter(torch.empty(len(self.owned), n_sub, feature_dim))
        self.sub_bias = nn.Parameter(torch.empty(len(self.owned), n_sub))
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

    def _sub(self, x: Tensor, super_targets: Tensor) -> Tensor:
        """(B, n_sub) logits of rectified rows ``x``, row i through sub-head ``super_targets[i]``.

        The rows are sorted by super-class, each present super-class's rows go through its
        own sub-head in one ``F.linear``, and the logits are put back in batch order. A sample
        never meets another super-class's sub-head, so nothing of size (B, S * n_sub) or
        (B, n_sub, D) is built.
        """
        present = self._present(x, super_targets)
        if not present:  # empty batch (e.g. the tail of a sharded epoch)
            return x.new_zeros((0, self.n_sub))
        # unbind, not indexing per slot: its backward writes every slot's gradient into one
        # (S_own, n_sub, D) tensor (absent slots 0), where indexing would add S_own of them.
        weights, biases = self.sub_weight.unbind(0), self.sub_bias.unbind(0)
        if len(present) == 1:  # one super-class: the grouped layout, where a rank owns one
            slot = self._slots[present[0][0]]
            return F.linear(x, weights[slot], biases[slot])
        order = torch.argsort(super_targets, stable=True)
        rows = torch.split(x.index_select(0, order), [n for _, n in present])
        logits = torch.cat(
            [
                F.linear(r, weights[self._slots[s]], biases[self._slots[s]])
                for (s, _), r in zip(present, rows, strict=True)
            ]
        )
        # Sorted row j is batch row order[j]: put it back there (its gradient is then a gather,
        # where undoing the sort by indexing with the inverse permutation would scatter).
        out = torch.empty_like(logits)
        out[order] = logits
        return out

    def _present(self, x: Tensor, super_targets: Tensor) -> list[tuple[int, int]]:
        """(super-class, number of rows) of every super-class present in the batch, in id
        order, after checking the shapes and that this module owns each one's sub-head."""
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
        present = [(s, c) for s, c in enumerate(counts) if c > 0]
        unowned = [s for s, _ in present if self._slots[s] < 0]
        if unowned:
            raise ValueError(
                f"super_targets contains super-class(es) {unowned} whose sub-heads these heads "
                f"do not own (owned={self.owned}); route each sample to a process that owns "
                "its super-class"
            )
        return present


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
