"""Transfer by fine-tuning ("pre-training for ImageNet" in the paper, section 4.2).

Initialise a supervised network from the pre-trained trunk, put a new linear classifier on its
features, and train all layers on the labelled images; run the very same schedule from a
random initialisation of the same architecture to measure what the pre-training buys (the
paper reports +0.8% top-1 for VGG-16 on ImageNet). A Sobel trunk is first folded into an
exact RGB convolution (:func:`deepercluster.models.fold.fold_sobel`), so its first layer
becomes trainable like any RGB network's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from deepercluster.data import (
    BadImageError,
    ClusterTransform,
    Collection,
    TrainTransform,
)
from deepercluster.models import Backbone
from deepercluster.models.backbone import reference_init
from deepercluster.models.fold import fold_sobel
from deepercluster.models.sobel import Sobel

__all__ = [
    "FinetuneResult",
    "FinetuneSettings",
    "LabelledImages",
    "classifier",
    "epoch_loader",
    "finetune",
]


@dataclass(frozen=True)
class FinetuneSettings:
    """The supervised schedule (identical for the pre-trained and the random start).

    Attributes:
        epochs: passes over the labelled training images.
        batch_size: images per SGD step.
        lr: initial learning rate (cosine decay to 0 over the epochs).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        crop_scale_min: smallest random-crop area fraction of the training augmentation.
        seed: seeds the classifier init, the order and the augmentation.
        fold_sobel: replace a Sobel front by the equal, trainable RGB convolution.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale_min: float = 0.2
    seed: int = 0
    fold_sobel: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"fine-tuning needs epochs >= 1, batch size >= 1 and lr > 0, got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )


class LabelledImages(Dataset[tuple[Tensor, int]]):
    """``(image (3, R, R), label)`` of ``collection[indices]``; label -1 for unreadable images.

    With a :class:`TrainTransform`, the augmentation of image ``i`` at epoch ``e`` comes from a
    generator seeded by ``(seed, e, i)``: reproducible whatever the number of workers.
    """

    def __init__(
        self,
        collection: Collection,
        indices: np.ndarray,
        labels: np.ndarray,
        transform: TrainTransform | ClusterTransform,
        seed: int = 0,
    ) -> None:
        self.read = collection.read
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Tensor, int]:
        index = int(self.indices[j])
        try:
            image = self.read(index)
        except BadImageError:
            r = self.transform.resolution
            return torch.zeros(3, r, r), -1
        if isinstance(self.transform, TrainTransform):
            rng = np.random.default_rng((self.seed, self.epoch, index))
            return self.transform(image, rng), int(self.labels[index])
        return self.transform(image), int(self.labels[index])


def classifier(backbone: Backbone, n_classes: int, *, fold: bool) -> nn.Sequential:
    """``backbone -> ReLU -> Linear(feature_dim, n_classes)`` on a copy of the backbone.

    The ReLU matches training, where the heads apply it to the (pre-activation) features.
    """
    trunk = (
        fold_sobel(backbone)
        if fold and isinstance(backbone.sobel, Sobel)
        else copy.deepcopy(backbone)
    )
    head = nn.Linear(trunk.feature_dim, n_classes)
    reference_init(head)
    return nn.Sequential(trunk, nn.ReLU(inplace=True), head)


def reinitialise(model: nn.Sequential) -> nn.Sequential:
    """The same architecture with fresh weights (the from-scratch baseline).

    The trunk gets the reference initialisation it was pre-trained from; a folded first conv
    (plain ``nn.Conv2d``) is re-drawn too, so nothing learned survives.
    """
    fresh = copy.deepcopy(model)
    reference_init(fresh)
    return fresh


def epoch_loader(
    data: LabelledImages | Dataset[Any],
    epoch: int,
    seed: int,
    batch_size: int,
    workers: int,
    collate_fn: Callable[[Any], Any] | None = None,
) -> DataLoader[Any]:
    """The shuffled loader of one training epoch: its order seeded by ``(seed, epoch)``, and
    ``data.epoch`` set so the dataset seeds its augmentation by epoch too."""
    data.epoch = epoch  # type: ignore[union-attr]
    order = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        generator=order,
        num_workers=workers,
        collate_fn=collate_fn,
    )


@dataclass(frozen=True)
class FinetuneResult:
    """Per-epoch training loss and test top-1 (%), and the wall time."""

    train_loss: tuple[float, ...]
    test_top1: tuple[float, ...]
    seconds: float


@torch.no_grad()
def _accuracy(
    model: nn.Module, loader: DataLoader[tuple[Tensor, int]], device: torch.device
) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        keep = y >= 0
        pred = model(x[keep].to(device)).argmax(1).cpu()
        correct += int((pred == y[keep]).sum())
        total += int(keep.sum())
    return 100.0 * correct / max(total, 1)


def finetune(
    model: nn.Module,
    train: LabelledImages,
    test: LabelledImages,
    settings: FinetuneSettings,
    *,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
    label: str = "finetune",
) -> FinetuneResult:
    """Train every layer of ``model`` on ``train``; evaluate on ``test`` after each epoch.

    Args:
        model: (B, 3, R, R) -> (B, C) logits (e.g. from :func:`classifier`); trained in place.
        train: augmented labelled images.
        test: centre-cropped labelled images.
        settings: the schedule.
        device: where to train.
        workers: DataLoader worker processes.
        progress: show progress bars.
        label: progress-bar and log prefix.

    Returns:
        :class:`FinetuneResult`.
    """
    torch.manual_seed(settings.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    steps = settings.epochs * max(1, -(-len(train) // settings.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    test_loader = DataLoader(test, batch_size=256, num_workers=workers)
    losses, accs = [], []
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        loader = epoch_loader(train, epoch, settings.seed, settings.batch_size, workers)
        model.train()
        total, count = 0.0, 0
        for x, y in tqdm(loader, desc=f"{label} {epoch + 1}", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        losses.append(total / max(count, 1))
        accs.append(_accuracy(model, test_loader, device))
        print(
            f"  {label} epoch {epoch + 1}: loss {losses[-1]:.3f}, test top-1 {accs[-1]:.2f}%",
            flush=True,
        )
    return FinetuneResult(tuple(losses), tuple(accs), time.perf_counter() - start)
