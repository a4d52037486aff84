"""How the heads start after each re-clustering.

Cluster ids change meaning at every clustering, so the paper re-initialises every head at
random (N(0, 0.01)) and forgets its momentum. At the paper's scale that costs little: about
94,000 steps pass between two clusterings. On a small collection a few hundred steps pass, and
two kinds of knowledge are thrown away each time:

- **What the clustering knows.** With ``cluster.head_init = centroids`` every sub-head starts as
  a classifier of the new sub-clusters of its super-cluster, and the super-cluster part of the
  super-class head as one of the super-clusters (DeepCluster-v2 copies its new centroids into
  its prototypes for the same reason). The heads read ``ReLU(features)`` while k-means saw the
  PCA-whitened features themselves, so the centroids cannot simply be carried through the
  whitening map: most features are negative once trained, and that map, read on their ReLU,
  agrees with the clusters on few images. Each class is instead described where the heads
  look: its mean ``M_j`` of ``ReLU(features)`` and the shared covariance ``C`` of all of them
  (one pass over the round's features), and the head is the linear discriminant
  ``<x - mu, C^-1 (M_j - mu)> - <M_j - mu, C^-1 (M_j - mu)> / 2`` (Gaussian classes with a
  shared covariance), scaled so that its logits vary by ``1 / cluster.head_temperature``
  over the images. At the first clustering the network has not trained yet: its batch-norm
  statistics are still the initial ones, so the features the clustering sees are not those
  that training will see, and the heads start at random there.
- **What the super head learned about rotations.** With ``cluster.super_carry = rotation`` each
  row (r, s) of the super head starts from the mean of the old rows of rotation r; with
  ``matched`` it takes the old rows of the old super-cluster that shares most images with s.

With m = 1 the super-classes are the rotations alone, whose meaning never changes: that head
is always kept, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster import Blocks
from deepercluster.config import ClusterConfig
from deepercluster.models import HierarchicalHeads

if TYPE_CHECKING:
    from deepercluster.engine.clustering import Clustering

__all__ = [
    "HeadInputs",
    "covariance_factor",
    "discriminant",
    "head_inputs",
    "match_super_clusters",
    "start_heads",
]

# Ridge added to the covariance, as a multiple of its mean variance. Units that never fire
# leave the covariance singular, and low-variance directions of the clustered images are where
# training views (crops, rotations, batch statistics) differ most: a ridge as large as the
# mean variance gave up a few points of agreement on the clustered images (1e-3 fitted them
# better) for logits that stay moderate on the views training sees.
_RIDGE = 1.0


@dataclass(frozen=True)
class HeadInputs:
    """What one clustering looks like from the heads: statistics of ``ReLU(features)``.

    Attributes:
        mean: (D,) float64 mean over the clustered images.
        covariance: (D, D) float64 covariance over them.
        super_means: (m, D) float64 mean of each super-cluster.
        sub_means: (m, k/m, D) float64 mean of each sub-cluster.
    """

    mean: Tensor
    covariance: Tensor
    super_means: Tensor
    sub_means: Tensor


def head_inputs(
    blocks: Blocks, super_ids: np.ndarray, sub_ids: np.ndarray, *, m: int, n_sub: int
) -> HeadInputs:
    """One pass over this rank's features; the sums are all-reduced (identity in one process).

    Args:
        blocks: (n, D) this rank's clustered features, pre-activation.
        super_ids: (n,) int64 super-cluster of each of those rows.
        sub_ids: (n,) int64 sub-cluster inside it.
        m: super-clusters.
        n_sub: sub-clusters per super-cluster.

    Returns:
        The :class:`HeadInputs`, the same on every rank, on the CPU.
    """
    d = blocks.dim
    labels = torch.from_numpy(super_ids * n_sub + sub_ids)
    count = torch.zeros(1, dtype=torch.float64)
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros((d, d), dtype=torch.float64)
    sums = torch.zeros((m * n_sub, d), dtype=torch.float64)
    sizes = torch.zeros(m * n_sub, dtype=torch.float64)
    for start, block in blocks:
        x = block.relu().double().cpu()
        ids = labels[start : start + len(x)]
        count += len(x)
        total += x.sum(0)
        outer += x.T @ x
        sums.index_add_(0, ids, x)
        sizes += torch.bincount(ids, minlength=m * n_sub).double()
    packed = distributed.all_reduce_sum(
        torch.cat([count, total, outer.ravel(), sums.ravel(), sizes])
    )
    n = float(packed[0])
    total, outer = packed[1 : d + 1], packed[d + 1 : d + 1 + d * d].view(d, d)
    sums = packed[d + 1 + d * d : -m * n_sub].view(m, n_sub, d)
    sizes = packed[-m * n_sub :].view(m, n_sub)
    mean = total / n
    covariance = (outer - n * torch.outer(mean, mean)) / max(n - 1.0, 1.0)
    return HeadInputs(
        mean=mean,
        covariance=covariance,
        super_means=sums.sum(1) / sizes.sum(1, keepdim=True).clamp(min=1.0),
        sub_means=sums / sizes.unsqueeze(-1).clamp(min=1.0),
    )


def discriminant(
    means: Tensor, inputs: HeadInputs, *, temperature: float, factor: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The linear discriminant of classes with these means and a shared covariance.

    The covariance of all the clustered images (within and between classes) stands for the
    classes' shared one, with a ridge (see ``_RIDGE``).

    Args:
        means: (C, D) float64 class means of ``ReLU(features)``.
        inputs: the round's mean and covariance.
        temperature: T > 0; the logits' standard deviation over the images is 1 / T.
        factor: (D, D) :func:`covariance_factor` of ``inputs``, when several heads share it.

    Returns:
        weight (C, D) and bias (C,), float32: ``logit_j = <x, weight_j> + bias_j``.
    """
    factor = covariance_factor(inputs) if factor is None else factor
    centred = means - inputs.mean  # (C, D)
    directions = torch.cholesky_solve(centred.T.contiguous(), factor)  # (D, C)
    bias = -(inputs.mean @ directions) - 0.5 * (centred * directions.T).sum(1)
    # Scaled so that the logits vary by 1 / T over the clustered images. Unscaled, the
    # discriminant's logits (and so the gradient it sends into the backbone) grow with how
    # well the clusters separate, and training sees other features than the clustering did
    # (crops, rotations, batch statistics): large logits there made the first steps diverge.
    spread = (directions * (inputs.covariance @ directions)).sum(0).mean().sqrt()
    scale = 1.0 / (temperature * float(spread.clamp(min=1e-12)))
    return (scale * directions.T).float(), (scale * bias).float()


