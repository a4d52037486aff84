"""The interface every convnet trunk implements, and the shared forward logic.

A backbone maps ImageNet-normalised RGB images to the feature vector that both the clustering
and the classification heads use (DeeperCluster, Caron et al., ICCV 2019, arXiv 1905.01278:
fc7 of VGG-16, before its ReLU). It also exposes its intermediate conv activations by name for
the per-layer linear probes of the paper's evaluation (section 7 of docs/ALGORITHM.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from deepercluster.models.sobel import Sobel

__all__ = ["Backbone", "tag_relu_outputs"]


class Backbone(nn.Module):
    """Base class: optional Sobel front, a chain of layers, then pooling/projection to features.

    Subclasses set ``feature_dim`` and ``conv_layer_names`` and implement ``_trunk`` (the layers in
    order, tagging those whose output is a named conv activation) and ``_project`` (trunk output
    to the feature vector). ``forward`` and ``forward_conv`` are shared, so a probe on "conv5"
    sees exactly the tensor that flows through the network at that point.

    ``_trunk`` is a generator re-read at each call rather than a list built once: module
    replacement such as ``nn.SyncBatchNorm.convert_sync_batchnorm`` swaps submodules in place and
    a cached list would silently keep the old ones.

    Attributes:
        feature_dim: D, the size of ``forward``'s output.
        conv_layer_names: names accepted by ``forward_conv``, shallow to deep.
        sobel: the frozen Sobel front, or None when the first conv sees RGB directly.
    """

    feature_dim: int
    conv_layer_names: tuple[str, ...]

    def __init__(self, *, sobel: bool) -> None:
        super().__init__()
        # First child, so the state_dict and printouts read in data-flow order.
        # A Sobel, or after `fold_sobel` the equivalent RGB nn.Conv2d; None for plain RGB.
        self.sobel: nn.Module | None = Sobel() if sobel else None

    @property
    def in_channels(self) -> int:
        """Channels seen by the first conv: 2 Sobel gradients, or 3 RGB channels."""
        return 2 if self.sobel is not None else 3

    def _trunk(self) -> Iterator[tuple[str | None, nn.Module]]:
        """Yield ``(name, layer)`` in forward order; name is set where the output is probed."""
        raise NotImplementedError

    def _project(self, x: Tensor) -> Tensor:
        """Map the last trunk activation to the (B, feature_dim) feature vector."""
        raise NotImplementedError

    def _front(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects ImageNet-normalised RGB images (B, 3, H, W), "
                f"got shape {tuple(x.shape)}; the Sobel front (if any) is part of the backbone, "
                "so always pass RGB"
            )
        return self.sobel(x) if self.sobel is not None else x

    def forward(self, x: Tensor) -> Tensor:
        """Compute the features that the heads and the clustering use.

        Args:
            x: (B, 3, H, W) ImageNet-normalised RGB images.

        Returns:
            (B, feature_dim) features, pre-activation (the heads apply the ReLU).
        """
        x = self._front(x)
        for _, layer in self._trunk():
            x = layer(x)
        return self._project(x)

    def forward_conv(self, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """Return the post-ReLU activation maps of the named conv layers.

        Stops after the deepest requested layer, so probing "conv1" costs one conv, not the net.

        Args:
            x: (B, 3, H, W) ImageNet-normalised RGB images.
            names: a subset of ``conv_layer_names``, in any order.

        Returns:
            ``{name: (B, C, h, w)}`` for every requested name.
        """
        wanted = set(names)
        unknown = wanted.difference(self.conv_layer_names)
        if unknown:
            raise ValueError(
                f"unknown conv layer(s) {sorted(unknown)} for {type(self).__name__}; "
                f"choose from {list(self.conv_layer_names)}"
            )
        out: dict[str, Tensor] = {}
        if not wanted:
            return out
        x = self._front(x)
        for name, layer in self._trunk():
            x = layer(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


def tag_relu_outputs(
    layers: nn.Sequential, names: Sequence[str]
) -> Iterator[tuple[str | None, nn.Module]]:
    """Walk a VGG-style conv+BN+ReLU stack, naming the i-th ReLU's output ``names[i]``.

    This is the reference's probe convention (count ReLUs in ``features``), shared by the
    VGG-16 and small backbones so "conv5" means the same thing in both.
    """
    count = 0
    for layer in layers:
        name = None
        if isinstance(layer, nn.ReLU):
            name = names[count]
            count += 1
        yield name, layer


def reference_init(module: nn.Module) -> None:
    """The DeepCluster/DeeperCluster reference initialisation, applied to every sub-module.

    Conv: N(0, sqrt(2 / n)) with n = kh * kw * out_channels (fan-out, as in the reference code),
    bias 0; BatchNorm: weight 1, bias 0; Linear: N(0, 0.01), bias 0. Shared by VGG-16 and the
    small convnet so that learning-rate settings transfer between the two.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def vgg_style_stack(
    cfg: Sequence[int | str], in_channels: int, *, conv_bias: bool
) -> tuple[nn.Sequential, tuple[str, ...], int]:
    """Conv3x3 + BN + ReLU blocks from a VGG-style plan (ints: channels, "M": 2x2 max-pool).

    Returns:
        The stack, the names ``conv1..convN`` of its conv layers, and its output channels.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if isinstance(v, str):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(channels, v, kernel_size=3, padding=1, bias=conv_bias),
                nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            channels = v
    n_convs = sum(isinstance(v, int) for v in cfg)
    return nn.Sequential(*layers), tuple(f"conv{i + 1}" for i in range(n_convs)), channels
