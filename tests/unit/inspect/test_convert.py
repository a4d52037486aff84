"""Import of the authors' released VGG-16 checkpoints (facebookresearch/DeeperCluster layout).

No download is possible here: the test builds a state dict with the reference key names and
shapes (``Net`` of src/model/model_factory.py wrapped in DistributedDataParallel: ``module.``
prefix, ``sobel.0``/``sobel.1`` convs, ``body.features.*``, ``body.classifier.*``,
``pred_layer``), at 32 px so that fc6 is small (the released files are 224 px: fc6 512x7x7).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepercluster
from deepercluster.models.backbone import vgg_style_stack
from deepercluster.models.convert import convert_reference_state_dict, infer_architecture
from deepercluster.models.vgg import _CFG


def _reference_state(sobel: bool, side: int = 1) -> dict[str, torch.Tensor]:
    """The keys and shapes of the reference ``Net`` (VGG16 body, relu=True classifier)."""
    gray = nn.Conv2d(3, 1, kernel_size=1)
    gray.weight.data.fill_(1.0 / 3.0)
    gray.bias.data.zero_()
    sob = nn.Conv2d(1, 2, kernel_size=3)
    sob.weight.data[0, 0] = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    sob.weight.data[1, 0] = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    sob.bias.data.zero_()
    features, _, _ = vgg_style_stack(_CFG, 2 if sobel else 3, conv_bias=True)
    body = nn.Module()
    body.features = features
    fc6, fc7 = nn.Linear(512 * side * side, 4096), nn.Linear(4096, 4096)
    body.classifier = nn.Sequential(fc6, nn.ReLU(True), nn.Dropout(0.5), fc7, nn.ReLU(True))
    net = nn.Module()
    if sobel:
        net.sobel = nn.Sequential(gray, sob)
    net.body = body
    net.pred_layer = nn.Linear(4096, 16)
    for m in net.modules():  # trained-looking batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    # PyTorch 1.0 files predate batch-norm counters in some releases: drop them.
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("sobel", [True, False])  # DeeperCluster/DeepCluster vs RotNet
def test_reference_keys_map_to_ours(sobel: bool, tmp_path: Path) -> None:
    ref = _reference_state(sobel)
    ours = convert_reference_state_dict(ref)
    spec = infer_architecture(ours)
    assert (spec.arch, spec.sobel, spec.resolution) == ("vgg16", sobel, 32)
    assert torch.equal(ours["features.0.weight"], ref["module.body.features.0.weight"])
    assert torch.equal(ours["classifier.3.bias"], ref["module.body.classifier.3.bias"])
    assert not any(k.startswith("pred_layer") for k in ours)
    # the file form ({"state_dict": ...}) loads through the public API
    torch.save({"state_dict": ref}, tmp_path / "ours.pth")
    model = deepercluster.load_backbone(tmp_path / "ours.pth")
    for key, value in ours.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_reference_sobel_equals_ours_inside_the_border() -> None:
    # The reference pads by 2 and applies Sobel without padding (a map 2 px larger); ours pads
    # inside the filter: the maps agree everywhere but on the reference's extra ring.
    ref = _reference_state(True)
    ours = convert_reference_state_dict(ref)
    x = torch.randn(2, 3, 16, 16)
    gray = F.conv2d(F.pad(x, (2, 2, 2, 2)), ref["module.sobel.0.weight"])
    theirs = F.conv2d(gray, ref["module.sobel.1.weight"])
    mine = F.conv2d(F.conv2d(x, ours["sobel.gray_weight"]), ours["sobel.sobel_weight"], padding=1)
    assert theirs.shape[-1] == 18
    torch.testing.assert_close(theirs[..., 1:-1, 1:-1], mine)


def test_bad_reference_files_are_refused() -> None:
    ref = _reference_state(True)
    ref["module.sobel.1.bias"] = torch.ones(2)
    with pytest.raises(ValueError, match="not zero"):
        convert_reference_state_dict(ref)
    with pytest.raises(ValueError, match="unexpected key"):
        convert_reference_state_dict({"module.body.head.weight": torch.zeros(1)})


def test_files_with_pickled_objects_are_refused_with_the_fix(tmp_path: Path) -> None:
    import argparse

    torch.save({"state_dict": _reference_state(False), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "f.pth")  # fmt: skip
    with pytest.raises(ValueError, match="save its weights alone"):
        deepercluster.load_backbone(tmp_path / "f.pth")
