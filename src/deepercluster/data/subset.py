"""Some images of a collection, renumbered 0..n-1, for training on a chosen sample of it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from deepercluster.data.collection import Collection

__all__ = ["CollectionSubset"]


class CollectionSubset:
    """The images ``ids`` of ``base``, in that order, as a collection of their own.

    Image ``i`` of the subset is image ``ids[i]`` of ``base``; paths, labels and storage groups
    (tar shard of each image, which the epoch sampler reads in order) follow it.

    Args:
        base: the whole collection.
        ids: positions in ``base``, each at most once.

    Raises:
        ValueError: a position out of range or repeated.
    """

    def __init__(self, base: Collection, ids: Sequence[int] | np.ndarray) -> None:
        self.base = base
        self.ids = np.asarray(ids, dtype=np.int64)
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= len(base)):
            raise ValueError(f"subset positions must lie in 0..{len(base) - 1}")
        if np.unique(self.ids).size != self.ids.size:
            raise ValueError("subset positions must not repeat")
        own = getattr(base, "labels", None)
        self.labels: np.ndarray | None = None if own is None else np.asarray(own)[self.ids]
        self.class_names: list[str] = list(getattr(base, "class_names", []))

    def __len__(self) -> int:
        return int(self.ids.size)

    def read(self, index: int) -> Image.Image:
        return self.base.read(int(self.ids[index]))

    def path(self, index: int) -> str:
        return self.base.path(int(self.ids[index]))

    @property
    def paths(self) -> tuple[str, ...]:
        """Display paths of the subset's images, in its order."""
        return tuple(self.path(i) for i in range(len(self)))

    def storage_groups(self) -> np.ndarray:
        """(n,) int64 storage group of each image, as in the base collection."""
        groups = getattr(self.base, "storage_groups", None)
        if groups is None:
            return np.arange(len(self), dtype=np.int64) // 1024
        return np.asarray(groups(), dtype=np.int64)[self.ids]

    def describe(self) -> str:
        """One line for the log, e.g. ``"500 of 50,000 images from 1 tar shard"``."""
        describe = getattr(self.base, "describe", None)
        whole = describe() if callable(describe) else f"{len(self.base):,} images"
        return f"{len(self):,} of {whole}"
