"""Backbone export: plain state_dict, RGB-folded, torchvision layouts, ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.unit.inspect.conftest import TinyRun
from torch import nn

import deepercluster
from deepercluster.engine.run_folder import load_pretrained
from deepercluster.inspect.export import check_onnx, export_backbone, export_onnx
from deepercluster.models import build_backbone
from deepercluster.models.convert import infer_architecture, torchvision_backbone
from deepercluster.models.fold import fold_sobel

# ResNet-18: 72 px takes the ImageNet stem (torchvision layout), 16 px the CIFAR stem.
CASES = [("small", True, 32), ("resnet18", False, 72), ("vgg16", True, 32)]


@pytest.mark.parametrize(("arch", "sobel", "res"), CASES)
def test_export_then_load_gives_identical_outputs(
    tmp_path: Path, arch: str, sobel: bool, res: int
) -> None:
    model = build_backbone(arch, sobel=sobel, resolution=res).eval()
    _perturb_bn(model)
    path = export_backbone(model, tmp_path / "backbone.pt")
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state_dict
    spec = infer_architecture(state)
    assert (spec.arch, spec.sobel, spec.folded) == (arch, sobel, False)
    loaded = deepercluster.load_backbone(path)
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(("arch", "res"), [("small", 32), ("resnet18", 16)])
def test_rgb_folded_export_equals_sobel_plus_backbone(tmp_path: Path, arch: str, res: int) -> None:
    model = build_backbone(arch, sobel=True, resolution=res).eval()
    _perturb_bn(model)
    path = export_backbone(fold_sobel(model), tmp_path / "rgb.pt")
    assert infer_architecture(torch.load(path, weights_only=True)).folded
    loaded = deepercluster.load_backbone(path)
    assert isinstance(loaded.sobel, nn.Conv2d)  # a plain RGB conv, trainable
    x = torch.randn(3, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_torchvision_loads_resnet_exports(tmp_path: Path) -> None:
    model = build_backbone("resnet18", sobel=False, resolution=72).eval()
    _perturb_bn(model)
    state = torch.load(export_backbone(model, tmp_path / "r.pt"), weights_only=True)
    tv = torchvision_backbone(state)
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torchvision_loads_vgg16_at_224(tmp_path: Path) -> None:
    model = build_backbone("vgg16", sobel=False, resolution=224).eval()
    tv = torchvision_backbone(model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("arch", "sobel", "res", "match"),
    [("small", True, 32, "Sobel front"), ("vgg16", False, 32, "224 px"),
     ("resnet18", False, 32, "ImageNet stem")],
)  # fmt: skip
def test_torchvision_refuses_other_layouts(arch: str, sobel: bool, res: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        torchvision_backbone(build_backbone(arch, sobel=sobel, resolution=res).state_dict())


def test_onnx_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)"
    )
    model = build_backbone("small", sobel=True, resolution=32).eval()
    _perturb_bn(model)
    path = export_onnx(model, tmp_path / "b.onnx", resolution=32)
    assert check_onnx(model, path, resolution=32, batch=3) < 1e-4


def test_load_pretrained_from_a_run_folder(tiny_run: TinyRun) -> None:
    pre = load_pretrained(tiny_run.path)
    assert pre.resolution == 32 and pre.backbone.feature_dim == 512
    assert pre.source == tiny_run.path / "checkpoint.pth"  # no backbone.pth in this run
    with pytest.raises(FileNotFoundError, match="neither backbone"):
        load_pretrained(tiny_run.images)


def _perturb_bn(model: nn.Module) -> None:
    # Non-trivial running statistics, so a lost buffer would change the outputs.
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
