"""NMI against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from deepercluster.evaluation.nmi import nmi


def test_hand_computed_value() -> None:
    # Contingency [[2, 1], [0, 1]] over 4 points.
    a = np.array([0, 0, 0, 1])
    b = np.array([0, 0, 1, 1])
    mutual_info = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_a = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_b = math.log(2)
    assert nmi(a, b) == pytest.approx(mutual_info / ((h_a + h_b) / 2), rel=1e-12)


def test_identical_and_permuted_labelings() -> None:
    a = np.random.default_rng(0).integers(0, 7, 500)
    assert nmi(a, a) == pytest.approx(1.0)
    permutation = np.random.default_rng(1).permutation(7) * 10 - 3  # arbitrary ids
    assert nmi(a, permutation[a]) == pytest.approx(1.0)


def test_independent_labelings_are_near_zero() -> None:
    rng = np.random.default_rng(0)
    assert nmi(rng.integers(0, 5, 20000), rng.integers(0, 5, 20000)) < 0.002


@pytest.mark.parametrize(("n", "ka", "kb"), [(50, 3, 4), (1000, 20, 7), (300, 300, 2), (10, 1, 3)])
def test_matches_sklearn(n: int, ka: int, kb: int) -> None:
    rng = np.random.default_rng(n + ka)
    a = rng.integers(0, ka, n)
    b = np.where(rng.random(n) < 0.5, a % kb, rng.integers(0, kb, n))
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)


def test_constant_labelings_follow_sklearn() -> None:
    constant = np.zeros(6, dtype=np.int64)
    varied = np.array([0, 1, 2, 0, 1, 2])
    assert nmi(constant, constant + 4) == 1.0 == normalized_mutual_info_score(constant, constant)
    assert nmi(constant, varied) == 0.0 == normalized_mutual_info_score(constant, varied)
    assert nmi(varied, constant) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="equal length"):
        nmi(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        nmi(np.zeros(0), np.zeros(0))
