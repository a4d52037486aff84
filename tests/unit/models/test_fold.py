"""Folding the Sobel front into an RGB conv keeps every output of every backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepercluster.models import build_backbone
from deepercluster.models.fold import fold_sobel


@pytest.mark.parametrize("arch", ["small", "resnet18", "vgg16"])
def test_folded_network_equals_sobel_network(arch: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(arch, sobel=True, resolution=32).eval()
    folded = fold_sobel(model).eval()
    assert isinstance(folded.sobel, nn.Conv2d) and folded.sobel.weight.shape == (2, 3, 3, 3)
    assert folded.sobel.weight.requires_grad  # a real first layer: fine-tuning can train it
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        name = model.conv_layer_names[0]
        torch.testing.assert_close(
            folded.forward_conv(x, [name])[name], model.forward_conv(x, [name])[name]
        )
    assert model.sobel is not None and not isinstance(model.sobel, nn.Conv2d)  # original kept


def test_front_equals_sobel_on_borders() -> None:
    model = build_backbone("small", sobel=True, resolution=32)
    folded = fold_sobel(model)
    assert model.sobel is not None and folded.sobel is not None
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(folded.sobel(x), model.sobel(x), rtol=1e-5, atol=1e-6)


def test_fold_without_sobel_is_an_error() -> None:
    with pytest.raises(ValueError, match="no Sobel front"):
        fold_sobel(build_backbone("small", sobel=False, resolution=32))
