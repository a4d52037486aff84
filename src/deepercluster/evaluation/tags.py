"""Clusters against multi-label metadata: many noisy tags per image (the paper's hashtags).

NMI needs one label per image, so the paper's hashtag analysis (Caron et al., ICCV 2019,
section 4.3) cannot be applied as is to images that carry 0 to 30 tags. We measure three
things that handle many tags per image:

- **per-tag mutual information** ``I(1[tag t]; cluster)`` between "the image has tag t" and
  the cluster, in nats, and as the fraction of the tag's entropy the clusters explain;
- **enrichment**: for cluster k and tag t, ``lift = P(t | k) / P(t)`` with the counts behind
  it, to list the tags most over-represented in each cluster (ranked by lift, or by
  ``count x log(lift)`` for the report's cluster pages);
- **NMI against each image's most specific tag**: the image's rarest tag among those used
  at least ``min_count`` times (rarer tags are near-unique ids that inflate NMI), compared
  with the same NMI for random clusters of the same sizes.

Tags are held as (image, tag) pairs, so memory is O(number of pairs), not images x tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepercluster.evaluation.nmi import nmi

__all__ = [
    "TagPairs",
    "cluster_tag_counts",
    "enrichment",
    "most_specific_tag",
    "overrepresented",
    "random_nmi",
    "tag_mutual_information",
]


@dataclass(frozen=True)
class TagPairs:
    """Which image carries which tag.

    Attributes:
        images: (P,) int64 image index of each (image, tag) pair, each pair at most once.
        tags: (P,) int64 index into ``vocabulary``.
        vocabulary: the distinct tags, sorted.
        n_images: N.
    """

    images: np.ndarray
    tags: np.ndarray
    vocabulary: tuple[str, ...]
    n_images: int

    @classmethod
    def from_strings(cls, rows: Sequence[str], *, sep: str = ",") -> TagPairs:
        """Parse one ``"a,b,c"`` string per image; tags are stripped and lower-cased.

        Empty strings give images without tags.
        """
        per_image = [
            sorted({t.strip().lower() for t in row.split(sep) if t.strip()}) for row in rows
        ]
        vocabulary = tuple(sorted({t for tags in per_image for t in tags}))
        lookup = {t: i for i, t in enumerate(vocabulary)}
        images = [i for i, tags in enumerate(per_image) for _ in tags]
        tags = [lookup[t] for row in per_image for t in row]
        return cls(
            np.asarray(images, dtype=np.int64),
            np.asarray(tags, dtype=np.int64),
            vocabulary,
            len(rows),
        )

    def tag_counts(self) -> np.ndarray:
        """(T,) number of images carrying each tag."""
        return np.bincount(self.tags, minlength=len(self.vocabulary)).astype(np.int64)


def cluster_tag_counts(
    clusters: np.ndarray, pairs: TagPairs
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero (cluster, tag) co-occurrence counts.

    Args:
        clusters: (N,) int64 cluster id in [0, K) of every image.
        pairs: the tags.

    Returns:
        ``(cluster_ids, tag_ids, counts)``, each (M,) int64: images of cluster ``cluster_ids[m]``
        carrying tag ``tag_ids[m]``.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    if clusters.shape != (pairs.n_images,):
        raise ValueError(
            f"need one cluster per image: {clusters.shape} for {pairs.n_images} images"
        )
    n_tags = max(len(pairs.vocabulary), 1)
    keys, counts = np.unique(clusters[pairs.images] * n_tags + pairs.tags, return_counts=True)
    cluster_ids, tag_ids = np.divmod(keys, n_tags)
    return cluster_ids, tag_ids, counts.astype(np.int64)


def _xlogx_ratio(joint: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Elementwise ``p_ab * log(p_ab / (p_a p_b))`` from counts, 0 where the joint count is 0."""
    out = np.zeros(np.broadcast(joint, a, b).shape, dtype=np.float64)
    joint, a, b = np.broadcast_arrays(
        joint.astype(np.float64), a.astype(np.float64), b.astype(np.float64)
    )
    ok = joint > 0
    out[ok] = joint[ok] / n * np.log(joint[ok] * n / (a[ok] * b[ok]))
    return out


