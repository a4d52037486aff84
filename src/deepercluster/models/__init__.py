"""Convnet backbones, the Sobel front and the hierarchical heads of DeeperCluster.

``BACKBONES`` is a plain name -> constructor dict: "go to definition" on a value leads to the
code, and adding an architecture is one line here (no registry, no import side effects).
"""

from __future__ import annotations

from collections.abc import Callable

from deepercluster.models.backbone import Backbone
from deepercluster.models.heads import HierarchicalHeads
from deepercluster.models.resnet import ResNet, resnet18, resnet50
from deepercluster.models.small import SmallConvNet, small_convnet
from deepercluster.models.sobel import Sobel
from deepercluster.models.syncbn import SyncBatchNorm2d, convert_sync_batchnorm
from deepercluster.models.vgg import VGG16, vgg16

__all__ = [
    "BACKBONES",
    "VGG16",
    "Backbone",
    "HierarchicalHeads",
    "ResNet",
    "SmallConvNet",
    "Sobel",
    "SyncBatchNorm2d",
    "build_backbone",
    "convert_sync_batchnorm",
    "resnet18",
    "resnet50",
    "small_convnet",
    "vgg16",
]

# Every constructor takes keyword-only ``sobel: bool, resolution: int``.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "small": small_convnet,
}


def build_backbone(arch: str, *, sobel: bool, resolution: int) -> Backbone:
    """Build the backbone named ``arch`` for square inputs of side ``resolution``.

    Args:
        arch: a key of ``BACKBONES``: "vgg16" (the paper's), "resnet18", "resnet50" or "small"
            (CPU-sized, for 32-64 px runs).
        sobel: put the frozen Sobel front first, as the paper does.
        resolution: training crop side in pixels (VGG-16 sizes fc6 from it).

    Returns:
        The backbone, mapping (B, 3, H, W) ImageNet-normalised RGB to (B, feature_dim).
    """
    try:
        constructor = BACKBONES[arch]
    except KeyError:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(BACKBONES)}") from None
    return constructor(sobel=sobel, resolution=resolution)
