"""Agreement between a clustering and class labels: AMI, ARI and purity (NMI is in ``nmi``).

The paper (Caron et al., ICCV 2019, section 4) measures clusters against ImageNet labels and
metadata with NMI. NMI grows with the number of clusters even for random assignments, so we
also report the chance-corrected scores (adjusted mutual information, adjusted Rand index) and
purity, the fraction of images whose cluster's majority class is their own class.

References:
    - Vinh, Epps and Bailey, "Information theoretic measures for clusterings comparison",
      JMLR 2010 (AMI)
    - Hubert and Arabie, "Comparing partitions", J. Classification 1985 (ARI)
"""

from __future__ import annotations

import numpy as np

__all__ = ["ami", "ari", "check_labelings", "contingency", "purity"]


def check_labelings(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as arrays; a ValueError naming the metric ``name`` unless both are
    1-d, non-empty and of equal length."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"{name} needs two 1-d labelings of equal length, got {a.shape} and {b.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} of empty labelings is undefined; pass at least one label")
    return a, b


def contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells of the contingency table of two labelings.

    Only non-zero cells are kept, so memory is O(N) even for 320k clusters x 1000 classes.

    Args:
        a: (N,) integer labels (e.g. clusters).
        b: (N,) integer labels (e.g. classes).

    Returns:
        ``(rows, cols, counts)``: each (M,) int64, the dense row index of the cell (into the
        sorted unique values of ``a``), its column index (into those of ``b``) and its count.
    """
    a, b = check_labelings(a, b, "contingency")
    _, a_ids = np.unique(a, return_inverse=True)
    _, b_ids = np.unique(b, return_inverse=True)
    n_cols = int(b_ids.max()) + 1
    cells, counts = np.unique(a_ids.astype(np.int64) * n_cols + b_ids, return_counts=True)
    rows, cols = np.divmod(cells, n_cols)
    return rows, cols, counts.astype(np.int64)


def purity(clusters: np.ndarray, classes: np.ndarray) -> float:
    """Fraction of images whose cluster's most frequent class is their class.

    ``(1 / N) * sum_k max_c |cluster k ∩ class c|``. One cluster per image scores 1.0, so
    read it together with the number of clusters (or with AMI/ARI, which correct for chance).

    Args:
        clusters: (N,) integer cluster ids.
        classes: (N,) integer class ids.

    Returns:
        Purity in (0, 1].
    """
    rows, _, counts = contingency(clusters, classes)
    best = np.zeros(int(rows.max()) + 1, dtype=np.int64)
    np.maximum.at(best, rows, counts)
    return float(best.sum() / len(np.asarray(clusters)))


def _comb2(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index: agreement on pairs of images, 0 in expectation for random labels.

    ``(sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E)`` with
    ``E = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(N, 2)``; 1.0 for identical partitions (and, as
    scikit-learn does, when both labelings put every image in one group or each in its own).

    Args:
        a: (N,) integer labels.
        b: (N,) integer labels.

    Returns:
        ARI in [-0.5, 1].
    """
    a, b = check_labelings(a, b, "ari")
    rows, cols, counts = contingency(a, b)
    pairs = _comb2(counts)
    pairs_a = _comb2(np.bincount(rows, weights=counts))
    pairs_b = _comb2(np.bincount(cols, weights=counts))
    expected = pairs_a * pairs_b / max(_comb2(np.array([a.shape[0]])), 1.0)
    denominator = (pairs_a + pairs_b) / 2 - expected
    if denominator == 0.0:
        # Both labelings are trivial (all-in-one or all-singletons): they agree perfectly.
        return 1.0
    return (pairs - expected) / denominator


def ami(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted mutual information (arithmetic normalisation, as our :func:`nmi`).

    ``(I - E[I]) / (mean(H(a), H(b)) - E[I])`` where ``E[I]`` is the mutual information
    expected between random labelings with the same group sizes (hypergeometric model). It is
    0 in expectation for random clusters whatever their number, which NMI is not.

    Delegates to ``sklearn.metrics.adjusted_mutual_info_score``, whose exact expectation costs
    (#groups of a) x (#groups of b).

    Args:
        a: (N,) integer labels.
        b: (N,) integer labels.

    Returns:
        AMI, at most 1 (can be slightly negative for worse-than-chance agreement).
    """
    a, b = check_labelings(a, b, "ami")
    # Imported here: scikit-learn sets process-wide KMP_* variables when it is imported, and
    # ``import deepercluster`` must leave the environment alone.
    from sklearn.metrics import adjusted_mutual_info_score

    return float(adjusted_mutual_info_score(a, b, average_method="arithmetic"))
