"""A small VGG-style convnet for CPU runs at 32-64 px (demos, tests, quick experiments).

DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278) trains VGG-16 on 64 GPUs. This net
keeps VGG's recipe (3x3 conv + BN + ReLU, 2x2 max-pools, a linear layer whose pre-activation
output is the feature, so the heads apply the ReLU as for VGG's fc7) with five convs instead of
thirteen: 0.19 instead of 0.66 GFLOP per 32 px image and 3.2M instead of 33.6M parameters, so a
cluster-train cycle on a small image folder takes minutes on a laptop CPU, not hours.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from deepercluster.models.backbone import (
    Backbone,
    reference_init,
    tag_relu_outputs,
    vgg_style_stack,
)

__all__ = ["SmallConvNet", "small_convnet"]

# Output channels of each conv, "M" = 2x2 max-pooling. Width grows as resolution drops, so each
# conv costs about the same; the first conv stays cheap because it runs at full resolution.
_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512)
# The final map is average-pooled to this side before the linear layer: unlike a global pool it
# keeps a coarse layout (what is at the top vs the bottom), which the rotation task needs, while
# letting one network run at any input resolution.
_POOL_SIDE = 2
_MIN_RESOLUTION = 8  # three 2x2 max-pools must leave at least a 1x1 map


class SmallConvNet(Backbone):
    """Five conv3x3+BN+ReLU layers (64, M, 128, M, 256, 256, M, 512), 2x2 avg-pool, linear.

    Args:
        sobel: put the frozen Sobel front first (2 input channels to conv1).
        resolution: input side in pixels, used only for validation: any side of at least 8
            works because the final map is adaptively pooled.
        feature_dim: D, the size of the output features.

    Shapes:
        forward: (B, 3, H, W) -> (B, feature_dim).
    """

    def __init__(self, *, sobel: bool, resolution: int, feature_dim: int = 512) -> None:
        super().__init__(sobel=sobel)
        if resolution < _MIN_RESOLUTION:
            raise ValueError(
                f"SmallConvNet needs inputs of at least {_MIN_RESOLUTION} px (three 2x2 "
                f"max-pools), got resolution={resolution}; upsample the images"
            )
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = feature_dim

        # No conv bias: the BN that follows would cancel it.
        self.features, self.conv_layer_names, channels = vgg_style_stack(
            _CFG, self.in_channels, conv_bias=False
        )
        self.pool = nn.AdaptiveAvgPool2d(_POOL_SIDE)
        self.fc = nn.Linear(channels * _POOL_SIDE**2, feature_dim)
        reference_init(self)

    def _trunk(self) -> Iterator[tuple[str | None, nn.Module]]:
        return tag_relu_outputs(self.features, self.conv_layer_names)

    def _project(self, x: Tensor) -> Tensor:
        features: Tensor = self.fc(self.pool(x).flatten(1))
        return features


def small_convnet(*, sobel: bool, resolution: int, feature_dim: int = 512) -> SmallConvNet:
    """Build the CPU-sized backbone (default feature_dim 512)."""
    return SmallConvNet(sobel=sobel, resolution=resolution, feature_dim=feature_dim)
