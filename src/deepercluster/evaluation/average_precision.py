"""Average precision of rankings and detections: instance retrieval and Pascal VOC.

- Retrieval, as the revisited Oxford and Paris benchmarks score it (Radenović et al., CVPR
  2018, arXiv 1803.11285): each query ranks the whole database; "junk" images are removed
  from the ranking before scoring; the precision-recall curve is integrated with the
  trapezoid rule between consecutive positives. Protocols Easy, Medium and Hard differ only in
  which ground-truth lists count as positives and which as junk.
- Detection, as Pascal VOC 2007 scores it (Everingham et al., IJCV 2010): per class,
  detections sorted by score are matched greedily to unmatched ground-truth boxes at IoU >=
  0.5; "difficult" boxes neither count as positives nor make a detection false. AP is the
  11-point interpolated precision (the VOC07 metric DeeperCluster, arXiv 1905.01278, reports)
  or the area under the interpolated curve (the VOC2010+ "all-point" metric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "REVISITED_SETUPS",
    "Detections",
    "GroundTruthBoxes",
    "box_iou",
    "ranking_ap",
    "retrieval_map",
    "voc_ap",
    "voc_class_pr",
    "voc_map",
]

REVISITED_SETUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
"""Protocol -> (ground-truth lists that are positives, lists that are junk), as in the
revisited benchmarks' ``compute_map`` evaluation."""


def ranking_ap(ranks: np.ndarray, n_positives: int) -> float:
    """AP of one ranked list, trapezoid rule (the revisited benchmarks' ``compute_ap``).

    Args:
        ranks: (P,) sorted 0-based positions of the positives in the ranking, junk removed.
        n_positives: positives of the query (positives never retrieved count as misses).

    Returns:
        AP in [0, 1]; 0 for a query without positives.
    """
    if n_positives <= 0:
        return 0.0
    ranks = np.asarray(ranks, dtype=np.float64)
    j = np.arange(len(ranks), dtype=np.float64)
    # precision just before and at each positive; at rank 0 the curve starts from 1
    before = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1.0))
    at = (j + 1.0) / (ranks + 1.0)
    return float(((before + at) / 2.0).sum() / n_positives)


def retrieval_map(
    order: np.ndarray, positives: Sequence[np.ndarray], junk: Sequence[np.ndarray]
) -> tuple[float, np.ndarray]:
    """Mean AP of Q rankings over the queries that have positives.

    Args:
        order: (Q, N) database indices of each query, best first (a full ranking).
        positives: Q arrays of database indices that are correct for each query.
        junk: Q arrays of database indices to remove from each ranking before scoring.

    Returns:
        ``(mAP, (Q,) AP per query)``; NaN for queries without positives, which the mean skips.
    """
    if len(positives) != order.shape[0] or len(junk) != order.shape[0]:
        raise ValueError(
            f"{order.shape[0]} rankings but {len(positives)} positive and {len(junk)} junk "
            "lists; give one of each per query"
        )
    aps = np.full(order.shape[0], np.nan)
    for q, ranking in enumerate(order):
        pos = np.asarray(positives[q], dtype=np.int64)
        if pos.size == 0:
            continue
        kept = ranking[~np.isin(ranking, np.asarray(junk[q], dtype=np.int64))]
        ranks = np.flatnonzero(np.isin(kept, pos))
        aps[q] = ranking_ap(ranks, pos.size)
    scored = aps[~np.isnan(aps)]
    return (float(scored.mean()) if scored.size else float("nan")), aps


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, eleven_point: bool) -> float:
    """Area under a precision-recall curve, VOC style.

    Args:
        recall: (K,) non-decreasing recall after each of the K ranked detections.
        precision: (K,) precision after each detection.
        eleven_point: VOC2007's mean of the interpolated precision at recall 0, 0.1, ..., 1;
            else the exact area under the interpolated (monotone) curve.

    Returns:
        AP in [0, 1].
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if eleven_point:
        points = [
            precision[recall >= t].max() if np.any(recall >= t) else 0.0
            for t in np.linspace(0.0, 1.0, 11)
        ]
        return float(np.mean(points))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # interpolate: best precision at any higher recall
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with M boxes (M, 4), all ``(x1, y1, x2, y2)`` in pixels.

    Areas use continuous coordinates (``x2 - x1``), as torchvision's boxes do; the VOC devkit's
    ``+ 1`` integer-pixel convention would shift IoU of boxes a few pixels wide.
    """
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out: np.ndarray = inter / np.maximum(area + areas - inter, np.finfo(np.float64).tiny)
    return out


