"""Who stays of each near-duplicate group: the threshold graph's components split into stars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepercluster.cluster.blocks import RowSource
from deepercluster.curate.duplicates import TOLERANCE

__all__ = ["Survivors", "survivors"]


@dataclass(frozen=True)
class Survivors:
    """Who stays of each near-duplicate group, and whom each dropped image resembles.

    Attributes:
        duplicate_of: (N,) int64 the survivor a dropped image is a near-duplicate of, else -1.
        group: (N,) int64 the survivor of the row's group (itself for a survivor), -1 for a
            row in no group.
        similarity: (N,) float32 cosine similarity of a dropped image to its survivor (NaN
            for the others).
    """

    duplicate_of: np.ndarray
    group: np.ndarray
    similarity: np.ndarray


def survivors(
    source: RowSource,
    components: np.ndarray,
    score: np.ndarray,
    *,
    threshold: float,
    max_memory: int,
    density: np.ndarray | None = None,
    floor: float | None = None,
) -> Survivors:
    """Split each connected component of the threshold graph into stars around survivors.

    A component can chain images that are far apart (a~b and b~c with a and c unlike). Inside
    each, the best remaining image (lowest ``score``, then lowest row) survives and takes every
    remaining image at or above ``threshold`` of it as its near-duplicates; then the next best
    remaining one, and so on (the greedy rule of SemDeDup). So every dropped image is at least
    ``threshold`` similar to the image that stays in its place.

    Args:
        source: (N, d) L2-normalised rows.
        components: (N,) int64 component of each row (``DuplicateGroups.group``).
        score: (N,) float, lower is better (distance to the centroid, minus the file size).
        threshold: in (0, 1], on the similarity ``find_duplicates`` used.
        max_memory: bytes a component's rows may take.
        density, floor: the scaled test and its cosine floor, as for
            :func:`~deepercluster.curate.duplicates.find_duplicates` (None: plain cosine).

    Raises:
        ValueError: a component too large for ``max_memory`` (the threshold is too low).
    """
    n = len(components)
    r = None if density is None else np.asarray(density, dtype=np.float32)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    group = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    ids = np.flatnonzero(components >= 0)
    order = ids[np.lexsort((ids, np.nan_to_num(score[ids], nan=np.inf), components[ids]))]
    bounds = np.flatnonzero(np.diff(components[order])) + 1
    for members in np.split(order, bounds):
        if len(members) * source.dim * 4 > max_memory:
            raise ValueError(
                f"a chain of {len(members)} near-duplicates does not fit in --max-memory "
                f"({max_memory} bytes); raise --dedup or --max-memory"
            )
        sorted_rows = np.sort(members)
        x = source.take(sorted_rows)[np.searchsorted(sorted_rows, members)]  # best first
        open_ = np.ones(len(members), dtype=bool)
        for pos in range(len(members)):
            if not open_[pos]:
                continue
            open_[pos] = False
            rest = np.flatnonzero(open_)
            sims = x[rest] @ x[pos]
            bar = np.float32(threshold)
            if r is not None:  # the scaled test of find_duplicates
                bar = threshold + (1 - threshold) * (r[members[pos]] + r[members[rest]]) / 2
                if floor is not None:
                    bar = np.minimum(bar, floor)
            close = sims >= bar - TOLERANCE
            hit = rest[close]
            if len(hit):
                open_[hit] = False
                keeper = members[pos]
                duplicate_of[members[hit]] = keeper
                group[members[hit]] = keeper
                group[keeper] = keeper
                similarity[members[hit]] = sims[close]
    return Survivors(duplicate_of, group, similarity)
