"""Class balance and planted-duplicate counts, on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepercluster.curate.measure import class_balance, planted_duplicates


def test_class_balance() -> None:
    uniform = class_balance(np.array([5, 5, 5, 5]))
    assert uniform["entropy"] == pytest.approx(math.log(4))
    assert uniform["kl_to_uniform"] == pytest.approx(0.0)
    skewed = class_balance(np.array([3, 1, 0]))  # p = 3/4, 1/4; a class with no image
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert skewed["entropy"] == pytest.approx(h)
    assert skewed["kl_to_uniform"] == pytest.approx(math.log(3) - h)


def test_planted_duplicates() -> None:
    # copies: 1 of 0, 3 of 2, 5 of 4; rows 6, 7 are unrelated originals.
    original = np.array([-1, 0, -1, 2, -1, 4, -1, -1])
    # 0/1 found; 2/3 found but merged with 6 (one false merge); 4/5 missed; 7 alone.
    group = np.array([0, 0, 2, 2, -1, -1, 2, -1])
    out = planted_duplicates(group, original)
    assert out["planted"] == 3 and out["found"] == 2
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["false_merges"] == 1 and out["false_merge_rate"] == pytest.approx(1 / 5)
    assert out["removed"] == 3 and out["false_merges_per_removed"] == pytest.approx(1 / 3)
    # 6 turns out to be a duplicate of 2 that the data already held: no false merge left
    same_as = np.array([-1, -1, -1, -1, -1, -1, 2, -1])
    audited = planted_duplicates(group, original, same_as=same_as)
    assert audited["false_merges"] == 0 and audited["found"] == 2
    # judged in a chain (7 -> 6 -> 2): all one origin
    chain = planted_duplicates(np.array([0, 0, 2, 2, -1, -1, 2, 2]), original,
                               same_as=np.array([-1, -1, -1, -1, -1, -1, 2, 6]))  # fmt: skip
    assert chain["false_merges"] == 0
    none = planted_duplicates(np.full(8, -1), original)
    assert none["found"] == 0 and none["false_merges"] == 0