def covariance_factor(inputs: HeadInputs) -> Tensor:
    """(D, D) lower Cholesky factor of the round's covariance plus the ridge: factored once
    for all the heads of a round."""
    covariance = inputs.covariance
    ridge = _RIDGE * float(covariance.diagonal().mean().clamp(min=1e-12))
    eye = torch.eye(len(covariance), dtype=covariance.dtype)
    factor: Tensor = torch.linalg.cholesky(covariance + ridge * eye)
    return factor


def match_super_clusters(previous: np.ndarray, new: np.ndarray, m: int) -> np.ndarray:
    """The old super-cluster each new one shares most images with, one to one (Hungarian).

    Args:
        previous: (N,) int64 old super-cluster of each valid image, in [0, m).
        new: (N,) int64 new super-cluster of the same images, in [0, m).
        m: number of super-clusters.

    Returns:
        (m,) int64: ``match[s_new] = s_old``, a permutation of [0, m).
    """
    from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn

    overlap = np.zeros((m, m), dtype=np.int64)
    np.add.at(overlap, (new, previous), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    match = np.empty(m, dtype=np.int64)
    match[rows] = cols
    return match


@torch.no_grad()
def start_heads(
    heads: HierarchicalHeads,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    cluster: ClusterConfig,
    clustering: Clustering,
    previous: Clustering | None,
    trained: bool,
) -> None:
    """Set the heads for a new clustering, and forget the momentum of what changed.

    The paper's start (``head_init = random``, ``super_carry = none``) draws every head from
    ``generator`` (:meth:`HierarchicalHeads.reset_parameters`); the other settings start from
    that draw and overwrite parts of it, so they use the same random numbers.

    Args:
        heads: the heads to set (their super head still holds the previous round's rows).
        optimizer: SGD over the heads; their momentum is dropped.
        generator: the round's seeded generator.
        cluster: ``head_init``, ``head_temperature``, ``super_carry``, m and rotation.
        clustering: the new targets (with their :class:`HeadInputs` for
            ``head_init = centroids``, unless RotNet).
        previous: the round before, for ``super_carry = matched`` (None on the first round).
        trained: whether the network has trained yet (False at the first clustering of a
            run, whose heads start at random).
    """
    m = cluster.super_clusters
    keep_super = m == 1
    old_weight = heads.super_head.weight.detach().clone()  # (S, D)
    old_bias = heads.super_head.bias.detach().clone()  # (S,)
    heads.reset_parameters(generator, super_head=not keep_super)
    inputs = clustering.head_inputs
    if cluster.head_init == "centroids" and inputs is not None and trained:
        t, factor = cluster.head_temperature, covariance_factor(inputs)
        # Every rotation's sub-head of super-cluster s starts alike: one discriminant per s.
        sub_heads = {
            s: discriminant(inputs.sub_means[s], inputs, temperature=t, factor=factor)
            for s in sorted({g % m for g in heads.owned})
        }
        for g in heads.owned:
            heads.load_sub_head(g, *sub_heads[g % m])
        if not keep_super:  # the super-cluster part of row (r, s) = r * m + s
            weight, bias = discriminant(inputs.super_means, inputs, temperature=t, factor=factor)
            rotations = heads.n_super // m
            heads.super_head.weight.copy_(weight.repeat(rotations, 1))
            heads.super_head.bias.copy_(bias.repeat(rotations))
    if not keep_super and cluster.super_carry != "none":
        _carry_super(heads, old_weight, old_bias, cluster, clustering, previous)
    reset = [heads.sub_weight, heads.sub_bias]
    if not keep_super:
        reset += list(heads.super_head.parameters())
    for p in reset:
        optimizer.state.pop(p, None)


def _carry_super(
    heads: HierarchicalHeads,
    old_weight: Tensor,
    old_bias: Tensor,
    cluster: ClusterConfig,
    clustering: Clustering,
    previous: Clustering | None,
) -> None:
    """Carry the old super head's rows (S, D) into the new one, row (r, s) = r * m + s."""
    m = cluster.super_clusters
    rotations = heads.n_super // m
    w, b = heads.super_head.weight, heads.super_head.bias
    if cluster.super_carry == "rotation":
        # Rotation r's part: the mean of its old rows, added to the new super-cluster part
        # (random or centroids), so what separates rotations survives the re-clustering.
        w.add_(old_weight.view(rotations, m, -1).mean(1).repeat_interleave(m, 0).to(w))
        b.add_(old_bias.view(rotations, m).mean(1).repeat_interleave(m).to(b))
        return
    if previous is None:
        return  # first round: nothing was learned yet
    both = clustering.valid & previous.valid
    match = match_super_clusters(previous.super_clusters[both], clustering.super_clusters[both], m)
    # Row (r, s_new) takes old row (r, match[s_new]).
    source = (np.arange(rotations)[:, None] * m + match[None, :]).reshape(-1)
    index = torch.from_numpy(source)
    w.copy_(old_weight[index].to(w))
    b.copy_(old_bias[index].to(b))
