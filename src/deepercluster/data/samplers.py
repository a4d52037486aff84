"""Uniform sampling over pseudo-labels: the epoch plan of DeepCluster / DeeperCluster.

With k-means pseudo-labels, a few huge clusters would dominate a plain shuffled epoch and
the convnet could predict them for everything (a trivial solution). DeepCluster (Caron et
al. 2018) and DeeperCluster (arXiv 1905.01278) instead draw the same number of images from
every cluster each epoch, re-using members of small clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "storage_order", "super_class_epoch_plan", "uniform_epoch_plan"]


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """What one epoch trains on, position by position.

    Attributes:
        indices: (size,) int64 dataset ids, in training order.
        rotations: (size,) int64 rotation per position in 0..3 (all zeros without rotation).
    """

    indices: np.ndarray
    rotations: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.ndim != 1 or self.indices.shape != self.rotations.shape:
            raise ValueError(
                f"indices and rotations must be 1-D of equal length, got "
                f"{self.indices.shape} and {self.rotations.shape}"
            )

    def __len__(self) -> int:
        return len(self.indices)


def uniform_epoch_plan(
    labels: np.ndarray, *, size: int, seed: int, epoch: int, rotation: bool
) -> EpochPlan:
    """Draw an epoch of ``size`` samples spread evenly over the non-empty pseudo-labels.

    Every non-empty label L gets ``per = ceil(size / n_labels)`` draws: without replacement
    when it has at least ``per`` members, with replacement otherwise. The ``per * n_labels -
    size`` surplus draws are removed one per label from randomly chosen labels, so counts are
    never more than one apart (DeepCluster's sampler truncated a shuffled list, which lets
    them drift apart). The result is shuffled, and with ``rotation`` each position gets a
    uniform random rotation in 0..3.

    The generator is ``np.random.default_rng([seed, epoch])`` and nothing else is random, so
    every process computes the same plan without communicating.

    Args:
        labels: (N,) integer pseudo-label per dataset id; -1 excludes an image (unreadable).
        size: Number of samples in the epoch (typically N).
        seed: Run seed (>= 0).
        epoch: Epoch number (>= 0); different epochs give different plans.
        rotation: Whether to draw rotations (RotNet part of DeeperCluster).

    Returns:
        The ``EpochPlan``.

    Raises:
        ValueError: No valid label, labels below -1, or a non-positive size.
    """
    labels = _check_labels(labels, size=size, seed=seed, epoch=epoch)
    return _uniform_draw(labels, size, np.random.default_rng([seed, epoch]), rotation=rotation)


def super_class_epoch_plan(
    super_clusters: np.ndarray,
    sub_clusters: np.ndarray,
    valid: np.ndarray,
    *,
    super_class: int,
    n_super_clusters: int,
    rotation: bool,
    size: int,
    seed: int,
    epoch: int,
) -> EpochPlan:
    """The epoch of one training group in the paper's grouped layout: super-class g only.

    Super-class g = r * m + s (as in ``losses.super_class_targets``): super-cluster
    s = g % m and rotation r = g // m with rotation (g in [0, 4m)); r = 0 and s = g without
    (g in [0, m)). The ``size`` images are drawn by the rule of :func:`uniform_epoch_plan`
    over the sub-clusters of super-cluster s only, and every position is rotated by r. The
    reference sets ``size`` to N / m / 4 with rotation, so that the S groups together see
    about N images an epoch (section 4 of docs/ALGORITHM.md).

    The generator is ``np.random.default_rng([seed, epoch, 1 + g])``: every process of a
    group computes the same plan without communicating, and the groups draw independently.
    The ``1 +``: a trailing zero word would give SeedSequence the state of ``[seed, epoch]``,
    the global plan's.

    Args:
        super_clusters: (N,) integer super-cluster per dataset id, in [0, m).
        sub_clusters: (N,) integer sub-cluster per dataset id (local in [0, k/m), or global:
            only equality matters).
        valid: (N,) bool, False excludes an image (unreadable).
        super_class: g, the super-class this group trains.
        n_super_clusters: m.
        rotation: whether the rotation task is on (S = 4m super-classes, else m).
        size: Number of samples in the group's epoch.
        seed: Run seed (>= 0).
        epoch: Epoch number (>= 0).

    Returns:
        The ``EpochPlan``; ``rotations`` is r everywhere.

    Raises:
        ValueError: g out of range, super-cluster s without a valid image, mismatched
            arrays, or a bad size/seed/epoch.
    """
    m = n_super_clusters
    if m < 1:
        raise ValueError(f"n_super_clusters must be >= 1, got {m}")
    n_classes = 4 * m if rotation else m
    if not 0 <= super_class < n_classes:
        raise ValueError(
            f"super_class must be in [0, {n_classes}) with m={m} and rotation={rotation}, "
            f"got {super_class}"
        )
    super_clusters, sub_clusters, valid = (
        np.asarray(a) for a in (super_clusters, sub_clusters, valid)
    )
    if not (super_clusters.ndim == 1 and super_clusters.shape == sub_clusters.shape == valid.shape):
        raise ValueError(
            f"super_clusters, sub_clusters and valid must be 1-D of equal length, got "
            f"{super_clusters.shape}, {sub_clusters.shape} and {valid.shape}"
        )
    if valid.dtype != np.bool_:
        raise ValueError(f"valid must be a bool array, got {valid.dtype}")
    s, r = super_class % m, super_class // m
    members = valid & (super_clusters == s)
    if not members.any():
        raise ValueError(
            f"super-cluster {s} (super-class {super_class}) has no valid image, so its training "
            "group has nothing to draw; check the clustering (empty super-clusters should have "
            "been rebalanced) and the skip log"
        )
    # Only equality of labels matters downstream, so sub-cluster ids are used as they are;
    # everything outside super-cluster s becomes -1, the excluded marker.
    labels = np.where(members, sub_clusters, -1)
    labels = _check_labels(labels, size=size, seed=seed, epoch=epoch)
    rng = np.random.default_rng([seed, epoch, 1 + super_class])
    plan = _uniform_draw(labels, size, rng, rotation=False)
    return EpochPlan(indices=plan.indices, rotations=np.full(size, r, dtype=np.int64))


def _check_labels(labels: np.ndarray, *, size: int, seed: int, epoch: int) -> np.ndarray:
    """The labels as an array, after the checks shared by both plans (raises ValueError)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if size <= 0:
        raise ValueError(f"epoch size must be positive, got {size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    if labels.size and labels.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = excluded), found {labels.min()}")
    if not (labels >= 0).any():
        raise ValueError(
            "no image has a valid pseudo-label (all are -1, i.e. excluded); check that the "
            "collection has readable images and that clustering ran before training"
        )
    return labels


