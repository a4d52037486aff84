"""ResNet-18 / ResNet-50 backbones from torchvision, with Sobel front and optional CIFAR stem.

The paper trains VGG-16 (Caron et al., ICCV 2019, arXiv 1905.01278) and names deeper modern
nets as the natural next step; these trunks make that a one-word change. The features are the
global-average-pooled output of ``layer4`` (512-d for ResNet-18, 2048-d for ResNet-50); the fc
is dropped because the DeeperCluster heads replace it. Submodule names equal torchvision's, so
its state_dict (minus ``fc.*``) loads by key when ``sobel=False`` and the ImageNet stem is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from deepercluster.models.backbone import Backbone

__all__ = ["CIFAR_STEM_MAX_RESOLUTION", "ResNet", "resnet18", "resnet50"]

# The ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) downsamples by 4 before layer1 and
# the stages by 8 more, 32x in all: a 32 px image reaches layer4 as a 1x1 map and a 64 px one as
# 2x2, so most of the net sees almost no spatial structure. Up to this size we use the CIFAR
# stem (3x3 stride-1 conv, no max-pool), which keeps 8x more resolution in every stage.
CIFAR_STEM_MAX_RESOLUTION = 64

_CONSTRUCTORS: dict[str, Callable[..., tv_resnet.ResNet]] = {
    "resnet18": tv_resnet.resnet18,
    "resnet50": tv_resnet.resnet50,
}


class ResNet(Backbone):
    """A torchvision ResNet trunk without its fc, as a DeeperCluster backbone.

    Args:
        arch: "resnet18" or "resnet50".
        sobel: put the frozen Sobel front first (conv1 then takes 2 channels).
        resolution: input side in pixels; picks the stem when ``cifar_stem`` is None.
        cifar_stem: force the 3x3 stride-1 stem without max-pool (True) or the ImageNet stem
            (False); None chooses CIFAR for ``resolution <= CIFAR_STEM_MAX_RESOLUTION``.

    Shapes:
        forward: (B, 3, H, W) -> (B, 512) for ResNet-18, (B, 2048) for ResNet-50.
    """

    def __init__(
        self, arch: str, *, sobel: bool, resolution: int, cifar_stem: bool | None = None
    ) -> None:
        super().__init__(sobel=sobel)
        if arch not in _CONSTRUCTORS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {sorted(_CONSTRUCTORS)}")
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        if cifar_stem is None:
            cifar_stem = resolution <= CIFAR_STEM_MAX_RESOLUTION
        self.cifar_stem = cifar_stem

        net = _CONSTRUCTORS[arch](weights=None)
        if cifar_stem or self.in_channels != 3:
            kernel, stride = (3, 1) if cifar_stem else (7, 2)
            net.conv1 = nn.Conv2d(
                self.in_channels, 64, kernel, stride=stride, padding=kernel // 2, bias=False
            )
            # Same init torchvision gives its own convs, so the new stem is not the odd one out.
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if cifar_stem:
            net.maxpool = nn.Identity()

        # Re-home torchvision's children under their own names (torchvision-compatible keys).
        self.conv1: nn.Conv2d = net.conv1
        self.bn1: nn.BatchNorm2d = net.bn1
        self.relu: nn.ReLU = net.relu
        self.maxpool: nn.Module = net.maxpool
        self.layer1: nn.Sequential = net.layer1
        self.layer2: nn.Sequential = net.layer2
        self.layer3: nn.Sequential = net.layer3
        self.layer4: nn.Sequential = net.layer4
        self.feature_dim = int(net.fc.in_features)
        self.conv_layer_names = ("conv1", "layer1", "layer2", "layer3", "layer4")

    def _trunk(self) -> Iterator[tuple[str | None, nn.Module]]:
        yield None, self.conv1
        yield None, self.bn1
        yield "conv1", self.relu
        yield None, self.maxpool
        yield "layer1", self.layer1
        yield "layer2", self.layer2
        yield "layer3", self.layer3
        yield "layer4", self.layer4

    def _project(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def resnet18(*, sobel: bool, resolution: int, cifar_stem: bool | None = None) -> ResNet:
    """Build a ResNet-18 backbone (feature_dim 512)."""
    return ResNet("resnet18", sobel=sobel, resolution=resolution, cifar_stem=cifar_stem)


def resnet50(*, sobel: bool, resolution: int, cifar_stem: bool | None = None) -> ResNet:
    """Build a ResNet-50 backbone (feature_dim 2048)."""
    return ResNet("resnet50", sobel=sobel, resolution=resolution, cifar_stem=cifar_stem)
