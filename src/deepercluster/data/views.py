"""Torch datasets over a collection: one for feature extraction, one for training.

Items never raise on a bad image: they carry a zero image and the reason, so the consumer
drops the sample and records it in a ``SkipLog``. One corrupt file among millions must not
end a run at hour 10, and the DataLoader's default collate turns the reason strings into a
list the consumer can inspect per batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .collection import Collection
from .decode import BadImageError
from .samplers import EpochPlan
from .transforms import ClusterTransform, TrainTransform

__all__ = ["ClusterView", "TrainView"]


class ClusterView(Dataset[tuple[Tensor, int, str]]):
    """Deterministic view for feature extraction: upright, centre-cropped images.

    Args:
        collection: Images to read.
        transform: The clustering transform (gives the output resolution R).
        indices: Optional (M,) ids to restrict to (e.g. this rank's shard); default all.

    Item ``j`` is ``(image, index, error)``: image (3, R, R) float32, ``index`` the dataset
    id, and ``error`` "" or the reason the image was unreadable (image then all zeros).
    """

    def __init__(
        self,
        collection: Collection,
        transform: ClusterTransform,
        indices: np.ndarray | None = None,
    ) -> None:
        self.collection = collection
        self.transform = transform
        n = len(collection)
        if indices is None:
            self.indices = np.arange(n, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and not (self.indices.min() >= 0 and self.indices.max() < n):
                raise ValueError(f"indices must lie in [0, {n}) for this collection of {n} images")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Tensor, int, str]:
        index = int(self.indices[j])
        try:
            return self.transform(self.collection.read(index)), index, ""
        except BadImageError as err:
            r = self.transform.resolution
            return torch.zeros(3, r, r), index, err.reason


class TrainView(Dataset[tuple[Tensor, int, int, str]]):
    """Training view following an ``EpochPlan``, reproducible per position.

    The augmentation of plan position ``p`` draws from
    ``np.random.default_rng([seed, epoch, p])``, a stream that is a pure function of the
    triple, so it is the same in every worker layout and when a run resumes mid-epoch with
    ``start = p0`` (item ``j`` is position ``start + j``).

    Args:
        collection: Images to read.
        transform: The training transform (crop, flip, normalise).
        plan: This epoch's ids and rotations.
        seed: Run seed (>= 0).
        epoch: Epoch number (>= 0).
        start: First plan position to serve (positions already trained are skipped).

    Item ``j`` is ``(image, index, rotation, error)``: image (3, R, R) float32 rotated by
    ``rotation * 90`` degrees, ``index`` the dataset id, ``error`` "" or the skip reason.
    """

    def __init__(
        self,
        collection: Collection,
        transform: TrainTransform,
        plan: EpochPlan,
        *,
        seed: int,
        epoch: int,
        start: int = 0,
    ) -> None:
        if not 0 <= start <= len(plan.indices):
            raise ValueError(f"start must lie in [0, {len(plan.indices)}] (plan size), got {start}")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        n = len(collection)
        if plan.indices.size and not (plan.indices.min() >= 0 and plan.indices.max() < n):
            raise ValueError(
                f"the epoch plan refers to ids outside [0, {n}); it was built for another "
                f"collection: rebuild it from this collection's pseudo-labels"
            )
        self.collection = collection
        self.transform = transform
        self.plan = plan
        self._seed = seed
        self._epoch = epoch
        self.start = start

    @property
    def seed(self) -> int:
        """Run seed (read-only: the per-position streams are derived from it)."""
        return self._seed

    @property
    def epoch(self) -> int:
        """Epoch number (read-only; build a new view for another epoch)."""
        return self._epoch

    def __len__(self) -> int:
        return len(self.plan.indices) - self.start

    def __getitem__(self, j: int) -> tuple[Tensor, int, int, str]:
        if not 0 <= j < len(self):
            raise IndexError(f"item {j} out of range for a view of {len(self)} samples")
        p = self.start + j
        index, rotation = int(self.plan.indices[p]), int(self.plan.rotations[p])
        stream = np.random.default_rng([self._seed, self._epoch, p])
        try:
            image = self.transform(self.collection.read(index), stream, rotation=rotation)
        except BadImageError as err:
            r = self.transform.resolution
            return torch.zeros(3, r, r), index, rotation, err.reason
        return image, index, rotation, ""
