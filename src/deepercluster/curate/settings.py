"""The settings of one curation (``deepercluster curate``), checked when built."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["KEEP_RULES", "PICK_RULES", "CurateSettings"]

PICK_RULES = ("random", "nearest")
"""How a cluster's quota is chosen among its members."""

KEEP_RULES = ("nearest", "largest")
"""Which member of a duplicate group is kept."""

# Per image, besides its embedding: its cluster, probe lists, distance and decision, and the
# sort keys of the inverted lists (measured by scripts/curate_scale.py at 10^6 images).
BYTES_PER_IMAGE = 100


@dataclass(frozen=True, kw_only=True)
class CurateSettings:
    """What to keep of a clustered pool of images.

    Attributes:
        size: images in the curated subset.
        dedup: similarity of the ``dedup_layer`` descriptors at or above which two images are
            near-duplicates, in (0, 1]: the locally scaled similarity, 1 for identical images
            (:mod:`deepercluster.curate.duplicates`), or the cosine when
            ``dedup_neighbours`` is 0; None skips de-duplication.
        dedup_layer: the descriptor compared for near-duplicates: a conv layer of the run's
            network, GeM-pooled and PCA-whitened on the pool
            (:mod:`deepercluster.curate.descriptors`), or ``embedding`` for the run's
            clustering embedding (semantic: it also joins distinct images of one cluster).
        dedup_neighbours: K of the local scaling, each image's r being its mean cosine to its
            K nearest neighbours; 0 thresholds the plain cosine.
        dedup_cosine: with the scaling, a plain cosine at or above which two images are
            near-duplicates whatever their neighbourhood (a group of more than K copies of one
            image fills its members' K nearest and scales itself away); None: no floor.
        per_cluster_cap: at most this many images from one sub-cluster (None: no cap).
        pick: ``random`` (a seeded draw) or ``nearest`` (closest to the centroid first) inside
            a cluster.
        keep: the member of a duplicate group that stays: ``nearest`` its cluster's centroid,
            or the ``largest`` file.
        probe: each image is compared with the members of its own cluster and of its
            ``probe - 1`` nearest other centroids (1 compares inside clusters only; more finds
            pairs split by a cluster border, at proportionally more work).
        seed: seeds the random picks (the same seed gives the same subset).
        max_memory: memory for the embeddings: half of it holds the rows gathered for one
            batch of clusters, the rest is left to the blocks of similarities (``block_rows``
            squared) and the per-image bookkeeping (about 100 bytes per image).
        block_rows: rows per similarity block.
    """

    size: int
    # conv4, scaled over 5 neighbours, at 0.4: measured on the curation study's pool
    # (docs/results/curation.md).
    dedup: float | None = 0.4
    dedup_layer: str = "conv4"
    dedup_neighbours: int = 5
    dedup_cosine: float | None = 0.9
    per_cluster_cap: int | None = None
    pick: str = "random"
    keep: str = "nearest"
    # 3: on the curation study's pool, 2 lost 2 points of the planted copies to cluster borders.
    probe: int = 3
    seed: int = 0
    max_memory: int = 512 * 2**20
    block_rows: int = 4096

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"--size must be at least 1, got {self.size}")
        if self.dedup is not None and not 0.0 < self.dedup <= 1.0:
            raise ValueError(
                f"--dedup {self.dedup} is outside (0, 1]: it is a similarity threshold "
                "such as 0.4 (higher removes only closer copies)"
            )
        if self.dedup_cosine is not None and not 0.0 < self.dedup_cosine <= 1.0:
            raise ValueError(
                f"--dedup-cosine {self.dedup_cosine} is outside (0, 1]: it is a cosine "
                "similarity such as 0.9"
            )
        if self.dedup_neighbours < 0:
            raise ValueError(
                f"--dedup-neighbours must be 0 (plain cosine) or more, got {self.dedup_neighbours}"
            )
        if self.per_cluster_cap is not None and self.per_cluster_cap < 1:
            raise ValueError(f"--per-cluster-cap must be at least 1, got {self.per_cluster_cap}")
        if self.pick not in PICK_RULES:
            raise ValueError(f"--pick {self.pick!r}: use one of {', '.join(PICK_RULES)}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"--keep {self.keep!r}: use one of {', '.join(KEEP_RULES)}")
        if self.probe < 1:
            raise ValueError(f"--probe must be at least 1, got {self.probe}")
        if self.max_memory < 2**20:
            raise ValueError(f"--max-memory must be at least 1 MiB, got {self.max_memory} bytes")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {self.block_rows}")

    def products(self, n: int, k: int) -> float:
        """Similarities computed for ``n`` images in ``k`` clusters of about n / k: each image
        against its own cluster and ``probe - 1`` others, about ``probe * n² / k``, once more
        for the local scaling; and each image against the k centroids, in the embedding and
        in the descriptor space."""
        sweeps = 2 if self.dedup_neighbours else 1
        return sweeps * self.probe * n * n / max(k, 1) + 2 * n * k

    def memory_bytes(self, n: int) -> int:
        """Peak memory of a curation of ``n`` images: ``max_memory``, the similarity blocks
        and their masks, the per-image bookkeeping and neighbour similarities."""
        per_image = BYTES_PER_IMAGE + 4 * self.dedup_neighbours
        # per block element: its float similarity, two masks and the hits' indices
        return self.max_memory + 7 * self.block_rows**2 + n * per_image

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the summary file."""
        return asdict(self)
