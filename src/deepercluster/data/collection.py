"""Image collections: an ordered set of images whose position is a stable integer id.

The id is what clustering assignments, epoch plans and skip logs refer to, so it must not
change between two opens of the same data. ``open_collection`` accepts a folder, a list
file, a CSV file or tar shards; ``ArrayCollection`` wraps an in-memory array (demos, tests).
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from .files import DEFAULT_MAX_BYTES
from .pathtable import PathTable
from .sources import (
    has_pattern,
    no_images_message,
    read_csv_file,
    read_list_file,
    resolve_pattern,
    scan_folder,
)
from .tarshards import COMPRESSED_TAR_SUFFIXES, TarShards, compressed_tar_message

__all__ = ["ArrayCollection", "Collection", "ImageCollection", "open_collection"]

# ImageCollection with open_collection's limits filled in.
_Make = Callable[..., "ImageCollection"]

_SUPPORTED = (
    "a folder of images, a .txt/.lst list file, a .csv file, or plain .tar shards (one file, a "
    "glob such as 'shards/train-*.tar' or a brace pattern such as 'shards/train-{000..099}.tar')"
)


@runtime_checkable
class Collection(Protocol):
    """What the data views need: a length, decoded images by id, and a path to report."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> Image.Image:
        """Image ``index`` in RGB with EXIF orientation applied; raises ``BadImageError``."""
        ...

    def path(self, index: int) -> str:
        """Display path of image ``index``, e.g. ``"/a/b.jpg"`` or ``"shard-000.tar:x.jpg"``."""
        ...


class ImageCollection:
    """Images stored as files or tar members, in a fixed order (see ``open_collection``).

    Args:
        paths: Image file paths; position = id. Ignored when ``tar`` is given.
        labels: Optional (N,) int64 class index per image (into ``class_names``).
        class_names: Names of the classes ``labels`` index.
        metadata: Optional extra columns (e.g. from a CSV), each a list of N strings.
        max_pixels: Decompression-bomb limit passed to ``decode_image``.
        max_bytes: Files and tar members larger than this are skipped unread.
        source: Words for ``describe()``, e.g. ``"folder /data/train"``.
        tar: Tar shard index to read members from instead of files.
    """

    def __init__(
        self,
        paths: Sequence[str] = (),
        *,
        labels: np.ndarray | None = None,
        class_names: Sequence[str] = (),
        metadata: Mapping[str, Sequence[str]] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        source: str = "",
        tar: TarShards | None = None,
    ) -> None:
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        # Compact: millions of paths would otherwise be millions of Python strings.
        self._files: Sequence[str] = (
            PathTable(())
            if tar is not None
            else paths
            if isinstance(paths, PathTable)
            else PathTable([str(p) for p in paths])
        )
        self._tar = tar
        self._paths_cache: tuple[str, ...] | None = None
        n = len(self)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        self.labels: np.ndarray | None = labels
        self.class_names: list[str] = list(class_names)
        self.metadata: dict[str, list[str]] = {k: list(v) for k, v in (metadata or {}).items()}
        for key, values in self.metadata.items():
            if len(values) != n:
                raise ValueError(f"metadata column {key!r} has {len(values)} values for {n} images")
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.source = source

    def __len__(self) -> int:
        return len(self._tar) if self._tar is not None else len(self._files)

    def read(self, index: int) -> Image.Image:
        """Decode image ``index`` to RGB (EXIF orientation applied).

        Raises:
            IndexError: ``index`` outside ``[0, len)``.
            BadImageError: The image cannot be decoded; ``reason`` says why.
        """
        i = self._check(index)
        if self._tar is not None:
            data = self._tar.read_bytes(i, max_bytes=self.max_bytes)
            return decode_image(data, max_pixels=self.max_pixels)
        return decode_image(self._files[i], max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    def path(self, index: int) -> str:
        """Display path of image ``index`` (``"<shard>:<member>"`` for tar members)."""
        i = self._check(index)
        return self._tar.path(i) if self._tar is not None else self._files[i]

    @property
    def paths(self) -> tuple[str, ...]:
        """Display paths of all images, in id order (a tuple: ids must not be edited)."""
        if self._paths_cache is None:
            if self._tar is not None:
                self._paths_cache = tuple(self._tar.path(i) for i in range(len(self._tar)))
            else:
                self._paths_cache = tuple(self._files)
        return self._paths_cache

    def storage_groups(self) -> np.ndarray:
        """(N,) int64 storage group of every image: its tar shard, or for files blocks of
        1,024 consecutive ids (sorted paths: mostly one folder each)."""
        if self._tar is not None:
            return self._tar.shard_of.astype(np.int64)
        return np.arange(len(self), dtype=np.int64) // 1024

    def describe(self) -> str:
        """One line for the log, e.g. ``"1,008 images from 1 tar shard"``."""
        n = len(self)
        text = f"{n:,} image{'' if n == 1 else 's'}"
        if self.class_names:
            text += f" in {len(self.class_names):,} classes"
        if self.source:
            text += f" from {self.source}"
        if self.metadata:
            text += f" (metadata: {', '.join(self.metadata)})"
        return text

    def close(self) -> None:
        """Close open tar shard handles (reads reopen them as needed)."""
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> ImageCollection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageCollection({self.describe()})"

    def _check(self, index: int) -> int:
        i = operator.index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"image id {i} out of range for a collection of {len(self)} images")
        return i


