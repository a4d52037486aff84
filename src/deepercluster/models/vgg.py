"""VGG-16 with batch norm, the network of DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278).

Layout and initialisation follow the reference ``src/model/vgg16.py``: 13 conv3x3+BN+ReLU layers,
then fc6 (Linear + ReLU + Dropout) and fc7 (Linear, **no** ReLU). The features used by the
clustering and the heads are fc7's pre-activations. Module names (``features.N``,
``classifier.N``) match the reference body and torchvision's ``vgg16_bn``, so their conv weights
load by key.
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

__all__ = ["VGG16", "vgg16"]

# Output channels of each conv, "M" = 2x2 max-pooling (configuration "D" of Simonyan & Zisserman).
_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
_DOWNSAMPLING = 32  # five 2x2 max-pools
_FC_DIM = 4096


class VGG16(Backbone):
    """VGG-16-BN trunk with fc6/fc7, classifier sized to the input resolution.

    The reference hard-codes fc6 as ``Linear(512 * 7 * 7, 4096)`` for 224 px crops; here fc6 takes
    ``512 * s * s`` inputs with ``s = resolution / 32``, so the same network runs on 32 px CPU
    experiments (fc6 = Linear(512, 4096)) and on the paper's 224 px crops.

    Args:
        sobel: put the frozen Sobel front first (2 input channels to conv1) as in the paper.
        resolution: input side in pixels; a multiple of 32.

    Shapes:
        forward: (B, 3, resolution, resolution) -> (B, 4096).
    """

    def __init__(self, *, sobel: bool, resolution: int) -> None:
        super().__init__(sobel=sobel)
        if resolution < _DOWNSAMPLING or resolution % _DOWNSAMPLING != 0:
            lower = max(_DOWNSAMPLING, resolution // _DOWNSAMPLING * _DOWNSAMPLING)
            raise ValueError(
                f"VGG16 needs a resolution that is a multiple of {_DOWNSAMPLING} (five 2x2 "
                f"max-pools, and fc6 is sized to the final map), got {resolution}; "
                f"crop to {lower} or {lower + _DOWNSAMPLING}"
            )
        self.resolution = resolution
        self.final_size = resolution // _DOWNSAMPLING
        self.feature_dim = _FC_DIM

        # Conv biases kept (before BN) as in the reference, so its weights load as they are.
        self.features, self.conv_layer_names, channels = vgg_style_stack(
            _CFG, self.in_channels, conv_bias=True
        )

        self.classifier = nn.Sequential(
            nn.Linear(channels * self.final_size**2, _FC_DIM),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),  # as the reference
            nn.Linear(_FC_DIM, _FC_DIM),  # fc7: no ReLU, the heads apply it
        )
        reference_init(self)

    def _trunk(self) -> Iterator[tuple[str | None, nn.Module]]:
        return tag_relu_outputs(self.features, self.conv_layer_names)

    def _project(self, x: Tensor) -> Tensor:
        s = self.final_size
        if x.shape[-2:] != (s, s):
            side = x.shape[-1] * _DOWNSAMPLING
            raise ValueError(
                f"this VGG16 was built for {self.resolution} px inputs (fc6 expects 512x{s}x{s}), "
                f"got a {tuple(x.shape[-2:])} final map (about {side} px inputs); "
                f"build it with resolution={side} or resize the images to {self.resolution}"
            )
        features: Tensor = self.classifier(x.flatten(1))
        return features


def vgg16(*, sobel: bool, resolution: int) -> VGG16:
    """Build the paper's VGG-16-BN backbone (feature_dim 4096)."""
    return VGG16(sobel=sobel, resolution=resolution)
