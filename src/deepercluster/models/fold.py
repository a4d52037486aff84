"""Fold the frozen Sobel front into an ordinary RGB convolution.

A Sobel backbone only accepts RGB through its fixed grayscale + gradient filters. Both steps
are linear and the grayscale step is 1x1, so together they are exactly one 3x3 convolution
from 3 RGB channels to the 2 gradient channels (zero padding commutes with a 1x1 map). The
folded network gives the same outputs, has a plain ``nn.Conv2d`` first layer that standard RGB
pipelines and fine-tuning can train, and needs no Sobel code to run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from deepercluster.models.backbone import Backbone
from deepercluster.models.sobel import Sobel

__all__ = ["fold_sobel", "sobel_as_conv"]


def sobel_as_conv(sobel: Sobel) -> nn.Conv2d:
    """The (3 -> 2, 3x3, padding 1, no bias) convolution equal to ``sobel``.

    Returns:
        A conv whose weight (2, 3, 3, 3) is ``sobel_weight[o, 0] * gray_weight[0, c]``.
    """
    conv = nn.Conv2d(3, 2, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        gray = sobel.gray_weight.reshape(1, 3, 1, 1)  # (1, C=3, 1, 1)
        conv.weight.copy_(sobel.sobel_weight * gray)  # (2, 1, 3, 3) * (1, 3, 1, 1)
    return conv.to(sobel.sobel_weight.device)


def fold_sobel(backbone: Backbone) -> Backbone:
    """Return a copy of ``backbone`` whose Sobel front is a trainable RGB convolution.

    The copy maps (B, 3, H, W) ImageNet-normalised RGB to the same (B, feature_dim) features as
    the original (to float rounding); its ``sobel`` attribute holds the ``nn.Conv2d``.
    """
    if not isinstance(backbone.sobel, Sobel):
        raise ValueError(
            "this backbone has no Sobel front to fold (it was built with sobel=False, or is "
            "already folded); use it as it is"
        )
    folded = copy.deepcopy(backbone)
    folded.sobel = sobel_as_conv(backbone.sobel)
    return folded
