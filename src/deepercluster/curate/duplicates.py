"""Near-duplicate groups in bounded memory: a similarity threshold graph built cluster by cluster.

Comparing every pair of N images costs N² products (10^12 at a million images). Near-duplicates
sit next to each other, so, as SemDeDup (Abbas et al. 2023, https://arxiv.org/abs/2303.09540)
and Vo et al. 2024 (https://arxiv.org/abs/2405.15613) do, pairs are compared inside clusters:
an inverted file whose lists are the run's sub-clusters. Each image is also compared with the
members of its ``probe - 1`` nearest other centroids, so that a pair split by a cluster border
is still found. Every pair at or above the threshold is an edge of a graph; its connected
components are then split into stars (:func:`deepercluster.curate.survivors.survivors`), so
that every dropped image is at least as similar as the threshold to the one image of its
group that stays.

A single cosine threshold fails where images crowd: textures, noise, one product photographed
a hundred ways all sit close to many others that are not copies of them. With ``density`` the
graph thresholds a locally scaled similarity instead: r is an image's mean cosine to its K
nearest neighbours, m = (r_a + r_b) / 2 the pair's typical neighbour similarity, and the
score ``(cos(a, b) - m) / (1 - m)`` says how far the pair stands above its neighbourhood on
the way to identity: 0 for a pair as alike as any neighbours there, 1 for identical images
wherever they are. It corrects the hubness of crowded regions as CSLS does (Conneau et al.
2018, https://arxiv.org/abs/1710.04087), which subtracts r alone, but CSLS also pushes exact
copies below a threshold where the crowd is dense. A large group of copies of one image is a
crowd of its own (its members fill each other's K nearest), so a pair whose plain cosine is at
least ``floor`` is a near-duplicate whatever its neighbourhood. The scaling costs one more
sweep (:func:`neighbour_density`).

Memory: the rows of a batch of clusters are gathered from the :class:`RowSource` (a
:class:`~deepercluster.cluster.store.FeatureStore` or an array) in one sequential sweep, at most
``max_memory`` bytes of them; similarities are computed ``block_rows`` x ``block_rows`` at a time
on ``device``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components

from deepercluster.cluster.blocks import RowSource, row_blocks

__all__ = ["TOLERANCE", "DuplicateGroups", "centroid_sweep", "find_duplicates", "neighbour_density"]

# float32 dot products of two identical unit vectors can land a few ulps under 1.0.
TOLERANCE = 1e-6
# Edges kept before the graph is folded into one star per component (bounds edge memory).
_FOLD_EDGES = 4_000_000


@dataclass(frozen=True)
class DuplicateGroups:
    """Near-duplicate groups of N rows.

    Attributes:
        group: (N,) int64, the lowest row of the row's group; -1 for a row in no group.
        compared: pairs whose similarity was computed.
    """

    group: np.ndarray
    compared: int

    @property
    def n_groups(self) -> int:
        return int(np.unique(self.group[self.group >= 0]).size)


def centroid_sweep(
    source: RowSource,
    labels: np.ndarray,
    centroids: np.ndarray,
    *,
    probe: int,
    block_rows: int,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the rows: the distance to the own centroid and the nearest other ones.

    Args:
        source: (N, d) L2-normalised rows.
        labels: (N,) int64 own cluster in [0, k), -1 for rows without one (skipped).
        centroids: (k, d) float32 cluster centroids.
        probe: 1 + the number of nearest other centroids to list per row.
        block_rows: rows read at once.
        device: where the products run.

    Returns:
        near: (N, probe - 1) int64 nearest centroids other than the own one (-1 when k is
        smaller); distance: (N,) float32 L2 distance to the own centroid (NaN without one).
    """
    dev = torch.device(device)
    cent = torch.from_numpy(np.ascontiguousarray(centroids, np.float32)).to(dev)
    half_norms = 0.5 * (cent * cent).sum(1)
    # An empty cluster's mean is all zeros: never a nearest other cluster (nothing to search).
    half_norms[(cent == 0).all(1)] = torch.inf
    extra = max(probe - 1, 0)
    near = np.full((len(labels), extra), -1, dtype=np.int64)
    distance = np.full(len(labels), np.nan, dtype=np.float32)
    take = min(extra + 1, len(centroids))
    for start, rows in row_blocks(source, block_rows):
        lab = labels[start : start + len(rows)]
        ok = lab >= 0
        x = torch.from_numpy(rows).to(dev)
        own = cent[torch.from_numpy(np.where(ok, lab, 0)).to(dev)]
        d = (x - own).norm(dim=1).cpu().numpy()
        distance[start : start + len(rows)] = np.where(ok, d, np.nan)
        if extra:
            # Nearest in L2 = largest x.c - |c|²/2 (the rows' own norms do not change the order).
            best = (x @ cent.T - half_norms).topk(take, dim=1).indices.cpu().numpy()
            other = best != lab[:, None]
            # The other centroids first, in order of nearness (a stable sort of the mask).
            order = np.argsort(~other, axis=1, kind="stable")[:, :extra]
            picked = np.take_along_axis(best, order, axis=1)
            found = np.take_along_axis(other, order, axis=1) & ok[:, None]
            near[start : start + len(rows), : picked.shape[1]] = np.where(found, picked, -1)
    return near, distance


