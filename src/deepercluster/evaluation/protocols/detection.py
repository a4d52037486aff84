"""Transfer to object detection: Faster R-CNN on a pre-trained trunk (paper section 4.3).

DeeperCluster (arXiv 1905.01278, Table 3) fine-tunes Fast R-CNN with its VGG-16 on Pascal
VOC 2007 trainval and reports mAP on test. Here torchvision's Faster R-CNN (its region
proposals learned by an RPN instead of selective search) gets our trunk as its body: the Sobel
front folded into an exact RGB convolution (:func:`deepercluster.models.fold.fold_sobel`),
features from the last conv block (one map, stride 8 for ``small``, 16 for VGG-16), anchors
and RoI pooling sized from the input size so the same code serves 64 px shapes on a CPU and
600 px photos on a GPU. Nothing is downloaded: every torchvision part starts from our weights
or a fresh init.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from deepercluster.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from deepercluster.engine.schedules import lr_schedule
from deepercluster.evaluation.average_precision import Detections
from deepercluster.evaluation.protocols.finetune import epoch_loader
from deepercluster.evaluation.protocols.voc import VocDataset
from deepercluster.models import Backbone
from deepercluster.models.backbone import reference_init
from deepercluster.models.fold import fold_sobel
from deepercluster.models.sobel import Sobel

__all__ = ["ConvBody", "DetectionSettings", "build_detector", "detect", "train_detector"]


@dataclass(frozen=True)
class DetectionSettings:
    """The detector and its fine-tuning schedule.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per SGD step.
        lr: peak learning rate (linear warm-up over ``warmup_epochs``, then cosine to 0).
        momentum, weight_decay: SGD.
        warmup_epochs: warm-up length; the fresh heads make the first steps unstable.
        image_size: shorter side the detector resizes images to (paper: 600).
        max_size: cap on the longer side (0: ``image_size * 1000 / 600``, the VOC recipe).
        layer: conv layer whose map feeds the RPN and RoI pooling (empty: the last one).
        anchor_sizes: anchor sides in pixels at the resized scale (empty: 1/8, 1/4, 1/2 of
            ``image_size``).
        roi_size: RoI-align output side (7 for VGG-16's fc6; smaller maps want less).
        representation: width of the two fully connected box-head layers.
        rois_per_image: sampled RoIs per image for the box head (Fast R-CNN: 64 to 128).
        frozen_bn: keep the trunk's BatchNorm statistics fixed, the usual choice for large
            pre-trained nets; off by default because a random-init trunk (the baseline) has
            no statistics worth keeping, and both starts must share one schedule.
        flip: random horizontal flips of the training images.
        seed: seeds the heads' init, the order and the flips.
    """

    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    image_size: int = 600
    max_size: int = 0
    layer: str = ""
    anchor_sizes: tuple[int, ...] = ()
    roi_size: int = 7
    representation: int = 1024
    rois_per_image: int = 128
    frozen_bn: bool = False
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.image_size < 16:
            raise ValueError(
                f"detection needs epochs >= 1, batch size >= 1, lr > 0 and image size >= 16, "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.image_size}"
            )


class ConvBody(nn.Module):
    """The trunk up to one conv layer, as a detection body: (B, 3, H, W) -> (B, C, h, w).

    Attributes:
        out_channels: C, read by torchvision's detection heads.
    """

    def __init__(self, trunk: Backbone, layer: str, *, frozen_bn: bool) -> None:
        super().__init__()
        if layer not in trunk.conv_layer_names:
            raise ValueError(
                f"unknown conv layer {layer!r} for {type(trunk).__name__}; choose from "
                f"{list(trunk.conv_layer_names)}"
            )
        self.trunk = trunk
        self.layer = layer
        self.frozen_bn = frozen_bn
        with torch.no_grad():
            probe = trunk.eval().forward_conv(torch.zeros(1, 3, 32, 32), [layer])[layer]
        self.out_channels = int(probe.shape[1])

    def train(self, mode: bool = True) -> ConvBody:
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk.forward_conv(x, [self.layer])[self.layer]


def build_detector(
    backbone: Backbone, n_classes: int, settings: DetectionSettings, *, from_scratch: bool = False
) -> FasterRCNN:
    """Faster R-CNN over a copy of ``backbone`` (Sobel folded into RGB), for ``n_classes``.

    With ``from_scratch`` the trunk is re-drawn with the reference init: the same detector
    without the pre-training, the baseline the paper compares to.
    """
    torch.manual_seed(settings.seed)  # the random trunk (from scratch) and the new heads
    trunk = fold_sobel(backbone) if isinstance(backbone.sobel, Sobel) else copy.deepcopy(backbone)
    if from_scratch:
        reference_init(trunk)
    body = ConvBody(
        trunk, settings.layer or trunk.conv_layer_names[-1], frozen_bn=settings.frozen_bn
    )
    size = settings.image_size
    sizes = settings.anchor_sizes or tuple(max(4, round(size * f)) for f in (1 / 8, 1 / 4, 1 / 2))
    return FasterRCNN(
        body,
        num_classes=None,
        min_size=size,
        max_size=settings.max_size or round(size * 1000 / 600),
        # our trunk expects ImageNet-normalised RGB, and the detector's transform normalises
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=settings.roi_size, sampling_ratio=2),
        box_head=TwoMLPHead(body.out_channels * settings.roi_size**2, settings.representation),
        box_predictor=FastRCNNPredictor(settings.representation, n_classes + 1),
        box_batch_size_per_image=settings.rois_per_image,
    )


def _collate(
    batch: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def train_detector(
    model: FasterRCNN,
    train: VocDataset,
    settings: DetectionSettings,
    *,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
    label: str = "detection",
) -> list[float]:
    """Fine-tune every layer of ``model`` on ``train`` (in place).

    Returns:
        The mean training loss (RPN + box head) of each epoch.
    """
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    per_epoch = -(-len(train) // settings.batch_size)
    lrs = lr_schedule(
        base_lr=settings.lr,
        epochs=settings.epochs,
        iters_per_epoch=per_epoch,
        kind="cosine",
        warmup_epochs=settings.warmup_epochs,
    )
    losses = []
    step = 0
    for epoch in range(settings.epochs):
        loader = epoch_loader(
            train, epoch, settings.seed, settings.batch_size, workers, collate_fn=_collate
        )
        model.train()
        total, count = 0.0, 0
        for images, targets in tqdm(
            loader, desc=f"{label} {epoch + 1}", disable=not progress, leave=False
        ):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            parts = model([x.to(device) for x in images],
                          [{k: v.to(device) for k, v in t.items()} for t in targets])  # fmt: skip
            loss = sum(parts.values(), torch.zeros((), device=device))
            if not torch.isfinite(loss):
                raise ValueError(
                    f"the detection loss became {float(loss)} at epoch {epoch + 1}; lower --lr "
                    "or raise --warmup-epochs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach()) * len(images)
            count += len(images)
        losses.append(total / max(count, 1))
        print(f"  {label} epoch {epoch + 1}: loss {losses[-1]:.3f}", flush=True)
    return losses


@torch.no_grad()
def detect(
    model: FasterRCNN,
    data: VocDataset,
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
) -> dict[int, Detections]:
    """Run the detector on every image of ``data``: image index -> its detections.

    Labels are 1-based class indices (0 is the background and never output).
    """
    model.to(device).eval()
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    out: dict[int, Detections] = {}
    for images, _ in loader:
        for found in model([x.to(device) for x in images]):
            out[len(out)] = Detections(
                boxes=found["boxes"].cpu().numpy().astype(np.float64),
                labels=found["labels"].cpu().numpy(),
                scores=found["scores"].cpu().numpy().astype(np.float64),
            )
    return out
