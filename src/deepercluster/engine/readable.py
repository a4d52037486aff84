"""Data that cannot train is refused with its real cause, and ``skipped.csv`` says why.

A folder of broken files, or a list file whose lines are not image paths, would otherwise
fail later with a message about something else (``cluster.k`` larger than the images) or
point at a ``skipped.csv`` that was never written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deepercluster import distributed
from deepercluster.config import ClusterConfig
from deepercluster.data import BadImageError, Collection, SkipLog
from deepercluster.engine.failures import NoReadableImages

PROBE_LIMIT = 1000
"""Collections up to this size are read whole before a ``cluster.k`` refusal: if none of
their images reads, that is the real cause to report."""


def check_k(
    cluster: ClusterConfig,
    collection: Collection,
    unreadable: Callable[[list[tuple[int, str]]], NoReadableImages],
) -> None:
    """Refuse a ``cluster.k`` larger than the collection, or the collection if unreadable.

    Args:
        cluster: the clustering settings.
        collection: the images.
        unreadable: builds the error from the (index, reason) of unreadable images
            (:func:`none_readable` with the run's settings).

    Raises:
        NoReadableImages: none of the (few) images reads; ``skipped.csv`` lists them.
        ValueError: ``cluster.k`` exceeds the number of images, with a value that fits.
    """
    n_images = len(collection)
    if cluster.k <= n_images:
        return
    if n_images <= PROBE_LIMIT:
        failed: list[tuple[int, str]] = []
        for index in range(n_images):
            try:
                collection.read(index)
                break
            except BadImageError as exc:
                failed.append((index, str(exc)))
        else:
            raise unreadable(failed)
    raise ValueError(
        f"cluster.k ({cluster.k}) is larger than the number of images ({n_images}); "
        f"lower cluster.k (a few images per cluster at least, e.g. "
        f"{max(1, n_images // 10 // cluster.super_clusters) * cluster.super_clusters})"
    )


def none_readable(
    collection: Collection,
    unreadable: list[tuple[int, str]],
    *,
    data_path: str,
    skip_log: SkipLog,
    out_dir: Path,
) -> NoReadableImages:
    """The error for a collection none of whose images reads, ``skipped.csv`` written.

    Args:
        collection: the images.
        unreadable: (index, reason) of the images tried.
        data_path: ``data.path`` as given (a list file is named as such).
        skip_log: the run's log of unreadable images (completed here).
        out_dir: the run folder, for ``skipped.csv``.
    """
    for index, reason in unreadable:
        skip_log.record(collection.path(index), reason)
    table = out_dir / "skipped.csv"
    if distributed.rank() == 0:
        skip_log.write_csv(table)
    n = len(collection)
    if data_path.lower().endswith((".txt", ".lst", ".csv")):
        lines = "rows" if data_path.lower().endswith(".csv") else "lines"
        what = f"none of the {n} {lines} of {data_path} is a readable image"
    else:
        what = f"none of the {n} images in {data_path or 'the collection'} could be read"
    return NoReadableImages(
        f"{what} (each is listed with its reason in {table}); check that data.path points at "
        "image files",
        unreadable,
    )
