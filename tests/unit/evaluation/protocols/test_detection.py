"""Detection transfer: the VOC reader and the fine-tuned detector on generated shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import save_random_backbone

from deepercluster.cli import main
from deepercluster.evaluation.average_precision import voc_map
from deepercluster.evaluation.protocols.detection import DetectionSettings, build_detector, detect
from deepercluster.evaluation.protocols.detection_task import _truth
from deepercluster.evaluation.protocols.voc import VocDataset, read_voc
from deepercluster.models import build_backbone

from .voc_shapes import CLASSES, write_shapes_voc

# A detector must find most shapes to pass; an untrained one scores about 0.01.
MAP_BAR = 0.2
TINY = DetectionSettings(
    epochs=6, batch_size=2, lr=0.02, image_size=64, roi_size=4, representation=256,
    rois_per_image=64,
)  # fmt: skip


def test_voc_reader_converts_boxes_and_flags_difficult(tmp_path: Path) -> None:
    root = write_shapes_voc(tmp_path / "voc", n=4, n_test=1)
    xml = root / "Annotations/0003.xml"
    xml.write_text(
        "<annotation><object><name>disc</name><difficult>1</difficult><bndbox><xmin>1</xmin>"
        "<ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    (image,) = read_voc(root, "test")
    np.testing.assert_array_equal(image.boxes, [[0, 1, 10, 20]])
    assert image.names == ("disc",) and image.difficult.tolist() == [True]
    # difficult objects are no training targets
    _, target = VocDataset([image], list(CLASSES))[0]
    assert target["boxes"].shape == (0, 4)
    # a flip mirrors the boxes with the image
    train = read_voc(root, "trainval")
    plain = VocDataset(train, list(CLASSES))
    flipped = VocDataset(train, list(CLASSES), flip=True, seed=0)
    for i in range(len(train)):
        x, t = plain[i]
        fx, ft = flipped[i]
        if not torch.equal(x, fx):
            torch.testing.assert_close(fx, x.flip(-1))
            torch.testing.assert_close(ft["boxes"][:, 0], 64 - t["boxes"][:, 2])


def test_malformed_annotation_and_missing_split_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_shapes_voc(tmp_path / "voc", n=4, n_test=1)
    ckpt = save_random_backbone(tmp_path / "backbone.pth")
    (root / "Annotations/0001.xml").write_text("<annotation><object><name>disc</name>")
    args = ["eval", "detection", "--checkpoint", str(ckpt), "--train-data", str(root),
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "0001.xml: malformed VOC annotation" in err and len(err.splitlines()) == 1
    assert main([*args, "--train-split", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.txt not found" in err and len(err.splitlines()) == 1


def test_fine_tuned_detector_beats_the_bar_that_an_untrained_one_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    root = write_shapes_voc(tmp_path / "voc")
    ckpt = save_random_backbone(tmp_path / "backbone.pth")
    test = read_voc(root, "test")
    untrained = build_detector(build_backbone("small", sobel=True, resolution=32), 2, TINY)
    found = detect(untrained, VocDataset(test, list(CLASSES)), device=torch.device("cpu"))
    aps = voc_map(found, _truth(test, list(CLASSES)), [1, 2])
    assert np.mean([a[0] for a in aps.values()]) < MAP_BAR

    out = tmp_path / "out"
    assert main(["eval", "detection", "--checkpoint", str(ckpt), "--train-data", str(root),
                 "--epochs", "6", "--batch-size", "2", "--image-size", "64", "--roi-size", "4",
                 "--representation", "256", "--rois-per-image", "64", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    result = json.loads((out / "detection.json").read_text())
    run = result["runs"]["pre-trained"]
    assert result["classes"] == list(CLASSES) and result["n_test"] == 10
    assert run["map_11point"] > MAP_BAR and run["map_allpoint"] > MAP_BAR
    assert all(not math.isnan(c["ap_11point"]) for c in run["per_class"].values())
    assert run["train_loss"][-1] < run["train_loss"][0]
    assert "| pre-trained |" in capsys.readouterr().out
    assert (out / "detection.png").read_bytes()[:4] == b"\x89PNG"
    assert "mAP 11-point" in (out / "detection.md").read_text()
