"""Clusters vs multi-label tags: hand-worked values on a tiny pool."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepercluster.evaluation import TagPairs, nmi
from deepercluster.evaluation.tags import (
    enrichment,
    most_specific_tag,
    overrepresented,
    random_nmi,
    tag_mutual_information,
)

# 6 images in 2 clusters of 3.
#   tag "red":   images 0, 1, 2       (all of cluster 0)
#   tag "food":  images 0, 3          (one per cluster)
#   tag "soup":  images 3, 4          (cluster 1 only)
#   tag "all":   every image
ROWS = ["red,food,all", "Red, all", "red,all", "food,soup,all", "soup,all", "all"]
CLUSTERS = np.array([0, 0, 0, 1, 1, 1])


def test_parsing_normalises_and_counts() -> None:
    pairs = TagPairs.from_strings(ROWS)
    assert pairs.vocabulary == ("all", "food", "red", "soup")
    assert dict(zip(pairs.vocabulary, pairs.tag_counts().tolist(), strict=False)) == {
        "all": 6,
        "food": 2,
        "red": 3,
        "soup": 2,
    }


def test_per_tag_mutual_information_by_hand() -> None:
    pairs = TagPairs.from_strings(ROWS)
    mi, fraction = tag_mutual_information(CLUSTERS, pairs)
    got = dict(zip(pairs.vocabulary, mi.tolist(), strict=False))
    # "red" splits exactly like the clusters: I = H(C) = log 2, all of the tag's entropy.
    assert got["red"] == pytest.approx(math.log(2))
    assert fraction[pairs.vocabulary.index("red")] == pytest.approx(1.0)
    # "food": one image in each cluster, independent of the cluster.
    assert got["food"] == pytest.approx(0.0, abs=1e-12)
    # "all" carries no information.
    assert got["all"] == pytest.approx(0.0, abs=1e-12)
    # "soup": P(k, x) = {(0,0): 3/6, (1,1): 2/6, (1,0): 1/6}, P(x=1) = 1/3, P(k) = 1/2.
    soup = (
        0.5 * math.log(0.5 / (0.5 * 2 / 3))
        + 2 / 6 * math.log((2 / 6) / (0.5 / 3))
        + (1 / 6 * math.log((1 / 6) / (0.5 * 2 / 3)))
    )
    assert got["soup"] == pytest.approx(soup)


def test_enrichment_lists_lift_and_counts() -> None:
    pairs = TagPairs.from_strings(ROWS)
    top = enrichment(CLUSTERS, pairs, top=2, min_count=2)
    # cluster 0: red 3/3 vs 3/6 -> lift 2; all -> lift 1.
    assert [(e.tag, e.count, e.cluster_size, e.tag_total) for e in top[0]] == [
        ("red", 3, 3, 3),
        ("all", 3, 3, 6),
    ]
    assert top[0][0].lift == pytest.approx(2.0)
    # cluster 1: soup 2/3 vs 2/6 -> lift 2; food has only 1 image there (< min_count).
    assert top[1][0].tag == "soup" and top[1][0].lift == pytest.approx(2.0)
    assert "food" not in [e.tag for e in top[1]]


def test_overrepresented_needs_lift_above_one() -> None:
    # The images the report leaves out (unreadable, cluster -1) are dropped by the caller.
    pairs = TagPairs.from_strings(["cat,all", "cat,all", "dog,all", "dog,all", "all"])
    top = overrepresented(np.array([0, 0, 1, 1, 1]), pairs, 2)
    assert [(t.tag, t.count) for t in top[0]] == [("cat", 2)]  # "all": lift 1, not shown
    assert top[0][0].lift == pytest.approx((2 / 2) / (2 / 5))
    assert [t.tag for t in top[1]] == ["dog"]


def test_a_frequent_tag_outranks_a_rare_one() -> None:
    # "rare" is on 2 of 20 images, both in cluster 0 (lift 0.25 / 0.1 = 2.5); "wide" is on 6 of
    # cluster 0's 8 images and 2 of the 12 others (lift 0.75 / 0.4 = 1.875): lift alone
    # (enrichment) puts "rare" first, count x log(lift) (overrepresented) puts "wide" first.
    rows = ["rare,wide", "rare,wide", *["wide"] * 4, "", "", "wide", "wide", *[""] * 10]
    pairs = TagPairs.from_strings(rows)
    labels = np.array([0] * 8 + [1] * 12)
    top = overrepresented(labels, pairs, 2)
    assert [t.tag for t in top[0]] == ["wide", "rare"]
    assert top[0][1].lift == pytest.approx(2.5) and top[0][0].lift == pytest.approx(1.875)
    assert [t.tag for t in enrichment(labels, pairs, min_count=2)[0]] == ["rare", "wide"]


def test_most_specific_tag_skips_rare_tags_and_breaks_ties_alphabetically() -> None:
    pairs = TagPairs.from_strings(ROWS)
    specific = most_specific_tag(pairs, min_count=2)
    names = [pairs.vocabulary[t] if t >= 0 else None for t in specific]
    # image 0: food (2) is rarer than red (3); image 3: food and soup tie at 2 -> food.
    assert names == ["food", "red", "red", "food", "soup", "all"]
    assert most_specific_tag(pairs, min_count=7).tolist() == [-1] * 6


def test_random_baseline_is_below_a_real_match() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    clusters = labels.copy()
    clusters[:40] = rng.integers(0, 5, 40)  # 90% aligned
    mean, std = random_nmi(clusters, labels, repeats=5)
    assert mean < 0.05 < nmi(clusters, labels)
    assert std >= 0.0


def test_per_tag_mutual_information_matches_sklearn_on_random_tags() -> None:
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(0)
    vocab = [f"t{i}" for i in range(12)]
    rows = [",".join(rng.choice(vocab, rng.integers(0, 5), replace=False)) for _ in range(300)]
    clusters = rng.integers(0, 7, 300)
    pairs = TagPairs.from_strings(rows)
    mi, _ = tag_mutual_information(clusters, pairs)
    for t, tag in enumerate(pairs.vocabulary):
        has = np.array([tag in row.split(",") for row in rows])
        assert mi[t] == pytest.approx(mutual_info_score(has, clusters), abs=1e-12)
