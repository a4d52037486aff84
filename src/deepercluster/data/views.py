"""Torch datasets over a collection: one for feature extraction, one for training.

Items never raise on a bad image: they carry a zero image and the reason, so the consumer
drops the sample and records it in a ``SkipLog``. One corrupt file among millions must not
end a run at hour 10, and the DataLoader's default collate turns the reason strings into a
list the consumer can inspect per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .collection import Collection, pixel_reader
from .decode import BadImageError, RGBImage, image_size
from .samplers import EpochPlan
from .transforms import ClusterTransform, TrainTransform

__all__ = ["ClusterView", "TrainView"]

Item = TypeVar("Item")

#: Decoded pixels (counted at Pillow's 4 bytes a pixel) that a batched fetch holds before
#: transforming them: 64 CIFAR-size images, one photo. More would let the first photos of a
#: group leave the cache before their turn.
GROUP_BYTES = 256 * 2**10


def decode_then_transform(
    collection: Collection,
    ids: Sequence[int],
    transform: Callable[[int, RGBImage], Item],
    failed: Callable[[int, str], Item],
) -> list[Item]:
    """``[transform(k, read(ids[k]))]`` for every k, decoding a group of images before
    transforming them, rather than alternating image by image (``read``: the collection's
    :func:`~.collection.pixel_reader`).

    Alternating the image decoder with the transform's kernels evicts each other's code and
    data from the caches; small images fetched in groups avoid that. Groups stop at
    :data:`GROUP_BYTES` of decoded pixels, so photos are still transformed one by one.

    Args:
        collection: where the images come from.
        ids: the images to read, in order.
        transform: ``(k, image) -> item`` for position k of ``ids``.
        failed: ``(k, reason) -> item`` for an image that could not be read.

    Returns:
        One item per id, in order.
    """
    items: list[Item] = []
    group: list[RGBImage | str] = []
    held = 0
    read = pixel_reader(collection)

    def flush() -> None:
        for img in group:
            k = len(items)
            if isinstance(img, str):
                items.append(failed(k, img))
                continue
            try:
                items.append(transform(k, img))
            except BadImageError as err:
                items.append(failed(k, err.reason))
        group.clear()

    for index in ids:
        try:
            img = read(index)
        except BadImageError as err:
            group.append(err.reason)
            continue
        group.append(img)
        width, height = image_size(img)
        held += width * height * 4
        if held >= GROUP_BYTES:
            flush()
            held = 0
    flush()
    return items


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
        return self.__getitems__([j])[0]

    def __getitems__(self, js: Sequence[int]) -> list[tuple[Tensor, int, str]]:
        """Items ``js`` (a DataLoader fetches a batch this way): the same items as one by
        one, faster (:func:`decode_then_transform`)."""
        ids = [int(self.indices[j]) for j in js]
        r = self.transform.resolution
        return decode_then_transform(
            self.collection,
            ids,
            lambda k, img: (self.transform(img), ids[k], ""),
            lambda k, reason: (torch.zeros(3, r, r), ids[k], reason),
        )


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
        return self.__getitems__([j])[0]

    def __getitems__(self, js: Sequence[int]) -> list[tuple[Tensor, int, int, str]]:
        """Items ``js`` (a DataLoader fetches a batch this way): the same items as one by
        one, faster (:func:`decode_then_transform`)."""
        for j in js:
            if not 0 <= j < len(self):
                raise IndexError(f"item {j} out of range for a view of {len(self)} samples")
        positions = [self.start + j for j in js]
        ids = [int(self.plan.indices[p]) for p in positions]
        rotations = [int(self.plan.rotations[p]) for p in positions]
        size = self.transform.resolution

        def augment(k: int, img: RGBImage) -> tuple[Tensor, int, int, str]:
            stream = np.random.default_rng([self._seed, self._epoch, positions[k]])
            return self.transform(img, stream, rotation=rotations[k]), ids[k], rotations[k], ""

        return decode_then_transform(
            self.collection,
            ids,
            augment,
            lambda k, reason: (torch.zeros(3, size, size), ids[k], rotations[k], reason),
        )