def tag_mutual_information(clusters: np.ndarray, pairs: TagPairs) -> tuple[np.ndarray, np.ndarray]:
    """Mutual information between each tag's indicator and the clusters.

    ``I(X_t; C) = sum_k sum_{x in {0,1}} p(k, x) log(p(k, x) / (p(k) p(x)))`` with
    ``X_t = 1[image has tag t]``, natural log.

    Args:
        clusters: (N,) cluster ids in [0, K).
        pairs: the tags.

    Returns:
        ``(mi, fraction)``: (T,) MI in nats, and (T,) MI divided by the entropy of ``X_t``
        (the share of the tag's uncertainty that knowing the cluster removes; 0 for a tag on
        every image).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    n = pairs.n_images
    k_ids, t_ids, with_tag = cluster_tag_counts(clusters, pairs)
    sizes = np.bincount(clusters, minlength=int(clusters.max()) + 1 if n else 0)
    tag_n = pairs.tag_counts()
    n_k = sizes[k_ids]
    n_t = tag_n[t_ids]
    # Cells (k, x=1) come from the co-occurrence counts and cells (k, x=0) hold n_k - n_kt.
    # A cluster without any image of tag t has only its x=0 cell, worth
    # (n_k / n) log(n / (n - n_t)); those clusters are summed in one go through `rest`.
    cells = _xlogx_ratio(with_tag, n_k, n_t, n) + _xlogx_ratio(n_k - with_tag, n_k, n - n_t, n)
    mi = np.bincount(t_ids, weights=cells, minlength=len(pairs.vocabulary))
    # images in the clusters that hold at least one image of tag t
    covered = np.bincount(t_ids, weights=n_k, minlength=len(pairs.vocabulary))
    rest = n - covered
    absent_t = n - tag_n
    with np.errstate(divide="ignore", invalid="ignore"):
        mi += np.where(
            (rest > 0) & (absent_t > 0), rest / n * np.log(n / np.maximum(absent_t, 1)), 0.0
        )
        p = tag_n / n
        entropy = -(
            np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0.0)
        )
        fraction = np.where(entropy > 0, mi / entropy, 0.0)
    return np.maximum(mi, 0.0), np.clip(fraction, 0.0, 1.0)


@dataclass(frozen=True)
class Enriched:
    """One over-represented tag of a cluster."""

    tag: str
    count: int  # images of the cluster with the tag
    cluster_size: int
    tag_total: int  # images with the tag in the whole collection
    lift: float  # P(tag | cluster) / P(tag)


def enrichment(
    clusters: np.ndarray, pairs: TagPairs, *, top: int = 5, min_count: int = 3
) -> dict[int, list[Enriched]]:
    """The ``top`` tags with the highest lift in each cluster.

    Args:
        clusters: (N,) cluster ids.
        pairs: the tags.
        top: tags listed per cluster.
        min_count: a tag must occur at least this many times in the cluster to be listed (a
            tag seen once in a small cluster has a huge but meaningless lift).

    Returns:
        ``{cluster: [Enriched, ...]}`` sorted by decreasing lift, then count; clusters with no
        tag passing ``min_count`` map to an empty list.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    cells = _Cells.count(clusters, pairs, int(clusters.max()) + 1 if clusters.size else 0)
    ranked = cells.ranked(cells.lift, cells.counts >= min_count, top)
    return {int(k): ranked[k] for k in np.unique(clusters)}


