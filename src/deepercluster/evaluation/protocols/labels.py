"""Class labels and tags for the images of a collection, matched by path.

Labels come, in order of preference, from a labels CSV, from the collection itself (first-level
class sub-folders of an image folder), or from the parent folder of each tar member
(``train/cat/0001.jpg`` -> ``cat``, the layout of class-per-folder archives).
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepercluster.data import Collection, open_collection

__all__ = ["LabelledCollection", "class_labels", "match_rows", "open_labelled", "read_column"]


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


def _keys(display_path: str) -> list[str]:
    """Ways a CSV row may name an image: full path, tar member name, then file name."""
    keys = [display_path]
    if ":" in display_path:
        keys.append(display_path.split(":", 1)[1])
    keys.append(posixpath.basename(display_path.replace("\\", "/")))
    return keys


def read_column(csv_path: str | Path, column: str) -> tuple[list[str], list[str]]:
    """``(paths, values)`` of a CSV: its path column ("path", "file", "filepath" or "image")
    and ``column``.

    Raises:
        ValueError: the CSV lacks a path column or ``column``.
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        path_col = next((c for c in ("path", "file", "filepath", "image") if c in fields), None)
        if path_col is None or column not in fields:
            raise ValueError(
                f"{csv_path} needs a path column (path, file, filepath or image) and a "
                f"{column!r} column; it has {fields}"
            )
        rows = list(reader)
    return [r[path_col] for r in rows], [r[column] or "" for r in rows]


def match_rows(
    collection: Collection, paths: Sequence[str], values: Sequence[str]
) -> list[str | None]:
    """The CSV value of each image of ``collection`` (None when no row names it).

    A row matches an image by its full display path, its tar member name, or, failing both,
    its file name (only when that name is unique in the CSV).

    Raises:
        ValueError: no row matches any image (the CSV is for another collection).
    """
    by_path: dict[str, str] = {}
    by_name: dict[str, str | None] = {}
    for p, v in zip(paths, values, strict=True):
        by_path[p] = v
        name = posixpath.basename(p)
        by_name[name] = None if name in by_name else v  # ambiguous names do not match
    out: list[str | None] = []
    for i in range(len(collection)):
        keys = _keys(collection.path(i))
        value = next((by_path[k] for k in keys[:-1] if k in by_path), None)
        if value is None:
            value = by_name.get(keys[-1])
        out.append(value)
    if len(collection) and all(v is None for v in out):
        raise ValueError(
            f"no row of the CSV names an image of the collection (first image: "
            f"{collection.path(0)!r}, first CSV path: {paths[0] if paths else None!r}); the "
            "path column must hold the image paths or tar member names"
        )
    return out


def class_labels(
    collection: Collection, labels_csv: str | Path | None = None, column: str = "label"
) -> tuple[np.ndarray, list[str]]:
    """(N,) int64 class index of each image (-1 if unknown) and the sorted class names.

    Raises:
        ValueError: no source of labels (not a class-per-folder collection and no CSV).
    """
    if labels_csv is not None:
        paths, values = read_column(labels_csv, column)
        names: list[str | None] = list(match_rows(collection, paths, values))
    else:
        own = getattr(collection, "labels", None)
        if own is not None:
            return np.asarray(own, dtype=np.int64), list(getattr(collection, "class_names", []))
        names = []
        for i in range(len(collection)):
            member = _keys(collection.path(i))[-2] if ":" in collection.path(i) else ""
            parent = posixpath.basename(posixpath.dirname(member))
            names.append(parent or None)
        if len({n for n in names if n}) < 2:
            raise ValueError(
                "cannot tell the class of the images: use a folder with one sub-folder per "
                "class (or tar members under <class>/ folders), or pass --labels CSV with "
                "path and label columns"
            )
    classes = sorted({n for n in names if n})
    lookup = {c: j for j, c in enumerate(classes)}
    return np.array([lookup[n] if n else -1 for n in names], dtype=np.int64), classes


def open_labelled(spec: str, labels_csv: str | None = None) -> LabelledCollection:
    """Open a collection and its class labels (see :func:`class_labels`)."""
    collection = open_collection(spec)
    labels, names = class_labels(collection, labels_csv)
    return LabelledCollection(collection, np.asarray(labels, dtype=np.int64), list(names))
