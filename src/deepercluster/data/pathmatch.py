"""Which row of a CSV names which image: the one rule for class labels and tags alike.

:func:`csv_values` reads a CSV's path column and a value column (a class, comma-separated
tags) and gives each image of a collection the value of the row that names it.

A labels or metadata CSV names images the way its author saw them: the full path the
collection lists, a path relative to some folder (``images/a.jpg``), a tar member name
(``train/cat/1.jpg`` for ``shard-0.tar:train/cat/1.jpg``) or a bare file name. The rule:

1. a row whose path is the image's display path, character for character;
2. else the row that shares the longest run of trailing path parts with the image. The file
   name alone is the one-part case; a tar member's parts follow its shard's
   (``s.tar:a/b.jpg`` has the parts of ``s.tar/a/b.jpg``); ``\\`` separates parts like ``/``.

Two rows that match an image equally well (``x/1.jpg`` and ``y/1.jpg`` for ``/data/1.jpg``,
or one path written twice) are refused rather than picked from: a silent pick would give the
image another image's label.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .collection import Collection
from .sources import PATH_COLUMNS

__all__ = ["csv_values", "display_paths", "match_paths", "path_parts", "read_path_csv"]

_TAR_MEMBER = re.compile(r"(\.tar):", re.IGNORECASE)


def display_paths(collection: Collection) -> list[str]:
    """The display path of every image id (the collection's ``paths`` when it has them)."""
    paths = getattr(collection, "paths", None)
    if paths is not None:
        return list(paths)
    return [collection.path(i) for i in range(len(collection))]


def path_parts(path: str) -> tuple[str, ...]:
    """The folders and file name of ``path``, tar members continuing their shard's path."""
    path = _TAR_MEMBER.sub(r"\1/", path.strip().replace("\\", "/"))
    return tuple(p for p in path.split("/") if p not in ("", "."))


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def match_paths(images: Sequence[str], rows: Sequence[str]) -> np.ndarray:
    """The row of ``rows`` that names each image (see the module docstring for the rule).

    Args:
        images: the N display paths of a collection (``Collection.path``).
        rows: the R paths of a CSV's path column, in file order.

    Returns:
        (N,) int64 index into ``rows``, -1 for an image that no row names.

    Raises:
        ValueError: two rows match an image equally well, or no row names any image (the
            message says how to fix the CSV).
    """
    exact: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    parts = [path_parts(path) for path in rows]
    for j, path in enumerate(rows):
        exact.setdefault(path, []).append(j)
        if parts[j]:
            by_name.setdefault(parts[j][-1], []).append(j)
    out = np.full(len(images), -1, dtype=np.int64)
    for i, image in enumerate(images):
        candidates = exact.get(image, [])
        if not candidates:
            mine = path_parts(image)
            candidates = by_name.get(mine[-1], []) if mine else []
            if len(candidates) > 1:
                depth = [_common_tail(mine, parts[j]) for j in candidates]
                candidates = [j for j, d in zip(candidates, depth, strict=True) if d == max(depth)]
        if len(candidates) > 1:
            named = ", ".join(repr(rows[j]) for j in candidates[:3])
            raise ValueError(
                f"{len(candidates)} rows of the CSV name the image {image!r} equally well "
                f"({named}); write the image paths with enough parent folders to tell them "
                "apart, or the full paths the collection lists, each image once"
            )
        if candidates:
            out[i] = candidates[0]
    if len(images) and bool(np.all(out < 0)):
        raise ValueError(
            f"no row of the CSV names an image of the collection (first image: {images[0]!r}, "
            f"first CSV path: {rows[0] if len(rows) else None!r}); the path column must hold "
            "the image paths, paths relative to a folder, tar member names or file names"
        )
    return out


def read_path_csv(
    csv_path: str | Path, column: str, *, path_column: str | None = None
) -> tuple[list[str], list[str]]:
    """``(paths, values)`` of a CSV, one pair per row: its image paths and ``column``.

    Args:
        csv_path: the CSV (UTF-8, header row).
        column: the value column (empty cells give "").
        path_column: the column of image paths; None takes the first of ``PATH_COLUMNS``.

    Raises:
        ValueError: a column is missing (the message lists the CSV's columns).
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if path_column is None:
            path_column = next((c for c in PATH_COLUMNS if c in fields), None)
            if path_column is None or column not in fields:
                raise ValueError(
                    f"{csv_path} needs a path column (path, file, filepath or image) and a "
                    f"{column!r} column; it has {fields}"
                )
        for wanted in (path_column, column):
            if wanted not in fields:
                raise ValueError(
                    f"{csv_path} has no column {wanted!r} (columns: {', '.join(fields)}); "
                    "name the columns of the image paths and of the values (inspect: "
                    "--path-column/--tags-column, eval clusters: --column)"
                )
        rows = list(reader)
    return [(r[path_column] or "").strip() for r in rows], [r[column] or "" for r in rows]


def csv_values(
    images: Sequence[str], csv_path: str | Path, column: str, *, path_column: str | None = None
) -> list[str | None]:
    """The ``column`` value of the CSV row naming each image (None where no row names it).

    Args:
        images: the N display paths of a collection.
        csv_path, column, path_column: see :func:`read_path_csv`.

    Raises:
        ValueError: a column is missing, two rows name an image equally well, or no row names
            any image.
    """
    paths, values = read_path_csv(csv_path, column, path_column=path_column)
    return [values[j] if j >= 0 else None for j in match_paths(images, paths).tolist()]