class ArrayCollection:
    """A collection over an in-memory uint8 array of images.

    Args:
        images: (N, H, W, 3) RGB or (N, H, W) grayscale uint8 array.
        labels: Optional (N,) integer labels.
        name: Prefix of the display paths (``"array[7]"``).
        class_names: Names for the label values; default ``["0", "1", ...]``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        name: str = "array",
        class_names: Sequence[str] | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8, got {images.dtype}; scale to 0-255 and convert, e.g. "
                f"(x * 255).round().astype(np.uint8) for floats in [0, 1]"
            )
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(f"images must be (N, H, W, 3) or (N, H, W), got {images.shape}")
        self.images = images
        self.name = name
        self.labels: np.ndarray | None = None
        if labels is not None:
            self.labels = np.asarray(labels, dtype=np.int64)
            if self.labels.shape != (len(images),):
                raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        if class_names is None and self.labels is not None and len(self.labels):
            class_names = [str(c) for c in range(int(self.labels.max()) + 1)]
        self.class_names: list[str] = list(class_names or [])
        self.metadata: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB ``PIL.Image`` (grey: three equal channels)."""
        i = operator.index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"image id {i} out of range for a collection of {len(self)} images")
        return Image.fromarray(self.images[i]).convert("RGB")

    def path(self, index: int) -> str:
        """Display path ``"<name>[<index>]"``."""
        return f"{self.name}[{operator.index(index)}]"

    @property
    def paths(self) -> tuple[str, ...]:
        """Display paths of all images, in id order."""
        return tuple(self.path(i) for i in range(len(self)))

    def describe(self) -> str:
        """One line for the log, e.g. ``"1,797 8x8 images from array 'digits'"``."""
        h, w = self.images.shape[1:3]
        return f"{len(self):,} {w}x{h} images from array {self.name!r}"

    def __repr__(self) -> str:
        return f"ArrayCollection({self.describe()})"


