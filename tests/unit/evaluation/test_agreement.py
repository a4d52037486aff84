"""NMI/AMI/ARI/purity: hand-worked values, scikit-learn agreement, conventions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepercluster.evaluation import ami, ari, contingency, nmi, purity

# Hand-worked case: 6 images, clusters a, classes b.
#   contingency  b=0 b=1
#   a=0            2   1
#   a=1            0   3
A = np.array([0, 0, 0, 1, 1, 1])
B = np.array([0, 0, 1, 1, 1, 1])


def test_purity_by_hand() -> None:
    # cluster 0: majority class 0 (2 images), cluster 1: class 1 (3) -> 5 / 6
    assert purity(A, B) == pytest.approx(5 / 6)
    assert purity(np.arange(6), B) == 1.0  # one cluster per image is trivially pure


def test_ari_by_hand() -> None:
    # pairs in cells: C(2,2)+C(1,2)+C(3,2) = 1 + 0 + 3 = 4
    # rows: C(3,2)+C(3,2) = 6; cols: C(2,2)+C(4,2) = 1 + 6 = 7; C(6,2) = 15
    expected_pairs = 6 * 7 / 15
    value = (4 - expected_pairs) / ((6 + 7) / 2 - expected_pairs)
    assert ari(A, B) == pytest.approx(value)
    assert ari(A, B) == pytest.approx(adjusted_rand_score(A, B))


def test_nmi_by_hand() -> None:
    p = np.array([[2, 1], [0, 3]]) / 6
    pa, pb = p.sum(1), p.sum(0)
    mi = sum(
        p[i, j] * math.log(p[i, j] / (pa[i] * pb[j]))
        for i in range(2)
        for j in range(2)
        if p[i, j] > 0
    )
    h = lambda q: -sum(x * math.log(x) for x in q if x > 0)  # noqa: E731
    assert nmi(A, B) == pytest.approx(mi / ((h(pa) + h(pb)) / 2))


def test_ami_equals_brute_force_expectation() -> None:
    # E[MI] by enumerating every relabelling of b with the same class sizes (all 6! orders).
    a, b = A, np.array([0, 1, 1, 2, 2, 2])

    def mi(x: np.ndarray, y: np.ndarray) -> float:
        n = len(x)
        total = 0.0
        for i in np.unique(x):
            for j in np.unique(y):
                nij = np.sum((x == i) & (y == j))
                if nij:
                    total += nij / n * math.log(n * nij / (np.sum(x == i) * np.sum(y == j)))
        return total

    def entropy(x: np.ndarray) -> float:
        p = np.bincount(x) / len(x)
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    expected = np.mean([mi(a, b[list(perm)]) for perm in itertools.permutations(range(6))])
    value = (mi(a, b) - expected) / ((entropy(a) + entropy(b)) / 2 - expected)
    assert ami(a, b) == pytest.approx(value, abs=1e-9)


def test_chance_corrected_scores_near_zero_for_random_clusters() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 10, 5000)
    clusters = rng.integers(0, 200, 5000)
    assert nmi(clusters, classes) > 0.05  # NMI rewards many clusters even at random...
    assert abs(ami(clusters, classes)) < 0.01  # ...AMI and ARI do not
    assert abs(ari(clusters, classes)) < 0.01
    assert nmi(clusters, classes) == pytest.approx(normalized_mutual_info_score(classes, clusters))


def test_identical_partitions_score_one_whatever_the_label_values() -> None:
    a = np.array([5, 5, 9, 9, 7])
    b = np.array([0, 0, 1, 1, 2])
    assert (nmi(a, b), ami(a, b), ari(a, b), purity(a, b)) == pytest.approx((1, 1, 1, 1))


def test_contingency_cells() -> None:
    rows, cols, counts = contingency(A, B)
    assert sorted(zip(rows.tolist(), cols.tolist(), counts.tolist(), strict=False)) == [
        (0, 0, 2),
        (0, 1, 1),
        (1, 1, 3),
    ]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="equal length"):
        ari(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        purity(np.zeros(0), np.zeros(0))
