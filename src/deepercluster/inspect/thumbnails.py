"""Thumbnails for the report, generated once and cached on disk.

A thumbnail is a JPEG whose longer side is at most ``size`` pixels, stored at
``<root>/<id // 1000>/<id>.jpg``. A second report of the same run only creates the ones that
are missing, so re-rendering with other page settings costs no image decoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from deepercluster.data import BadImageError, Collection

__all__ = ["ThumbnailCache"]


class ThumbnailCache:
    """JPEG thumbnails of a collection's images under ``root``.

    Args:
        root: cache folder (created on demand).
        size: longest side in pixels.
    """

    def __init__(self, root: str | Path, *, size: int = 128) -> None:
        if size < 8:
            raise ValueError(f"thumbnail size must be at least 8 px, got {size}")
        self.root = Path(root)
        self.size = size

    def relative(self, index: int) -> str:
        """Path of image ``index``'s thumbnail relative to ``root`` (forward slashes)."""
        return f"{index // 1000:04d}/{index}.jpg"

    def ensure(
        self, collection: Collection, indices: Iterable[int], *, progress: bool = False
    ) -> tuple[int, list[int]]:
        """Create the missing thumbnails of ``indices``.

        Returns:
            (number created, ids that could not be read: they get no thumbnail).
        """
        todo = sorted({int(i) for i in indices if not (self.root / self.relative(i)).exists()})
        failed: list[int] = []
        for index in tqdm(todo, desc="thumbnails", unit="img", disable=not progress):
            target = self.root / self.relative(index)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                image = collection.read(index)
            except BadImageError:
                failed.append(index)
                continue
            image.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
            tmp = target.with_suffix(".tmp")
            image.convert("RGB").save(tmp, format="JPEG", quality=85)
            tmp.replace(target)  # never leave a half-written thumbnail in the cache
        return len(todo) - len(failed), failed
