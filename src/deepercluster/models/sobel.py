"""Fixed Sobel front: grayscale, then horizontal and vertical image gradients.

DeepCluster and DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278, section 4) feed the
convnet Sobel gradients instead of colour: without it, k-means on the features finds clusters
of colour statistics, a trivial solution the paper calls the first thing to avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Sobel"]

# Cross-correlation kernels (conv2d does not flip): x responds to left-right intensity changes
# (a vertical edge), y to top-bottom ones. Same values and order as the reference
# `create_sobel_layer`, so its released first-conv weights expect these two channels.
_SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
_SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


class Sobel(nn.Module):
    """Frozen grayscale + Sobel filter bank, (B, 3, H, W) RGB -> (B, 2, H, W) gradients.

    The grayscale step is a 1x1 convolution with weights 1/3 applied to the ImageNet-normalised
    RGB input (as in the reference), followed by 3x3 Sobel x and y filters with padding 1, so the
    spatial size is kept.

    The filters are **buffers**, not parameters with ``requires_grad=False``: buffers are saved in
    the ``state_dict`` and follow ``.to(device)``, yet never appear in ``parameters()``. So no
    optimizer, weight decay, gradient clipping or DDP gradient all-reduce can touch them, even if
    a caller forgets the reference's ``filter(lambda p: p.requires_grad, ...)``.

    Reference: DeeperCluster (arXiv 1905.01278), ``src/model/model_factory.py``.
    """

    gray_weight: Tensor
    sobel_weight: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gray_weight", torch.full((1, 3, 1, 1), 1.0 / 3.0))
        self.register_buffer("sobel_weight", torch.tensor([[_SOBEL_X], [_SOBEL_Y]]))

    def forward(self, x: Tensor) -> Tensor:
        """Apply grayscale then Sobel.

        Args:
            x: (B, 3, H, W) ImageNet-normalised RGB images.

        Returns:
            (B, 2, H, W): channel 0 the x gradient, channel 1 the y gradient.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"Sobel expects RGB images of shape (B, 3, H, W), got {tuple(x.shape)}; "
                "pass 3-channel images, or build the backbone with sobel=False for other inputs"
            )
        gray = F.conv2d(x, self.gray_weight.to(x.dtype))
        return F.conv2d(gray, self.sobel_weight.to(x.dtype), padding=1)