@dataclass(frozen=True)
class GroundTruthBoxes:
    """The annotated objects of one image: boxes (M, 4), labels (M,), difficult (M,) bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True)
class Detections:
    """A detector's output on one image: boxes (K, 4), labels (K,), scores (K,)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def voc_class_pr(
    detections: Mapping[int, Detections],
    truth: Mapping[int, GroundTruthBoxes],
    label: int,
    *,
    iou: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Recall and precision after each ranked detection of one class over all images.

    Args:
        detections: image id -> detections.
        truth: image id -> annotated objects (every evaluated image appears here).
        label: the class scored.
        iou: minimum overlap of a true positive.

    Returns:
        ``(recall (K,), precision (K,), positives)``: K detections of ``label`` sorted by
        score; ``positives`` counts the non-difficult objects of ``label``.
    """
    found: dict[int, np.ndarray] = {}
    positives = 0
    for image, gt in truth.items():
        mine = gt.labels == label
        positives += int((mine & ~gt.difficult).sum())
        found[image] = np.zeros(int(mine.sum()), dtype=bool)
    scores, images, boxes = [], [], []
    for image, det in detections.items():
        mine = det.labels == label
        scores.append(det.scores[mine])
        images.append(np.full(int(mine.sum()), image))
        boxes.append(det.boxes[mine].reshape(-1, 4))
    if not scores:
        return np.zeros(0), np.zeros(0), positives
    score, image_of, box_of = np.concatenate(scores), np.concatenate(images), np.concatenate(boxes)
    order = np.argsort(-score, kind="stable")
    tp = np.zeros(order.size)
    fp = np.zeros(order.size)
    for k, d in enumerate(order):
        image_truth = truth.get(int(image_of[d]))
        if image_truth is None:
            fp[k] = 1
            continue
        mine = image_truth.labels == label
        overlaps = box_iou(box_of[d], image_truth.boxes[mine].reshape(-1, 4))
        best = int(np.argmax(overlaps)) if overlaps.size else -1
        if best < 0 or overlaps[best] < iou:
            fp[k] = 1
        elif image_truth.difficult[mine][best]:
            continue  # neither right nor wrong
        elif not found[int(image_of[d])][best]:
            tp[k] = 1
            found[int(image_of[d])][best] = True
        else:
            fp[k] = 1  # a second detection of an object already found
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_sum / max(positives, 1)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).tiny)
    return recall, precision, positives


def voc_map(
    detections: Mapping[int, Detections],
    truth: Mapping[int, GroundTruthBoxes],
    labels: Sequence[int],
    *,
    iou: float = 0.5,
) -> dict[int, tuple[float, float]]:
    """Per-class VOC AP: ``{label: (11-point AP, all-point AP)}``.

    A class without a (non-difficult) object in ``truth`` gets NaN for both: it cannot be
    scored, and the mean over classes should skip it.
    """
    out = {}
    for label in labels:
        recall, precision, positives = voc_class_pr(detections, truth, label, iou=iou)
        if positives == 0:
            out[label] = (float("nan"), float("nan"))
        else:
            out[label] = (
                voc_ap(recall, precision, eleven_point=True),
                voc_ap(recall, precision, eleven_point=False),
            )
    return out
