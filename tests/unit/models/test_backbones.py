"""Backbones: shapes, probe layers, gradients, and architecture against torchvision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models import vgg16_bn as tv_vgg16_bn

from deepercluster.models import (
    BACKBONES,
    VGG16,
    Backbone,
    ResNet,
    SmallConvNet,
    Sobel,
    build_backbone,
)

ARCHS = sorted(BACKBONES)
FEATURE_DIM = {"vgg16": 4096, "resnet18": 512, "resnet50": 2048, "small": 512}
RES = 32
# ResNets take the CIFAR stem (no downsampling) at small sizes: 16 px keeps their tests fast.
TEST_RES = {"vgg16": 32, "small": 32, "resnet18": 16, "resnet50": 16}


@pytest.mark.parametrize("sobel", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_probes_and_backward(arch: str, sobel: bool) -> None:
    res = TEST_RES[arch]
    model = build_backbone(arch, sobel=sobel, resolution=res)
    assert isinstance(model, Backbone)
    assert model.feature_dim == FEATURE_DIM[arch]
    assert (model.sobel is not None) == sobel
    x = torch.randn(2, 3, res, res)

    out = model(x)
    assert out.shape == (2, model.feature_dim)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"

    model.eval()
    with torch.no_grad():
        maps = model.forward_conv(x, model.conv_layer_names)
    assert list(maps) == list(model.conv_layer_names)
    side = res
    for name, act in maps.items():
        assert act.dim() == 4 and act.shape[0] == 2, name
        assert act.min() >= 0, f"{name} should be post-ReLU"
        assert act.shape[-1] <= side, f"{name} grew spatially"
        side = act.shape[-1]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_conv_stops_at_the_deepest_requested_layer(arch: str) -> None:
    res = TEST_RES[arch]
    model = build_backbone(arch, sobel=True, resolution=res).eval()
    ran: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda *_, n=name: ran.append(n))
    first = model.conv_layer_names[0]
    with torch.no_grad():
        out = model.forward_conv(torch.randn(2, 3, res, res), [first])
    assert list(out) == [first]
    assert len(ran) == 1  # only the first conv ran, not the rest of the net


def test_forward_conv_rejects_unknown_names_and_accepts_none() -> None:
    model = build_backbone("small", sobel=False, resolution=RES)
    with pytest.raises(ValueError, match="choose from"):
        model.forward_conv(torch.randn(1, 3, RES, RES), ["conv99"])
    assert model.forward_conv(torch.randn(1, 3, RES, RES), []) == {}


def test_non_rgb_input_is_rejected() -> None:
    model = build_backbone("small", sobel=True, resolution=RES)
    with pytest.raises(ValueError, match="RGB"):
        model(torch.randn(1, 2, RES, RES))


def test_build_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("alexnet", sobel=True, resolution=RES)


# ---------------------------------------------------------------- VGG-16


def _conv_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def test_vgg16_matches_torchvision_vgg16_bn_with_two_input_channels() -> None:
    # On the meta device nothing is allocated, so the 224 px (fc6 = 25088 x 4096) net is free.
    with torch.device("meta"):
        ours = VGG16(sobel=True, resolution=224)
        ref = tv_vgg16_bn(weights=None)
        ref.features[0] = nn.Conv2d(2, 64, kernel_size=3, padding=1)

    assert _conv_count(ours) == 13 and len(ours.conv_layer_names) == 13
    assert [type(m) for m in ours.features] == [type(m) for m in ref.features]
    for a, b in zip(ours.features, ref.features, strict=True):
        if isinstance(a, nn.Conv2d | nn.MaxPool2d):
            assert repr(a) == repr(b)
    ours_features = {k: v.shape for k, v in ours.features.state_dict().items()}
    ref_features = {k: v.shape for k, v in ref.features.state_dict().items()}
    assert ours_features == ref_features  # same keys: torchvision conv weights load by name
    n_ref = sum(p.numel() for p in ref.features.parameters())
    assert sum(p.numel() for p in ours.features.parameters()) == n_ref

    # fc6 and fc7 are torchvision's classifier[0] and [3]; fc7 has no ReLU after it.
    assert ours.classifier[0].weight.shape == ref.classifier[0].weight.shape
    assert ours.classifier[3].weight.shape == ref.classifier[3].weight.shape
    assert isinstance(ours.classifier[1], nn.ReLU) and isinstance(ours.classifier[2], nn.Dropout)
    assert len(ours.classifier) == 4


def test_vgg16_classifier_is_sized_to_the_resolution() -> None:
    with torch.device("meta"):
        assert VGG16(sobel=False, resolution=32).classifier[0].in_features == 512
        assert VGG16(sobel=False, resolution=96).classifier[0].in_features == 512 * 9


@pytest.mark.parametrize("resolution", [0, 16, 48, 100])
def test_vgg16_rejects_resolution_not_multiple_of_32(resolution: int) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        VGG16(sobel=True, resolution=resolution)


def test_vgg16_rejects_inputs_of_another_size() -> None:
    model = VGG16(sobel=True, resolution=32)
    with pytest.raises(ValueError, match="resolution=64"):
        model(torch.randn(2, 3, 64, 64))


def test_vgg16_reference_init() -> None:
    model = VGG16(sobel=True, resolution=32)
    conv = model.features[-4]  # conv13: 512 -> 512, 2.4M weights: a tight std estimate
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 512)), rel=0.02)
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    fc7 = model.classifier[3]
    assert isinstance(fc7, nn.Linear)
    assert fc7.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.equal(fc7.bias, torch.zeros_like(fc7.bias))
    bn = model.features[1]
    assert isinstance(bn, nn.BatchNorm2d)
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))


# ---------------------------------------------------------------- ResNet


@pytest.mark.parametrize(
    ("ctor", "tv_ctor"), [("resnet18", tv_resnet18), ("resnet50", tv_resnet50)]
)
def test_resnet_keys_match_torchvision_without_fc(ctor: str, tv_ctor: object) -> None:
    with torch.device("meta"):
        ours = build_backbone(ctor, sobel=False, resolution=224)
        ref = tv_ctor(weights=None)  # type: ignore[operator]
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes
    assert ours.feature_dim == ref.fc.in_features


def test_resnet_stem_choice() -> None:
    with torch.device("meta"):
        small = ResNet("resnet18", sobel=True, resolution=64)
        large = ResNet("resnet18", sobel=True, resolution=96)
        forced = ResNet("resnet18", sobel=False, resolution=32, cifar_stem=False)
    assert small.cifar_stem and isinstance(small.maxpool, nn.Identity)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.in_channels == 2
    assert not large.cifar_stem and isinstance(large.maxpool, nn.MaxPool2d)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.in_channels == 2
    assert not forced.cifar_stem and forced.conv1.in_channels == 3


def test_resnet_imagenet_stem_at_32px_reaches_layer4_as_1x1() -> None:
    model = ResNet("resnet18", sobel=True, resolution=32, cifar_stem=False).eval()
    with torch.no_grad():
        maps = model.forward_conv(torch.randn(1, 3, 32, 32), ["layer4"])
    assert maps["layer4"].shape == (1, 512, 1, 1)  # why the CIFAR stem is the default here


def test_unknown_resnet_depth() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        ResNet("resnet34", sobel=True, resolution=32)


# ---------------------------------------------------------------- small


@pytest.mark.parametrize("resolution", [16, 24, 48, 64])
def test_small_runs_at_any_resolution(resolution: int) -> None:
    model = SmallConvNet(sobel=True, resolution=resolution)
    assert model(torch.randn(2, 3, resolution, resolution)).shape == (2, 512)


def test_small_is_a_real_but_much_smaller_convnet() -> None:
    with torch.device("meta"):
        small = SmallConvNet(sobel=True, resolution=32)
        vgg = VGG16(sobel=True, resolution=32)
    assert _conv_count(small) == len(small.conv_layer_names) == 5
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in vgg.parameters()) / 5


def test_small_options_and_validation() -> None:
    assert SmallConvNet(sobel=False, resolution=32, feature_dim=128).feature_dim == 128
    with pytest.raises(ValueError, match="at least 8"):
        SmallConvNet(sobel=True, resolution=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_sobel_front_comes_first(arch: str) -> None:
    with torch.device("meta"):
        model = build_backbone(arch, sobel=True, resolution=32)
        plain = build_backbone(arch, sobel=False, resolution=32)
    assert isinstance(next(iter(model.children())), Sobel)
    assert model.in_channels == 2 and plain.in_channels == 3
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
