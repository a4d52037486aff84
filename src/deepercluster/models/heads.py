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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HierarchicalHeads"]

_INIT_STD = 0.01  # reference init of every linear layer: N(0, 0.01), bias 0


class HierarchicalHeads(nn.Module):
    """Super-class head and one sub-class head per super-class, on ReLU(features).

    The S sub-heads are stored as one weight (S, n_sub, D) and one bias (S, n_sub), so grouping
    a batch by super-class is indexing, and the whole set checkpoints and re-initialises as two
    tensors.

    Args:
        feature_dim: D, the backbone's feature size.
        n_super: S, the number of super-classes (4m with rotation, m without).
        n_sub: sub-clusters per super-cluster, k / m (1 for RotNet: the sub term is then 0).

    Reference: DeeperCluster (arXiv 1905.01278), ``main.py`` ``build_prediction_layer``.
    """

    def __init__(self, feature_dim: int, n_super: int, n_sub: int) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("n_super", n_super), ("n_sub", n_sub)):
            if value < 1:
                raise ValueError(f"HierarchicalHeads needs {name} >= 1, got {value}")
        self.feature_dim = feature_dim
        self.n_super = n_super
        self.n_sub = n_sub
        self.super_head = nn.Linear(feature_dim, n_super)
        self.sub_weight = nn.Parameter(torch.empty(n_super, n_sub, feature_dim))
        self.sub_bias = nn.Parameter(torch.empty(n_super, n_sub))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, n_super={self.n_super}, n_sub={self.n_sub}"

    @torch.no_grad()
    def reset_parameters(
        self, generator: torch.Generator | None = None, *, super_head: bool = True
    ) -> None:
        """Re-initialise the heads: weights N(0, 0.01), biases 0.

        Call after every re-clustering, because cluster ids change meaning. The weights are drawn
        on the generator's device and copied, so a seeded CPU generator gives the same heads on
        CPU and GPU, and on every rank without a broadcast.

        Args:
            generator: source of randomness; None uses the global RNG.
            super_head: also reset the super-class head. The reference keeps it when m == 1,
                because the super-classes are then the 4 rotations, whose meaning is stable.
        """
        params: list[Tensor] = [self.sub_weight]
        if super_head:
            params.append(self.super_head.weight)
            nn.init.zeros_(self.super_head.bias)
        nn.init.zeros_(self.sub_bias)
        for p in params:
            if generator is None or generator.device == p.device:
                nn.init.normal_(p, 0.0, _INIT_STD, generator=generator)
            else:
                sample = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
                p.copy_(nn.init.normal_(sample, 0.0, _INIT_STD, generator=generator))

    def forward(self, features: Tensor, super_targets: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads' logits, rectifying the features once.

        Args:
            features: (B, D) backbone output, pre-activation.
            super_targets: (B,) int64 super-class of each sample, selecting its sub-head.

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
            super_targets: (B,) int64 in [0, S).

        Returns:
            (B, n_sub) logits.
        """
        return self._sub(F.relu(features), super_targets)

    def _super(self, x: Tensor) -> Tensor:
        logits: Tensor = self.super_head(x)
        return logits

    def _sub(self, x: Tensor, super_targets: Tensor) -> Tensor:
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
        if not present:  # empty batch (e.g. the tail of a sharded epoch)
            return x.new_zeros((0, self.n_sub))
        # unbind, not W[s] per group: its backward stacks the per-head gradients into one
        # (S, n_sub, D) tensor (zeros for absent heads), whereas each W[s] would allocate a
        # full-size zero gradient of its own.
        weights = self.sub_weight.unbind(0)
        biases = self.sub_bias.unbind(0)
        if len(present) == 1:
            # Whole batch in one super-class: the distributed layout, where a rank owns one.
            s = present[0]
            return torch.addmm(biases[s], x, weights[s].t())
        order = torch.argsort(super_targets, stable=True)
        x_sorted = x.index_select(0, order)
        blocks: list[Tensor] = []
        start = 0
        for s in present:
            rows = x_sorted.narrow(0, start, counts[s])
            blocks.append(torch.addmm(biases[s], rows, weights[s].t()))
            start += counts[s]
        logits = torch.cat(blocks)
        # Scatter the rows back to batch order: out[order[j]] = logits[j].
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return logits.index_select(0, inverse)
