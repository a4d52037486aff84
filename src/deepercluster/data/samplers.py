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

__all__ = ["EpochPlan", "uniform_epoch_plan"]


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
    size`` surplus draws are removed one per label from randomly chosen labels, so each label
    appears ``per`` or ``per - 1`` times: exactly equal counts when ``size`` is a multiple of
    the number of labels, and never more than one apart. (DeepCluster's sampler instead
    truncated a shuffled list, which lets counts drift apart by chance.) The result is shuffled,
    and with ``rotation`` each position gets a uniform random rotation in 0..3.

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
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if size <= 0:
        raise ValueError(f"epoch size must be positive, got {size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    if labels.size and labels.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = excluded), found {labels.min()}")
    valid = np.flatnonzero(labels >= 0)
    if valid.size == 0:
        raise ValueError(
            "no image has a valid pseudo-label (all are -1, i.e. excluded); check that the "
            "collection has readable images and that clustering ran before training"
        )
    rng = np.random.default_rng([seed, epoch])

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
