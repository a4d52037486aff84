"""State-dict layouts: rebuild a backbone from its weights alone, and import the authors' files.

Two jobs, both about key names and shapes:

- :func:`backbone_from_state_dict` reads which of our backbones (and which options: Sobel
  front, folded RGB front, ResNet stem, VGG input size, feature size) a plain ``state_dict``
  belongs to, builds it and loads the weights strictly. So an exported ``backbone.pt`` needs no
  side file, and a torchvision ``vgg16_bn``/``resnet18``/``resnet50`` ``state_dict`` (minus its
  ImageNet classifier) loads too.
- :func:`convert_reference_state_dict` turns the released DeeperCluster, DeepCluster and RotNet
  VGG-16 checkpoints of facebookresearch/DeeperCluster (``checkpoint["state_dict"]``, keys such
  as ``module.sobel.0.weight``, ``module.body.features.0.weight``,
  ``module.body.classifier.3.bias``, ``module.pred_layer.weight``) into our VGG-16 keys.

Known difference with the reference network: its ``Net.forward`` pads the input by 2 pixels
before the Sobel front (1 without it) and its Sobel filter has no padding, so the features
differ slightly near the image border; the weights are the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from deepercluster.models.backbone import Backbone
from deepercluster.models.fold import fold_sobel
from deepercluster.models.resnet import resnet18, resnet50
from deepercluster.models.small import small_convnet
from deepercluster.models.vgg import vgg16

__all__ = [
    "ArchSpec",
    "backbone_from_state_dict",
    "convert_reference_state_dict",
    "infer_architecture",
    "torchvision_backbone",
]

_MODULE = re.compile(r"(^|\.)module\.")  # DistributedDataParallel / DataParallel wrappers


@dataclass(frozen=True)
class ArchSpec:
    """A backbone as read from its weights.

    Attributes:
        arch: a key of ``models.BACKBONES``.
        sobel: a Sobel front (frozen, or folded into an RGB conv when ``folded``).
        folded: the Sobel front is a plain (3 -> 2) RGB conv (``fold_sobel``).
        resolution: VGG-16: the input side its fc6 was sized for; others: a side that builds
            the same network (ResNet: 64 picks the CIFAR stem, 224 the ImageNet one).
        feature_dim: D, the size of the output features.
    """

    arch: str
    sobel: bool
    folded: bool
    resolution: int
    feature_dim: int


def infer_architecture(state: Mapping[str, Tensor]) -> ArchSpec:
    """Read arch, Sobel front, input size and feature size from a backbone ``state_dict``.

    Raises:
        ValueError: the keys match none of our backbones (the message lists a few).
    """
    folded = "sobel.weight" in state
    sobel = folded or "sobel.gray_weight" in state
    if "classifier.0.weight" in state and "features.0.weight" in state:
        fc6 = state["classifier.0.weight"]
        side = math.isqrt(fc6.shape[1] // 512)
        if side * side * 512 != fc6.shape[1]:
            raise ValueError(
                f"classifier.0.weight has {fc6.shape[1]} inputs, not 512 x s x s: this is not a "
                "VGG-16 trunk we can rebuild"
            )
        return ArchSpec(
            "vgg16", sobel, folded, 32 * side, int(state["classifier.3.weight"].shape[0])
        )
    if "fc.weight" in state and "features.0.weight" in state:
        return ArchSpec("small", sobel, folded, 32, int(state["fc.weight"].shape[0]))
    if "layer4.0.conv1.weight" in state:
        arch = "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"
        cifar = state["conv1.weight"].shape[-1] == 3
        dim = state["layer4.1.bn2.weight" if arch == "resnet18" else "layer4.2.bn3.weight"]
        return ArchSpec(arch, sobel, folded, 64 if cifar else 224, int(dim.shape[0]))
    raise ValueError(
        f"cannot tell which backbone these weights belong to (keys {sorted(state)[:4]}...); "
        "expected ours or torchvision's vgg16_bn/resnet18/resnet50 (without their fc/"
        "classifier.6); for the authors' released files use convert_reference_state_dict"
    )


def backbone_from_state_dict(state: Mapping[str, Tensor]) -> Backbone:
    """Build the backbone ``state`` belongs to and load it strictly (eval mode).

    Args:
        state: a ``state_dict`` of one of our backbones (from ``export``, ``backbone.pth`` or
            a checkpoint's ``model``), possibly with the Sobel front folded into RGB.

    Returns:
        The backbone, (B, 3, H, W) ImageNet-normalised RGB -> (B, feature_dim).
    """
    spec = infer_architecture(state)
    model: Backbone
    if spec.arch == "vgg16":
        model = vgg16(sobel=spec.sobel, resolution=spec.resolution)
    elif spec.arch == "small":
        model = small_convnet(
            sobel=spec.sobel, resolution=spec.resolution, feature_dim=spec.feature_dim
        )
    else:
        build = resnet18 if spec.arch == "resnet18" else resnet50
        model = build(
            sobel=spec.sobel, resolution=spec.resolution, cifar_stem=spec.resolution <= 64
        )
    if spec.folded:
        model = fold_sobel(model)
    model.load_state_dict(dict(state))
    return model.eval()


def convert_reference_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a released DeeperCluster/DeepCluster/RotNet VGG-16 ``state_dict`` to our keys.

    ``module.`` wrappers are removed wherever they occur, ``body.`` is dropped, the two Sobel
    convs become our buffers (``sobel.0.weight`` (1, 3, 1, 1) -> ``sobel.gray_weight``,
    ``sobel.1.weight`` (2, 1, 3, 3) -> ``sobel.sobel_weight``; their biases must be zero),
    the prediction layer (``pred_layer``/``top_layer``) is dropped, and batch-norm counters
    missing from old PyTorch versions are added. The result loads with
    :func:`backbone_from_state_dict` (VGG-16, sized for 224 px by its fc6).

    Raises:
        ValueError: a non-zero Sobel bias (the front would not be the fixed one we rebuild),
            or keys that are not part of the reference VGG-16.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = _MODULE.sub(r"\1", key)
        name = name.removeprefix("body.")
        if name.startswith(("pred_layer.", "top_layer.")):
            continue
        if name in ("sobel.0.bias", "sobel.1.bias"):
            if torch.count_nonzero(value):
                raise ValueError(
                    f"{key} is not zero: this Sobel front is not the fixed reference one, so "
                    "it cannot become our frozen Sobel buffers"
                )
            continue
        name = {"sobel.0.weight": "sobel.gray_weight", "sobel.1.weight": "sobel.sobel_weight"}.get(
            name, name
        )
        if not name.startswith(("features.", "classifier.", "sobel.")):
            raise ValueError(
                f"unexpected key {key!r} for a reference VGG-16 checkpoint (expected "
                "module.sobel.*, module.body.features.*, module.body.classifier.*, "
                "module.pred_layer.*)"
            )
        out[name] = value
    for key in [k for k in out if k.endswith(".running_var")]:
        counter = key.removesuffix("running_var") + "num_batches_tracked"
        out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def torchvision_backbone(state: Mapping[str, Tensor]) -> torch.nn.Module:
    """The torchvision network with the same layout as ``state``, loaded strictly (eval mode).

    - ``vgg16`` built for 224 px: ``vgg16_bn`` with ``classifier`` cut after fc7
      (``classifier[:4]``), so the output is our fc7 pre-activation feature;
    - ``resnet18``/``resnet50`` with the ImageNet stem (resolution > 64): ``fc`` replaced by
      ``Identity``, so the output is the pooled ``layer4`` feature.

    Raises:
        ValueError: no torchvision layout holds it: a Sobel front (folded or not: torchvision
            has no slot before its first conv), VGG-16 at another resolution (fc6 has another
            input size), a ResNet with the CIFAR stem, or ``small``.
    """
    from torchvision import models as tv

    spec = infer_architecture(state)
    if spec.sobel:
        raise ValueError(
            "this backbone has a Sobel front (folded or not): torchvision's networks start with "
            "one RGB conv and have no slot for it; load it with deepercluster.load_backbone"
        )
    net: torch.nn.Module
    if spec.arch == "vgg16" and spec.resolution == 224:
        net = tv.vgg16_bn(weights=None)
        classifier = cast(torch.nn.Sequential, net.classifier)
        net.classifier = torch.nn.Sequential(*list(classifier.children())[:4])
    elif spec.arch in ("resnet18", "resnet50") and spec.resolution > 64:
        net = getattr(tv, spec.arch)(weights=None)
        net.fc = torch.nn.Identity()
    else:
        raise ValueError(
            f"no torchvision layout for {spec.arch} at {spec.resolution} px (VGG-16 needs 224 px "
            "for torchvision's fc6, ResNets the ImageNet stem, and 'small' has no counterpart); "
            "load it with deepercluster.load_backbone"
        )
    net.load_state_dict(dict(state))
    return net.eval()
