"""Normalised mutual information between two labelings (cluster analysis, paper [0] section 4).

DeeperCluster measures how much the clusters say about metadata (ImageNet labels, hashtags,
GPS) and how stable the clusters are between reassignments, both with NMI.

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] Strehl and Ghosh, "Cluster ensembles", JMLR 2002 (NMI)
"""

from __future__ import annotations

import numpy as np

from deepercluster.evaluation.agreement import check_labelings, contingency

__all__ = ["nmi"]


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information ``I(a; b) / ((H(a) + H(b)) / 2)`` (natural log).

    Same value as ``sklearn.metrics.normalized_mutual_info_score`` with its default arithmetic
    normalisation, including its conventions: 1.0 when both labelings are constant (both carry
    no information, a perfect match), 0.0 when only one is. Label values are arbitrary
    (any integers, permutation-invariant).

    Args:
        a: (N,) integer labels, e.g. cluster assignments.
        b: (N,) integer labels, e.g. ground-truth classes.

    Returns:
        NMI in [0, 1].

    Raises:
        ValueError: shapes differ or the labelings are empty.
    """
    a, b = check_labelings(a, b, "nmi")
    n = a.shape[0]
    rows, cols, joint = contingency(a, b)
    a_counts = np.bincount(rows, weights=joint)
    b_counts = np.bincount(cols, weights=joint)
    if a_counts.size == 1 and b_counts.size == 1:
        return 1.0
    if a_counts.size == 1 or b_counts.size == 1:
        return 0.0
    # sum_ij p_ij log(p_ij / (p_i p_j)) with p = count / n, in float64: count * count
    # overflows int64 beyond ~3e9 images.
    p_joint = joint / n
    p_a = a_counts[rows] / n
    p_b = b_counts[cols] / n
    mutual_info = float((p_joint * np.log(p_joint / (p_a * p_b))).sum())
    if mutual_info <= 0.0:
        return 0.0
    normaliser = max((_entropy(a_counts, n) + _entropy(b_counts, n)) / 2, np.finfo(np.float64).eps)
    return min(mutual_info / normaliser, 1.0)