def open_collection(
    spec: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    path_column: str = "path",
) -> ImageCollection:
    """Open images from a folder, list file, CSV file or tar shards, with stable ids.

    - Folder: every image below it (extensions in ``IMAGE_EXTENSIONS``, case-insensitive,
      hidden entries skipped), sorted by relative path. ``labels``/``class_names`` come from
      first-level sub-folders when every image sits in one.
    - ``.txt``/``.lst``: one path per line, relative to the list's folder; ``#`` comments.
    - ``.csv``: header row; paths in ``path_column`` (default "path", else "file",
      "filepath" or "image"); other columns become ``metadata``.
    - ``.tar``, a glob (``shards/*.tar``) or a brace pattern (``shards/train-{000..099}.tar``):
      members are indexed by one header scan and read by seeking, never extracted. A pattern
      matching image files instead of tars gives a file collection. A damaged header or an
      unreadable shard costs only itself (see ``TarShards``).

    Files are checked when read (see ``files``): non-regular or too large, the read fails.

    Args:
        spec: The path or pattern.
        max_pixels: Images above this many pixels are skipped as decompression bombs.
        max_bytes: Files and tar members above this many bytes are skipped unread.
        path_column: CSV column holding the image paths.

    Returns:
        The collection; ids are positions in the order described above.

    Raises:
        FileNotFoundError: The path does not exist or the pattern matches nothing.
        ValueError: Unsupported or compressed file, no images found, or no tar shard could
            be read.
    """
    text = os.path.expanduser(os.fspath(spec))
    path = Path(text)
    make = functools.partial(ImageCollection, max_pixels=max_pixels, max_bytes=max_bytes)
    if path.is_dir():
        scan = scan_folder(text)
        return make(
            scan.paths,
            labels=scan.labels,
            class_names=scan.class_names,
            source=f"folder {os.path.abspath(text)}",
        )
    if path.is_file():
        return _open_file(text, path_column, make)
    if path.exists():  # reading a FIFO named list.txt would block forever
        raise ValueError(f"{text} is not a regular file or folder; point --data at {_SUPPORTED}")
    if has_pattern(text):
        return _open_many(resolve_pattern(text), text, make)
    raise FileNotFoundError(f"{text} does not exist; point --data at {_SUPPORTED}")


def _open_file(text: str, path_column: str, make: _Make) -> ImageCollection:
    lower = text.lower()
    if lower.endswith((".txt", ".lst")):
        return make(read_list_file(text), source=f"list file {text}")
    if lower.endswith(".csv"):
        table = read_csv_file(text, path_column)
        return make(table.paths, metadata=table.metadata, source=f"CSV {text}")
    if lower.endswith((".tar", *COMPRESSED_TAR_SUFFIXES)):
        return _open_tars([text], make)
    raise ValueError(f"cannot read images from {text}: expected {_SUPPORTED}")


def _open_many(files: list[str], pattern: str, make: _Make) -> ImageCollection:
    is_tar = [f.lower().endswith((".tar", *COMPRESSED_TAR_SUFFIXES)) for f in files]
    if all(is_tar):
        return _open_tars(files, make)
    if all(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
        return make(files, source=f"pattern {pattern}")
    odd = next(f for f, tar in zip(files, is_tar, strict=True) if not tar)
    raise ValueError(
        f"pattern {pattern} matched {odd}, which is not a .tar shard, and not every match is "
        f"an image; make the pattern match only tar shards (or only images)"
    )


def _open_tars(shards: list[str], make: _Make) -> ImageCollection:
    for shard in shards:
        if shard.lower().endswith(COMPRESSED_TAR_SUFFIXES):
            raise ValueError(compressed_tar_message(shard))
    index = TarShards(shards)
    count = f"{len(shards)} tar shard{'' if len(shards) == 1 else 's'}"
    if index.n_members == 0:
        failed = [(index.path(i), reason) for i, reason in index.problems.items()]
        if all(reason.startswith("empty tar shard") for _, reason in failed):
            raise ValueError(no_images_message(f"{count} ({shards[0]}, ...)"))
        # One bad shard among many is skipped and listed; all of them is a wrong --data.
        shown = "; ".join(f"{path}: {reason}" for path, reason in failed[:3])
        more = "; ..." if len(failed) > 3 else ""
        raise ValueError(
            f"no image could be read from the {count} ({shown}{more}); point --data at plain "
            f".tar shards of image files (`tar tvf {shards[0]} | head` lists a shard's first "
            f"members)"
        )
    return make(tar=index, source=count)