def overrepresented(
    clusters: np.ndarray, pairs: TagPairs, k: int, *, top: int = 5, min_count: int = 2
) -> list[list[Enriched]]:
    """The ``top`` tags of each cluster by ``count x log(lift)``, among the tags with lift > 1
    carried by at least ``min_count`` of its images (or all of them, in a smaller cluster).

    Lift alone (:func:`enrichment`) ranks a tag seen twice in the whole collection first
    whenever both images fall in one cluster, above a tag carried by a third of the cluster;
    ``count x log(lift)`` is the tag's term in the mutual information between tags and
    clusters. A tag no more frequent in a cluster than everywhere (lift <= 1) says nothing
    about the cluster.

    Args:
        clusters: (N,) cluster ids in [0, k).
        pairs: the tags of the same N images.
        k: number of clusters.

    Returns:
        For each of the ``k`` clusters, up to ``top`` tags, best first.
    """
    cells = _Cells.count(np.asarray(clusters, dtype=np.int64), pairs, k)
    keep = (cells.counts >= np.minimum(min_count, cells.sizes[cells.k_ids])) & (cells.lift > 1)
    score = np.where(keep, cells.counts * np.log(np.where(keep, cells.lift, 1.0)), 0.0)
    return cells.ranked(score, keep, top)


@dataclass(frozen=True)
class _Cells:
    """The non-zero (cluster, tag) cells with their lift, shared by the two rankings."""

    pairs: TagPairs
    k_ids: np.ndarray  # (M,) cluster of each cell
    t_ids: np.ndarray  # (M,) tag of each cell
    counts: np.ndarray  # (M,) images of the cluster carrying the tag
    sizes: np.ndarray  # (K,) images per cluster
    tag_n: np.ndarray  # (T,) images per tag
    lift: np.ndarray  # (M,) P(tag | cluster) / P(tag)

    @classmethod
    def count(cls, clusters: np.ndarray, pairs: TagPairs, k: int) -> _Cells:
        k_ids, t_ids, counts = cluster_tag_counts(clusters, pairs)
        sizes = np.bincount(clusters, minlength=k)
        tag_n = pairs.tag_counts()
        lift = (counts / np.maximum(sizes[k_ids], 1)) / (tag_n[t_ids] / pairs.n_images)
        return cls(pairs, k_ids, t_ids, counts, sizes, tag_n, lift)

    def ranked(self, score: np.ndarray, keep: np.ndarray, top: int) -> list[list[Enriched]]:
        """Per cluster, up to ``top`` of the kept cells, by decreasing score, then count."""
        out: list[list[Enriched]] = [[] for _ in range(len(self.sizes))]
        order = np.lexsort((-self.counts, -score, self.k_ids))
        for m in order[keep[order]]:
            k, t = int(self.k_ids[m]), int(self.t_ids[m])
            if len(out[k]) < top:
                entry = Enriched(
                    self.pairs.vocabulary[t],
                    int(self.counts[m]),
                    int(self.sizes[k]),
                    int(self.tag_n[t]),
                    float(self.lift[m]),
                )
                out[k].append(entry)
        return out


def most_specific_tag(pairs: TagPairs, *, min_count: int = 5) -> np.ndarray:
    """Each image's rarest tag among the tags carried by at least ``min_count`` images.

    Ties go to the alphabetically first tag. Rarer tags are left out because a tag on one or
    two images acts as an image id: any clustering would look informative against it.

    Returns:
        (N,) int64 tag index, -1 for images with no tag passing ``min_count``.
    """
    tag_n = pairs.tag_counts()
    eligible = tag_n[pairs.tags] >= min_count
    images, tags = pairs.images[eligible], pairs.tags[eligible]
    out = np.full(pairs.n_images, -1, dtype=np.int64)
    # Sort by (image, count, tag) and keep each image's first row.
    order = np.lexsort((tags, tag_n[tags], images))
    images, tags = images[order], tags[order]
    first = np.ones(len(images), dtype=bool)
    first[1:] = images[1:] != images[:-1]
    out[images[first]] = tags[first]
    return out


def random_nmi(
    clusters: np.ndarray, labels: np.ndarray, *, repeats: int = 10, seed: int = 0
) -> tuple[float, float]:
    """NMI of randomly permuted clusters (same sizes) against ``labels``: the chance level.

    Returns:
        ``(mean, std)`` over ``repeats`` permutations.
    """
    rng = np.random.default_rng(seed)
    clusters = np.asarray(clusters)
    values = [nmi(rng.permutation(clusters), labels) for _ in range(repeats)]
    return float(np.mean(values)), float(np.std(values))
