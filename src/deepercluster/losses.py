"""The hierarchical loss of DeeperCluster and its super-class targets.

For an image i with clustering assignment (super-cluster s_i, sub-cluster c_i), rotated by r,
the super-class target is y = index(r, s_i) and the loss is

    CE(super_head(x), y) + CE(sub_head_y(x), c_i),    x = ReLU(backbone(image)),

both terms batch means with equal weights, as in the reference trainer. Two methods are special
cases of the same code: RotNet (rotation on, m = 1, k = 1: the sub-class term is identically 0)
and DeepCluster (rotation off, m = 1: one super-class, the super term is identically 0 and the
single sub-head is the k-way classifier).

- [0] Caron, Bojanowski, Mairal, Joulin. Unsupervised Pre-Training of Image Features on
  Non-Curated Data. ICCV 2019. https://arxiv.org/abs/1905.01278
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepercluster.models.heads import HierarchicalHeads

__all__ = ["HierarchicalLossOutput", "hierarchical_loss", "super_class_targets"]


@dataclass(frozen=True)
class HierarchicalLossOutput:
    """Result of ``hierarchical_loss`` for one batch.

    Attributes:
        loss: scalar to back-propagate, ``super_loss + sub_loss`` with graph.
        super_loss: detached scalar, batch-mean cross-entropy of the super-class head.
        sub_loss: detached scalar, batch-mean cross-entropy of the sub-class heads.
        super_correct: samples whose super-class argmax equals the target.
        sub_correct: samples whose sub-class argmax (within their own super-class) is right.
        rotation_correct: samples whose super-class argmax has the target's rotation
            (``index // m``), whatever its super-cluster: how well the rotation task alone
            is learned.
    """

    loss: Tensor
    super_loss: Tensor
    sub_loss: Tensor
    super_correct: int
    sub_correct: int
    rotation_correct: int


def hierarchical_loss(
    heads: HierarchicalHeads,
    features: Tensor,
    super_targets: Tensor,
    sub_targets: Tensor,
    *,
    n_super_clusters: int = 1,
) -> HierarchicalLossOutput:
    """DeeperCluster's loss: CE over super-classes plus CE over the target's sub-classes.

    Each sample's sub-class term uses the sub-head of its *target* super-class, not of the
    predicted one (teacher forcing, as in the reference): the hierarchy only routes samples.

    Args:
        heads: the super-class and sub-class heads (they apply the ReLU).
        features: (B, D) backbone output, pre-activation.
        super_targets: (B,) int64 in [0, S), e.g. from ``super_class_targets``.
        sub_targets: (B,) int64 in [0, n_sub), the sub-cluster within the super-cluster.
        n_super_clusters: m, to read the rotation of a super-class (``index // m``).

    Returns:
        The differentiable total and detached parts; see ``HierarchicalLossOutput``.
    """
    if sub_targets.shape != super_targets.shape or sub_targets.dtype != torch.int64:
        raise ValueError(
            f"super_targets {tuple(super_targets.shape)} and sub_targets "
            f"{sub_targets.dtype} {tuple(sub_targets.shape)} must both be int64 (B,); pass one "
            "pair of targets per sample"
        )
    # Row i's sub-logits come from sub-head super_targets[i] only (models/heads.py).
    super_logits, sub_logits = heads(features, super_targets)
    super_loss = F.cross_entropy(super_logits, super_targets)
    sub_loss = F.cross_entropy(sub_logits, sub_targets)
    with torch.no_grad():
        # note: .tolist() is a CPU-GPU sync point; one per step is cheap next to a convnet step.
        predicted = super_logits.argmax(1)
        hits = torch.stack(
            [
                (predicted == super_targets).sum(),
                (sub_logits.argmax(1) == sub_targets).sum(),
                (predicted // n_super_clusters == super_targets // n_super_clusters).sum(),
            ]
        )
        super_correct, sub_correct, rotation_correct = (int(v) for v in hits.tolist())
    return HierarchicalLossOutput(
        loss=super_loss + sub_loss,
        super_loss=super_loss.detach(),
        sub_loss=sub_loss.detach(),
        super_correct=super_correct,
        sub_correct=sub_correct,
        rotation_correct=rotation_correct,
    )


def super_class_targets(
    rotations: Tensor, super_clusters: Tensor, *, n_super_clusters: int, rotation: bool
) -> Tensor:
    """Super-class index of (rotation, super-cluster) pairs.

    ``index(r, s) = r * m + s`` with rotation (S = 4m classes), ``s`` without (S = m).

    Args:
        rotations: (B,) rotation ids in [0, 4) (multiples of 90 degrees); ignored when
            ``rotation`` is False.
        super_clusters: (B,) super-cluster ids in [0, m).
        n_super_clusters: m, the number of level-1 clusters.
        rotation: whether the rotation task is on.

    Returns:
        (B,) int64 super-class targets.
    """
    if n_super_clusters < 1:
        raise ValueError(f"n_super_clusters must be >= 1, got {n_super_clusters}")
    if rotations.shape != super_clusters.shape or super_clusters.dim() != 1:
        raise ValueError(
            f"rotations {tuple(rotations.shape)} and super_clusters "
            f"{tuple(super_clusters.shape)} must both be (B,); pass one id per sample"
        )
    super_clusters = super_clusters.to(torch.int64)
    if not rotation:
        return super_clusters
    return rotations.to(torch.int64) * n_super_clusters + super_clusters
