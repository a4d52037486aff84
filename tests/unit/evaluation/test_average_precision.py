"""Retrieval AP (revisited Oxford/Paris) and VOC detection AP against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.evaluation.average_precision import (
    Detections,
    GroundTruthBoxes,
    box_iou,
    ranking_ap,
    retrieval_map,
    voc_ap,
    voc_class_pr,
)


def test_ranking_ap_is_the_trapezoid_rule_between_positives() -> None:
    # positives at ranks 0 and 2: (1 + 1) / 2 and (1/2 + 2/3) / 2, over 2 positives
    assert ranking_ap(np.array([0, 2]), 2) == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    # one positive at rank 1 of two that exist: the missed one counts zero
    assert ranking_ap(np.array([1]), 2) == pytest.approx((0.0 + 0.5) / 2 / 2)
    assert ranking_ap(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    assert ranking_ap(np.array([], dtype=np.int64), 0) == 0.0


def test_retrieval_map_drops_junk_and_skips_queries_without_positives() -> None:
    order = np.array([[3, 0, 1, 2], [0, 1, 2, 3], [2, 3, 0, 1]])
    positives = [np.array([1]), np.array([], dtype=np.int64), np.array([2, 1])]
    junk = [np.array([3]), np.array([0]), np.array([], dtype=np.int64)]
    mean, aps = retrieval_map(order, positives, junk)
    # query 0: junk 3 removed -> [0, 1, 2], positive at rank 1: (0 + 1/2) / 2
    assert aps[0] == pytest.approx(0.25)
    assert np.isnan(aps[1])
    # query 2: positives at ranks 0 and 3: (1 + 1) / 2 + (1/3 + 2/4) / 2, over 2
    assert aps[2] == pytest.approx((1.0 + (1 / 3 + 0.5) / 2) / 2)
    assert mean == pytest.approx((aps[0] + aps[2]) / 2)
    # junk that is never a positive only helps: without it query 0 scores lower
    assert retrieval_map(order[:1], positives[:1], [np.array([], dtype=np.int64)])[0] < 0.25


def test_voc_ap_eleven_point_and_all_point() -> None:
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    # recall thresholds 0..0.5 (6 of them) reach precision 1, 0.6..1 (5) reach 2/3
    assert voc_ap(recall, precision, eleven_point=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(recall, precision, eleven_point=False) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([1.0]), np.array([1.0]), eleven_point=False) == pytest.approx(1.0)
    assert voc_ap(np.zeros(0), np.zeros(0), eleven_point=True) == 0.0


def test_voc_matching_duplicates_difficult_and_misses() -> None:
    truth = {
        0: GroundTruthBoxes(
            boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10]]),
            labels=np.array([1, 1, 1, 2]),
            difficult=np.array([False, False, True, False]),
        )
    }
    det = Detections(
        boxes=np.array(
            [
                [0, 0, 10, 10],
                [1, 1, 10, 10],
                [40, 40, 50, 50],
                [60, 60, 70, 70],
                [20, 20, 30, 29],
                [0, 0, 10, 10],
            ],
            dtype=np.float64,
        ),
        labels=np.array([1, 1, 1, 1, 1, 2]),
        scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]),
    )
    recall, precision, positives = voc_class_pr({0: det}, truth, 1)
    assert positives == 2  # the difficult box is not counted
    # tp, duplicate (fp), difficult (ignored), nothing there (fp), tp at IoU 0.9
    np.testing.assert_allclose(recall, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 0.5, 1 / 3, 0.5])
    assert voc_ap(recall, precision, eleven_point=True) == pytest.approx((6 + 5 * 0.5) / 11)
    assert voc_ap(recall, precision, eleven_point=False) == pytest.approx(0.75)
    # class 2: one box, found; the class-1 box at the same place does not count for it
    recall2, precision2, _ = voc_class_pr({0: det}, truth, 2)
    np.testing.assert_allclose(recall2, [1.0])
    np.testing.assert_allclose(precision2, [1.0])


def test_box_iou() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float64)
    np.testing.assert_allclose(box_iou(boxes[0], boxes), [1.0, 50 / 150, 0.0])
