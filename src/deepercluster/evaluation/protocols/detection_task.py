"""What ``deepercluster eval detection`` does: fine-tune Faster R-CNN, score VOC07 mAP."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from deepercluster.engine.run_folder import load_pretrained
from deepercluster.evaluation.average_precision import GroundTruthBoxes, voc_class_pr, voc_map
from deepercluster.evaluation.protocols.detection import (
    DetectionSettings,
    build_detector,
    detect,
    train_detector,
)
from deepercluster.evaluation.protocols.report import (
    markdown_table,
    output_dir,
    plot_pr_curves,
    write_result,
)
from deepercluster.evaluation.protocols.voc import VocDataset, VocImage, read_voc

__all__ = ["run_detection_task"]


def _truth(images: list[VocImage], classes: list[str]) -> dict[int, GroundTruthBoxes]:
    """Annotated objects of the test images, labels 1-based; unknown classes dropped."""
    lookup = {c: j + 1 for j, c in enumerate(classes)}
    out = {}
    for i, item in enumerate(images):
        keep = np.array([n in lookup for n in item.names], dtype=bool)
        out[i] = GroundTruthBoxes(
            boxes=item.boxes[keep].astype(np.float64) if keep.size else item.boxes,
            labels=np.array([lookup[n] for n in item.names if n in lookup], dtype=np.int64),
            difficult=item.difficult[keep] if keep.size else item.difficult,
        )
    return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def run_detection_task(
    checkpoint: str,
    train_data: str,
    test_data: str,
    settings: DetectionSettings,
    *,
    train_split: str = "trainval",
    test_split: str = "test",
    from_scratch: bool = False,
    out: str | None = None,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Fine-tune a detector on the pre-trained trunk (and, with ``from_scratch``, on a random
    one); score both on the test split; writes ``detection.{json,md,png}``.

    Returns:
        ``(markdown table, JSON payload)``.
    """
    pre = load_pretrained(checkpoint, device="cpu")
    train_images = read_voc(train_data, train_split)
    test_images = read_voc(test_data, test_split)
    classes = sorted({n for item in train_images for n in item.names})
    if not classes:
        raise ValueError(f"the {train_split} images of {train_data} have no objects to learn")
    folder = output_dir(checkpoint, out)
    train_set = VocDataset(train_images, classes, flip=settings.flip, seed=settings.seed)
    test_set = VocDataset(test_images, classes)
    truth = _truth(test_images, classes)
    ignored = sum(len(item.names) for item in test_images) - sum(
        len(t.labels) for t in truth.values()
    )
    starts = {"pre-trained": False, **({"random init": True} if from_scratch else {})}
    runs: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, scratch in starts.items():
        print(f"detection from {name}:", flush=True)
        start = time.perf_counter()
        model = build_detector(pre.backbone, len(classes), settings, from_scratch=scratch)
        losses = train_detector(
            model, train_set, settings, device=torch.device(device), workers=workers,
            progress=progress, label=name,
        )  # fmt: skip
        found = detect(
            model, test_set, device=torch.device(device), batch_size=settings.batch_size,
            workers=workers,
        )  # fmt: skip
        per_class = voc_map(found, truth, range(1, len(classes) + 1))
        runs[name] = {
            "map_11point": _nanmean([ap[0] for ap in per_class.values()]),
            "map_allpoint": _nanmean([ap[1] for ap in per_class.values()]),
            "per_class": {
                classes[c - 1]: {"ap_11point": a, "ap_allpoint": b}
                for c, (a, b) in per_class.items()
            },
            "train_loss": losses,
            "seconds": time.perf_counter() - start,
        }
        if name == "pre-trained":
            for c in range(1, len(classes) + 1):
                recall, precision, _ = voc_class_pr(found, truth, c)
                curves[classes[c - 1]] = (recall, precision)
    rows = [
        [name, f"{100 * r['map_11point']:.1f}", f"{100 * r['map_allpoint']:.1f}",
         f"{r['seconds'] / 60:.1f}"]
        for name, r in runs.items()
    ]  # fmt: skip
    header = (
        f"Faster R-CNN on `{pre.source}` (Sobel folded into RGB), fine-tuned on "
        f"{len(train_images)} {train_split} images, tested on {len(test_images)} {test_split} "
        f"images, {len(classes)} classes: {settings.epochs} epochs, SGD lr {settings.lr:g} "
        f"(warm-up + cosine), batch {settings.batch_size}, images at {settings.image_size} px."
        f" VOC07 mAP at IoU 0.5 (%).\n\n"
    )
    table = markdown_table(["start", "mAP 11-point", "mAP all-point", "minutes"], rows)
    payload = {
        "checkpoint": str(pre.source),
        "train_data": train_data,
        "test_data": test_data,
        "train_split": train_split,
        "test_split": test_split,
        "classes": classes,
        "n_train": len(train_images),
        "n_test": len(test_images),
        "ignored_test_objects": ignored,
        "settings": asdict(settings),
        "runs": runs,
    }
    write_result(folder, "detection", payload, header + table)
    plot_pr_curves(folder / "detection.png", curves, title="Detection (pre-trained): PR per class")
    return header + table, payload
