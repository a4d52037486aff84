"""One curation: drop near-duplicates, then sample a balanced subset of what is left.

Arrays in, a decision per image out; no network and no images (the run folder side is in
:mod:`deepercluster.curate.pipeline`, the files in :mod:`deepercluster.curate.lists`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepercluster.cluster.blocks import RowSource
from deepercluster.curate.duplicates import (
    centroid_sweep,
    find_duplicates,
    neighbour_density,
)
from deepercluster.curate.sampling import allocate, pick_members
from deepercluster.curate.settings import CurateSettings
from deepercluster.curate.survivors import survivors

__all__ = ["DUPLICATE", "KEPT", "OVER_QUOTA", "UNREADABLE", "Curation", "select"]

KEPT, DUPLICATE, OVER_QUOTA, UNREADABLE = 0, 1, 2, 3
"""Values of :attr:`Curation.status`."""


@dataclass(frozen=True)
class Curation:
    """What happened to each of N images, and why.

    Attributes:
        status: (N,) int8, :data:`KEPT`, :data:`DUPLICATE`, :data:`OVER_QUOTA` or
            :data:`UNREADABLE`.
        labels: (N,) int64 sub-cluster (global id), -1 for unreadable images.
        duplicate_of: (N,) int64 the image kept in place of a dropped duplicate, else -1.
        similarity: (N,) float32 cosine similarity of a dropped duplicate to it (else NaN).
        group: (N,) int64 near-duplicate group (the id of the image that stays), -1 outside
            any group.
        distance: (N,) float32 distance to the own centroid (NaN for unreadable images).
        super_of: (k,) int64 super-cluster of each sub-cluster.
        pool: (k,) int64 images of each cluster left after de-duplication.
        quota: (k,) int64 images each cluster gave to the subset.
        compared: pairs of images whose similarity was computed.
    """

    status: np.ndarray
    labels: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    group: np.ndarray
    distance: np.ndarray
    super_of: np.ndarray
    pool: np.ndarray
    quota: np.ndarray
    compared: int

    @property
    def kept(self) -> np.ndarray:
        """Ascending ids of the chosen images."""
        return np.flatnonzero(self.status == KEPT)

    def counts(self) -> dict[str, int]:
        """Images per outcome."""
        names = {KEPT: "kept", DUPLICATE: "duplicate", OVER_QUOTA: "over_quota",
                 UNREADABLE: "unreadable"}  # fmt: skip
        return {name: int((self.status == code).sum()) for code, name in names.items()}


def select(
    source: RowSource,
    labels: np.ndarray,
    centroids: np.ndarray,
    super_of: np.ndarray,
    settings: CurateSettings,
    *,
    file_bytes: np.ndarray | None = None,
    descriptors: RowSource | None = None,
    descriptor_centroids: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> Curation:
    """De-duplicate, then water-fill ``settings.size`` across super- and sub-clusters.

    Args:
        source: (N, d) L2-normalised embeddings (the run's clustering space).
        labels: (N,) int64 sub-cluster of each image in [0, k), -1 for unreadable ones.
        centroids: (k, d) float32 sub-cluster centroids.
        super_of: (k,) int64 super-cluster of each sub-cluster.
        settings: size, threshold, cap, rules, seed and memory bound.
        file_bytes: (N,) file sizes, needed when ``settings.keep == "largest"``.
        descriptors: (N, d') L2-normalised rows compared for near-duplicates (None: the
            embeddings); the clusters they are searched in stay those of ``source``.
        descriptor_centroids: (k, d') the clusters' means in the descriptor space, which
            choose the ``probe - 1`` other clusters each row is compared with: a copy sits
            near its original in that space, not always in the embedding's. Needed with
            ``descriptors``.
        device: where the similarity products run.

    Raises:
        ValueError: the subset asked for is larger than the pool that de-duplication and the
            cap leave (the message gives the most that can be asked for).
    """
    s = settings
    labels = np.asarray(labels, dtype=np.int64)
    n, k = len(labels), len(centroids)
    valid = labels >= 0
    readable = int(valid.sum())
    if s.size > readable:
        raise ValueError(
            f"--size {s.size} is larger than the pool: the run has {readable} readable images; "
            f"ask for at most {readable}"
        )
    compare = source if descriptors is None else descriptors
    probe = s.probe if s.dedup is not None else 1
    near, distance = centroid_sweep(
        source, labels, centroids, probe=probe if compare is source else 1,
        block_rows=s.block_rows, device=device,
    )  # fmt: skip
    if s.dedup is not None and compare is not source:
        if descriptor_centroids is None:
            raise ValueError("descriptors need their clusters' means (descriptor_centroids)")
        near, _ = centroid_sweep(
            compare, labels, descriptor_centroids, probe=probe, block_rows=s.block_rows,
            device=device,
        )  # fmt: skip
    group = np.full(n, -1, dtype=np.int64)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    compared = 0
    if s.dedup is not None:
        density = None
        if s.dedup_neighbours:
            density = neighbour_density(
                compare, labels, near, neighbours=s.dedup_neighbours, max_memory=s.max_memory,
                block_rows=s.block_rows, device=device,
            )  # fmt: skip
        floor = s.dedup_cosine if density is not None else None
        found = find_duplicates(
            compare, labels, near, threshold=s.dedup, density=density, floor=floor,
            max_memory=s.max_memory, block_rows=s.block_rows, device=device,
        )  # fmt: skip
        compared = found.compared
        if s.keep == "largest":
            if file_bytes is None:
                raise ValueError("keep='largest' needs the file sizes (file_bytes)")
            score = -np.asarray(file_bytes, dtype=np.float64)
        else:
            score = distance.astype(np.float64)
        stars = survivors(
            compare, found.group, score, threshold=s.dedup, max_memory=s.max_memory,
            density=density, floor=floor,
        )  # fmt: skip
        duplicate_of, group, similarity = stars.duplicate_of, stars.group, stars.similarity

    status = np.full(n, OVER_QUOTA, dtype=np.int8)
    status[~valid] = UNREADABLE
    status[duplicate_of >= 0] = DUPLICATE
    in_pool = status == OVER_QUOTA
    pool = np.bincount(labels[in_pool], minlength=k).astype(np.int64)
    capacity = pool if s.per_cluster_cap is None else np.minimum(pool, s.per_cluster_cap)
    if s.size > int(capacity.sum()):
        raise ValueError(
            f"--size {s.size} is larger than the pool: {int(capacity.sum())} images remain "
            f"after de-duplication ({int((status == DUPLICATE).sum())} near-duplicates "
            f"dropped) and the per-cluster cap ({s.per_cluster_cap}); ask for at most "
            f"{int(capacity.sum())}, lower --dedup's reach with a higher threshold, or raise "
            "--per-cluster-cap"
        )
    quota = allocate(super_of, capacity, s.size)
    ids = np.flatnonzero(in_pool)
    ids = ids[np.argsort(labels[ids], kind="stable")]
    bounds = np.searchsorted(labels[ids], np.arange(k + 1))
    for c in np.flatnonzero(quota):
        rng = np.random.default_rng([s.seed, int(c)])
        members = ids[bounds[c] : bounds[c + 1]]
        chosen = pick_members(members, int(quota[c]), rule=s.pick, distance=distance, rng=rng)
        status[chosen] = KEPT
    return Curation(
        status=status,
        labels=np.where(valid, labels, -1),
        duplicate_of=duplicate_of,
        similarity=similarity,
        group=group,
        distance=distance,
        super_of=np.asarray(super_of, dtype=np.int64),
        pool=pool,
        quota=quota,
        compared=compared,
    )
