"""Class labels for the images of a collection.

Labels come, in order of preference, from a labels CSV (rows matched to images by
:func:`deepercluster.data.pathmatch.csv_values`), from the collection itself (first-level
class sub-folders of an image folder, or the ``label`` column of a CSV list of images), or from
the parent folder of each tar member (``train/cat/0001.jpg`` -> ``cat``, the layout of
class-per-folder archives).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepercluster.data import Collection, open_collection
from deepercluster.data.pathmatch import csv_values, display_paths

__all__ = ["LabelledCollection", "class_labels", "open_labelled", "open_train_test"]


@dataclass(frozen=True)
class LabelledCollection:
    """A collection with a class per image.

    Attributes:
        collection: the images.
        labels: (N,) int64 index into ``class_names``, -1 where unknown.
        class_names: sorted class names.
    """

    collection: Collection
    labels: np.ndarray
    class_names: list[str]


def class_labels(
    collection: Collection,
    labels_csv: str | Path | None = None,
    column: str = "label",
    *,
    flag: str = "--labels",
) -> tuple[np.ndarray, list[str]]:
    """(N,) int64 class index of each image (-1 if unknown) and the sorted class names.

    ``flag`` is the command-line option that gives ``labels_csv``, for the error message.

    Raises:
        ValueError: no source of labels (not a class-per-folder collection and no CSV).
    """
    if labels_csv is not None:
        names: list[str | None] = csv_values(display_paths(collection), labels_csv, column)
    else:
        own = getattr(collection, "labels", None)
        if own is not None:
            return np.asarray(own, dtype=np.int64), list(getattr(collection, "class_names", []))
        # A CSV list of images may carry the labels in its own column.
        names = [n or None for n in getattr(collection, "metadata", {}).get(column) or []]
        if not names:
            names = [_member_folder(collection.path(i)) for i in range(len(collection))]
        if len({n for n in names if n}) < 2:
            raise ValueError(
                "cannot tell the class of the images: use a folder with one sub-folder per "
                f"class (or tar members under <class>/ folders), or pass {flag} CSV with "
                "path and label columns"
            )
    classes = sorted({n for n in names if n})
    lookup = {c: j for j, c in enumerate(classes)}
    return np.array([lookup[n] if n else -1 for n in names], dtype=np.int64), classes


def _member_folder(path: str) -> str | None:
    """The folder holding a tar member (``"a.tar:train/cat/1.jpg"`` -> ``"cat"``), or None."""
    member = path.split(":", 1)[1] if ":" in path else ""
    return posixpath.basename(posixpath.dirname(member)) or None


def open_labelled(
    spec: str, labels_csv: str | None = None, *, flag: str = "--labels"
) -> LabelledCollection:
    """Open a collection and its class labels (see :func:`class_labels`)."""
    collection = open_collection(spec)
    return LabelledCollection(collection, *class_labels(collection, labels_csv, flag=flag))


def open_train_test(
    train: str, test: str, train_labels: str | None = None, test_labels: str | None = None
) -> tuple[LabelledCollection, LabelledCollection]:
    """Open labelled training and test images (``--train-data``/``--test-data``).

    Raises:
        ValueError: their class names differ (class ``j`` must mean the same in both).
    """
    opened_train = open_labelled(train, train_labels, flag="--train-labels")
    opened_test = open_labelled(test, test_labels, flag="--test-labels")
    if opened_train.class_names != opened_test.class_names:
        raise ValueError(
            f"train and test classes differ ({len(opened_train.class_names)} vs "
            f"{len(opened_test.class_names)} names); both must use the same class names"
        )
    return opened_train, opened_test
