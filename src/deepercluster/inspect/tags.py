"""Tags from a metadata CSV, and the tags each cluster holds more often than the collection.

The CSV has a column of image paths (``file`` by default; a path as the run saw it, a path
relative to the data folder, or a member name inside a tar shard) and a column of
comma-separated tags. A tag is over-represented in a cluster when its share of the cluster's
images is above its share of all images (lift = share in cluster / share overall > 1). Tags
are ranked by ``count x log(lift)`` (the tag's term in the mutual information between tags and
clusters): lift alone would rank a tag seen twice in the whole collection first whenever both
images fall in one cluster, above a tag carried by a third of the cluster.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

__all__ = ["TagScore", "match_tags", "overrepresented_tags", "read_tag_table"]


@dataclass(frozen=True)
class TagScore:
    """One over-represented tag of a cluster: ``count`` of its images carry it."""

    tag: str
    count: int
    lift: float


def read_tag_table(
    path: str | Path, *, path_column: str = "file", tags_column: str = "tags"
) -> dict[str, list[str]]:
    """Image path -> tags from a metadata CSV.

    Raises:
        ValueError: a column is missing (the message lists the ones present).
    """
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for wanted in (path_column, tags_column):
            if wanted not in columns:
                raise ValueError(
                    f"{path} has no column {wanted!r} (columns: {', '.join(columns)}); "
                    "pass --path-column/--tags-column"
                )
        table: dict[str, list[str]] = {}
        for row in reader:
            tags = [t.strip().lower() for t in (row[tags_column] or "").split(",")]
            table[row[path_column].strip()] = sorted({t for t in tags if t})
    return table


def match_tags(paths: Sequence[str], table: dict[str, list[str]]) -> list[list[str]]:
    """Tags of every image path: exact path, tar member name, or a trailing part of the path."""
    out: list[list[str]] = []
    for path in paths:
        member = path.split(".tar:", 1)[1] if ".tar:" in path else None
        tags = table.get(member) if member is not None else None
        if tags is None:
            tags = table.get(path)
        if tags is None:
            parts = Path(member or path).parts
            # The longest trailing part first: "images/a.jpg" before "a.jpg".
            for j in range(min(len(parts), 6), 0, -1):
                tags = table.get("/".join(parts[-j:]))
                if tags is not None:
                    break
        out.append(tags or [])
    return out


def overrepresented_tags(
    image_tags: Sequence[Sequence[str]],
    labels: np.ndarray,
    k: int,
    *,
    top: int = 5,
    min_count: int = 2,
) -> list[list[TagScore]]:
    """The ``top`` tags of each cluster by ``count x log(lift)``, among tags with lift > 1
    carried by at least ``min_count`` members.

    Args:
        image_tags: tags of each of the N images.
        labels: (N,) cluster of each image in [0, k), -1 for images left out.
        k: number of clusters.

    Returns:
        For each cluster, up to ``top`` :class:`TagScore`, best first.
    """
    vocab = sorted({t for tags in image_tags for t in tags})
    index = {t: j for j, t in enumerate(vocab)}
    keep = labels >= 0
    rows = [i for i, tags in enumerate(image_tags) if keep[i] for _ in tags]
    cols = [index[t] for i, tags in enumerate(image_tags) if keep[i] for t in tags]
    n = len(image_tags)
    has = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, len(vocab))
    )
    members = scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum())), (labels[keep], np.flatnonzero(keep))), shape=(k, n)
    )
    counts = (members @ has).tocsr()  # (k, T) images of cluster c carrying tag t
    sizes = np.bincount(labels[keep], minlength=k).astype(np.float64)
    overall = np.asarray(has.sum(axis=0)).ravel() / max(int(keep.sum()), 1)
    result: list[list[TagScore]] = []
    for c in range(k):
        lo, hi = counts.indptr[c], counts.indptr[c + 1]
        tag_ids, n_tag = counts.indices[lo:hi], counts.data[lo:hi]
        ok = n_tag >= min(min_count, sizes[c])
        tag_ids, n_tag = tag_ids[ok], n_tag[ok]
        lift = (n_tag / max(sizes[c], 1.0)) / overall[tag_ids]
        # A tag no more frequent here than everywhere (lift <= 1) says nothing about the cluster.
        tag_ids, n_tag, lift = tag_ids[lift > 1], n_tag[lift > 1], lift[lift > 1]
        score = n_tag * np.log(lift)
        order = np.lexsort((-n_tag, -score))[:top]
        result.append([TagScore(vocab[tag_ids[j]], int(n_tag[j]), float(lift[j])) for j in order])
    return result