def _uniform_draw(
    labels: np.ndarray, size: int, rng: np.random.Generator, *, rotation: bool
) -> EpochPlan:
    """The draw of :func:`uniform_epoch_plan`, from checked labels and a given generator."""
    valid = np.flatnonzero(labels >= 0)

    # Group ids by label with a random order inside each group: the first `per` members of a
    # group are then a uniform draw without replacement, for all labels in one vectorised pass
    # (a Python loop over k = 320 000 clusters would take seconds every epoch).
    keys = rng.random(valid.size)
    order = np.lexsort((keys, labels[valid]))
    grouped = valid[order]
    _, starts, counts = np.unique(labels[grouped], return_index=True, return_counts=True)
    n_labels = len(starts)
    per = math.ceil(size / n_labels)

    offsets = np.broadcast_to(np.arange(per), (n_labels, per)).copy()
    small = counts < per
    if small.any():
        offsets[small] = rng.integers(0, counts[small][:, None], size=(int(small.sum()), per))
    picks = grouped[starts[:, None] + offsets]  # (n_labels, per)

    keep = np.ones((n_labels, per), dtype=bool)
    surplus = per * n_labels - size
    if surplus:
        keep[rng.choice(n_labels, size=surplus, replace=False), per - 1] = False
    indices = rng.permutation(picks[keep]).astype(np.int64)
    if rotation:
        rotations = rng.integers(0, 4, size=size, dtype=np.int64)
    else:
        rotations = np.zeros(size, dtype=np.int64)
    return EpochPlan(indices=indices, rotations=rotations)


def storage_order(
    plan: EpochPlan, groups: np.ndarray, *, buffer: int, seed: int, epoch: int
) -> EpochPlan:
    """The same epoch, reordered to read storage front to back (WebDataset-style shuffling).

    The storage groups (tar shards) are visited in a random order, each group's images in
    id order (a tar's member order, i.e. its byte order), and a shuffle buffer then mixes
    neighbours: every position moves by a random offset below ``buffer``. Each group is thus
    read in one forward sweep and every batch still mixes images of ~``buffer`` neighbours.
    The multiset of (image, rotation) pairs is the plan's: the sampling stays uniform over
    the clusters. Deterministic in (seed, epoch), so a mid-epoch resume finds its position.

    Args:
        plan: the epoch's plan.
        groups: (N,) int storage group of every image id (its tar shard).
        buffer: shuffle window in images (>= 1; 1 keeps the storage order exactly).
        seed, epoch: as for the plan.

    Returns:
        The reordered ``EpochPlan``.
    """
    if buffer < 1:
        raise ValueError(f"data.shard_buffer ({buffer}) must be >= 1 to reorder a plan")
    rng = np.random.default_rng([seed, epoch, 1])
    shard = groups[plan.indices]
    visit = rng.permutation(int(groups.max()) + 1 if len(groups) else 1)
    stream = np.lexsort((plan.indices, visit[shard]))
    jitter = np.arange(len(stream)) + rng.uniform(0, buffer, len(stream))
    order = stream[np.argsort(jitter, kind="stable")]
    return EpochPlan(plan.indices[order], plan.rotations[order])