def _lists(labels: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, row) pairs of the query lists, sorted by cluster then row."""
    valid = np.flatnonzero(labels >= 0)
    clusters = [labels[valid]]
    rows = [valid]
    for j in range(near.shape[1]):
        ok = valid[near[valid, j] >= 0]
        clusters.append(near[ok, j])
        rows.append(ok)
    c, r = np.concatenate(clusters), np.concatenate(rows)
    order = np.lexsort((r, c))
    return c[order], r[order]


def _tasks(
    labels: np.ndarray, near: np.ndarray, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(query rows, database rows) of every cluster, in pieces of at most ``chunk`` rows."""
    q_cluster, q_rows = _lists(labels, near)
    valid = np.flatnonzero(labels >= 0)
    d_rows = valid[np.argsort(labels[valid], kind="stable")]
    d_cluster = labels[d_rows]
    k = int(max(q_cluster.max(initial=-1), d_cluster.max(initial=-1))) + 1
    q_bounds = np.searchsorted(q_cluster, np.arange(k + 1))
    d_bounds = np.searchsorted(d_cluster, np.arange(k + 1))
    for c in range(k):
        queries = q_rows[q_bounds[c] : q_bounds[c + 1]]
        database = d_rows[d_bounds[c] : d_bounds[c + 1]]
        if len(database) == 0 or len(queries) == 0:
            continue
        for q in range(0, len(queries), chunk):
            for d in range(0, len(database), chunk):
                yield queries[q : q + chunk], database[d : d + chunk]


def _batches(
    tasks: Iterator[tuple[np.ndarray, np.ndarray]], budget_rows: int
) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Consecutive tasks whose rows together stay under ``budget_rows``."""
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    held = 0
    for task in tasks:
        size = len(task[0]) + len(task[1])
        if batch and held + size > budget_rows:
            yield batch
            batch, held = [], 0
        batch.append(task)
        held += size
    if batch:
        yield batch


def _fold(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of the edges (a, b): (root per row, star edges root -> member).

    The root of a component is its lowest row; a row in no edge is its own root.
    """
    graph = scipy.sparse.coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    roots = np.full(int(comp.max()) + 1, n, dtype=np.int64)
    np.minimum.at(roots, comp, np.arange(n))
    root = roots[comp]
    members = np.flatnonzero(root != np.arange(n))
    return root, root[members], members


def _similarity_blocks(
    source: RowSource,
    labels: np.ndarray,
    near: np.ndarray,
    *,
    max_memory: int,
    block_rows: int,
    device: torch.device,
) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Every (query rows, database rows, their cosine similarities) block of the search.

    A query row meets the members of its own cluster and of its ``near`` clusters once each.
    """
    dim = source.dim
    # Half the budget holds the batch's gathered rows; the rest is left to the similarity
    # blocks and their copies of rows, and to the per-image bookkeeping (labels, lists).
    budget_rows = max(2, max_memory // (2 * 4 * dim))
    for batch in _batches(_tasks(labels, near, max(1, budget_rows // 2)), budget_rows):
        wanted = np.unique(np.concatenate([np.concatenate(t) for t in batch]))
        rows = np.empty((len(wanted), dim), np.float32)
        for first, block in row_blocks(source, block_rows, wanted):
            rows[first : first + len(block)] = block
        gathered = torch.from_numpy(rows).to(device)
        for queries, database in batch:
            qi = torch.from_numpy(np.searchsorted(wanted, queries)).to(device)
            di = torch.from_numpy(np.searchsorted(wanted, database)).to(device)
            for q0 in range(0, len(queries), block_rows):
                xq = gathered[qi[q0 : q0 + block_rows]]
                for d0 in range(0, len(database), block_rows):
                    xd = gathered[di[d0 : d0 + block_rows]]
                    yield queries[q0 : q0 + len(xq)], database[d0 : d0 + len(xd)], xq @ xd.T


def neighbour_density(
    source: RowSource,
    labels: np.ndarray,
    near: np.ndarray,
    *,
    neighbours: int,
    max_memory: int,
    block_rows: int,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N,) float32 mean cosine similarity of each row to its ``neighbours`` nearest others,
    at least 0.

    The neighbours are searched where :func:`find_duplicates` searches (own cluster and
    ``near`` ones). Rows without a cluster, or with fewer candidates, average what they have
    (0 when none).
    """
    n = len(labels)
    dev = torch.device(device)
    top = torch.full((n, neighbours), -torch.inf)
    for queries, database, sims in _similarity_blocks(
        source, labels, near, max_memory=max_memory, block_rows=block_rows, device=dev
    ):
        q = torch.from_numpy(queries)
        # A row is not its own neighbour (both lists are ascending: find it by bisection).
        itself = np.intersect1d(queries, database, assume_unique=True)
        if len(itself):  # in place: each block of similarities is fresh
            qi = torch.from_numpy(np.searchsorted(queries, itself)).to(dev)
            di = torch.from_numpy(np.searchsorted(database, itself)).to(dev)
            sims[qi, di] = -torch.inf
        best = sims.topk(min(neighbours, sims.shape[1]), dim=1).values.cpu()
        top[q] = torch.cat([top[q], best], dim=1).topk(neighbours, dim=1).values
        del sims
    found = torch.isfinite(top)
    mean = torch.where(found, top, 0.0).sum(1) / found.sum(1).clamp(min=1)
    # A neighbourhood of opposite rows is no sparser than an empty one: at 0 the scaled test
    # asks as much as the plain cosine, never less.
    return mean.clamp(min=0).numpy().astype(np.float32)


