"""Cluster analysis of a run: its clusters against class labels or against multi-label tags.

The paper (Caron et al., ICCV 2019, section 4.3) reads what the clusters capture from
metadata: NMI against ImageNet labels, hashtags, GPS. Here: NMI, AMI, ARI and purity of the
super-clusters and of the sub-clusters against class labels; against tags, the per-tag mutual
information, the most over-represented tags of each cluster, and NMI against each image's most
specific tag next to the NMI that random clusters of the same sizes reach; and the NMI between
consecutive clusterings over the epochs (from the run's ``metrics.jsonl``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from deepercluster.evaluation import ami, ari, nmi, purity
from deepercluster.evaluation.tags import (
    TagPairs,
    enrichment,
    most_specific_tag,
    random_nmi,
    tag_mutual_information,
)

__all__ = ["label_agreement", "tag_analysis"]


def label_agreement(
    clusters: np.ndarray, classes: np.ndarray, *, seed: int = 0
) -> dict[str, float]:
    """NMI, AMI, ARI, purity of ``clusters`` against ``classes``, and NMI of random clusters.

    Args:
        clusters: (N,) cluster ids; images with class -1 are left out.
        classes: (N,) class ids, -1 = unknown.

    Returns:
        ``{"images", "clusters", "nmi", "ami", "ari", "purity", "nmi_random",
        "nmi_random_std"}``.
    """
    keep = np.asarray(classes) >= 0
    c, y = np.asarray(clusters)[keep], np.asarray(classes)[keep]
    if c.size == 0:
        raise ValueError("no image has a class label; check --labels or the folder layout")
    chance, chance_std = random_nmi(c, y, seed=seed)
    return {
        "images": int(c.size),
        "clusters": int(np.unique(c).size),
        "nmi": nmi(c, y),
        "ami": ami(c, y),
        "ari": ari(c, y),
        "purity": purity(c, y),
        "nmi_random": chance,
        "nmi_random_std": chance_std,
    }


def tag_analysis(
    clusters: np.ndarray,
    pairs: TagPairs,
    *,
    top: int = 5,
    min_count: int = 3,
    specific_min_count: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Clusters against multi-label tags (see :mod:`deepercluster.evaluation.tags`).

    Args:
        clusters: (N,) cluster id of every image.
        pairs: the images' tags.
        top: tags listed per cluster and in the overall MI ranking.
        min_count: minimum count of a tag inside a cluster to be listed as enriched.
        specific_min_count: minimum use of a tag to serve as an image's most specific tag.
        seed: seeds the random-cluster baseline.

    Returns:
        A JSON-ready dict: ``specific`` (NMI/AMI vs most specific tag, random NMI),
        ``top_mi_tags`` and ``clusters`` (size and enriched tags of each cluster).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    mi, fraction = tag_mutual_information(clusters, pairs)
    counts = pairs.tag_counts()
    order = np.argsort(-mi, kind="stable")[:top]
    specific = most_specific_tag(pairs, min_count=specific_min_count)
    tagged = specific >= 0
    chance, chance_std = random_nmi(clusters[tagged], specific[tagged], seed=seed)
    sizes = np.bincount(clusters)
    per_cluster = enrichment(clusters, pairs, top=top, min_count=min_count)
    return {
        "images": pairs.n_images,
        "tags": len(pairs.vocabulary),
        "specific": {
            "images": int(tagged.sum()),
            "distinct_tags": int(np.unique(specific[tagged]).size),
            "min_count": specific_min_count,
            "nmi": nmi(clusters[tagged], specific[tagged]),
            "ami": ami(clusters[tagged], specific[tagged]),
            "nmi_random": chance,
            "nmi_random_std": chance_std,
        },
        "top_mi_tags": [
            {
                "tag": pairs.vocabulary[t],
                "images": int(counts[t]),
                "mi_nats": float(mi[t]),
                "fraction_of_entropy": float(fraction[t]),
            }
            for t in order
        ],
        "clusters": [
            {"cluster": k, "size": int(sizes[k]), "enriched": [asdict(e) for e in tags]}
            for k, tags in sorted(per_cluster.items())
        ],
    }