def _hits(
    sims: torch.Tensor,
    threshold: float,
    rq: torch.Tensor | None,
    rd: torch.Tensor | None,
    floor: float | None,
) -> torch.Tensor:
    """(q, d) bool, in place on ``sims``: near-duplicate pairs by the scaled test (module
    docstring) with neighbour densities r, else by the cosine; with ``floor``, a cosine at or
    above it also makes a pair.

    The scaled test ``(cos - m) / (1 - m) >= t``, m = (r_q + r_d) / 2, is
    ``cos - (1 - t) m >= t`` (1 - m > 0): no division and no second (q, d) block.
    """
    if rq is None or rd is None:
        return sims >= threshold - TOLERANCE
    close = sims >= floor - TOLERANCE if floor is not None else None
    half = (1 - threshold) / 2
    sims.sub_(rq[:, None] * half).sub_(rd[None, :] * half)
    hits = sims >= threshold - TOLERANCE
    return hits if close is None else hits.logical_or_(close)


def find_duplicates(
    source: RowSource,
    labels: np.ndarray,
    near: np.ndarray,
    *,
    threshold: float,
    max_memory: int,
    block_rows: int,
    density: np.ndarray | None = None,
    floor: float | None = None,
    device: str | torch.device = "cpu",
) -> DuplicateGroups:
    """Groups of rows whose similarity is at least ``threshold`` (the threshold graph).

    Args:
        source: (N, d) L2-normalised rows (cosine similarity = dot product).
        labels: (N,) int64 own cluster, -1 for rows to leave out (unreadable images).
        near: (N, p) other clusters each row is compared with (-1: none), from
            :func:`centroid_sweep`.
        threshold: in (0, 1], on the cosine similarity, or with ``density`` on the locally
            scaled similarity (module docstring).
        max_memory: bytes of rows gathered at once.
        block_rows: rows per similarity block (``block_rows``² floats on ``device``).
        density: (N,) r per row (:func:`neighbour_density`), or None for plain cosine.
        floor: with ``density``, a cosine at or above which a pair is a near-duplicate
            whatever its neighbourhood (None: none).
        device: where the products run.

    Returns:
        The :class:`DuplicateGroups`.
    """
    n = len(labels)
    dev = torch.device(device)
    r = None if density is None else torch.from_numpy(np.asarray(density, np.float32)).to(dev)
    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    held, compared = 0, 0
    for queries, database, sims in _similarity_blocks(
        source, labels, near, max_memory=max_memory, block_rows=block_rows, device=dev
    ):
        rq = None if r is None else r[torch.from_numpy(queries).to(dev)]
        rd = None if r is None else r[torch.from_numpy(database).to(dev)]
        compared += sims.numel()
        hit = _hits(sims, threshold, rq, rd, floor).nonzero().cpu().numpy()
        del sims  # before the generator makes the next block
        a, b = queries[hit[:, 0]], database[hit[:, 1]]
        keep = a != b
        if keep.any():
            edges_a.append(a[keep])
            edges_b.append(b[keep])
            held += int(keep.sum())
        if held > _FOLD_EDGES:
            _, a_, b_ = _fold(np.concatenate(edges_a), np.concatenate(edges_b), n)
            edges_a, edges_b, held = [a_], [b_], len(a_)
    a = np.concatenate(edges_a) if edges_a else np.zeros(0, np.int64)
    b = np.concatenate(edges_b) if edges_b else np.zeros(0, np.int64)
    root, _, members = _fold(a, b, n)
    group = np.full(n, -1, dtype=np.int64)
    grouped = np.union1d(members, root[members])
    group[grouped] = root[grouped]
    return DuplicateGroups(group=group, compared=compared)
